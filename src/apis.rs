//! Which API serves a request: host names (exact, `*.` wildcards, or the default API for every
//! host no API claims), then the longest matching base path under that host. Owns the spelling
//! rules of host names and base paths; knows APIs only by index.
//!
//! Selection never falls through: once a host picks its group (exact name over the longest
//! matching wildcard over the default group), only that group's base paths are tried, so a
//! request for a claimed host can never reach the default API's routes by missing a base path.

use std::borrow::Cow;

/// Longest host name compared (DNS allows 253 octets); a longer `Host` selects no claimed API.
pub const MAX_HOST_LEN: usize = 253;

/// A host name as configured: exact, or a `*.suffix` wildcard. Both lower-case ASCII (IDNA
/// A-labels), without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// `api.example.com`
    Exact(Box<str>),
    /// `*.example.com`, kept as `.example.com`: any name ending in it, one label or more.
    Wildcard(Box<str>),
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(s) => write!(f, "*{s}"),
        }
    }
}

impl HostPattern {
    /// Parses a configured host. Refuses a port, a wildcard that is not one leading `*.`, and
    /// names IDNA cannot turn into ASCII; Unicode names become their A-label form.
    pub fn parse(s: &str) -> Result<HostPattern, String> {
        let (wild, name) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        if name.contains('*') {
            return Err(format!(
                "host {s:?}: a wildcard is one leading `*.` (as in `*.example.com`)"
            ));
        }
        if name.contains(':') || name.contains('/') {
            return Err(format!(
                "host {s:?}: write the name only, without scheme, port or path"
            ));
        }
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() {
            return Err(format!("host {s:?} is empty"));
        }
        let ascii = idna::domain_to_ascii(name)
            .map_err(|_| format!("host {s:?} is not a valid domain name"))?;
        if ascii.is_empty()
            || ascii.len() > MAX_HOST_LEN
            || ascii.split('.').any(str::is_empty)
            || !ascii
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            return Err(format!("host {s:?} is not a valid domain name"));
        }
        Ok(if wild {
            HostPattern::Wildcard(format!(".{ascii}").into())
        } else {
            HostPattern::Exact(ascii.into())
        })
    }
}

/// Parses a configured base path: `/orders`, `/v1/orders`; `/` or empty for the root. Segments
/// are made of unreserved characters only (`A-Z a-z 0-9 - . _ ~`, no dot segments): those are
/// spelled the same in a request's canonical path and its match form, so the base path takes
/// the same bytes of both. Returns it without a trailing `/` (the root is the empty string).
pub fn parse_base_path(s: &str) -> Result<Box<str>, String> {
    if s.is_empty() || s == "/" {
        return Ok("".into());
    }
    if !s.starts_with('/') {
        return Err(format!("base path {s:?} must start with /"));
    }
    let trimmed = s.strip_suffix('/').unwrap_or(s);
    for seg in trimmed[1..].split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(format!("base path {s:?} has an empty or dot segment"));
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
        {
            return Err(format!(
                "base path {s:?}: segments are letters, digits, `-`, `.`, `_` and `~` only"
            ));
        }
    }
    Ok(trimmed.into())
}

/// A `Host` (or authority) that is not a host name or IP literal with an optional port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadHost;

/// A byte a host name may hold: letters, digits, `-`, `.`, `_` (DNS labels, and the names
/// service discovery uses). Userinfo (`@`), escapes and spaces are not.
const fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'
}

/// Per byte value: 1 if a host name may hold it, 3 if it is also upper case, 0 if not allowed.
const HOST_BYTES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = if b.is_ascii_uppercase() {
            3
        } else if is_name_byte(b) {
            1
        } else {
            0
        };
        i += 1;
    }
    table
};

/// The host a request names (the bytes of its authority or `Host` header), without the port and
/// one trailing dot, lower-case: borrowed when it is already (the common case, no copy), else
/// lower-cased into a new buffer. `Ok(None)` for an empty value (the default group). Refuses
/// what is neither a host name nor a bracketed IPv6 literal, with an optional numeric port:
/// userinfo (`user@host`), escapes, non-ASCII and names longer than DNS allows (RFC 9112 3.2:
/// an invalid `Host` is a 400).
pub fn request_host(raw: &[u8]) -> Result<Option<Cow<'_, [u8]>>, BadHost> {
    match split_host(raw)? {
        Some(name) => normalize(name).map(Some),
        None => Ok(None),
    }
}

