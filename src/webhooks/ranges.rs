//! Which addresses are not globally reachable (SPEC §7.2, ADR 0024): the
//! "Globally Reachable = False" rows of the IANA IPv4 and IPv6
//! special-purpose address registries, multicast, and the IPv6 forms that
//! carry an IPv4 address (judged by that address). One table per family;
//! the first matching row names the kind.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len)
}

#[allow(clippy::too_many_arguments)]
const fn v6(s: [u16; 8], len: u8) -> Ipv6Net {
    Ipv6Net::new_assert(
        Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]),
        len,
    )
}

/// Globally reachable rows inside a refused IPv4 block (192.0.0.0/24).
const V4_REACHABLE: &[Ipv4Net] = &[
    v4(192, 0, 0, 9, 32),  // PCP anycast (RFC 7723)
    v4(192, 0, 0, 10, 32), // TURN anycast (RFC 8155)
];

/// Refused IPv4 blocks, most specific first.
const V4_REFUSED: &[(Ipv4Net, &str)] = &[
    (v4(0, 0, 0, 0, 8), "\"this network\""),
    (v4(10, 0, 0, 0, 8), "private"),
    (v4(100, 64, 0, 0, 10), "shared (CGNAT)"),
    (v4(127, 0, 0, 0, 8), "loopback"),
    (v4(169, 254, 169, 254, 32), "cloud metadata"),
    (v4(169, 254, 0, 0, 16), "link-local"),
    (v4(172, 16, 0, 0, 12), "private"),
    (v4(192, 0, 0, 0, 24), "IETF protocol assignment"),
    (v4(192, 0, 2, 0, 24), "documentation (TEST-NET-1)"),
    (v4(192, 168, 0, 0, 16), "private"),
    (v4(198, 18, 0, 0, 15), "benchmarking"),
    (v4(198, 51, 100, 0, 24), "documentation (TEST-NET-2)"),
    (v4(203, 0, 113, 0, 24), "documentation (TEST-NET-3)"),
    (v4(224, 0, 0, 0, 4), "multicast"),
    (v4(255, 255, 255, 255, 32), "limited broadcast"),
    (v4(240, 0, 0, 0, 4), "reserved"),
];

/// Globally reachable rows inside the refused 2001::/23.
const V6_REACHABLE: &[Ipv6Net] = &[
    v6([0x2001, 1, 0, 0, 0, 0, 0, 1], 128),    // PCP anycast
    v6([0x2001, 1, 0, 0, 0, 0, 0, 2], 128),    // TURN anycast
    v6([0x2001, 1, 0, 0, 0, 0, 0, 3], 128),    // DNS-SD SRP anycast
    v6([0x2001, 3, 0, 0, 0, 0, 0, 0], 32),     // AMT
    v6([0x2001, 4, 0x112, 0, 0, 0, 0, 0], 48), // AS112-v6
    v6([0x2001, 0x20, 0, 0, 0, 0, 0, 0], 28),  // ORCHIDv2
    v6([0x2001, 0x30, 0, 0, 0, 0, 0, 0], 28),  // Drone Remote ID
];

/// Refused IPv6 blocks, most specific first. The translated forms are
/// judged before this table (see [`embedded_v4`]).
const V6_REFUSED: &[(Ipv6Net, &str)] = &[
    (v6([0, 0, 0, 0, 0, 0, 0, 0], 128), "unspecified"),
    (v6([0, 0, 0, 0, 0, 0, 0, 1], 128), "loopback"),
    (v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64), "discard-only"),
    (v6([0x100, 0, 0, 1, 0, 0, 0, 0], 64), "dummy"),
    (v6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48), "benchmarking"),
    (
        v6([0x2001, 0x10, 0, 0, 0, 0, 0, 0], 28),
        "ORCHID (deprecated)",
    ),
    (
        v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23),
        "IETF protocol assignment",
    ),
    (v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), "documentation"),
    (v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20), "documentation"),
    (v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16), "segment routing SID"),
    (
        v6([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254], 128),
        "cloud metadata",
    ),
    (v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7), "unique-local"),
    (v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), "link-local"),
    (
        v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),
        "site-local (deprecated)",
    ),
    (v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "multicast"),
];

