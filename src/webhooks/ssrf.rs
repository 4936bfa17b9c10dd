//! The SSRF guard (SPEC §7.2, ADR 0015): a webhook URL is resolved once per
//! attempt, every address is checked, and the request is pinned to the
//! checked addresses so a second DNS answer cannot point it elsewhere.
//!
//! Refused unless inside `Webhooks.AllowedNetworks`: loopback, private
//! (10/8, 172.16/12, 192.168/16), shared/CGNAT (100.64/10), link-local
//! (169.254/16, with the 169.254.169.254 metadata service), "this network"
//! and unspecified, multicast, broadcast and reserved IPv4; IPv6 loopback,
//! unspecified, unique-local (fc00::/7, with the EC2 metadata address
//! fd00:ec2::254), link-local, site-local and multicast; and IPv6 addresses
//! that embed a refused IPv4 address (IPv4-mapped, IPv4-compatible, NAT64
//! 64:ff9b::/96, 6to4 2002::/16).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use url::{Host, Url};

/// Parse one `Webhooks.AllowedNetworks` entry: a CIDR (`10.1.0.0/16`,
/// `fd00::/8`) or a single address (`127.0.0.1`, a /32 or /128).
pub fn parse_network(entry: &str) -> Result<IpNet, String> {
    let entry = entry.trim();
    entry
        .parse::<IpNet>()
        .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{entry}` is not a CIDR such as 10.0.0.0/8 or fd00::/8"))
}

/// Why a target cannot be sent to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Blocked {
    /// Refused by the guard: final, no retry.
    #[error("{0}")]
    Refused(String),
    /// DNS failed or found nothing: may be temporary.
    #[error("{0}")]
    Unresolved(String),
}

/// Where to send: the URL's domain (when it is not an IP literal) and the
/// checked addresses the connection must use.
#[derive(Debug, Clone)]
pub struct Pinned {
    pub domain: Option<String>,
    pub addrs: Vec<SocketAddr>,
}

#[derive(Debug, Clone, Default)]
pub struct Guard {
    allowed: Vec<IpNet>,
}

impl Guard {
    /// Entries were validated at start-up (`Config::validate`).
    pub fn new(allowed: &[String]) -> Result<Guard, String> {
        let allowed = allowed
            .iter()
            .map(|e| parse_network(e))
            .collect::<Result<_, _>>()?;
        Ok(Guard { allowed })
    }

    /// `Err(reason)` when `ip` may not be contacted.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        let Some(kind) = forbidden(ip) else {
            return Ok(());
        };
        let embedded = embedded_v4(ip).map(IpAddr::V4);
        let listed = |a: IpAddr| self.allowed.iter().any(|n| n.contains(&a));
        if listed(ip) || embedded.is_some_and(listed) {
            return Ok(());
        }
        Err(format!(
            "refused to send to {ip} ({kind} address): not in Webhooks.AllowedNetworks"
        ))
    }

    /// Resolve `url`'s host and keep the addresses the guard permits; if
    /// none is permitted the target is refused, naming the first address.
    pub async fn resolve(&self, url: &Url) -> Result<Pinned, Blocked> {
        let port = url
            .port_or_known_default()
            .ok_or_else(|| Blocked::Refused(format!("{url} has no port")))?;
        let (domain, found): (Option<String>, Vec<SocketAddr>) = match url.host() {
            Some(Host::Ipv4(ip)) => (None, vec![SocketAddr::new(ip.into(), port)]),
            Some(Host::Ipv6(ip)) => (None, vec![SocketAddr::new(ip.into(), port)]),
            Some(Host::Domain(d)) => {
                let found = tokio::net::lookup_host((d, port))
                    .await
                    .map_err(|e| Blocked::Unresolved(format!("resolving {d}: {e}")))?
                    .collect();
                (Some(d.to_owned()), found)
            }
            None => return Err(Blocked::Refused(format!("{url} has no host"))),
        };
        let mut refusal = None;
        let mut addrs = Vec::new();
        for addr in found {
            match self.check(addr.ip()) {
                Ok(()) => addrs.push(addr),
                Err(why) => {
                    refusal.get_or_insert(why);
                }
            }
        }
        if addrs.is_empty() {
            return Err(match refusal {
                Some(why) => Blocked::Refused(why),
                None => Blocked::Unresolved(format!(
                    "{} resolved to no address",
                    url.host_str().unwrap_or_default()
                )),
            });
        }
        Ok(Pinned { domain, addrs })
    }
}

/// The kind of a forbidden address, `None` for a public one.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    Some(match ip {
        _ if ip.is_unspecified() || in_v4(ip, [0, 0, 0, 0], 8) => "unspecified",
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_private() => "private",
        _ if in_v4(ip, [100, 64, 0, 0], 10) => "shared (CGNAT)",
        _ if ip == Ipv4Addr::new(169, 254, 169, 254) => "cloud metadata",
        _ if ip.is_link_local() => "link-local",
        _ if in_v4(ip, [192, 0, 0, 0], 24) => "IETF protocol assignment",
        _ if in_v4(ip, [198, 18, 0, 0], 15) => "benchmarking",
        _ if ip.is_multicast() => "multicast",
        _ if ip.is_broadcast() => "broadcast",
        _ if in_v4(ip, [240, 0, 0, 0], 4) => "reserved",
        _ => return None,
    })
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let seg = ip.segments();
    Some(match ip {
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_loopback() => "loopback",
        _ if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) => "cloud metadata",
        _ if seg[0] & 0xfe00 == 0xfc00 => "unique-local",
        _ if seg[0] & 0xffc0 == 0xfe80 => "link-local",
        _ if seg[0] & 0xffc0 == 0xfec0 => "site-local",
        _ if seg[0] & 0xff00 == 0xff00 => "multicast",
        _ => return embedded_v4(ip.into()).and_then(forbidden_v4),
    })
}

/// The IPv4 address inside an IPv4-mapped, IPv4-compatible, NAT64 or 6to4
/// IPv6 address.
fn embedded_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else {
        return None;
    };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0, _, _] => Some(tail),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail),
        [0x2002, a, b, ..] => Some(Ipv4Addr::new(
            (a >> 8) as u8,
            a as u8,
            (b >> 8) as u8,
            b as u8,
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(ip: &str) -> bool {
        Guard::default().check(ip.parse().unwrap()).is_err()
    }

    #[test]
    fn refuses_internal_and_special_addresses() {
        for ip in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.254",
            "169.254.169.254",
            "169.254.1.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "2002:c0a8:0101::1",
        ] {
            assert!(refused(ip), "{ip} must be refused");
        }
    }

    #[test]
    fn permits_public_addresses() {
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "169.255.0.1",
            "2606:2800:220:1:248:1893:25c8:1946",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
        ] {
            assert!(!refused(ip), "{ip} must be permitted");
        }
    }

    #[test]
    fn allowed_networks_open_a_refused_range_and_mapped_forms() {
        let g = Guard::new(&["127.0.0.0/8".into(), "fd00::/8".into(), "10.0.0.7".into()]).unwrap();
        for ip in ["127.0.0.1", "::ffff:127.0.0.1", "fd00::5", "10.0.0.7"] {
            assert!(g.check(ip.parse().unwrap()).is_ok(), "{ip} allowed");
        }
        for ip in ["10.0.0.8", "169.254.169.254", "::1"] {
            assert!(g.check(ip.parse().unwrap()).is_err(), "{ip} still refused");
        }
    }

    #[test]
    fn a_refusal_names_the_address_and_why() {
        let err = Guard::default()
            .check("169.254.169.254".parse().unwrap())
            .unwrap_err();
        assert!(
            err.contains("169.254.169.254") && err.contains("metadata"),
            "{err}"
        );
    }

    #[test]
    fn bad_networks_are_rejected() {
        assert!(parse_network("10.0.0.0/33").is_err());
        assert!(parse_network("localhost").is_err());
        assert_eq!(
            parse_network(" 192.168.0.0/16 ").unwrap().to_string(),
            "192.168.0.0/16"
        );
    }

    #[tokio::test]
    async fn resolve_pins_literals_and_refuses_localhost_names() {
        let g = Guard::default();
        let url = Url::parse("http://127.0.0.1:9/hook").unwrap();
        assert!(
            matches!(g.resolve(&url).await, Err(Blocked::Refused(m)) if m.contains("127.0.0.1"))
        );
        let url = Url::parse("http://localhost:9/hook").unwrap();
        assert!(matches!(g.resolve(&url).await, Err(Blocked::Refused(_))));
        let open = Guard::new(&["127.0.0.0/8".into(), "::1/128".into()]).unwrap();
        let pinned = open.resolve(&url).await.unwrap();
        assert_eq!(pinned.domain.as_deref(), Some("localhost"));
        assert!(pinned
            .addrs
            .iter()
            .all(|a| a.port() == 9 && a.ip().is_loopback()));
    }
}
