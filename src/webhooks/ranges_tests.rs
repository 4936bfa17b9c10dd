//! One row per refused range: addresses inside it (first, middle, last) must
//! be refused with its kind, addresses just outside must not carry that
//! kind. The tables are written out here again on purpose: dropping a row
//! from the code fails its row here.

use super::*;

fn kind(ip: &str) -> Option<String> {
    refused_kind(ip.parse().unwrap())
}

/// (kind, inside, just outside)
type Row = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
);

fn check_rows(rows: &[Row]) {
    for (want, inside, outside) in rows {
        for ip in *inside {
            assert_eq!(kind(ip).as_deref(), Some(*want), "{ip} is {want}");
        }
        for ip in *outside {
            assert_ne!(kind(ip).as_deref(), Some(*want), "{ip} is not {want}");
        }
    }
}

#[test]
fn ipv4_not_globally_reachable_ranges_are_refused() {
    check_rows(&[
        (
            "\"this network\"",
            &["0.0.0.0", "0.1.2.3", "0.255.255.255"],
            &["1.0.0.0"],
        ),
        (
            "private",
            &["10.0.0.0", "10.1.2.3", "10.255.255.255"],
            &["9.255.255.255", "11.0.0.0"],
        ),
        (
            "shared (CGNAT)",
            &["100.64.0.0", "100.100.100.200", "100.127.255.255"],
            &["100.63.255.255", "100.128.0.0"],
        ),
        (
            "loopback",
            &["127.0.0.0", "127.0.0.1", "127.255.255.255"],
            &["126.255.255.255", "128.0.0.0"],
        ),
        (
            "cloud metadata",
            &["169.254.169.254"],
            &["169.254.169.253", "169.254.169.255"],
        ),
        (
            "link-local",
            &["169.254.0.0", "169.254.1.1", "169.254.255.255"],
            &["169.253.255.255", "169.255.0.0"],
        ),
        (
            "private",
            &["172.16.0.0", "172.20.1.1", "172.31.255.255"],
            &["172.15.255.255", "172.32.0.0"],
        ),
        (
            "IETF protocol assignment",
            &[
                "192.0.0.0",
                "192.0.0.8",
                "192.0.0.170",
                "192.0.0.192",
                "192.0.0.255",
            ],
            &["191.255.255.255", "192.0.1.0", "192.0.0.9", "192.0.0.10"],
        ),
        (
            "documentation (TEST-NET-1)",
            &["192.0.2.0", "192.0.2.2", "192.0.2.255"],
            &["192.0.1.255", "192.0.3.0"],
        ),
        (
            "private",
            &["192.168.0.0", "192.168.1.1", "192.168.255.255"],
            &["192.167.255.255", "192.169.0.0"],
        ),
        (
            "benchmarking",
            &["198.18.0.0", "198.19.1.1", "198.19.255.255"],
            &["198.17.255.255", "198.20.0.0"],
        ),
        (
            "documentation (TEST-NET-2)",
            &["198.51.100.0", "198.51.100.7", "198.51.100.255"],
            &["198.51.99.255", "198.51.101.0"],
        ),
        (
            "documentation (TEST-NET-3)",
            &["203.0.113.0", "203.0.113.9", "203.0.113.255"],
            &["203.0.112.255", "203.0.114.0"],
        ),
        (
            "multicast",
            &["224.0.0.0", "224.0.0.1", "239.255.255.255"],
            &["223.255.255.255", "240.0.0.0"],
        ),
        (
            "reserved",
            &["240.0.0.0", "250.1.2.3", "255.255.255.254"],
            &["239.255.255.255", "255.255.255.255"],
        ),
        (
            "limited broadcast",
            &["255.255.255.255"],
            &["255.255.255.254"],
        ),
    ]);
}

#[test]
fn ipv6_not_globally_reachable_ranges_are_refused() {
    check_rows(&[
        ("unspecified", &["::"], &["::1"]),
        ("loopback", &["::1"], &["::", "::2"]),
        (
            "discard-only",
            &["100::", "100::1", "100::ffff:ffff:ffff:ffff"],
            &["100:0:0:1::", "ff::"],
        ),
        (
            "dummy",
            &["100:0:0:1::", "100:0:0:1:ffff:ffff:ffff:ffff"],
            &["100:0:0:2::"],
        ),
        (
            "benchmarking",
            &["2001:2::", "2001:2:0:ffff::1"],
            &["2001:1:ffff::", "2001:2:1::"],
        ),
        (
            "ORCHID (deprecated)",
            &["2001:10::", "2001:1f:ffff::1"],
            &["2001:f::1", "2001:20::1"],
        ),
        (
            "IETF protocol assignment",
            &["2001:1::4", "2001:5::1", "2001:1ff:ffff::1"],
            &[
                "2001:1::1",
                "2001:1::2",
                "2001:1::3",
                "2001:3::1",
                "2001:4:112::1",
                "2001:20::1",
                "2001:30::1",
                "2001:200::1",
            ],
        ),
        (
            "documentation",
            &[
                "2001:db8::",
                "2001:db8:1::1",
                "2001:db8:ffff:ffff::1",
                "3fff::",
                "3fff:fff:ffff::1",
            ],
            &[
                "2001:db7:ffff::1",
                "2001:db9::",
                "3ffe:ffff::1",
                "3fff:1000::",
            ],
        ),
        (
            "segment routing SID",
            &["5f00::", "5f00:1::1", "5f00:ffff::1"],
            &["5eff:ffff::1", "5f01::"],
        ),
        ("cloud metadata", &["fd00:ec2::254"], &["fd00:ec2::253"]),
        (
            "unique-local",
            &["fc00::", "fd00::2", "fdff:ffff::1"],
            &["fbff:ffff::1", "fe00::"],
        ),
        (
            "link-local",
            &["fe80::", "fe80::fc:ff:fe00:1", "febf:ffff::1"],
            &["fe7f:ffff::1", "fec0::"],
        ),
        (
            "site-local (deprecated)",
            &["fec0::", "feff:ffff::1"],
            &["febf:ffff::1", "ff00::"],
        ),
        (
            "multicast",
            &["ff00::", "ff02::1", "ffff:ffff::1"],
            &["feff:ffff::1"],
        ),
    ]);
}

