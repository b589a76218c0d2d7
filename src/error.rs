//! Every refusal the gateway makes, and the one place that turns a refusal into what the client
//! sees. Bodies and headers follow the contract's table (section 3); the detail of *why* is the
//! refusal's [`Reason`], which goes to the access log and the `reason` metric label only.
//!
//! Each domain module refuses with its own error type (a token's [`TokenError`], a key's
//! [`KeyError`], the upstream's [`UpstreamError`], ...); a [`Refusal`] carries it unchanged, and
//! [`Refusal::into_response`] is the one exhaustive mapping to status, headers and body.

use bytes::Bytes;
use http::header::{
    CACHE_CONTROL, CONNECTION, HeaderName, HeaderValue, PRAGMA, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{Response, StatusCode};

use crate::answer::ResponseBody;
use crate::apikeys::KeyError;
use crate::auth::TokenError;
use crate::auth::external::ExternalError;
use crate::auth::sigv4::SigV4Error;
use crate::body::BodyFailure;
use crate::canonical::{PathError, Spelling};
use crate::issuer::OAuthError;
use crate::proxy::{ForwardError, UpstreamError};

/// A refusal, decided by one phase of the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No route matches (and there is no `$default`).
    NotFound,
    /// The request's host and base path select no API.
    NoApi,
    /// The host selects other APIs than the TLS connection's SNI name (421).
    Misdirected,
    /// The request cannot be decided safely (400).
    BadRequest(BadRequest),
    /// The client's body was too large (413), too slow (408) or broken (400).
    Body(BodyFailure),
    /// The route needs a bearer token and the request has none.
    NoCredentials,
    /// The bearer token is not acceptable.
    InvalidToken(TokenError),
    /// The verified caller holds none of the route's scopes. With a bearer token, the value is
    /// the ready-made `www-authenticate` challenge naming them.
    InsufficientScope(Option<HeaderValue>),
    /// The route requires a verified client certificate and the connection has none.
    ClientCertRequired,
    /// The client IP is outside the route's resource policy.
    PolicyDenied,
    /// The route's SigV4 authorizer refused: unsigned (401) or a bad signature (403).
    SigV4(SigV4Error),
    /// The route's external authorizer refused (401 / 403) or gave no answer (500).
    External(ExternalError),
    /// The route needs an API key and the request's is missing, unknown or disabled.
    ApiKey(KeyError),
    /// A throttle's bucket is empty.
    Throttled {
        /// Seconds until a token is available.
        retry_after: u64,
        /// The bucket's size (`ratelimit-limit`).
        limit: u64,
    },
    /// The gateway-wide bucket (`gateway.throttle`) is empty.
    GatewayThrottled {
        /// Seconds until a token is available.
        retry_after: u64,
        /// The bucket's size (`ratelimit-limit`).
        limit: u64,
    },
    /// The key's quota for this period is used up.
    QuotaExceeded {
        /// Seconds until the next period.
        retry_after: u64,
        /// The quota (`ratelimit-limit`).
        limit: u64,
    },
    /// The shared limit store cannot be reached and `state.on_error` is `deny`.
    LimitsUnavailable,
    /// The upstream could not be reached, answered badly (502) or not in time (504).
    Upstream(UpstreamError),
    /// The client asked to switch protocols (WebSocket) on a route whose upstream speaks
    /// HTTP/2, where an HTTP/1.1 upgrade cannot be passed on.
    UpgradeUnsupported,
    /// The embedded issuer's token endpoint refused (RFC 6749 error body, not the gateway's).
    OAuth(OAuthError),
}

/// Why a request was refused before any route looked at it, or by its route's path rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRequest {
    /// No `Host` and no absolute-form target (HTTP/1.1 requires one).
    NoHost,
    /// A standard method in another case (`get`, `Delete`).
    MethodCase,
    /// A credential header sent twice.
    DuplicateCredential,
    /// A path that cannot be made canonical.
    Path(PathError),
    /// A path spelling its route does not allow (`%2F`, `//`, `;`).
    Spelling(Spelling),
    /// The canonical path does not make a URI again.
    Uri,
    /// Two `Host` headers, or a `Host` naming another host than the target's authority.
    Host,
}

