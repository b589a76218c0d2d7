//! Client header hygiene: what the gateway removes from a request (and its trailers) before the
//! upstream sees it, so that nothing a client writes can pass for what the gateway decided
//! (docs/security.md, "Headers").
//!
//! Removed from every forwarded request:
//! - `x-tollgate-*`, however spelled: names that read as one once `_` is folded into `-` (what
//!   CGI, WSGI, PHP and Rack do) go too, even when underscores are allowed;
//! - names with `_`, unless `headers.allow_underscores` (nginx and Envoy drop them by default);
//! - headers that frameworks honour to change the client address, the path or the method the
//!   request is served as: `Forwarded` (rewritten by the pipeline for trusted proxies),
//!   `X-Real-IP`, `X-Original-URL`, `X-Rewrite-URL`, `X-HTTP-Method-Override`, `X-HTTP-Method`,
//!   `X-Method-Override`.

use http::header::{self, HeaderMap, HeaderName};

/// The prefix of the identity headers only the gateway sets.
const IDENTITY_PREFIX: &[u8] = b"x-tollgate-";

/// Headers a client may not send at all: each changes who the request is from, or which path
/// or method it is served as, in common frameworks. `Forwarded` is first (the pipeline asks).
const OVERRIDES: [HeaderName; 7] = [
    header::FORWARDED,
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// Whether a (lower-case) header name reads as an `x-tollgate-*` name once `_` is `-`.
fn is_identity(name: &[u8]) -> bool {
    name.len() >= IDENTITY_PREFIX.len()
        && name
            .iter()
            .zip(IDENTITY_PREFIX)
            .all(|(&c, &p)| c == p || (c == b'_' && p == b'-'))
}

/// Whether a client header is removed before forwarding ([module docs](self)).
fn is_removed(name: &HeaderName, allow_underscores: bool) -> bool {
    let b = name.as_str().as_bytes();
    is_identity(b) || (!allow_underscores && b.contains(&b'_')) || OVERRIDES.contains(name)
}

/// Removes, in one pass over the names, every client header the upstream must not see. Runs on
/// every forwarded request, before the gateway adds its own headers. Returns whether the
/// request carried `Forwarded` (which the pipeline rewrites for a trusted proxy).
pub fn sanitize_request(h: &mut HeaderMap, allow_underscores: bool) -> bool {
    // The common case, nothing to remove, costs a scan of the names and no allocation.
    if !h.keys().any(|n| is_removed(n, allow_underscores)) {
        return false;
    }
    let forwarded = h.contains_key(header::FORWARDED);
    let doomed: Vec<HeaderName> = h
        .keys()
        .filter(|n| is_removed(n, allow_underscores))
        .cloned()
        .collect();
    for n in doomed {
        h.remove(n);
    }
    forwarded
}

/// Request trailers get the same treatment as the head, and hop-by-hop names go too: an HTTP/2
/// upstream receives them as a header block its framework may merge with the head's.
pub fn sanitize_trailers(h: &mut HeaderMap, allow_underscores: bool) {
    crate::proxy::strip_hop_by_hop(h, false);
    sanitize_request(h, allow_underscores);
    // Fields that frame or route a message, carry credentials or say who the client is have no
    // place in trailers (RFC 9110 6.5.1): the gateway sets the head's, and a framework that
    // merges trailers into the head would take a client's second copy.
    for n in [
        header::HOST,
        header::CONTENT_LENGTH,
        header::CONTENT_TYPE,
        header::AUTHORIZATION,
        header::COOKIE,
    ] {
        h.remove(n);
    }
    for n in [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-request-id",
        "x-api-key",
    ] {
        h.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn map(names: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for n in names {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        h
    }

    #[test]
    fn identity_headers_go_however_spelled() {
        let mut h = map(&[
            "x-tollgate-principal",
            "X_Tollgate_Principal",
            "x-tollgate_scopes",
            "x_tollgate-client-id",
            "accept",
        ]);
        assert!(!sanitize_request(&mut h, true));
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["accept"]);
    }

    #[test]
    fn underscores_go_unless_allowed() {
        let mut h = map(&["x_custom", "x-custom"]);
        sanitize_request(&mut h, false);
        assert_eq!(
            h.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["x-custom"]
        );
        let mut h = map(&["x_custom", "x-custom"]);
        sanitize_request(&mut h, true);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn overrides_go_and_forwarded_is_reported() {
        let mut h = map(&[
            "forwarded",
            "x-real-ip",
            "x-original-url",
            "x-rewrite-url",
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
            "host",
        ]);
        assert!(sanitize_request(&mut h, false));
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["host"]);
    }

    #[test]
    fn trailers_lose_hop_by_hop_and_framing_fields() {
        let mut h = map(&[
            "x-tollgate-principal",
            "connection",
            "content-length",
            "host",
            "x-forwarded-for",
            "x-api-key",
            "x-request-id",
            "x-checksum",
        ]);
        sanitize_trailers(&mut h, false);
        assert_eq!(
            h.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["x-checksum"]
        );
    }

    proptest! {
        /// Whatever names a client sends, nothing that folds to an identity header survives,
        /// no name with `_` survives by default, and names that are neither are all kept.
        #[test]
        fn nothing_that_folds_to_an_identity_header_survives(
            names in proptest::collection::vec("[a-zA-Z_-]{1,4}(tollgate|TOLLGATE|ToLLgate)?[_-]?[a-z_-]{0,6}", 0..10),
            allow in any::<bool>(),
        ) {
            let mut h = HeaderMap::new();
            for n in &names {
                if let Ok(name) = HeaderName::from_bytes(n.as_bytes()) {
                    h.append(name, HeaderValue::from_static("v"));
                }
            }
            let before: Vec<HeaderName> = h.keys().cloned().collect();
            sanitize_request(&mut h, allow);
            for n in h.keys() {
                let folded = n.as_str().replace('_', "-");
                prop_assert!(!folded.starts_with("x-tollgate-"), "{n}");
                prop_assert!(allow || !n.as_str().contains('_'), "{n}");
            }
            for n in before {
                let folded = n.as_str().replace('_', "-");
                if !folded.starts_with("x-tollgate-") && (allow || !n.as_str().contains('_')) && !OVERRIDES.contains(&n) {
                    prop_assert!(h.contains_key(&n), "{n} was removed");
                }
            }
        }
    }
}
