//! The SSRF guard (SPEC §7.2, ADRs 0015 and 0024): a webhook URL is resolved
//! once per attempt, every address is checked, and the request is pinned to
//! the checked addresses so a second DNS answer cannot point it elsewhere.
//!
//! Refused unless inside `Webhooks.AllowedNetworks`: every address the IANA
//! special-purpose registries mark not globally reachable, multicast, the
//! IPv6 forms that carry a refused IPv4 address ([`super::ranges`]), and
//! every address of this server's own interfaces (re-read every
//! [`OWN_REFRESH`]) or an IPv6 form carrying one. An allowed network only
//! matches addresses of its own family and form as written: `127.0.0.0/8`
//! does not open `::ffff:127.0.0.1` or `2002:7f00:1::`.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use url::{Host, Url};

use super::ranges::{embedded_v4, refused_kind};

/// How long a reading of this server's interface addresses is trusted.
pub const OWN_REFRESH: Duration = Duration::from_secs(30);

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

/// Reads the addresses of this host's interfaces.
pub type ReadOwn = fn() -> Vec<IpAddr>;

/// Every address of this host's interfaces (`getifaddrs`); none when they
/// cannot be read (logged: the class tables still apply).
pub fn interface_addrs() -> Vec<IpAddr> {
    match if_addrs::get_if_addrs() {
        Ok(list) => list.iter().map(|i| i.ip()).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read this host's interface addresses");
            Vec::new()
        }
    }
}

/// This server's own addresses, re-read when older than `refresh`.
#[derive(Debug)]
struct OwnAddrs {
    read: ReadOwn,
    refresh: Duration,
    /// A std `Mutex`: held for a clone of the list or a re-read (one
    /// `getifaddrs` call), never across an `.await`.
    cached: Mutex<(Instant, Arc<Vec<IpAddr>>)>,
}

impl OwnAddrs {
    fn new(read: ReadOwn, refresh: Duration) -> OwnAddrs {
        OwnAddrs {
            read,
            refresh,
            cached: Mutex::new((Instant::now(), Arc::new(read()))),
        }
    }

    fn get(&self) -> Arc<Vec<IpAddr>> {
        // Poisoned only if a holder panicked; the list is still usable.
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if cached.0.elapsed() >= self.refresh {
            *cached = (Instant::now(), Arc::new((self.read)()));
        }
        cached.1.clone()
    }
}

#[derive(Debug, Clone)]
pub struct Guard {
    allowed: Vec<IpNet>,
    own: Arc<OwnAddrs>,
}

impl Default for Guard {
    /// Nothing allowed; the real interface addresses.
    fn default() -> Guard {
        Guard::with_own(Vec::new(), interface_addrs, OWN_REFRESH)
    }
}

impl Guard {
    /// Entries were validated at start-up (`Config::validate`).
    pub fn new(allowed: &[String]) -> Result<Guard, String> {
        let allowed = allowed
            .iter()
            .map(|e| parse_network(e))
            .collect::<Result<_, _>>()?;
        Ok(Guard::with_own(allowed, interface_addrs, OWN_REFRESH))
    }

    /// A guard whose own addresses come from `read`.
    pub fn with_own(allowed: Vec<IpNet>, read: ReadOwn, refresh: Duration) -> Guard {
        Guard {
            allowed,
            own: Arc::new(OwnAddrs::new(read, refresh)),
        }
    }

