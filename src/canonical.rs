//! The one canonical form of a request path, on which routing, policies, scopes and keys are
//! decided and which the upstream receives (docs/security.md, "The canonical path").
//!
//! [`canonicalize`] runs once per request, before routing. From the path as the client sent it
//! (HTTP/1 origin-form or absolute-form, HTTP/2 `:path`), it makes:
//! - the **canonical path**: percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`)
//!   decoded (RFC 3986 6.2.2.2), every other escape kept with upper-case hex (6.2.2.1), and raw
//!   bytes that RFC 3986 does not allow in a path (`"`, `{`, `}`, `|`, non-ASCII UTF-8)
//!   percent-encoded. This is what the upstream receives.
//! - the **match form**: the canonical path with its remaining escapes decoded (except those of
//!   `/`, `\` and `;`, which keep segment boundaries), the way upstream frameworks decode a path
//!   before they route it, and without one trailing `/`. Route literals are compared with it, so
//!   two spellings an upstream serves as one resource always take the same route.
//!
//! It refuses what cannot be made canonical without guessing how the upstream reads it: control
//! bytes and NUL (raw or escaped), escapes that are not `%` and two hex digits, escaped bytes that
//! are not valid UTF-8 (overlong forms included), and dot segments (`.`, `..`, escaped or
//! followed by `;` parameters). Three more spellings are [`Exceptions`] a route may opt in to
//! (`allow_in_path`): an encoded or raw backslash or an encoded slash, empty segments (`//`), and
//! `;` parameters; [`Canonical::exceptions`] says which the path holds, and the pipeline refuses
//! them unless the matched route allows each one.
//!
//! Invariants (property-tested below): the canonical path is a fixed point (canonicalising it
//! again gives it back, with the same match form), and it never holds a dot segment, a control
//! byte or a lower-case escape.

use std::borrow::Cow;

/// Why a path cannot be made canonical (400). The name is the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not starting with `/` (asterisk-form, authority-form).
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// NUL or another control byte, raw or escaped.
    Control,
    /// Escaped bytes that do not form UTF-8 (a lone continuation byte, an overlong form).
    BadUtf8,
    /// A `.` or `..` segment, however spelled.
    DotSegment,
}

impl PathError {
    /// The `reason` label of the 400.
    pub fn reason(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "bad_path",
            PathError::BadEscape => "path_bad_escape",
            PathError::Control => "path_control_byte",
            PathError::BadUtf8 => "path_bad_utf8",
            PathError::DotSegment => "dot_segment",
        }
    }
}

/// One spelling a path holds that its route does not allow (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spelling {
    /// `%2F`, `%5C` or a raw `\\`.
    EncodedSlash,
    /// `//`.
    EmptySegment,
    /// `;` or `%3B`.
    Semicolon,
}

impl Spelling {
    /// The `reason` label of the 400.
    pub fn reason(self) -> &'static str {
        match self {
            Spelling::EncodedSlash => "path_encoded_slash",
            Spelling::EmptySegment => "path_empty_segment",
            Spelling::Semicolon => "path_semicolon",
        }
    }
}

/// Spellings refused by default that a route may allow (`allow_in_path`). A set of flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Exceptions(u8);

impl Exceptions {
    /// None.
    pub const NONE: Exceptions = Exceptions(0);
    /// `%2F`, `%5C` or a raw `\`: a separator the upstream may or may not split on.
    pub const ENCODED_SLASH: Exceptions = Exceptions(1);
    /// `//`: an upstream may merge it, or not.
    pub const EMPTY_SEGMENTS: Exceptions = Exceptions(2);
    /// `;` or `%3B`: path parameters, which some servers strip before routing.
    pub const SEMICOLON: Exceptions = Exceptions(4);

    /// Parses an `allow_in_path` item.
    pub fn parse(name: &str) -> Option<Exceptions> {
        match name {
            "encoded_slash" => Some(Exceptions::ENCODED_SLASH),
            "empty_segments" => Some(Exceptions::EMPTY_SEGMENTS),
            "semicolon" => Some(Exceptions::SEMICOLON),
            _ => None,
        }
    }

    /// Both sets.
    pub fn union(self, other: Exceptions) -> Exceptions {
        Exceptions(self.0 | other.0)
    }

    /// The first exception in `self` that `allowed` lacks.
    pub fn not_in(self, allowed: Exceptions) -> Option<Spelling> {
        let missing = self.0 & !allowed.0;
        if missing & Exceptions::ENCODED_SLASH.0 != 0 {
            Some(Spelling::EncodedSlash)
        } else if missing & Exceptions::EMPTY_SEGMENTS.0 != 0 {
            Some(Spelling::EmptySegment)
        } else if missing & Exceptions::SEMICOLON.0 != 0 {
            Some(Spelling::Semicolon)
        } else {
            None
        }
    }

