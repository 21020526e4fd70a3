//! The registry's tenant-token operations: mint and revoke, over the
//! control stream (the API's `/v1/tenants/{tenant}/tokens`).

use super::control::Command;
use super::tokens::{self, StoredToken};
use super::{OpError, Registry, check_tenant};

impl Registry<'_> {
    /// Mints a tenant token for `tenant`: the token (shown once) and what
    /// the control stream keeps (its hash).
    ///
    /// # Errors
    /// A bad tenant, the tenant's cap of live tokens reached, the OS random
    /// source failed, or the broker failed.
    pub async fn mint_token(&self, tenant: &str) -> Result<(String, StoredToken), OpError> {
        check_tenant(tenant)?;
        let state = self.state().await?;
        let max = tokens::MAX_PER_TENANT;
        if tokens::of_tenant(&state, tenant).len() >= max {
            return Err(OpError::Conflict(format!(
                "the tenant has {max} live tokens, the most it may have; revoke one first"
            )));
        }
        let (token, stored) = tokens::mint(tenant)?;
        self.append(&Command::mint(&stored)).await?;
        if self.state().await?.tokens.get(&stored.id) != Some(&stored) {
            return Err(OpError::Conflict(
                "tokens were minted for the tenant at the same time; list them and try again"
                    .into(),
            ));
        }
        Ok((token, stored))
    }

    /// Revokes token `id` of `tenant`.
    ///
    /// # Errors
    /// A bad tenant, [`OpError::UnknownToken`], or the broker failed.
    pub async fn revoke_token(&self, tenant: &str, id: &str) -> Result<(), OpError> {
        check_tenant(tenant)?;
        let state = self.state().await?;
        if state.tokens.get(id).is_none_or(|t| t.tenant != tenant) {
            return Err(OpError::UnknownToken(id.to_owned()));
        }
        self.append(&Command::TokenRevoke {
            tenant: tenant.to_owned(),
            id: id.to_owned(),
        })
        .await
    }
}
