//! Client header hygiene: what the gateway removes from a request (and its trailers) before the
//! upstream sees it, so that nothing a client writes can pass for what the gateway decided
//! (docs/security.md, "Headers").
//!
//! Removed from every forwarded request:
//! - `x-tollgate-*`, however spelled: names that read as one once `_` is folded into `-` (what
//!   CGI, WSGI, PHP and Rack do) go too, even when underscores are allowed;
//! - names with `_`, unless `headers.allow_underscores` (nginx and Envoy drop them by default),
//!   and even then `X_Amzn_Trace_Id` and its kin, which such frameworks would merge with the
//!   X-Ray header the gateway writes when tracing with `xray`;
//! - headers that frameworks honour to change the client address, the path or the method the
//!   request is served as: `Forwarded` (rewritten by the pipeline for trusted proxies),
//!   `X-Real-IP`, `X-Original-URL`, `X-Rewrite-URL`, `X-HTTP-Method-Override`, `X-HTTP-Method`,
//!   `X-Method-Override`.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

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

/// Whether the (lower-case) name starts with `prefix` once each `_` in it is read as `-`
/// (what CGI, WSGI, PHP and Rack do to header names).
fn folds_to_prefix(name: &[u8], prefix: &[u8]) -> bool {
    name.len() >= prefix.len()
        && name
            .iter()
            .zip(prefix)
            .all(|(&c, &p)| c == p || (c == b'_' && p == b'-'))
}

/// Whether a (lower-case) header name reads as an `x-tollgate-*` name once `_` is `-`.
fn is_identity(name: &[u8]) -> bool {
    folds_to_prefix(name, IDENTITY_PREFIX)
}

/// The X-Ray trace header, which tracing with `xray` writes for the upstream.
const XRAY_TRACE: &[u8] = b"x-amzn-trace-id";

/// Whether a (lower-case) name with `_` reads as `x-amzn-trace-id` once `_` is `-`.
fn folds_to_xray(name: &[u8]) -> bool {
    name.len() == XRAY_TRACE.len() && name.contains(&b'_') && folds_to_prefix(name, XRAY_TRACE)
}

/// Whether a client header is removed before forwarding ([module docs](self)).
fn is_removed(name: &HeaderName, allow_underscores: bool) -> bool {
    let b = name.as_str().as_bytes();
    is_identity(b)
        || (b.contains(&b'_') && (!allow_underscores || folds_to_xray(b)))
        || OVERRIDES.contains(name)
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
    strip_hop_by_hop(h, false);
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
        "x-forwarded-prefix",
        "x-request-id",
        "x-api-key",
    ] {
        h.remove(n);
    }
}

/// Headers that describe one connection, not the message (RFC 9110 7.6.1), never forwarded.
/// `HTTP2-Settings` belongs to an `h2c` upgrade (RFC 7540 3.2.1), which is never passed on.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];

/// Removes hop-by-hop headers, including every header the `Connection` header names. With
/// `keep_upgrade` (an upgrade handshake: the request asking for one, the `101` granting it), an
/// `Upgrade` header stays, with `Connection: upgrade` as its only companion.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let is_hop = |n: &HeaderName| *n == header::TRANSFER_ENCODING || HOP_BY_HOP.contains(n);
    // This runs on every request and every response. One pass over the names (compared, not
    // hashed) finds the common case, none of them; otherwise only names present are removed,
    // where removing each listed name would hash all of them.
    if !headers.keys().any(is_hop) {
        return;
    }
    let upgrade: Vec<HeaderValue> = if keep_upgrade {
        headers.get_all(header::UPGRADE).iter().cloned().collect()
    } else {
        Vec::new()
    };
    let mut doomed: Vec<HeaderName> = headers.keys().filter(|n| is_hop(n)).cloned().collect();
    doomed.extend(
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok()),
    );
    for n in doomed {
        headers.remove(n);
    }
    if !upgrade.is_empty() {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        for v in upgrade {
            headers.append(header::UPGRADE, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_connection_named_ones_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        let mut upgrading = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));

        strip_hop_by_hop(&mut upgrading, true);
        assert_eq!(upgrading.len(), 3, "{upgrading:?}");
        assert_eq!(upgrading[header::UPGRADE], "websocket");
        assert_eq!(upgrading[header::CONNECTION], "upgrade");
        assert!(upgrading.contains_key("x-kept"));
    }

    #[test]
    fn a_message_without_hop_by_hop_headers_is_left_as_it_is() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("example.com"));
        h.append("x-many", HeaderValue::from_static("1"));
        h.append("x-many", HeaderValue::from_static("2"));
        let before = h.clone();
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h, before);

        // A lone hop-by-hop header (no `Connection`) still goes.
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, before);
    }
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
    fn spellings_of_the_xray_header_go_even_with_underscores_allowed() {
        let mut h = map(&[
            "x_amzn_trace_id",
            "x-amzn_trace-id",
            "x-amzn-trace-id",
            "x_other",
        ]);
        sanitize_request(&mut h, true);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        left.sort();
        assert_eq!(left, ["x-amzn-trace-id", "x_other"]);
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