/// What a refusal was, without its data: the access log's `reason` and the `reason` label of
/// `tollgate_requests_denied_total`. [`Reason::as_str`] gives the label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `no_route`.
    NoRoute,
    /// `no_api`.
    NoApi,
    /// `misdirected`.
    Misdirected,
    /// See [`BadRequest`].
    BadRequest(BadRequest),
    /// `body_too_large`, `body_timeout`, `client_aborted`.
    Body(BodyFailure),
    /// `no_credentials`.
    NoCredentials,
    /// `token_*`.
    Token(TokenError),
    /// `insufficient_scope`.
    InsufficientScope,
    /// `client_cert_required`.
    ClientCertRequired,
    /// `policy_denied`.
    PolicyDenied,
    /// `sigv4_*`.
    SigV4(SigV4Error),
    /// `authorizer_no_identity`, `authorizer_denied`, `authorizer_failed`.
    External(ExternalError),
    /// `api_key_missing`, `api_key_unknown`, `api_key_disabled`.
    ApiKey(KeyError),
    /// `throttled`.
    Throttled,
    /// `gateway_throttle`.
    GatewayThrottle,
    /// `quota_exceeded`.
    QuotaExceeded,
    /// `limits_unavailable`.
    LimitsUnavailable,
    /// `upstream_*`.
    Upstream(UpstreamError),
    /// `upgrade_unsupported`.
    UpgradeUnsupported,
    /// The RFC 6749 error code.
    OAuth(OAuthError),
}

impl Reason {
    /// The label: short, bounded, one per kind of refusal.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoRoute => "no_route",
            Reason::NoApi => "no_api",
            Reason::Misdirected => "misdirected",
            Reason::BadRequest(b) => match b {
                BadRequest::NoHost => "no_host",
                BadRequest::MethodCase => "method_case",
                BadRequest::DuplicateCredential => "duplicate_credential",
                BadRequest::Path(e) => e.reason(),
                BadRequest::Spelling(s) => s.reason(),
                BadRequest::Uri => "bad_uri",
                BadRequest::Host => "bad_host",
            },
            Reason::Body(f) => f.reason(),
            Reason::NoCredentials => "no_credentials",
            Reason::Token(e) => e.reason(),
            Reason::InsufficientScope => "insufficient_scope",
            Reason::ClientCertRequired => "client_cert_required",
            Reason::PolicyDenied => "policy_denied",
            Reason::SigV4(e) => e.reason(),
            Reason::External(e) => e.reason(),
            Reason::ApiKey(e) => e.reason(),
            Reason::Throttled => "throttled",
            Reason::GatewayThrottle => "gateway_throttle",
            Reason::QuotaExceeded => "quota_exceeded",
            Reason::LimitsUnavailable => "limits_unavailable",
            Reason::Upstream(e) => e.reason(),
            Reason::UpgradeUnsupported => "upgrade_unsupported",
            Reason::OAuth(e) => e.code(),
        }
    }
}