/// The IPv6 forms that carry IPv4 addresses, and how to find them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `::ffff:0:0/96`, the IPv4 address in the last 32 bits.
    Mapped,
    /// `::/96` (deprecated), the last 32 bits.
    Compatible,
    /// `64:ff9b::/96`, the last 32 bits (RFC 6052).
    Nat64,
    /// `64:ff9b:1::/48` (RFC 8215): the operator picks the RFC 6052 layout
    /// (prefix /48, /56, /64 or /96), so every layout's IPv4 is judged.
    LocalNat64,
    /// `2002::/16`, bits 16–47.
    SixToFour,
    /// `2001::/32`: the server at bits 32–63, the client as the inverted
    /// last 32 bits.
    Teredo,
}

impl Form {
    pub fn name(self) -> &'static str {
        match self {
            Form::Mapped => "IPv4-mapped",
            Form::Compatible => "IPv4-compatible",
            Form::Nat64 => "NAT64",
            Form::LocalNat64 => "local-use NAT64",
            Form::SixToFour => "6to4",
            Form::Teredo => "Teredo",
        }
    }
}

/// The form of `ip` and the IPv4 addresses it carries, `None` for an
/// address of no translated form.
pub fn embedded_v4(ip: Ipv6Addr) -> Option<(Form, Vec<Ipv4Addr>)> {
    let bits = u128::from(ip);
    let at = |shift: u32| Ipv4Addr::from((bits >> shift) as u32);
    let s = ip.segments();
    if ip.is_unspecified() || ip.is_loopback() {
        return None; // ::/128 and ::1/128 are rows of their own
    }
    Some(match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => (Form::Mapped, vec![at(0)]),
        [0, 0, 0, 0, 0, 0, _, _] => (Form::Compatible, vec![at(0)]),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => (Form::Nat64, vec![at(0)]),
        [0x64, 0xff9b, 1, ..] => {
            // RFC 6052 §2.2: the IPv4 address is split around bits 64–71.
            let split = |hi_shift: u32, hi_bits: u32, lo_shift: u32| {
                let hi = ((bits >> hi_shift) as u32) & ((1u32 << hi_bits) - 1);
                let lo_bits = 32 - hi_bits;
                let lo = ((bits >> lo_shift) as u32) & ((1u32 << lo_bits) - 1);
                Ipv4Addr::from((hi << lo_bits) | lo)
            };
            let layouts = vec![
                split(64, 16, 40), // /48: bits 48–63, then 72–87
                split(64, 8, 32),  // /56: bits 56–63, then 72–95
                at(24),            // /64: bits 72–103
                at(0),             // /96: bits 96–127
            ];
            (Form::LocalNat64, layouts)
        }
        [0x2002, ..] => (Form::SixToFour, vec![at(80)]),
        [0x2001, 0, ..] => (Form::Teredo, vec![at(64), Ipv4Addr::from(!(bits as u32))]),
        _ => return None,
    })
}

/// Why `ip` is refused by class, `None` when it is globally reachable.
/// Translated forms are judged by the IPv4 addresses they carry.
pub fn refused_kind(ip: IpAddr) -> Option<String> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4).map(str::to_owned),
        IpAddr::V6(v6) => {
            if let Some((form, carried)) = embedded_v4(v6) {
                return carried.iter().find_map(|c| {
                    refused_v4(*c).map(|kind| format!("{} form of {c}, {kind}", form.name()))
                });
            }
            refused_v6(v6).map(str::to_owned)
        }
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    if V4_REACHABLE.iter().any(|n| n.contains(&ip)) {
        return None;
    }
    V4_REFUSED
        .iter()
        .find(|(n, _)| n.contains(&ip))
        .map(|(_, kind)| *kind)
}

fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if V6_REACHABLE.iter().any(|n| n.contains(&ip)) {
        return None;
    }
    V6_REFUSED
        .iter()
        .find(|(n, _)| n.contains(&ip))
        .map(|(_, kind)| *kind)
}

#[cfg(test)]
#[path = "ranges_tests.rs"]
mod tests;
