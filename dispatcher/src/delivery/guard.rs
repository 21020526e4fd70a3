//! The dispatcher's side of the address policy ([`common::addresses`]): the
//! resolver of its HTTP client, which drops refused addresses, so a name
//! cannot resolve to a refused address behind the check's back.

pub use common::addresses::{AddressGuard, Refusal};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, SocketAddr};

/// A DNS resolver that drops refused addresses and fails when none is left.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    guard: AddressGuard,
}

impl GuardedResolver {
    /// Resolves with the system resolver, filtered by `guard`.
    pub fn new(guard: AddressGuard) -> Self {
        Self { guard }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.guard.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
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
                Some((ip, why)) if permitted.is_empty() => Err(Box::new(BlockedAddress {
                    host,
                    resolved: addrs.len(),
                    ip,
                    why,
                })
                    as Box<dyn std::error::Error + Send + Sync>),
                _ => Ok(Box::new(permitted.into_iter()) as Addrs),
            }
        })
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
        let blocked = GuardedResolver::new(AddressGuard::default());
        let err = match blocked.resolve("localhost".parse().unwrap()).await {
            Ok(_) => panic!("localhost must be refused"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("allowed_networks"), "{err}");
        assert!(err.contains("loopback"), "{err}");
        let open = GuardedResolver::new(AddressGuard::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
        ]));
        let addrs: Vec<SocketAddr> = open
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(!addrs.is_empty());
    }
}
