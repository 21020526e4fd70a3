//! Which addresses endpoints may reach (server-side request forgery guard).
//! An address is refused when it is not globally reachable: it lies in a
//! range of [`SPECIAL_V4`] or [`SPECIAL_V6`] (built from the IANA IPv4 and
//! IPv6 special-purpose address registries), outside the IPv6 global unicast
//! space 2000::/3, or it is an IPv6 address that embeds a refused IPv4 address.
//! `[http] allowed_networks` opens networks explicitly.
//!
//! IPv6 forms that carry an IPv4 address:
//! - IPv4-mapped `::ffff:0:0/96` is the IPv4 address itself (a dual-stack
//!   socket connects to it): decided as that IPv4 address, and allowed when
//!   its IPv4 address is in an allowed network.
//! - NAT64 well-known prefix `64:ff9b::/96` is globally reachable when the
//!   embedded IPv4 address is (DNS64 networks hand these out for IPv4-only
//!   hosts), refused otherwise.
//! - IPv4-compatible `::/96`, NAT64 local-use `64:ff9b:1::/48`, 6to4
//!   `2002::/16` and Teredo `2001::/32` are refused as a whole (deprecated
//!   or tunnelled through relays we do not control). When the embedded IPv4
//!   address is itself refused, the refusal names it.
//!
//! An allowed network permits every address in it, including the addresses
//! a 6to4 or NAT64 prefix embeds: allow such prefixes only as narrowly as
//! needed.
//!
//! Literal IP hosts are checked when the config is loaded and before each
//! request; names are checked after resolution by the dispatcher's
//! `guard::GuardedResolver`, the one resolver of its HTTP client, so a name
//! cannot resolve to a refused address behind the check's back. The
//! management API refuses literal addresses when an endpoint is registered.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// A range of addresses that is not globally reachable.
#[derive(Debug, PartialEq, Eq)]
pub struct Special {
    /// The range.
    pub net: IpNet,
    /// What it is for.
    pub name: &'static str,
    /// Where it is defined.
    pub rfc: &'static str,
}

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8, name: &'static str, rfc: &'static str) -> Special {
    Special {
        net: IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len)),
        name,
        rfc,
    }
}

const fn v6(segments: [u16; 8], len: u8, name: &'static str, rfc: &'static str) -> Special {
    let [a, b, c, d, e, f, g, h] = segments;
    Special {
        net: IpNet::V6(Ipv6Net::new_assert(
            Ipv6Addr::new(a, b, c, d, e, f, g, h),
            len,
        )),
        name,
        rfc,
    }
}

/// IPv4 ranges refused by default: every entry of the IANA IPv4
/// special-purpose address registry that is not globally reachable, plus
/// multicast. The registry's globally reachable entries (AS112 192.31.196.0/24
/// and 192.175.48.0/24, AMT 192.52.193.0/24) are allowed; the anycast
/// addresses 192.0.0.9 and 192.0.0.10 are refused with the rest of
/// 192.0.0.0/24 (no webhook receiver lives there).
pub const SPECIAL_V4: &[Special] = &[
    v4(0, 0, 0, 0, 8, "\"this network\"", "RFC 791"),
    v4(10, 0, 0, 0, 8, "private use", "RFC 1918"),
    v4(
        100,
        64,
        0,
        0,
        10,
        "shared address space (CGNAT)",
        "RFC 6598",
    ),
    v4(127, 0, 0, 0, 8, "loopback", "RFC 1122"),
    v4(169, 254, 0, 0, 16, "link-local", "RFC 3927"),
    v4(172, 16, 0, 0, 12, "private use", "RFC 1918"),
    // Holds DS-Lite 192.0.0.0/29 (RFC 7335), the dummy address 192.0.0.8
    // (RFC 7600), PCP and TURN anycast 192.0.0.9/10 (RFC 7723, RFC 8155)
    // and NAT64 discovery 192.0.0.170/171 (RFC 8880).
    v4(192, 0, 0, 0, 24, "IETF protocol assignments", "RFC 6890"),
    v4(192, 0, 2, 0, 24, "documentation (TEST-NET-1)", "RFC 5737"),
    v4(
        192,
        88,
        99,
        0,
        24,
        "6to4 relay anycast (deprecated)",
        "RFC 7526",
    ),
    v4(192, 168, 0, 0, 16, "private use", "RFC 1918"),
    v4(198, 18, 0, 0, 15, "benchmarking", "RFC 2544"),
    v4(
        198,
        51,
        100,
        0,
        24,
        "documentation (TEST-NET-2)",
        "RFC 5737",
    ),
    v4(203, 0, 113, 0, 24, "documentation (TEST-NET-3)", "RFC 5737"),
    v4(224, 0, 0, 0, 4, "multicast", "RFC 5771"),
    v4(255, 255, 255, 255, 32, "limited broadcast", "RFC 919"),
    v4(240, 0, 0, 0, 4, "reserved", "RFC 1112"),
];