    /// `Err(reason)` when `ip` may not be contacted.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        // `IpNet::contains` is false across families: no widening.
        if self.allowed.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        let refuse = |kind: String| {
            Err(format!(
                "refused to send to {ip} ({kind} address): not in Webhooks.AllowedNetworks"
            ))
        };
        // The class first: "loopback" says more than "own".
        if let Some(kind) = refused_kind(ip) {
            return refuse(kind);
        }
        let own = self.own.get();
        if own.contains(&ip) {
            return refuse("this server's own".into());
        }
        if let IpAddr::V6(v6) = ip {
            if let Some((form, carried)) = embedded_v4(v6) {
                if let Some(c) = carried.iter().find(|c| own.contains(&IpAddr::V4(**c))) {
                    return refuse(format!("{} form of {c}, this server's own", form.name()));
                }
            }
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn nothing() -> Vec<IpAddr> {
        Vec::new()
    }

    fn guard(allowed: &[&str]) -> Guard {
        let allowed = allowed.iter().map(|a| parse_network(a).unwrap()).collect();
        Guard::with_own(allowed, nothing, OWN_REFRESH)
    }

    fn ok(g: &Guard, ip: &str) -> bool {
        g.check(ip.parse().unwrap()).is_ok()
    }

    /// An allowed network opens only addresses of its own family and form
    /// as written: one row per form of a listed IPv4 network.
    #[test]
    fn an_allowed_network_never_widens_to_another_form() {
        let g = guard(&["127.0.0.0/8", "10.0.0.7"]);
        for (ip, allowed) in [
            ("127.0.0.1", true),
            ("127.255.255.255", true),
            ("10.0.0.7", true),
            ("10.0.0.8", false),
            ("::ffff:127.0.0.1", false),
            ("::127.0.0.1", false),
            ("64:ff9b::127.0.0.1", false),
            ("64:ff9b:1::127.0.0.1", false),
            ("2002:7f00:1::", false),
            ("2002:7f00:1::1", false),
            ("2001:0:7f00:1::", false),
            ("2001::80ff:fffe", false), // Teredo client 127.0.0.1 (inverted)
            ("::ffff:10.0.0.7", false),
            ("::1", false),
        ] {
            assert_eq!(ok(&g, ip), allowed, "{ip}");
        }
        // Written in another form, that form is what is allowed.
        let g = guard(&["::ffff:127.0.0.0/104", "2002:7f00::/24"]);
        for (ip, allowed) in [
            ("::ffff:127.0.0.1", true),
            ("2002:7f00:1::", true),
            ("127.0.0.1", false),
            ("64:ff9b::127.0.0.1", false),
        ] {
            assert_eq!(ok(&g, ip), allowed, "{ip}");
        }
    }

    #[test]
    fn an_allowed_network_opens_a_refused_range() {
        let g = guard(&["fd00::/8", "192.0.2.0/24"]);
        for ip in ["fd00::5", "192.0.2.1"] {
            assert!(ok(&g, ip), "{ip} allowed");
        }
        for ip in ["fc00::1", "198.51.100.1", "169.254.169.254"] {
            assert!(!ok(&g, ip), "{ip} still refused");
        }
    }

    fn public_own() -> Vec<IpAddr> {
        vec![
            "8.8.4.4".parse().unwrap(),
            "2606:4700::1111".parse().unwrap(),
        ]
    }

    /// The server's own addresses are refused even when public, directly
    /// and in every translated form; listing them allows them.
    #[test]
    fn the_servers_own_addresses_are_refused_in_every_form() {
        let own = Guard::with_own(Vec::new(), public_own, OWN_REFRESH);
        let none = guard(&[]);
        for ip in [
            "8.8.4.4",
            "2606:4700::1111",
            "::ffff:8.8.4.4",
            "::8.8.4.4",
            "64:ff9b::8.8.4.4",
            "2002:808:404::1",
            "2001:0:808:404::f7f7:f7f7", // Teredo server 8.8.4.4
            "2001:0:808:808::f7f7:fbfb", // Teredo client 8.8.4.4 (inverted)
        ] {
            let err = own.check(ip.parse().unwrap()).unwrap_err();
            assert!(err.contains("own"), "{ip}: {err}");
            assert!(ok(&none, ip), "{ip} is public when it is not ours");
        }
        assert!(ok(&own, "8.8.8.8"));
        let listed = Guard::with_own(vec!["8.8.4.4/32".parse().unwrap()], public_own, OWN_REFRESH);
        assert!(ok(&listed, "8.8.4.4"));
        assert!(
            !ok(&listed, "::ffff:8.8.4.4"),
            "no widening for own addresses either"
        );
    }

    /// The real interface list is what the guard holds, and every address
    /// this host reports is refused (on the test machine the non-loopback
    /// interface is in 192.0.2.0/24).
    #[test]
    fn this_hosts_interface_addresses_are_read_and_refused() {
        let addrs = interface_addrs();
        assert!(addrs.iter().any(IpAddr::is_loopback), "{addrs:?}");
        let g = Guard::new(&[]).unwrap();
        assert_eq!(*g.own.get(), addrs);
        for ip in addrs {
            assert!(g.check(ip).is_err(), "{ip}");
        }
    }

    static READS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

    fn changing() -> Vec<IpAddr> {
        let n = READS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        vec![IpAddr::from([8, 8, 8, n])]
    }

    #[test]
    fn own_addresses_are_read_again_after_the_refresh_interval() {
        use std::sync::atomic::Ordering::SeqCst;
        let fresh = Guard::with_own(Vec::new(), changing, Duration::ZERO);
        let k = READS.load(SeqCst) - 1;
        // Every check reads again: the newest reading is refused, an older
        // one is free.
        assert!(fresh.check(IpAddr::from([8, 8, 8, k + 1])).is_err());
        assert!(fresh.check(IpAddr::from([8, 8, 8, k])).is_ok());
        let kept = Guard::with_own(Vec::new(), changing, Duration::from_secs(3600));
        let m = READS.load(SeqCst) - 1;
        for _ in 0..3 {
            assert!(kept.check(IpAddr::from([8, 8, 8, m])).is_err());
        }
    }

    #[test]
    fn a_refusal_names_the_address_and_why() {
        let err = guard(&[])
            .check("169.254.169.254".parse().unwrap())
            .unwrap_err();
        assert!(
            err.contains("169.254.169.254") && err.contains("metadata"),
            "{err}"
        );
        let err = guard(&[])
            .check("2002:7f00:1::".parse().unwrap())
            .unwrap_err();
        assert!(err.contains("6to4 form of 127.0.0.1, loopback"), "{err}");
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
    async fn resolve_checks_every_address_a_name_resolves_to() {
        let g = guard(&[]);
        let url = Url::parse("http://127.0.0.1:9/hook").unwrap();
        assert!(
            matches!(g.resolve(&url).await, Err(Blocked::Refused(m)) if m.contains("127.0.0.1"))
        );
        let url = Url::parse("http://localhost:9/hook").unwrap();
        assert!(matches!(g.resolve(&url).await, Err(Blocked::Refused(_))));
        // Only IPv4 loopback allowed: `localhost` keeps 127.0.0.1 and drops ::1.
        let v4 = guard(&["127.0.0.0/8"]);
        let pinned = v4.resolve(&url).await.unwrap();
        assert_eq!(pinned.domain.as_deref(), Some("localhost"));
        assert!(!pinned.addrs.is_empty());
        assert!(pinned
            .addrs
            .iter()
            .all(|a| a.port() == 9 && a.ip() == IpAddr::from([127, 0, 0, 1])));
    }
}
