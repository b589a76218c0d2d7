//! What the upstream is told: the headers the gateway writes on a request it forwards, after
//! the client's own hygiene ([`crate::headers`]) removed everything a client could forge:
//! `x-forwarded-for` / `-proto` / `-host`, `Forwarded` for a trusted proxy's request,
//! `x-request-id`, the caller's identity ([`Principal::insert_upstream_headers`]), the API key
//! id and the verified client certificate.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;

use crate::apikeys::ApiKey;
use crate::auth::Principal;
use crate::clientip::CidrSet;
use crate::snapshot::Api;
use crate::tls::ClientCert;

/// `x-request-id`.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_TOLLGATE_API_KEY_ID: HeaderName = HeaderName::from_static("x-tollgate-api-key-id");
/// The stage of the API that admitted the request.
const X_TOLLGATE_STAGE: HeaderName = HeaderName::from_static("x-tollgate-stage");
/// The base path the gateway removed from the path (RFC-less, but what Spring, ASP.NET Core and
/// Traefik read to build absolute links).
const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");

/// Where a request came from, as the gateway determined it.
pub(crate) struct Origin<'a> {
    /// The client IP (the peer, or what trusted proxies said).
    pub(crate) client_ip: IpAddr,
    /// The connection's peer (or the PROXY header's source).
    pub(crate) peer: IpAddr,
    /// Whether the client connection is TLS.
    pub(crate) tls: bool,
    /// `trusted_proxies`.
    pub(crate) trusted_proxies: &'a CidrSet,
    /// The request id every answer and the upstream get.
    pub(crate) request_id: &'a HeaderValue,
    /// The verified client certificate, if any.
    pub(crate) client_cert: Option<&'a ClientCert>,
}

/// Who the request was admitted as.
pub(crate) struct Admitted<'a> {
    /// The caller.
    pub(crate) principal: &'a Principal,
    /// The API key, on routes that require one.
    pub(crate) key: Option<&'a ApiKey>,
    /// The API it was admitted to (its stage and stripped base path).
    pub(crate) api: &'a Api,
}

/// Prepares `parts` for the upstream: hop-by-hop headers out (the `Upgrade` of an allowed
/// upgrade stays), the client's forgeable headers out, the gateway's in.
pub(crate) fn prepare(
    parts: &mut Parts,
    origin: &Origin<'_>,
    admitted: &Admitted<'_>,
    allow_underscores: bool,
    upgrade: bool,
) {
    let h = &mut parts.headers;
    crate::headers::strip_hop_by_hop(h, upgrade);
    let trusted_peer = origin
        .trusted_proxies
        .contains(crate::clientip::canonical(origin.peer));
    let had_forwarded = crate::headers::sanitize_request(h, allow_underscores);
    if had_forwarded && trusted_peer {
        h.insert(header::FORWARDED, forwarded_value(origin));
    }
    let host = parts
        .uri
        .authority()
        .map(|a| HeaderValue::from_str(a.as_str()))
        .or_else(|| h.get(header::HOST).cloned().map(Ok));
    if let Some(Ok(host)) = host {
        h.insert(X_FORWARDED_HOST, host);
    }
    forwarded_for(h, origin);
    h.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if origin.tls { "https" } else { "http" }),
    );
    h.insert(REQUEST_ID, origin.request_id.clone());
    admitted.principal.insert_upstream_headers(h);
    if let Some(key) = admitted.key {
        h.insert(X_TOLLGATE_API_KEY_ID, key.id_header.clone());
    }
    // The client's copy is never believed; the gateway's names the base path it removed.
    h.remove(X_FORWARDED_PREFIX);
    if let Some(prefix) = &admitted.api.prefix_header {
        h.insert(X_FORWARDED_PREFIX, prefix.clone());
    }
    if let Some(stage) = &admitted.api.stage_header {
        h.insert(X_TOLLGATE_STAGE, stage.clone());
    }
    if let Some(cert) = origin.client_cert {
        h.insert(crate::tls::CLIENT_CERT_SUBJECT, cert.subject.clone());
        h.insert(crate::tls::CLIENT_CERT_SHA256, cert.sha256.clone());
    }
}

/// Sets `x-forwarded-for` so that it ends with the client IP the gateway determined. From an
/// untrusted peer the peer is appended (anything the client wrote stays to its left, where an
/// upstream must not trust it); from a trusted proxy the entries the proxies added after the
/// client are dropped, so the list ends with the client. Entries are read as raw bytes: one
/// that is not text is dropped alone, never the line it is on.
fn forwarded_for(h: &mut HeaderMap, origin: &Origin<'_>) {
    let client = origin.client_ip;
    let peer = crate::clientip::canonical(origin.peer);
    let mut value = String::new();
    {
        // Entries borrow the request's header values; without one, nothing is allocated here.
        let mut entries: Vec<&str> = crate::clientip::forwarded_entries(h)
            .filter_map(|e| std::str::from_utf8(e).ok())
            .collect();
        if client != peer {
            // Drop what the trusted proxies added after the client, then the client's own
            // entry (written again below in canonical form: no port, IPv4-mapped as IPv4).
            while entries
                .last()
                .and_then(|e| crate::clientip::parse_forwarded_entry(e.as_bytes()))
                .is_some_and(|ip| ip != client && origin.trusted_proxies.contains(ip))
            {
                entries.pop();
            }
            if entries
                .last()
                .and_then(|e| crate::clientip::parse_forwarded_entry(e.as_bytes()))
                == Some(client)
            {
                entries.pop();
            }
        }
        for e in entries {
            value.push_str(e);
            value.push_str(", ");
        }
    }
    crate::clientip::push_ip(&mut value, client);
    if let Ok(v) = HeaderValue::try_from(value) {
        h.insert(X_FORWARDED_FOR, v);
    }
}

/// `Forwarded` (RFC 7239) as the gateway rewrites it for a trusted proxy's request: one element
/// naming the client the gateway determined, as `x-forwarded-for` ends with it.
fn forwarded_value(origin: &Origin<'_>) -> HeaderValue {
    let proto = if origin.tls { "https" } else { "http" };
    let v = match origin.client_ip {
        IpAddr::V4(ip) => format!("for={ip};proto={proto}"),
        IpAddr::V6(ip) => format!("for=\"[{ip}]\";proto={proto}"),
    };
    HeaderValue::try_from(v).expect("an address and a scheme are a valid header value")
}