/// IPv6 ranges refused by default, first match wins: every entry of the
/// IANA IPv6 special-purpose address registry that is not globally
/// reachable, the tunnel forms that embed IPv4 (module docs), and the
/// deprecated site-local and IPv4-compatible ranges. Anything else outside
/// 2000::/3 is refused by [`UNASSIGNED_V6`]. The registry's globally
/// reachable entries inside 2001::/23 (PCP, TURN and DNS-SD anycast, AMT,
/// AS112, ORCHIDv2, drone remote ID) are refused with the block; AS112
/// 2620:4f:8000::/48 is allowed.
pub const SPECIAL_V6: &[Special] = &[
    v6([0, 0, 0, 0, 0, 0, 0, 0], 128, "unspecified", "RFC 4291"),
    v6([0, 0, 0, 0, 0, 0, 0, 1], 128, "loopback", "RFC 4291"),
    IPV4_COMPATIBLE,
    v6(
        [0x64, 0xff9b, 1, 0, 0, 0, 0, 0],
        48,
        "NAT64 local use",
        "RFC 8215",
    ),
    v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "discard only", "RFC 6666"),
    v6([0x100, 0, 0, 1, 0, 0, 0, 0], 64, "dummy prefix", "RFC 9780"),
    TEREDO,
    // Holds benchmarking 2001:2::/48 (RFC 5180) and ORCHID 2001:10::/28 (RFC 4843).
    v6(
        [0x2001, 0, 0, 0, 0, 0, 0, 0],
        23,
        "IETF protocol assignments",
        "RFC 2928",
    ),
    v6(
        [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0],
        32,
        "documentation",
        "RFC 3849",
    ),
    SIX_TO_FOUR,
    v6(
        [0x3fff, 0, 0, 0, 0, 0, 0, 0],
        20,
        "documentation",
        "RFC 9637",
    ),
    v6(
        [0x5f00, 0, 0, 0, 0, 0, 0, 0],
        16,
        "segment routing (SRv6) SIDs",
        "RFC 9602",
    ),
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "unique local", "RFC 4193"),
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "link-local", "RFC 4291"),
    v6(
        [0xfec0, 0, 0, 0, 0, 0, 0, 0],
        10,
        "site-local (deprecated)",
        "RFC 3879",
    ),
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "multicast", "RFC 4291"),
];

/// IPv4-compatible IPv6 addresses, `::a.b.c.d` (deprecated).
pub const IPV4_COMPATIBLE: Special = v6(
    [0, 0, 0, 0, 0, 0, 0, 0],
    96,
    "IPv4-compatible (deprecated)",
    "RFC 4291",
);

/// Teredo tunnels: `2001:0:SERVER:flags:port:CLIENT`, the client inverted.
pub const TEREDO: Special = v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32, "Teredo", "RFC 4380");

/// 6to4 tunnels: `2002:V4ADDR::/48`.
pub const SIX_TO_FOUR: Special = v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16, "6to4", "RFC 3056");

/// The IPv6 global unicast space (RFC 4291 section 2.4, IANA IPv6 address
/// space registry); everything outside it is reserved or unassigned.
pub const GLOBAL_UNICAST_V6: Special = v6(
    [0x2000, 0, 0, 0, 0, 0, 0, 0],
    3,
    "global unicast",
    "RFC 4291",
);

/// What refuses an IPv6 address outside [`GLOBAL_UNICAST_V6`] that no entry
/// of [`SPECIAL_V6`] names.
pub const UNASSIGNED_V6: Special = v6(
    [0, 0, 0, 0, 0, 0, 0, 0],
    0,
    "reserved or unassigned (outside 2000::/3)",
    "RFC 4291",
);