/// `{"message":"..."}`, the body of every refusal but the issuer's, made at compile time.
macro_rules! msg {
    ($m:literal) => {
        concat!(r#"{"message":""#, $m, r#""}"#)
    };
}

impl From<ForwardError> for Refusal {
    fn from(e: ForwardError) -> Refusal {
        match e {
            ForwardError::Upstream(u) => Refusal::Upstream(u),
            ForwardError::Body(f) => Refusal::Body(f),
        }
    }
}

impl Refusal {
    /// What the refusal was, for the log and the `reason` label.
    pub fn reason(&self) -> Reason {
        match self {
            Refusal::NotFound => Reason::NoRoute,
            Refusal::NoApi => Reason::NoApi,
            Refusal::Misdirected => Reason::Misdirected,
            Refusal::BadRequest(b) => Reason::BadRequest(*b),
            Refusal::Body(f) => Reason::Body(*f),
            Refusal::NoCredentials => Reason::NoCredentials,
            Refusal::InvalidToken(e) => Reason::Token(*e),
            Refusal::InsufficientScope(_) => Reason::InsufficientScope,
            Refusal::ClientCertRequired => Reason::ClientCertRequired,
            Refusal::PolicyDenied => Reason::PolicyDenied,
            Refusal::SigV4(e) => Reason::SigV4(*e),
            Refusal::External(e) => Reason::External(*e),
            Refusal::ApiKey(e) => Reason::ApiKey(*e),
            Refusal::Throttled { .. } => Reason::Throttled,
            Refusal::GatewayThrottled { .. } => Reason::GatewayThrottle,
            Refusal::QuotaExceeded { .. } => Reason::QuotaExceeded,
            Refusal::LimitsUnavailable => Reason::LimitsUnavailable,
            Refusal::Upstream(e) => Reason::Upstream(*e),
            Refusal::UpgradeUnsupported => Reason::UpgradeUnsupported,
            Refusal::OAuth(e) => Reason::OAuth(*e),
        }
    }

    /// The status, headers and JSON body the client receives. `x-request-id` is added by the
    /// pipeline to every response, this one included.
    pub fn into_response(self) -> Response<ResponseBody> {
        use StatusCode as S;
        let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::new();
        let (status, message) = match self {
            Refusal::NotFound | Refusal::NoApi => (S::NOT_FOUND, msg!("Not Found")),
            Refusal::Misdirected => (S::MISDIRECTED_REQUEST, msg!("Misdirected Request")),
            Refusal::BadRequest(_) | Refusal::Body(BodyFailure::Aborted) => {
                (S::BAD_REQUEST, msg!("Bad Request"))
            }
            Refusal::Body(BodyFailure::TooLarge) => {
                // The rest of the body was not read: the connection cannot be reused.
                headers.push(close());
                (S::PAYLOAD_TOO_LARGE, msg!("Request Entity Too Large"))
            }
            Refusal::Body(BodyFailure::Stalled) => {
                headers.push(close());
                (S::REQUEST_TIMEOUT, msg!("Request Timeout"))
            }
            Refusal::NoCredentials => {
                headers.push((WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
                (S::UNAUTHORIZED, msg!("Unauthorized"))
            }
            Refusal::InvalidToken(e) => {
                headers.push((WWW_AUTHENTICATE, invalid_token_header(e)));
                (S::UNAUTHORIZED, msg!("Unauthorized"))
            }
            Refusal::InsufficientScope(challenge) => {
                headers.extend(challenge.map(|h| (WWW_AUTHENTICATE, h)));
                (S::FORBIDDEN, msg!("Forbidden"))
            }
            Refusal::SigV4(SigV4Error::Unsigned)
            | Refusal::External(ExternalError::MissingIdentity) => {
                (S::UNAUTHORIZED, msg!("Unauthorized"))
            }
            Refusal::ClientCertRequired
            | Refusal::PolicyDenied
            | Refusal::ApiKey(_)
            | Refusal::External(ExternalError::Denied)
            | Refusal::SigV4(
                SigV4Error::Malformed
                | SigV4Error::UnknownKey
                | SigV4Error::BadSignature
                | SigV4Error::Stale
                | SigV4Error::WrongScope
                | SigV4Error::BodyMismatch,
            ) => (S::FORBIDDEN, msg!("Forbidden")),
            Refusal::External(ExternalError::Failed) => {
                (S::INTERNAL_SERVER_ERROR, msg!("Internal server error"))
            }
            Refusal::Throttled { retry_after, limit }
            | Refusal::GatewayThrottled { retry_after, limit } => {
                headers.extend(limited(retry_after, limit));
                (S::TOO_MANY_REQUESTS, msg!("Too Many Requests"))
            }
            Refusal::QuotaExceeded { retry_after, limit } => {
                headers.extend(limited(retry_after, limit));
                (S::TOO_MANY_REQUESTS, msg!("Limit Exceeded"))
            }
            Refusal::LimitsUnavailable => {
                headers.push((RETRY_AFTER, HeaderValue::from_static("1")));
                (S::SERVICE_UNAVAILABLE, msg!("Service Unavailable"))
            }
            Refusal::Upstream(UpstreamError::Timeout) => {
                (S::GATEWAY_TIMEOUT, msg!("Endpoint request timed out"))
            }
            Refusal::Upstream(
                UpstreamError::Connect
                | UpstreamError::Exchange
                | UpstreamError::TargetUri
                | UpstreamError::UnaskedSwitch
                | UpstreamError::OtherProtocol,
            ) => (S::BAD_GATEWAY, msg!("Bad Gateway")),
            Refusal::UpgradeUnsupported => (S::NOT_IMPLEMENTED, msg!("Not Implemented")),
            Refusal::OAuth(e) => return oauth_response(e),
        };
        let mut resp = crate::answer::json_public(status, Bytes::from_static(message.as_bytes()));
        for (k, v) in headers {
            resp.headers_mut().insert(k, v);
        }
        resp
    }
}

/// RFC 6749 section 5.2: the issuer's error body, never cached.
fn oauth_response(e: OAuthError) -> Response<ResponseBody> {
    let (status, extra, body) = e.parts();
    let mut resp = crate::answer::json_public(status, body);
    let h = resp.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    if let Some((k, v)) = extra {
        h.insert(k, v);
    }
    resp
}

fn close() -> (HeaderName, HeaderValue) {
    (CONNECTION, HeaderValue::from_static("close"))
}

/// `retry-after` and the `ratelimit-*` headers of a 429.
fn limited(retry_after: u64, limit: u64) -> [(HeaderName, HeaderValue); 4] {
    [
        (RETRY_AFTER, HeaderValue::from(retry_after)),
        (RATELIMIT_LIMIT, HeaderValue::from(limit)),
        (RATELIMIT_REMAINING, HeaderValue::from_static("0")),
        (RATELIMIT_RESET, HeaderValue::from(retry_after)),
    ]
}

/// `ratelimit-limit` (IETF RateLimit header fields draft).
pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
/// `ratelimit-remaining`.
pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
/// `ratelimit-reset` (seconds).
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// `Bearer error="invalid_token", error_description="..."` for a token error.
fn invalid_token_header(e: TokenError) -> HeaderValue {
    // Descriptions are static ASCII without quotes, so the header is always valid.
    HeaderValue::from_str(&format!(
        "Bearer error=\"invalid_token\", error_description=\"{}\"",
        e.description()
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("Bearer error=\"invalid_token\""))
}
