//! The client's IP: CIDR sets, trusted proxies and `X-Forwarded-For`, and resource policies.
//!
//! Every address is [`canonical`]ised first, so an IPv4-mapped IPv6 address (`::ffff:192.0.2.1`,
//! what a dual-stack socket reports for an IPv4 client) is treated as the IPv4 address it carries,
//! both when it is looked up and when it is written in a CIDR list.
//!
//! A [`CidrSet`] keeps one prefix trie per address family, built once when the config is loaded;
//! a lookup walks at most 32 (IPv4) or 128 (IPv6) levels, whatever the number of CIDRs.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use http::HeaderMap;
use http::header::HeaderName;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixSet;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The address as the gateway reasons about it: an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`)
/// becomes the IPv4 address `a.b.c.d`; every other address is returned unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Appends the address in its usual text form (`192.0.2.1`, `2001:db8::1`) to `out`. Runs once
/// per forwarded request (`x-forwarded-for`): IPv4 is written digit by digit, because the
/// standard `Display` (which supports padding) cost ~1,300 instructions, 2.8% of a proxied
/// request; IPv6 still goes through `Display`.
pub fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

/// A set of IPv4 and IPv6 CIDRs with longest-prefix lookup.
///
/// Built once (see [`CidrSet::parse`]); [`CidrSet::contains`] costs one walk down a prefix trie,
/// at most 32 or 128 steps, so it does not grow with the number of CIDRs.
#[derive(Debug, Clone, Default)]
pub struct CidrSet {
    v4: PrefixSet<Ipv4Net>,
    v6: PrefixSet<Ipv6Net>,
}

impl CidrSet {
    /// Parses a config list: `a.b.c.d/n`, `x::/n`, or a single address (meaning /32 or /128).
    /// Surrounding whitespace is ignored. IPv4-mapped IPv6 entries (`::ffff:192.0.2.0/120`) are
    /// stored as the IPv4 network they describe.
    ///
    /// # Errors
    /// The index of the first bad item and a message naming it: not an address or CIDR, or a
    /// CIDR with host bits set (`192.0.2.1/24`), which is almost always a typo for a narrower
    /// or a wider network.
    pub fn parse(items: &[String]) -> Result<CidrSet, (usize, String)> {
        let mut set = CidrSet::default();
        for (i, item) in items.iter().enumerate() {
            let net = parse_cidr(item.trim()).map_err(|m| (i, m))?;
            set.insert(net);
        }
        Ok(set)
    }

    fn insert(&mut self, net: IpNet) {
        match canonical_net(net) {
            IpNet::V4(n) => {
                self.v4.insert(n);
            }
            IpNet::V6(n) => {
                self.v6.insert(n);
            }
        }
    }

    /// Whether `ip` (canonicalised first) lies in any CIDR of the set.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.longest_match(ip).is_some()
    }

    /// The most specific CIDR of the set that holds `ip` (canonicalised first).
    fn longest_match(&self, ip: IpAddr) -> Option<IpNet> {
        match canonical(ip) {
            IpAddr::V4(a) => self.v4.get_lpm(&Ipv4Net::from(a)).map(IpNet::V4),
            IpAddr::V6(a) => self.v6.get_lpm(&Ipv6Net::from(a)).map(IpNet::V6),
        }
    }

    /// The number of distinct CIDRs in the set.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Whether the set holds no CIDR at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One config item as a network.
fn parse_cidr(item: &str) -> Result<IpNet, String> {
    if item.contains('/') {
        let net: IpNet = item
            .parse()
            .map_err(|_| format!("`{item}` is not a CIDR (expected a.b.c.d/n or x::/n)"))?;
        if net.trunc() != net {
            return Err(format!(
                "`{item}` has host bits set; the network is {}",
                net.trunc()
            ));
        }
        Ok(net)
    } else {
        let ip: IpAddr = item
            .parse()
            .map_err(|_| format!("`{item}` is not an IP address or CIDR"))?;
        Ok(IpNet::from(ip))
    }
}

/// An IPv4-mapped IPv6 network (inside `::ffff:0:0/96`) as the IPv4 network it describes.
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(n) = net
        && n.prefix_len() >= 96
        && let Some(v4) = n.addr().to_ipv4_mapped()
        && let Ok(v4net) = Ipv4Net::new(v4, n.prefix_len() - 96)
    {
        return IpNet::V4(v4net);
    }
    net
}

/// The client's IP for a request that arrived from `peer`.
///
/// When `peer` is not a trusted proxy, it is the client (any `X-Forwarded-For` it sent is its
/// own claim and is ignored). When it is, the `X-Forwarded-For` entries (every header line,
/// comma-separated, read as one list of raw bytes) are walked from the right, skipping trusted
/// proxies; the first untrusted address is the client. An entry that is not an address (bytes
/// that are not text included) stops the walk and the last trusted hop seen is returned:
/// nothing left of garbage is believed, and garbage never hides an address a trusted proxy
/// appended to its right. When every entry is a trusted proxy, or there is none, the
/// (canonical) peer is returned. Entries may carry a port (`192.0.2.1:5678`,
/// `[2001:db8::1]:80`) or brackets (`[2001:db8::1]`).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &CidrSet) -> IpAddr {
    let peer = canonical(peer);
    if trusted.is_empty() || !trusted.contains(peer) {
        return peer;
    }
    let mut last_trusted = peer;
    for value in headers.get_all(X_FORWARDED_FOR).iter().rev() {
        for entry in value.as_bytes().rsplit(|&b| b == b',') {
            let entry = entry.trim_ascii();
            if entry.is_empty() {
                continue;
            }
            let Some(ip) = parse_forwarded_entry(entry) else {
                return last_trusted;
            };
            if !trusted.contains(ip) {
                return ip;
            }
            last_trusted = ip;
        }
    }
    peer
}

/// Every `X-Forwarded-For` entry in order (all header lines, comma-separated), trimmed, empty
/// ones skipped, as raw bytes.
pub fn forwarded_entries(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|e| !e.is_empty())
}

/// One `X-Forwarded-For` entry as a canonical address: bare, with a port, or in brackets.
/// `None` for anything else, bytes that are not text included.
pub fn parse_forwarded_entry(entry: &[u8]) -> Option<IpAddr> {
    let entry = std::str::from_utf8(entry).ok()?;
    let ip = if let Ok(ip) = entry.parse::<IpAddr>() {
        ip
    } else if let Ok(sa) = entry.parse::<SocketAddr>() {
        sa.ip()
    } else {
        let inner = entry.strip_prefix('[')?.strip_suffix(']')?;
        IpAddr::V6(inner.parse::<Ipv6Addr>().ok()?)
    };
    Some(canonical(ip))
}

/// A resource policy on the client IP: an optional allow list and a deny list.
///
/// An explicit deny wins; with an allow list, anything outside it is refused; without one,
/// everything not denied is permitted.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    allow: Option<CidrSet>,
    deny: CidrSet,
}

impl Policy {
    /// A policy from its lists. `allow: None` permits everything not denied; `Some` of an empty
    /// set permits nothing.
    pub fn new(allow: Option<CidrSet>, deny: CidrSet) -> Policy {
        Policy { allow, deny }
    }

    /// Whether `ip` (canonicalised first) may call.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        if self.deny.contains(ip) {
            return false;
        }
        self.allow.as_ref().is_none_or(|a| a.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    /// An `X-Forwarded-For` entry: a trusted proxy's address (10.0.0.0/8), an untrusted one
    /// (198.51.100.0/24), or garbage, non-text bytes included.
    fn entry() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            (0u8..4).prop_map(|i| format!("10.0.0.{i}").into_bytes()),
            (0u8..4).prop_map(|i| format!("198.51.100.{i}").into_bytes()),
            (0u8..4).prop_map(|i| format!("[2001:db8::{i}]:80").into_bytes()),
            proptest::collection::vec(
                prop_oneof![
                    Just(b'x'),
                    Just(0xffu8),
                    Just(0x80u8),
                    Just(b' '),
                    Just(b'.')
                ],
                1..4
            ),
        ]
    }

    fn walk(lines: &[Vec<Vec<u8>>]) -> IpAddr {
        let trusted = CidrSet::parse(&["10.0.0.0/8".to_string()]).unwrap();
        let mut h = HeaderMap::new();
        for line in lines {
            let v = line.join(&b","[..]);
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                h.append(X_FORWARDED_FOR, v);
            }
        }
        client_ip("10.0.0.9".parse().unwrap(), &h, &trusted)
    }

    proptest! {
        /// Whatever a client writes, an untrusted address a trusted proxy appends to its right
        /// is the client: nothing to its left can hide it.
        #[test]
        fn garbage_never_hides_the_address_a_proxy_appended(
            lines in proptest::collection::vec(proptest::collection::vec(entry(), 0..4), 0..3),
            last in 0u8..4,
            proxies in 0usize..3,
        ) {
            let mut lines = lines;
            let mut appended = vec![format!("198.51.100.{last}").into_bytes()];
            appended.extend((0..proxies).map(|i| format!("10.0.1.{i}").into_bytes()));
            lines.push(appended);
            prop_assert_eq!(walk(&lines), IpAddr::from([198, 51, 100, last]));
        }

        /// The client is always the peer or an address some entry names: never made up.
        #[test]
        fn the_client_is_the_peer_or_a_listed_address(
            lines in proptest::collection::vec(proptest::collection::vec(entry(), 0..5), 0..3),
        ) {
            let ip = walk(&lines);
            let listed = lines
                .iter()
                .flatten()
                .filter_map(|e| parse_forwarded_entry(e.trim_ascii()))
                .any(|e| e == ip);
            prop_assert!(listed || ip == IpAddr::from([10, 0, 0, 9]), "{ip}");
        }
    }

    #[test]
    fn push_ip_writes_what_display_writes() {
        let mut cases: Vec<IpAddr> = ["0.0.0.0", "255.255.255.255", "10.0.100.9", "192.168.1.20"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        cases.extend((0..=255u8).map(|o| IpAddr::from([o, 255 - o, o / 3, o.wrapping_mul(7)])));
        cases.extend(
            ["::1", "2001:db8::8a2e:370:7334", "::ffff:1.2.3.4"]
                .map(|s| s.parse::<IpAddr>().unwrap()),
        );
        for ip in cases {
            let mut out = String::from("x, ");
            push_ip(&mut out, ip);
            assert_eq!(out, format!("x, {ip}"));
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn set(items: &[&str]) -> CidrSet {
        let v: Vec<String> = items.iter().map(|s| s.to_string()).collect();
        CidrSet::parse(&v).unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn canonical_maps_ipv4_mapped_ipv6_only() {
        assert_eq!(canonical(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(canonical(ip("192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(canonical(ip("2001:db8::1")), ip("2001:db8::1"));
        // IPv4-compatible (deprecated) and loopback are not mapped addresses.
        assert_eq!(canonical(ip("::1")), ip("::1"));
        assert_eq!(canonical(ip("::192.0.2.1")), ip("::192.0.2.1"));
    }

    #[test]
    fn parse_accepts_cidrs_and_single_addresses() {
        let s = set(&[
            "10.0.0.0/8",
            " 192.0.2.7 ",
            "2001:db8::/32",
            "2001:db8:ffff::1",
            "0.0.0.0/0",
        ]);
        assert_eq!(s.len(), 5);
        assert!(!s.is_empty());
        assert!(s.contains(ip("192.0.2.7")));
        assert!(s.contains(ip("2001:db8:ffff::1")));
        assert!(s.contains(ip("2001:db8:1::1")));
        assert!(!s.contains(ip("2001:db9::1")));
        let single = set(&["192.0.2.7", "2001:db8::1"]);
        assert!(single.contains(ip("192.0.2.7")));
        assert!(!single.contains(ip("192.0.2.6")));
        assert!(!single.contains(ip("192.0.2.8")));
        assert!(single.contains(ip("2001:db8::1")));
        assert!(!single.contains(ip("2001:db8::2")));
    }

    #[test]
    fn parse_errors_name_the_item_and_its_index() {
        let cases: &[(&[&str], usize, &str)] = &[
            (&["10.0.0.0/8", "192.0.2.1/24"], 1, "192.0.2.0/24"),
            (&["2001:db8::1/32"], 0, "2001:db8::/32"),
            (&["10.0.0.0/8", "10.0.0.0/8", "nope"], 2, "`nope`"),
            (&["10.0.0.0/33"], 0, "`10.0.0.0/33`"),
            (&["2001:db8::/129"], 0, "`2001:db8::/129`"),
            (&["10.0.0/8"], 0, "`10.0.0/8`"),
            (&["10.0.0.0/"], 0, "`10.0.0.0/`"),
            (&[""], 0, "``"),
            (&["fe80::1%eth0"], 0, "fe80::1%eth0"),
        ];
        for (items, index, needle) in cases {
            let v: Vec<String> = items.iter().map(|s| s.to_string()).collect();
            let (i, msg) = CidrSet::parse(&v).unwrap_err();
            assert_eq!(i, *index, "{items:?}");
            assert!(msg.contains(needle), "{items:?}: {msg}");
        }
        let (_, msg) = CidrSet::parse(&["192.0.2.1/24".to_string()]).unwrap_err();
        assert!(
            msg.contains("192.0.2.1/24") && msg.contains("host bits"),
            "{msg}"
        );
    }

    #[test]
    fn duplicates_count_once_and_empty_set_holds_nothing() {
        assert_eq!(set(&["10.0.0.0/8", "10.0.0.0/8"]).len(), 1);
        let empty = CidrSet::default();
        assert!(empty.is_empty());
        assert_eq!(empty.len(), 0);
        assert!(!empty.contains(ip("0.0.0.0")));
        assert!(!empty.contains(ip("::")));
        assert!(CidrSet::parse(&[]).unwrap().is_empty());
    }

    #[test]
    fn families_do_not_leak_into_each_other() {
        let v4all = set(&["0.0.0.0/0"]);
        assert!(v4all.contains(ip("255.255.255.255")));
        assert!(!v4all.contains(ip("2001:db8::1")));
        assert!(!v4all.contains(ip("::")));
        let v6all = set(&["::/0"]);
        assert!(v6all.contains(ip("2001:db8::1")));
        assert!(!v6all.contains(ip("192.0.2.1")));
        // A mapped address is IPv4, so `::/0` does not hold it.
        assert!(!v6all.contains(ip("::ffff:192.0.2.1")));
    }

    #[test]
    fn mapped_addresses_count_as_ipv4_in_lookups_and_lists() {
        let s = set(&["192.0.2.0/24"]);
        assert!(s.contains(ip("::ffff:192.0.2.99")));
        assert!(!s.contains(ip("::ffff:198.51.100.1")));
        let mapped = set(&["::ffff:198.51.100.0/120", "::ffff:203.0.113.9"]);
        assert!(mapped.contains(ip("198.51.100.200")));
        assert!(mapped.contains(ip("::ffff:198.51.100.200")));
        assert!(!mapped.contains(ip("198.51.101.0")));
        assert!(mapped.contains(ip("203.0.113.9")));
        assert_eq!(
            mapped.longest_match(ip("203.0.113.9")),
            Some("203.0.113.9/32".parse().unwrap())
        );
        let all_mapped = set(&["::ffff:0:0/96"]);
        assert!(all_mapped.contains(ip("8.8.8.8")));
        assert!(!all_mapped.contains(ip("2001:db8::1")));
    }

    #[test]
    fn lookup_is_longest_prefix_match() {
        let s = set(&[
            "10.0.0.0/8",
            "10.1.0.0/16",
            "10.1.2.0/24",
            "2001:db8::/32",
            "2001:db8:1::/48",
        ]);
        let lpm = |a: &str| s.longest_match(ip(a)).map(|n| n.to_string());
        assert_eq!(lpm("10.1.2.3").as_deref(), Some("10.1.2.0/24"));
        assert_eq!(lpm("10.1.3.3").as_deref(), Some("10.1.0.0/16"));
        assert_eq!(lpm("10.2.0.0").as_deref(), Some("10.0.0.0/8"));
        assert_eq!(lpm("10.255.255.255").as_deref(), Some("10.0.0.0/8"));
        assert_eq!(lpm("11.0.0.0"), None);
        assert_eq!(lpm("9.255.255.255"), None);
        assert_eq!(lpm("2001:db8:1::5").as_deref(), Some("2001:db8:1::/48"));
        assert_eq!(lpm("2001:db8:2::5").as_deref(), Some("2001:db8::/32"));
        assert_eq!(lpm("2001:db9::"), None);
        // Network boundaries.
        let b = set(&["192.0.2.64/26"]);
        assert!(!b.contains(ip("192.0.2.63")));
        assert!(b.contains(ip("192.0.2.64")));
        assert!(b.contains(ip("192.0.2.127")));
        assert!(!b.contains(ip("192.0.2.128")));
    }

    #[test]
    fn ten_thousand_cidrs_are_built_and_queried() {
        let mut items = Vec::with_capacity(10_000);
        for i in 0..5_000u32 {
            // 10.0.0.0/24 .. 10.19.135.0/24
            items.push(format!("10.{}.{}.0/24", i / 256, i % 256));
        }
        for i in 0..5_000u32 {
            items.push(format!("2001:db8:{:x}::/48", i));
        }
        let s = CidrSet::parse(&items).unwrap();
        assert_eq!(s.len(), 10_000);
        for i in (0..5_000u32).step_by(97) {
            assert!(s.contains(ip(&format!("10.{}.{}.77", i / 256, i % 256))));
            assert!(s.contains(ip(&format!("2001:db8:{:x}:ffff::1", i))));
        }
        assert!(s.contains(ip("10.19.135.255")));
        assert!(!s.contains(ip("10.19.136.0")));
        assert!(!s.contains(ip("11.0.0.1")));
        assert!(!s.contains(ip("2001:db8:1388::1")));
        assert!(s.contains(ip("2001:db8:1387::1")));
        assert!(!s.contains(ip("2001:db9::1")));
        let p = Policy::new(None, s);
        assert!(!p.permits(ip("10.3.4.5")));
        assert!(!p.permits(ip("::ffff:10.3.4.5")));
        assert!(p.permits(ip("10.200.0.1")));
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let trusted = set(&["10.0.0.0/8"]);
        let h = xff(&["198.51.100.7, 10.0.0.1"]);
        assert_eq!(
            client_ip(ip("203.0.113.9"), &h, &trusted),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), &h, &CidrSet::default()),
            ip("127.0.0.1")
        );
        assert_eq!(
            client_ip(ip("::ffff:203.0.113.9"), &h, &trusted),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn trusted_peer_yields_rightmost_untrusted_entry() {
        let trusted = set(&["10.0.0.0/8", "127.0.0.1"]);
        let peer = ip("127.0.0.1");
        let h = xff(&["203.0.113.9, 198.51.100.7"]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("198.51.100.7"));
        let h = xff(&["198.51.100.7, 203.0.113.9"]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("203.0.113.9"));
        // Several trusted hops are skipped, over several header lines.
        let h = xff(&[
            "1.1.1.1, 198.51.100.7, 10.1.1.1",
            "10.2.2.2",
            "10.3.3.3,10.4.4.4",
        ]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("198.51.100.7"));
        // A mapped peer is trusted as its IPv4 address; mapped entries count as IPv4.
        let h = xff(&["::ffff:198.51.100.7, ::ffff:10.0.0.9"]);
        assert_eq!(
            client_ip(ip("::ffff:127.0.0.1"), &h, &trusted),
            ip("198.51.100.7")
        );
        // IPv6 entries.
        let h = xff(&["2001:db8::7"]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("2001:db8::7"));
    }

    #[test]
    fn all_trusted_or_no_entries_gives_the_peer() {
        let trusted = set(&["10.0.0.0/8", "127.0.0.1"]);
        let peer = ip("127.0.0.1");
        assert_eq!(client_ip(peer, &HeaderMap::new(), &trusted), peer);
        assert_eq!(client_ip(peer, &xff(&[""]), &trusted), peer);
        assert_eq!(client_ip(peer, &xff(&[" , ,"]), &trusted), peer);
        assert_eq!(
            client_ip(peer, &xff(&["10.0.0.1, 10.0.0.2"]), &trusted),
            peer
        );
        // Empty entries are skipped, not taken for garbage.
        assert_eq!(
            client_ip(peer, &xff(&["198.51.100.7,, 10.0.0.1,"]), &trusted),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_trusted_hop() {
        let trusted = set(&["10.0.0.0/8", "127.0.0.1"]);
        let peer = ip("127.0.0.1");
        let h = xff(&["198.51.100.7, garbage, 10.0.0.5"]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("10.0.0.5"));
        let h = xff(&["198.51.100.7, unknown"]);
        assert_eq!(client_ip(peer, &h, &trusted), peer);
        let h = xff(&["198.51.100.7", "999.1.1.1", "10.0.0.6"]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("10.0.0.6"));
        // An untrusted entry right of the garbage is still the client.
        let h = xff(&["garbage, 203.0.113.9, 10.0.0.5"]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("203.0.113.9"));
        // Non-UTF-8 header values are garbage too.
        let mut h = xff(&["198.51.100.7"]);
        h.append(
            X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"\xff10.0.0.1").unwrap(),
        );
        assert_eq!(client_ip(peer, &h, &trusted), peer);
        let h = xff(&["198.51.100.7, fe80::1%eth0"]);
        assert_eq!(client_ip(peer, &h, &trusted), peer);
    }

    #[test]
    fn entries_with_ports_and_brackets_are_accepted() {
        let trusted = set(&["10.0.0.0/8", "127.0.0.1"]);
        let peer = ip("127.0.0.1");
        let cases = [
            ("198.51.100.7:5678", "198.51.100.7"),
            ("[2001:db8::1]:80", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("203.0.113.9, 10.0.0.1:443", "203.0.113.9"),
            ("203.0.113.9:1, [::ffff:10.0.0.1]:443", "203.0.113.9"),
        ];
        for (v, want) in cases {
            assert_eq!(client_ip(peer, &xff(&[v]), &trusted), ip(want), "{v}");
        }
    }

    #[test]
    fn policy_deny_wins_and_allow_list_is_exclusive() {
        let p = Policy::new(
            Some(set(&["192.0.2.0/24", "2001:db8::/32"])),
            set(&["192.0.2.66", "2001:db8:bad::/48"]),
        );
        assert!(p.permits(ip("192.0.2.1")));
        assert!(p.permits(ip("::ffff:192.0.2.1")));
        assert!(!p.permits(ip("192.0.2.66")));
        assert!(!p.permits(ip("::ffff:192.0.2.66")));
        assert!(!p.permits(ip("198.51.100.1")));
        assert!(p.permits(ip("2001:db8::1")));
        assert!(!p.permits(ip("2001:db8:bad::1")));
        assert!(!p.permits(ip("2001:db9::1")));

        let deny_only = Policy::new(None, set(&["203.0.113.0/24"]));
        assert!(deny_only.permits(ip("198.51.100.1")));
        assert!(deny_only.permits(ip("2001:db8::1")));
        assert!(!deny_only.permits(ip("203.0.113.200")));

        let nothing = Policy::new(Some(CidrSet::default()), CidrSet::default());
        assert!(!nothing.permits(ip("192.0.2.1")));
        assert!(Policy::default().permits(ip("192.0.2.1")));
        // Deny of a wider network wins over allow of a narrower one.
        let wide_deny = Policy::new(Some(set(&["10.1.2.0/24"])), set(&["10.0.0.0/8"]));
        assert!(!wide_deny.permits(ip("10.1.2.3")));
    }
}