/// The NAT64 well-known prefix: decided by the IPv4 address it embeds.
pub const NAT64_V6: Special = v6(
    [0x64, 0xff9b, 0, 0, 0, 0, 0, 0],
    96,
    "NAT64 well-known prefix",
    "RFC 6052",
);

/// Why an address is refused by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The address is in a range that is not globally reachable.
    Range(&'static Special),
    /// An IPv6 address (in `wrapper`) embeds an IPv4 address in `range`.
    Embedded {
        /// The IPv6 form carrying the IPv4 address.
        wrapper: &'static Special,
        /// The embedded address.
        v4: Ipv4Addr,
        /// Its range.
        range: &'static Special,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Range(s) => write!(
                f,
                "is in {} ({}, {}), which is not globally reachable",
                s.net, s.name, s.rfc
            ),
            Refusal::Embedded { wrapper, v4, range } => write!(
                f,
                "embeds {v4} ({} form, {}), which is in {} ({}, {}) and not globally reachable",
                wrapper.name, wrapper.rfc, range.net, range.name, range.rfc
            ),
        }
    }
}

/// Why `ip` is refused when no network is allowed, or `None` when it is
/// globally reachable.
pub fn refusal(ip: IpAddr) -> Option<Refusal> {
    match ip {
        IpAddr::V4(v4) => refusal_v4(v4).map(Refusal::Range),
        IpAddr::V6(v6) => refusal_v6(v6),
    }
}

fn refusal_v4(ip: Ipv4Addr) -> Option<&'static Special> {
    SPECIAL_V4.iter().find(|s| s.net.contains(&IpAddr::V4(ip)))
}

fn refusal_v6(ip: Ipv6Addr) -> Option<Refusal> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return refusal_v4(v4).map(Refusal::Range);
    }
    let addr = IpAddr::V6(ip);
    let table = SPECIAL_V6.iter().find(|s| s.net.contains(&addr));
    for (wrapper, v4) in embedded_v4(ip) {
        if let Some(range) = refusal_v4(v4) {
            return Some(Refusal::Embedded { wrapper, v4, range });
        }
    }
    if let Some(special) = table {
        return Some(Refusal::Range(special));
    }
    if NAT64_V6.net.contains(&addr) || GLOBAL_UNICAST_V6.net.contains(&addr) {
        return None;
    }
    Some(Refusal::Range(&UNASSIGNED_V6))
}

/// The IPv4 addresses that IPv6 tunnel and translation forms of `ip` carry
/// (IPv4-mapped is handled before this). NAT64 local-use is not decoded: where
/// its IPv4 address sits depends on the operator's prefix length (RFC 6052
/// section 2.2), and the range is refused as a whole.
fn embedded_v4(ip: Ipv6Addr) -> Vec<(&'static Special, Ipv4Addr)> {
    let bits = u128::from(ip);
    let low32 = Ipv4Addr::from(bits as u32);
    let addr = IpAddr::V6(ip);
    let mut found = Vec::new();
    if NAT64_V6.net.contains(&addr) {
        found.push((&NAT64_V6, low32));
    }
    // `::` and `::1` are not IPv4-compatible addresses (RFC 4291 section 2.5.5.1).
    if IPV4_COMPATIBLE.net.contains(&addr) && bits > 1 {
        found.push((&IPV4_COMPATIBLE, low32));
    }
    if SIX_TO_FOUR.net.contains(&addr) {
        // 2002:AABB:CCDD::/48 — the site's IPv4 address in bits 16..48.
        found.push((&SIX_TO_FOUR, Ipv4Addr::from((bits >> 80) as u32)));
    }
    if TEREDO.net.contains(&addr) {
        // 2001:0:SSSS:SSSS:flags:port:CCCC:CCCC — the server in bits 32..64,
        // the client's public address in the last 32 bits, inverted.
        found.push((&TEREDO, Ipv4Addr::from(!(bits as u32))));
        found.push((&TEREDO, Ipv4Addr::from((bits >> 64) as u32)));
    }
    found
}

/// The address policy: globally reachable addresses plus `allowed` networks.
#[derive(Debug, Clone, Default)]
pub struct AddressGuard {
    allowed: Arc<Vec<IpNet>>,
}