    fn insert(&mut self, e: Exceptions) {
        self.0 |= e.0;
    }
}

/// A path in canonical form, with the form routes are matched on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canonical<'a> {
    /// What the upstream receives. Borrows the request's path when that is canonical already.
    pub path: Cow<'a, str>,
    /// What route literals are compared with.
    pub match_form: Cow<'a, str>,
    /// The opt-in spellings the path holds.
    pub exceptions: Exceptions,
}

impl Canonical<'_> {
    /// Whether the canonical path differs from the one the client sent.
    pub fn changed(&self) -> bool {
        matches!(self.path, Cow::Owned(_))
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Bytes that stand for themselves in a canonical path (RFC 3986 `pchar` less `%`, plus `/`).
fn is_path_char(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
        || b == b'/'
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn push_escape(out: &mut Vec<u8>, b: u8) {
    out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
}

/// Makes the canonical path and match form of `raw`, the path of a request URI. Allocates only
/// when the path holds a `%`, a byte to encode, or a trailing `/`.
///
/// # Errors
/// Control bytes, bad escapes, bad UTF-8 and dot segments ([`PathError`]).
pub fn canonicalize(raw: &str) -> Result<Canonical<'_>, PathError> {
    let b = raw.as_bytes();
    if b.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut exceptions = Exceptions::NONE;
    // The common case: nothing to decode or encode, and no `.` to look at twice.
    let plain = b
        .iter()
        .all(|&c| c != b'%' && c != b'\\' && is_path_char(c));
    if plain {
        scan_plain(b, &mut exceptions)?;
        let match_form = match raw.strip_suffix('/') {
            Some(t) if !t.is_empty() => Cow::Owned(t.to_owned()),
            _ => Cow::Borrowed(raw),
        };
        return Ok(Canonical {
            path: Cow::Borrowed(raw),
            match_form,
            exceptions,
        });
    }
    let mut canon: Vec<u8> = Vec::with_capacity(b.len() + 8);
    let mut matched: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let v = match (
                b.get(i + 1).and_then(|&h| hex_value(h)),
                b.get(i + 2).and_then(|&l| hex_value(l)),
            ) {
                (Some(h), Some(l)) => h << 4 | l,
                _ => return Err(PathError::BadEscape),
            };
            i += 3;
            if v < 0x20 || v == 0x7f {
                return Err(PathError::Control);
            }
            if is_unreserved(v) {
                canon.push(v);
                matched.push(v);
                continue;
            }
            push_escape(&mut canon, v);
            match v {
                b'/' | b'\\' => {
                    exceptions.insert(Exceptions::ENCODED_SLASH);
                    push_escape(&mut matched, v);
                }
                b';' => {
                    exceptions.insert(Exceptions::SEMICOLON);
                    push_escape(&mut matched, v);
                }
                _ => matched.push(v),
            }
            continue;
        }
        i += 1;
        if c < 0x20 || c == 0x7f {
            return Err(PathError::Control);
        }
        match c {
            b'\\' => {
                exceptions.insert(Exceptions::ENCODED_SLASH);
                push_escape(&mut canon, c);
                push_escape(&mut matched, c);
            }
            b';' => {
                exceptions.insert(Exceptions::SEMICOLON);
                canon.push(c);
                matched.push(c);
            }
            _ if is_path_char(c) => {
                canon.push(c);
                matched.push(c);
            }
            _ => {
                // `"`, `{`, `}`, `|` and the bytes of a raw UTF-8 character.
                push_escape(&mut canon, c);
                matched.push(c);
            }
        }
    }
    // The bytes escaped as `%XX` of 0x80 and above must form UTF-8, and the decoded path too.
    let matched = String::from_utf8(matched).map_err(|_| PathError::BadUtf8)?;
    let canon = String::from_utf8(canon).expect("canonical path is ASCII");
    scan_plain(canon.as_bytes(), &mut exceptions)?;
    let mut matched = matched;
    if matched.len() > 1 && matched.ends_with('/') {
        matched.pop();
    }
    let path = if canon == raw {
        Cow::Borrowed(raw)
    } else {
        Cow::Owned(canon)
    };
    Ok(Canonical {
        path,
        match_form: Cow::Owned(matched),
        exceptions,
    })
}