/// The name in a host value: without its port (which must be numeric) and one trailing dot; a
/// bracketed IPv6 literal is checked whole. `None` for an empty value.
fn split_host(raw: &[u8]) -> Result<Option<&[u8]>, BadHost> {
    if raw.is_empty() {
        return Ok(None);
    }
    let (name, port) = if raw[0] == b'[' {
        // An IPv6 literal: `[::1]:8080` names `[::1]`.
        let end = raw.iter().position(|&b| b == b']').ok_or(BadHost)?;
        if !raw[1..end]
            .iter()
            .all(|b| b.is_ascii_hexdigit() || *b == b':' || *b == b'.')
        {
            return Err(BadHost);
        }
        (&raw[..=end], &raw[end + 1..])
    } else {
        match raw.iter().rposition(|&b| b == b':') {
            Some(i) => (&raw[..i], &raw[i..]),
            None => (raw, &b""[..]),
        }
    };
    if let Some(digits) = port.strip_prefix(b":") {
        if digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
            return Err(BadHost);
        }
    } else if !port.is_empty() {
        return Err(BadHost);
    }
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() || name.len() > MAX_HOST_LEN {
        return Err(BadHost);
    }
    Ok(Some(name))
}

/// A host name from [`split_host`], checked byte by byte and lower-cased (borrowed when it is
/// lower-case already).
fn normalize(name: &[u8]) -> Result<Cow<'_, [u8]>, BadHost> {
    if name[0] == b'[' {
        return Ok(Cow::Borrowed(name));
    }
    // One branch-free pass over a class table: every byte allowed (bit 0 of all of them), any
    // upper case (bit 1 of one of them).
    let (all, any) = name.iter().fold((1u8, 0u8), |(all, any), &b| {
        let class = HOST_BYTES[b as usize];
        (all & class, any | class)
    });
    if all & 1 == 0 {
        return Err(BadHost);
    }
    Ok(if any & 2 != 0 {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    })
}

/// One API under a host: its base path and its index.
#[derive(Debug, Clone)]
struct Mount {
    base: Box<str>,
    api: usize,
}

/// The APIs a host selects, longest base path first.
#[derive(Debug, Clone, Default)]
struct Group {
    mounts: Vec<Mount>,
}

/// A selection: the host's group (compared with the TLS SNI name's, see [`Selector::group`]),
/// and the API with how many leading bytes of the path its base path takes, if one matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selection {
    /// The group the host selected.
    pub group: usize,
    /// The API and the length of its base path, or `None`: no base path of the group matches.
    pub api: Option<(usize, usize)>,
}

/// Two APIs under one host with the same base path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clash {
    /// The host (`*` for the default group).
    pub host: String,
    /// The base path (`/` for the root).
    pub base: String,
    /// The API added first.
    pub first: usize,
    /// The API added second.
    pub second: usize,
}

/// Maps (host, path) to an API. Built once per snapshot; immutable.
#[derive(Debug, Clone)]
pub struct Selector {
    exact: foldhash::HashMap<Box<[u8]>, usize>,
    /// Wildcard suffixes (`.example.com`), longest first.
    wildcards: Vec<(Box<[u8]>, usize)>,
    /// Group 0: every host no pattern claims.
    groups: Vec<Group>,
}

/// The group of every host no API claims.
pub const DEFAULT_GROUP: usize = 0;

impl Selector {
    /// Builds the selector. `apis` gives, per API index, its host patterns (empty: the default
    /// group) and base path. Refuses two APIs with the same base path under the same host.
    pub fn build(apis: &[(&[HostPattern], &str)]) -> Result<Selector, Vec<Clash>> {
        let mut sel = Selector {
            exact: foldhash::HashMap::default(),
            wildcards: Vec::new(),
            groups: vec![Group::default()],
        };
        let mut clashes = Vec::new();
        for (api, (hosts, base)) in apis.iter().enumerate() {
            let mut targets: Vec<(String, usize)> = Vec::new();
            if hosts.is_empty() {
                targets.push(("*".into(), DEFAULT_GROUP));
            }
            for h in hosts.iter() {
                let group = match h {
                    HostPattern::Exact(name) => match sel.exact.get(name.as_bytes()) {
                        Some(&g) => g,
                        None => {
                            sel.groups.push(Group::default());
                            let g = sel.groups.len() - 1;
                            sel.exact.insert(name.as_bytes().into(), g);
                            g
                        }
                    },
                    HostPattern::Wildcard(suffix) => {
                        match sel
                            .wildcards
                            .iter()
                            .find(|(s, _)| **s == *suffix.as_bytes())
                        {
                            Some(&(_, g)) => g,
                            None => {
                                sel.groups.push(Group::default());
                                let g = sel.groups.len() - 1;
                                sel.wildcards.push((suffix.as_bytes().into(), g));
                                g
                            }
                        }
                    }
                };
                if !targets.iter().any(|(_, g)| *g == group) {
                    targets.push((h.to_string(), group));
                }
            }
            for (host, g) in targets {
                let mounts = &mut sel.groups[g].mounts;
                if let Some(m) = mounts.iter().find(|m| &*m.base == *base) {
                    clashes.push(Clash {
                        host,
                        base: if base.is_empty() {
                            "/".into()
                        } else {
                            base.to_string()
                        },
                        first: m.api,
                        second: api,
                    });
                    continue;
                }
                mounts.push(Mount {
                    base: (*base).into(),
                    api,
                });
            }
        }
        if !clashes.is_empty() {
            return Err(clashes);
        }
        for g in &mut sel.groups {
            g.mounts.sort_by_key(|m| std::cmp::Reverse(m.base.len()));
        }
        sel.wildcards.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        Ok(sel)
    }

