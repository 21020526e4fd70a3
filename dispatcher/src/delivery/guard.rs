//! The dispatcher's side of the address policy ([`common::addresses`]): the
//! resolver its connections use, which drops refused addresses, so a name
//! cannot resolve to a refused address behind the check's back.

pub use common::addresses::{AddressGuard, Refusal};
use std::net::{IpAddr, SocketAddr};

/// Why a host name gave no address to connect to.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The system resolver failed.
    #[error("dns error: {0}")]
    Lookup(#[from] std::io::Error),
    /// Every address was refused.
    #[error(transparent)]
    Blocked(#[from] BlockedAddress),
}

/// Resolves `host` with the system resolver and keeps the addresses
/// `guard` permits (with `port`); fails when none is left.
///
/// # Errors
/// [`ResolveError`].
pub async fn resolve(
    guard: &AddressGuard,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, ResolveError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    let mut first_refused = None;
    let mut permitted = Vec::with_capacity(addrs.len());
    for addr in &addrs {
        match guard.check(addr.ip()) {
            Ok(()) => permitted.push(*addr),
            Err(why) => {
                first_refused.get_or_insert((addr.ip(), why));
            }
        }
    }
    match first_refused {
        Some((ip, why)) if permitted.is_empty() => Err(BlockedAddress {
            host: host.to_owned(),
            resolved: addrs.len(),
            ip,
            why,
        }
        .into()),
        _ => Ok(permitted),
    }
}

/// Every address of a host is refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "{host} resolves only to refused addresses ({resolved} found; {ip} {why}); add the network to http.allowed_networks to allow it"
)]
pub struct BlockedAddress {
    /// The host name.
    pub host: String,
    /// How many addresses it had.
    pub resolved: usize,
    /// The first refused address.
    pub ip: IpAddr,
    /// Why it was refused.
    pub why: Refusal,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolver_refuses_names_of_blocked_addresses() {
        let err = match resolve(&AddressGuard::default(), "localhost", 80).await {
            Err(ResolveError::Blocked(b)) => b.to_string(),
            other => panic!("localhost must be refused: {other:?}"),
        };
        assert!(err.contains("allowed_networks"), "{err}");
        assert!(err.contains("loopback"), "{err}");
        let open = AddressGuard::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
        ]);
        let addrs = resolve(&open, "localhost", 8080).await.unwrap();
        assert!(!addrs.is_empty());
        assert!(
            addrs
                .iter()
                .all(|a| a.port() == 8080 && a.ip().is_loopback())
        );
    }
}