impl AddressGuard {
    /// A guard allowing these networks on top of the public internet.
    pub fn new(allowed: Vec<IpNet>) -> Self {
        Self {
            allowed: Arc::new(allowed),
        }
    }

    /// Whether a request may go to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.check(ip).is_ok()
    }

    /// Whether a request may go to `ip`: globally reachable, or in an allowed
    /// network. An IPv4-mapped address (`::ffff:127.0.0.1`) is also allowed
    /// by a network holding its IPv4 address.
    ///
    /// # Errors
    /// Why `ip` is refused.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        let Some(refused) = refusal(ip) else {
            return Ok(());
        };
        let mapped = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        let allowed = self
            .allowed
            .iter()
            .any(|net| net.contains(&ip) || mapped.is_some_and(|m| net.contains(&m)));
        if allowed { Ok(()) } else { Err(refused) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn first_last(net: &IpNet) -> (IpAddr, IpAddr) {
        (net.network(), net.broadcast())
    }

    fn step(ip: IpAddr, up: bool) -> Option<IpAddr> {
        match ip {
            IpAddr::V4(a) => {
                let n = u32::from(a);
                (if up {
                    n.checked_add(1)
                } else {
                    n.checked_sub(1)
                })
                .map(|n| Ipv4Addr::from(n).into())
            }
            IpAddr::V6(a) => {
                let n = u128::from(a);
                (if up {
                    n.checked_add(1)
                } else {
                    n.checked_sub(1)
                })
                .map(|n| Ipv6Addr::from(n).into())
            }
        }
    }

    /// The entry a refusal names for the address itself (not an embedded one).
    fn range_of(ip: IpAddr) -> Option<&'static Special> {
        match refusal(ip) {
            Some(Refusal::Range(s)) => Some(s),
            Some(Refusal::Embedded { wrapper, .. }) => Some(wrapper),
            None => None,
        }
    }

    #[test]
    fn every_registry_entry_is_refused_inside_and_not_beyond() {
        for special in SPECIAL_V4.iter().chain(SPECIAL_V6) {
            let (first, last) = first_last(&special.net);
            for inside in [first, last] {
                let why = refusal(inside);
                assert!(why.is_some(), "{inside} in {}", special.net);
                assert!(!AddressGuard::default().permits(inside), "{inside}");
            }
            // The first address names this entry unless an earlier, narrower
            // entry (`::`, `::1`, Teredo in 2001::/23) or an embedded IPv4
            // address claims it.
            if !matches!(refusal(first), Some(Refusal::Embedded { .. })) {
                let named = range_of(first).unwrap();
                assert!(
                    named == special || named.net.prefix_len() > special.net.prefix_len(),
                    "{first}: {} instead of {}",
                    named.net,
                    special.net
                );
            }
            // Just outside: globally reachable, or refused by another entry.
            for outside in [step(first, false), step(last, true)].into_iter().flatten() {
                assert_ne!(
                    range_of(outside),
                    Some(special),
                    "{outside} outside {}",
                    special.net
                );
            }
        }
    }

    #[test]
    fn refuses_private_and_special_addresses() {
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.0.9",
            "192.88.99.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "100::1",
            "2001:2::1",
            "2001:db8::1",
            "3fff::1",
            "5f00::1",
            "4000::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::10.0.0.1",
        ] {
            assert!(refusal(ip(refused)).is_some(), "{refused}");
            assert!(!AddressGuard::default().permits(ip(refused)), "{refused}");
        }
    }

    fn entry(table: &'static [Special], name: &str) -> &'static Special {
        table.iter().find(|s| s.name == name).unwrap()
    }

    /// The six literal addresses the issue found accepted, and variants.
    #[test]
    fn refuses_ipv6_forms_of_internal_ipv4() {
        let metadata = Ipv4Addr::new(169, 254, 169, 254);
        let this_network = Ipv4Addr::UNSPECIFIED;
        for (text, wrapper, v4, range) in [
            ("64:ff9b::a9fe:a9fe", &NAT64_V6, metadata, "link-local"),
            ("2002:a9fe:a9fe::1", &SIX_TO_FOUR, metadata, "link-local"),
            ("::a9fe:a9fe", &IPV4_COMPATIBLE, metadata, "link-local"),
            // The Teredo address: its client field inverts to
            // 94.1.86.1 (public); its server field is 0.0.0.0.
            ("2001::a9fe:a9fe", &TEREDO, this_network, "\"this network\""),
            // Teredo client 169.254.169.254, inverted.
            ("2001:0:808:808::5601:5601", &TEREDO, metadata, "link-local"),
            // Teredo server 169.254.169.254, client 8.8.8.8.
            (
                "2001:0:a9fe:a9fe::f7f7:f7f7",
                &TEREDO,
                metadata,
                "link-local",
            ),
        ] {
            let expected = Refusal::Embedded {
                wrapper,
                v4,
                range: entry(SPECIAL_V4, range),
            };
            assert_eq!(refusal(ip(text)), Some(expected), "{text}");
            assert!(!AddressGuard::default().permits(ip(text)), "{text}");
        }
        for (text, table, name) in [
            ("198.18.0.1", SPECIAL_V4, "benchmarking"),
            ("fec0::1", SPECIAL_V6, "site-local (deprecated)"),
        ] {
            assert_eq!(
                refusal(ip(text)),
                Some(Refusal::Range(entry(table, name))),
                "{text}"
            );
            assert!(!AddressGuard::default().permits(ip(text)), "{text}");
        }
    }

    #[test]
    fn wrappers_of_public_ipv4_are_refused_except_nat64() {
        // 8.8.8.8 in each form.
        assert!(refusal(ip("64:ff9b::808:808")).is_none());
        assert!(refusal(ip("::ffff:8.8.8.8")).is_none());
        for (text, wrapper) in [
            ("::808:808", &IPV4_COMPATIBLE),
            ("2002:808:808::1", &SIX_TO_FOUR),
            ("2001:0:808:808::f7f7:f7f7", &TEREDO),
            ("64:ff9b:1::808:808", entry(SPECIAL_V6, "NAT64 local use")),
        ] {
            assert_eq!(refusal(ip(text)), Some(Refusal::Range(wrapper)), "{text}");
        }
    }

    #[test]
    fn permits_global_addresses() {
        for global in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "172.32.0.1",
            "198.20.0.1",
            "192.31.196.1",
            "192.175.48.1",
            "223.255.255.255",
            "2606:4700::1111",
            "2606:4700:4700::1111",
            "2a00:1450:4001::1",
            "2620:4f:8000::1",
            "2001:4860:4860::8888",
            "3fff:1000::1",
        ] {
            assert_eq!(refusal(ip(global)), None, "{global}");
            assert!(AddressGuard::default().permits(ip(global)), "{global}");
        }
    }

    #[test]
    fn allowed_networks_open_holes() {
        let guard = AddressGuard::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(guard.permits(ip("127.0.0.1")));
        assert!(guard.permits(ip("::ffff:127.0.0.1")));
        assert!(!guard.permits(ip("10.0.0.1")));
        assert!(!guard.permits(ip("::ffff:10.0.0.1")));
        assert!(!guard.permits(ip("::1")));
        // Only the mapped form follows an allowed IPv4 network.
        assert!(!guard.permits(ip("64:ff9b::127.0.0.1")));
        assert!(!guard.permits(ip("2002:7f00:1::1")));
        let v6 = AddressGuard::new(vec![
            "::1/128".parse().unwrap(),
            "2002::/16".parse().unwrap(),
        ]);
        assert!(v6.permits(ip("::1")));
        assert!(v6.permits(ip("2002:808:808::1")));
        assert!(!v6.permits(ip("127.0.0.1")));
        assert_eq!(
            v6.check(ip("fe80::1")),
            Err(Refusal::Range(entry(SPECIAL_V6, "link-local")))
        );
    }

    #[test]
    fn refusal_names_the_range_and_rfc() {
        let text = refusal(ip("64:ff9b::a9fe:a9fe")).unwrap().to_string();
        assert!(text.contains("169.254.169.254"), "{text}");
        assert!(text.contains("RFC 3927"), "{text}");
        let text = refusal(ip("198.18.0.1")).unwrap().to_string();
        assert!(
            text.contains("198.18.0.0/15") && text.contains("RFC 2544"),
            "{text}"
        );
    }
}