/// Each translated form carrying a refused IPv4 address is refused, naming
/// the form and the carried address; carrying a public one, it is not.
#[test]
fn translated_forms_are_judged_by_the_ipv4_they_carry() {
    for (ip, form, carried) in [
        ("::ffff:127.0.0.1", "IPv4-mapped", "127.0.0.1, loopback"),
        (
            "::ffff:192.0.2.2",
            "IPv4-mapped",
            "192.0.2.2, documentation",
        ),
        ("::127.0.0.1", "IPv4-compatible", "127.0.0.1, loopback"),
        ("::0.0.0.2", "IPv4-compatible", "0.0.0.2, \"this network\""),
        ("64:ff9b::10.0.0.1", "NAT64", "10.0.0.1, private"),
        (
            "64:ff9b::169.254.169.254",
            "NAT64",
            "169.254.169.254, cloud metadata",
        ),
        // /96 layout, the other layouts read 8.8.8.x.
        (
            "64:ff9b:1:808:8:808:7f00:1",
            "local-use NAT64",
            "127.0.0.1, loopback",
        ),
        // /64 layout: 127.0.0.1 at bits 72–103; the /96 layout reads 1.1.1.1.
        (
            "64:ff9b:1:808:7f:0:101:101",
            "local-use NAT64",
            "127.0.0.1, loopback",
        ),
        // /48 layout: bits 48–63 and 72–87.
        (
            "64:ff9b:1:a9fe:a9:fe00::",
            "local-use NAT64",
            "169.254.169.254, cloud metadata",
        ),
        ("2002:7f00:1::", "6to4", "127.0.0.1, loopback"),
        ("2002:c0a8:101::1", "6to4", "192.168.1.1, private"),
        ("2002:6440:1::", "6to4", "100.64.0.1, shared"),
        ("2001:0:7f00:1::", "Teredo", "127.0.0.1, loopback"), // server
        (
            "2001:0:808:808:0:0:80ff:fffe",
            "Teredo",
            "127.0.0.1, loopback",
        ), // client
        (
            "2001:0:808:808::3f57:fefe",
            "Teredo",
            "192.168.1.1, private",
        ),
    ] {
        let got = kind(ip).unwrap_or_else(|| panic!("{ip} must be refused"));
        assert!(
            got.starts_with(&format!("{form} form of")) && got.contains(carried),
            "{ip}: {got}"
        );
    }
}

#[test]
fn globally_reachable_addresses_and_forms_are_permitted() {
    for ip in [
        "1.1.1.1",
        "8.8.8.8",
        "93.184.216.34",
        "172.32.0.1",
        "100.128.0.1",
        "169.255.0.1",
        "192.0.0.9",
        "192.0.0.10",
        "192.88.99.1",
        "223.255.255.255",
        "2606:2800:220:1:248:1893:25c8:1946",
        "2001:4860:4860::8888",
        "2001:1::1",
        "2001:3::1",
        "2001:4:112::1",
        "2001:20::1",
        "2001:30::1",
        "::ffff:8.8.8.8",
        "::8.8.8.8",
        "64:ff9b::8.8.8.8",
        "64:ff9b:1:808:8:808:808:808",
        "2002:808:808::1",
        "2001:0:808:808::f7f7:f7f7", // Teredo: server and client 8.8.8.8
    ] {
        assert_eq!(kind(ip), None, "{ip} must be permitted");
    }
}

#[test]
fn embedded_addresses_are_found_where_each_form_puts_them() {
    let e = |ip: &str| embedded_v4(ip.parse().unwrap());
    let v4 = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    assert_eq!(
        e("::ffff:1.2.3.4"),
        Some((Form::Mapped, vec![v4("1.2.3.4")]))
    );
    assert_eq!(
        e("::1.2.3.4"),
        Some((Form::Compatible, vec![v4("1.2.3.4")]))
    );
    assert_eq!(
        e("64:ff9b::1.2.3.4"),
        Some((Form::Nat64, vec![v4("1.2.3.4")]))
    );
    assert_eq!(
        e("2002:102:304::"),
        Some((Form::SixToFour, vec![v4("1.2.3.4")]))
    );
    assert_eq!(
        e("2001:0:102:304::fefd:fcfb"),
        Some((Form::Teredo, vec![v4("1.2.3.4"), v4("1.2.3.4")]))
    );
    let (form, layouts) = e("64:ff9b:1:102:3:400:506:708").unwrap();
    assert_eq!(form, Form::LocalNat64);
    assert_eq!(
        layouts,
        [v4("1.2.3.4"), v4("2.3.4.0"), v4("3.4.0.5"), v4("5.6.7.8")],
        "the /48, /56, /64 and /96 layouts"
    );
    assert_eq!(e("::"), None);
    assert_eq!(e("::1"), None);
    assert_eq!(e("2001:db8::1"), None);
}
