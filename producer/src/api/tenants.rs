//! The tenant token routes of the management API, operator tokens only
//! (a tenant token gets 403):
//!
//! - `POST /v1/tenants/{tenant}/tokens`: mints one; the token is in the
//!   answer (201) and nowhere else, ever;
//! - `GET /v1/tenants/{tenant}/tokens`: ids and creation times;
//! - `DELETE /v1/tenants/{tenant}/tokens/{id}`: revokes one (404 if not live).
//!
//! Each answers once this process has applied its record, so the token
//! works (or fails, once revoked) on this API at once; other API processes
//! follow the control stream within moments.

use super::{Api, Caller, ROUTES, op_error, unavailable};
use crate::http::{error, forbidden, method_not_allowed};
use common::registry;
use common::server::{HttpResponse, json};
use hyper::{Method, Request, StatusCode};
use serde_json::json;

/// Handles a request under `/v1/tenants/`; `rest` is the path after it.
pub(super) async fn handle(api: &Api, req: Request<super::ApiBody>, rest: &str) -> HttpResponse {
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let (tenant, token_id, template) = match segments.as_slice() {
        [tenant, "tokens"] => (*tenant, None, ROUTES[3]),
        [tenant, "tokens", id] => (*tenant, Some(*id), ROUTES[4]),
        _ => return error(StatusCode::NOT_FOUND, "not found", None),
    };
    let method = req.method().clone();
    if !template.1.contains(&method.as_str()) {
        return method_not_allowed(&template.1.join(", "));
    }
    match api.caller(&req).await {
        Ok(Caller::Operator) => {}
        Ok(Caller::Tenant(_)) => {
            return forbidden("tenant tokens are managed with an operator token (api.tokens)");
        }
        Err(r) => return r,
    }
    if let Err(e) = registry::check_tenant(tenant) {
        return op_error(&e);
    }
    // Ids are 16 lowercase hex characters; anything else is not a token.
    if let Some(id) = token_id
        && !(id.len() == 16 && id.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
    {
        return error(StatusCode::NOT_FOUND, "no live token with this id", None);
    }
    if method == Method::GET {
        return match api.current().await {
            Ok(state) => {
                let tokens: Vec<_> = registry::tokens::of_tenant(&state, tenant)
                    .into_iter()
                    .map(|t| json!({ "id": t.id, "created_at": t.created_at }))
                    .collect();
                json(
                    StatusCode::OK,
                    &json!({ "tenant": tenant, "tokens": tokens }),
                )
            }
            Err(e) => op_error(&e),
        };
    }
    if let Err(e) = api.current().await {
        return op_error(&e);
    }
    let conn = match api.broker().await {
        Ok(conn) => conn,
        Err(r) => return r,
    };
    let registry = api.registry(&conn);
    match token_id {
        None => match registry.mint_token(tenant).await {
            Ok((token, stored)) => {
                let id = stored.id.clone();
                api.settle(|s| s.tokens.contains_key(&id)).await;
                json(
                    StatusCode::CREATED,
                    &json!({
                        "token": token,
                        "id": stored.id,
                        "tenant": stored.tenant,
                        "created_at": stored.created_at,
                        "note": "the token is shown once; only its hash is stored"
                    }),
                )
            }
            Err(e) => op_error(&e),
        },
        Some(id) => match registry.revoke_token(tenant, id).await {
            Ok(()) => {
                if !api.settle(|s| !s.tokens.contains_key(id)).await {
                    // Stored, but this process still accepts the token:
                    // never tell the operator it is dead before it is.
                    return unavailable(
                        "the revoke is stored, but this API has not applied it within 5 s and may still accept the token; check the broker and list the tokens again",
                    );
                }
                json(
                    StatusCode::OK,
                    &json!({ "id": id, "tenant": tenant, "revoked": true }),
                )
            }
            Err(e) => op_error(&e),
        },
    }
}