/// Checks the segments of a path whose escapes of unreserved characters are decoded: dot
/// segments (split also at escaped separators and `;`, the way lenient servers read them), and
/// empty segments.
fn scan_plain(b: &[u8], exceptions: &mut Exceptions) -> Result<(), PathError> {
    if b.windows(2).any(|w| w == b"//") {
        exceptions.insert(Exceptions::EMPTY_SEGMENTS);
    }
    if b.contains(&b';') {
        exceptions.insert(Exceptions::SEMICOLON);
    }
    if !b.contains(&b'.') {
        return Ok(());
    }
    // Split at `/`, `;`, and the escapes `%2F`, `%5C`, `%3B` (upper-case: canonical form).
    let mut start = 0;
    let mut i = 0;
    while i <= b.len() {
        let sep = if i == b.len() {
            Some(0)
        } else if matches!(b[i], b'/' | b';') {
            Some(1)
        } else if b[i] == b'%'
            && matches!(
                b.get(i + 1..i + 3),
                Some(b"2F" | b"5C" | b"3B" | b"2f" | b"5c" | b"3b")
            )
        {
            Some(3)
        } else {
            None
        };
        match sep {
            Some(n) => {
                let seg = &b[start..i];
                if seg == b"." || seg == b".." {
                    return Err(PathError::DotSegment);
                }
                i += n.max(1);
                start = i;
            }
            None => i += 1,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn canon(p: &str) -> Result<(String, String, Exceptions), PathError> {
        canonicalize(p).map(|c| (c.path.into_owned(), c.match_form.into_owned(), c.exceptions))
    }

    #[test]
    fn plain_paths_are_borrowed_and_unchanged() {
        let c = canonicalize("/products/1").unwrap();
        assert!(matches!(c.path, Cow::Borrowed(_)));
        assert!(matches!(c.match_form, Cow::Borrowed(_)));
        assert_eq!(c.exceptions, Exceptions::NONE);
        assert!(!c.changed());
        let c = canonicalize("/").unwrap();
        assert_eq!((&*c.path, &*c.match_form), ("/", "/"));
    }

    #[test]
    fn unreserved_escapes_are_decoded_others_upper_cased() {
        assert_eq!(canon("/product%73/1").unwrap().0, "/products/1");
        assert_eq!(canon("/%61dmin/users").unwrap().0, "/admin/users");
        assert_eq!(canon("/a%7eb%2D%5f").unwrap().0, "/a~b-_");
        assert_eq!(
            canon("/a%3ab").unwrap(),
            ("/a%3Ab".into(), "/a:b".into(), Exceptions::NONE)
        );
        assert_eq!(canon("/a%2cb").unwrap().1, "/a,b");
        assert_eq!(
            canon("/a%20b").unwrap(),
            ("/a%20b".into(), "/a b".into(), Exceptions::NONE)
        );
        assert_eq!(
            canon("/%25").unwrap(),
            ("/%25".into(), "/%".into(), Exceptions::NONE)
        );
    }

    #[test]
    fn raw_bytes_outside_pchar_are_encoded() {
        assert_eq!(
            canon("/caf\u{e9}").unwrap(),
            ("/caf%C3%A9".into(), "/caf\u{e9}".into(), Exceptions::NONE)
        );
        assert_eq!(canon("/caf%c3%a9").unwrap().0, "/caf%C3%A9");
        assert_eq!(canon("/a{b}|\"").unwrap().0, "/a%7Bb%7D%7C%22");
    }

    #[test]
    fn refusals() {
        for (p, e) in [
            ("*", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
            ("/a%", PathError::BadEscape),
            ("/a%2", PathError::BadEscape),
            ("/a%zz", PathError::BadEscape),
            ("/a%00", PathError::Control),
            ("/a%0a", PathError::Control),
            ("/a%7F", PathError::Control),
            ("/a%1f", PathError::Control),
            ("/a%ff", PathError::BadUtf8),
            ("/a%c0%af", PathError::BadUtf8),
            ("/a%e0%80%af", PathError::BadUtf8),
            ("/a%80", PathError::BadUtf8),
            ("/a/../b", PathError::DotSegment),
            ("/a/./b", PathError::DotSegment),
            ("/..", PathError::DotSegment),
            ("/.", PathError::DotSegment),
            ("/a/%2e%2e/b", PathError::DotSegment),
            ("/a/%2E./b", PathError::DotSegment),
            ("/a%2f..%2fb", PathError::DotSegment),
            ("/a\\..\\b", PathError::DotSegment),
            ("/public/..;/admin", PathError::DotSegment),
            ("/x/..%3b/y", PathError::DotSegment),
            ("/a/..", PathError::DotSegment),
        ] {
            assert_eq!(canonicalize(p).map(|_| ()), Err(e), "{p:?}");
        }
    }

    #[test]
    fn exceptions_are_reported_and_kept() {
        assert_eq!(
            canon("/products%2f1").unwrap(),
            (
                "/products%2F1".into(),
                "/products%2F1".into(),
                Exceptions::ENCODED_SLASH
            )
        );
        assert_eq!(canon("/a%5cb").unwrap().2, Exceptions::ENCODED_SLASH);
        assert_eq!(
            canon("/a\\b").unwrap(),
            ("/a%5Cb".into(), "/a%5Cb".into(), Exceptions::ENCODED_SLASH)
        );
        assert_eq!(
            canon("//products/1").unwrap(),
            (
                "//products/1".into(),
                "//products/1".into(),
                Exceptions::EMPTY_SEGMENTS
            )
        );
        assert_eq!(canon("/a;b").unwrap().2, Exceptions::SEMICOLON);
        assert_eq!(
            canon("/a%3bb").unwrap(),
            ("/a%3Bb".into(), "/a%3Bb".into(), Exceptions::SEMICOLON)
        );
        assert_eq!(
            Exceptions::SEMICOLON.not_in(Exceptions::NONE),
            Some(Spelling::Semicolon)
        );
        assert_eq!(Exceptions::SEMICOLON.not_in(Exceptions::SEMICOLON), None);
    }

    #[test]
    fn one_trailing_slash_is_not_part_of_the_match_form() {
        assert_eq!(
            canon("/products/").unwrap(),
            ("/products/".into(), "/products".into(), Exceptions::NONE)
        );
        assert_eq!(canon("/product%73/").unwrap().1, "/products");
        assert_eq!(canon("/").unwrap().1, "/");
    }

    #[test]
    fn good_paths_with_dots() {
        for p in ["/a/b.json", "/a/...", "/a/.well-known/x", "/.x", "/a..b"] {
            assert_eq!(canon(p).unwrap().0, p);
        }
    }

    /// Path-ish strings: the bytes and escapes that matter, in any order.
    fn path_strategy() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("/".to_string()),
            Just(".".to_string()),
            Just("..".to_string()),
            Just(";".to_string()),
            Just("\\".to_string()),
            Just("a".to_string()),
            Just("Z9".to_string()),
            Just("~".to_string()),
            Just("é".to_string()),
            Just("{".to_string()),
            Just(":".to_string()),
            (0u8..=255).prop_map(|b| format!("%{b:02x}")),
            (0u8..=255).prop_map(|b| format!("%{b:02X}")),
            Just("%".to_string()),
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|v| format!("/{}", v.concat()))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Canonicalising the canonical path again changes nothing, match form included.
        #[test]
        fn canonical_is_a_fixed_point(p in path_strategy()) {
            if let Ok(c) = canonicalize(&p) {
                let again = canonicalize(&c.path).expect("a canonical path is accepted");
                prop_assert_eq!(&*again.path, &*c.path);
                prop_assert_eq!(&*again.match_form, &*c.match_form);
                prop_assert_eq!(again.exceptions, c.exceptions);
            }
        }

        /// The canonical path holds no dot segment once an upstream decodes it and splits at
        /// every separator, no control byte, no lower-case escape, and only ASCII.
        #[test]
        fn canonical_paths_are_safe(p in path_strategy()) {
            if let Ok(c) = canonicalize(&p) {
                let path = c.path.as_bytes();
                prop_assert!(path.is_ascii());
                prop_assert!(!path.iter().any(|&b| b < 0x20 || b == 0x7f));
                let decoded = percent_decode(path);
                for seg in decoded.split(|&b| matches!(b, b'/' | b'\\' | b';')) {
                    prop_assert!(seg != b"." && seg != b"..", "{:?} -> {:?}", p, c.path);
                }
                for w in path.windows(3) {
                    if w[0] == b'%' {
                        prop_assert!(!w[1].is_ascii_lowercase() && !w[2].is_ascii_lowercase());
                    }
                }
            }
        }

        /// Decoding the canonical path gives what decoding the client's path gives: the upstream
        /// sees the same resource the client named, never another one.
        #[test]
        fn canonical_names_the_same_resource(p in path_strategy()) {
            if let Ok(c) = canonicalize(&p) {
                prop_assert_eq!(percent_decode(c.path.as_bytes()), percent_decode(p.as_bytes()));
            }
        }
    }

    fn percent_decode(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%'
                && let (Some(h), Some(l)) = (
                    b.get(i + 1).and_then(|&h| hex_value(h)),
                    b.get(i + 2).and_then(|&l| hex_value(l)),
                )
            {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
            out.push(b[i]);
            i += 1;
        }
        out
    }
}