    /// The group of a (lower-case, port-less) host: its exact name, else the longest wildcard
    /// it ends in, else the default group.
    pub fn group(&self, host: Option<&[u8]>) -> usize {
        let Some(host) = host else {
            return DEFAULT_GROUP;
        };
        if !self.exact.is_empty()
            && let Some(&g) = self.exact.get(host)
        {
            return g;
        }
        self.wildcards
            .iter()
            .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix))
            .map_or(DEFAULT_GROUP, |&(_, g)| g)
    }

    /// Selects the API for a request's raw host value (authority or `Host`) and canonical
    /// `path`, as [`Selector::select`] does after [`request_host`]. The common case, a host sent
    /// exactly as configured, is one hash lookup: a configured name is valid, so only a host
    /// found nowhere as sent is checked and lower-cased. Refuses what [`request_host`] refuses.
    pub fn select_host(&self, raw: &[u8], path: &str) -> Result<Selection, BadHost> {
        let Some(name) = split_host(raw)? else {
            return Ok(self.in_group(DEFAULT_GROUP, path));
        };
        if let Some(&g) = self.exact.get(name) {
            return Ok(self.in_group(g, path));
        }
        let host = normalize(name)?;
        Ok(self.select(Some(&host), path))
    }

    /// Selects the API for `host` and the canonical `path`: the host's group, then the longest
    /// base path that is `path` itself or a prefix of it ending at a `/`.
    pub fn select(&self, host: Option<&[u8]>, path: &str) -> Selection {
        self.in_group(self.group(host), path)
    }

    /// The longest base path of `group` that is `path` itself or a prefix of it ending at `/`.
    fn in_group(&self, group: usize, path: &str) -> Selection {
        let api = self.groups[group]
            .mounts
            .iter()
            .find(|m| {
                m.base.is_empty()
                    || (path.starts_with(&*m.base)
                        && matches!(path.as_bytes().get(m.base.len()), None | Some(b'/')))
            })
            .map(|m| (m.api, m.base.len()));
        Selection { group, api }
    }

    /// Whether only the default group exists with one API at the root: selection is then a
    /// constant and the pipeline may skip it.
    pub fn is_trivial(&self) -> bool {
        self.groups.len() == 1
            && self.groups[0].mounts.len() == 1
            && self.groups[0].mounts[0].base.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(list: &[&str]) -> Vec<HostPattern> {
        list.iter()
            .map(|h| HostPattern::parse(h).unwrap())
            .collect()
    }

    fn host(raw: &str) -> Result<Option<String>, BadHost> {
        request_host(raw.as_bytes()).map(|h| h.map(|h| String::from_utf8(h.into_owned()).unwrap()))
    }

    #[test]
    fn host_patterns() {
        assert_eq!(
            HostPattern::parse("API.Example.com.").unwrap(),
            HostPattern::Exact("api.example.com".into())
        );
        assert_eq!(
            HostPattern::parse("*.example.com").unwrap(),
            HostPattern::Wildcard(".example.com".into())
        );
        assert_eq!(
            HostPattern::parse("bücher.example").unwrap(),
            HostPattern::Exact("xn--bcher-kva.example".into())
        );
        for bad in [
            "a.*.example.com",
            "*example.com",
            "api*.example.com",
            "*",
            "*.",
            "api.example.com:443",
            "https://api.example.com",
            "",
            "a..b",
            "a b.com",
        ] {
            assert!(
                HostPattern::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn base_paths() {
        assert_eq!(&*parse_base_path("/").unwrap(), "");
        assert_eq!(&*parse_base_path("").unwrap(), "");
        assert_eq!(&*parse_base_path("/orders/").unwrap(), "/orders");
        assert_eq!(&*parse_base_path("/v1/orders").unwrap(), "/v1/orders");
        for bad in [
            "orders", "/a//b", "/a/../b", "/%2F", "/a;b", "/{x}", "/a b", "/*",
        ] {
            assert!(parse_base_path(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn request_hosts_lose_port_case_and_trailing_dot() {
        let ok = |raw: &str| host(raw).unwrap().unwrap();
        assert_eq!(ok("API.example.com:8443"), "api.example.com");
        assert_eq!(ok("api.example.com."), "api.example.com");
        assert_eq!(ok("[::1]:8080"), "[::1]");
        assert_eq!(ok("[2001:DB8::1]"), "[2001:DB8::1]");
        assert_eq!(ok("127.0.0.1:80"), "127.0.0.1");
        assert_eq!(ok("svc_a.internal"), "svc_a.internal");
        assert_eq!(host(""), Ok(None));
        for bad in [
            "evil@api.example.com",
            "api.example.com:44x",
            "api.example.com:123456",
            "api example.com",
            "api%2eexample.com",
            "bücher.example",
            "[::1",
            "[::1]x",
            "[fe80::1%25eth0]",
            ":80",
            ".",
        ] {
            assert_eq!(host(bad), Err(BadHost), "{bad:?}");
        }
        assert_eq!(host(&"a".repeat(300)), Err(BadHost));
    }

    #[test]
    fn exact_over_wildcard_over_default_then_longest_base_path() {
        let a = hosts(&["api.example.com"]);
        let w = hosts(&["*.example.com"]);
        let ww = hosts(&["*.eu.example.com"]);
        let sel = Selector::build(&[
            (&[], ""), // 0: the default API
            (&a, "/orders"),
            (&a, "/orders/v2"),
            (&w, ""),
            (&ww, ""),
            (&[], "/status"),
        ])
        .unwrap();
        let api = |h: &str, p: &str| sel.select(Some(h.as_bytes()), p).api.map(|(i, _)| i);
        assert_eq!(api("api.example.com", "/orders/7"), Some(1));
        assert_eq!(api("api.example.com", "/orders"), Some(1));
        assert_eq!(api("api.example.com", "/orders/v2/7"), Some(2));
        assert_eq!(api("api.example.com", "/ordersx"), None, "segment boundary");
        assert_eq!(api("api.example.com", "/other"), None, "no fall-through");
        assert_eq!(api("www.example.com", "/anything"), Some(3));
        assert_eq!(api("a.b.example.com", "/x"), Some(3), "several labels");
        assert_eq!(api("x.eu.example.com", "/x"), Some(4), "longest wildcard");
        assert_eq!(
            api("example.com", "/x"),
            Some(0),
            "a wildcard needs a label"
        );
        assert_eq!(api("other.test", "/status/x"), Some(5));
        assert_eq!(api("other.test", "/x"), Some(0));
        assert_eq!(sel.select(None, "/x").api, Some((0, 0)));
        for raw in [
            "api.example.com",
            "API.example.com:443",
            "api.example.com.",
            "www.example.com",
            "x.eu.example.com",
            "other.test",
            "",
        ] {
            let slow = sel.select(
                request_host(raw.as_bytes()).unwrap().as_deref(),
                "/orders/v2/7",
            );
            assert_eq!(
                sel.select_host(raw.as_bytes(), "/orders/v2/7"),
                Ok(slow),
                "{raw:?}"
            );
        }
        assert_eq!(sel.select_host(b"evil@api.example.com", "/"), Err(BadHost));
        assert_eq!(sel.select_host(b"evil@www.example.com", "/"), Err(BadHost));
        assert_eq!(
            sel.select(Some(b"api.example.com"), "/orders/v2").api,
            Some((2, 10))
        );
        assert!(!sel.is_trivial());
    }

    #[test]
    fn two_apis_on_one_host_and_base_path_clash() {
        let a = hosts(&["api.example.com", "*.example.com"]);
        let b = hosts(&["API.example.com"]);
        let clashes = Selector::build(&[(&[], ""), (&a, "/orders"), (&b, "/orders")]).unwrap_err();
        assert_eq!(clashes.len(), 1);
        assert_eq!((clashes[0].first, clashes[0].second), (1, 2));
        assert_eq!(clashes[0].host, "api.example.com");
        assert!(Selector::build(&[(&[], ""), (&[], "")]).is_err());
        assert!(Selector::build(&[(&[], "")]).unwrap().is_trivial());
    }
}
