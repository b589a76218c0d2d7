//! Every refusal the gateway makes, and the one place that turns a refusal into what the client
//! sees. Bodies and headers follow the contract's table (section 3); the detail of *why* stays in
//! [`Refusal::reason`], which goes to the access log and the `reason` metric label only.

use bytes::Bytes;
use http::header::{
    CACHE_CONTROL, CONNECTION, HeaderName, HeaderValue, PRAGMA, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{Response, StatusCode};

use crate::auth::TokenError;

pub use crate::answer::ResponseBody;

/// A refusal, decided by one phase of the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No route matches (and there is no `$default`).
    NotFound,
    /// The request cannot be routed safely: no Host, a dot-segment path, a bad URI.
    BadRequest(&'static str),
    /// The route needs a token and the request has none.
    NoCredentials,
    /// The token is not acceptable.
    InvalidToken(TokenError),
    /// The token is valid but holds none of the route's scopes; the value is the ready-made
    /// `www-authenticate` header naming them.
    InsufficientScope(HeaderValue),
    /// The body is (or grew) larger than the limit.
    PayloadTooLarge,
    /// The client stopped sending its body.
    RequestTimeout,
    /// The upstream could not be reached or answered badly; the reason is for logs.
    BadGateway(&'static str),
    /// The upstream did not answer in time.
    GatewayTimeout,
    /// The embedded issuer's token endpoint refused (RFC 6749 error body, not the gateway's).
    OAuth(crate::issuer::OAuthError),
    /// The route needs an API key and the request's is missing, unknown or disabled.
    ApiKey(crate::apikeys::KeyError),
    /// A throttle's bucket is empty.
    Throttled {
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
    /// The client IP is outside the route's resource policy.
    PolicyDenied,
    /// The route's (non-bearer) authorizer found no credentials: an unsigned request for a
    /// SigV4 route, a missing identity source for an external authorizer.
    Unauthorized(&'static str),
    /// The route's authorizer refused: a bad signature, an external deny, a missing scope.
    Forbidden(&'static str),
    /// The external authorizer could not give an answer (timeout, error, garbage).
    AuthorizerFailed,
    /// The client asked to switch protocols (WebSocket) on a route whose upstream speaks
    /// HTTP/2, where an HTTP/1.1 upgrade cannot be passed on.
    UpgradeUnsupported,
}

impl Refusal {
    /// The `reason` label: a short, bounded name of the check that refused.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NotFound => "no_route",
            Refusal::BadRequest(r) => r,
            Refusal::NoCredentials => "no_credentials",
            Refusal::InvalidToken(e) => e.reason(),
            Refusal::InsufficientScope(_) => "insufficient_scope",
            Refusal::PayloadTooLarge => "body_too_large",
            Refusal::RequestTimeout => "body_timeout",
            Refusal::BadGateway(r) => r,
            Refusal::GatewayTimeout => "upstream_timeout",
            Refusal::OAuth(e) => e.code(),
            Refusal::ApiKey(e) => e.reason(),
            Refusal::Throttled { .. } => "throttled",
            Refusal::QuotaExceeded { .. } => "quota_exceeded",
            Refusal::LimitsUnavailable => "limits_unavailable",
            Refusal::PolicyDenied => "policy_denied",
            Refusal::Unauthorized(r) | Refusal::Forbidden(r) => r,
            Refusal::AuthorizerFailed => "authorizer_failed",
            Refusal::UpgradeUnsupported => "upgrade_unsupported",
        }
    }

    /// The status, headers and JSON body the client receives. `x-request-id` is added by the
    /// pipeline to every response, this one included.
    pub fn into_response(self) -> Response<ResponseBody> {
        const fn fixed(s: &'static str) -> Bytes {
            Bytes::from_static(s.as_bytes())
        }
        let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::new();
        let (status, body) = match self {
            Refusal::NotFound => (StatusCode::NOT_FOUND, fixed(r#"{"message":"Not Found"}"#)),
            Refusal::BadRequest(_) => (
                StatusCode::BAD_REQUEST,
                fixed(r#"{"message":"Bad Request"}"#),
            ),
            Refusal::NoCredentials => {
                headers.push((WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
                (
                    StatusCode::UNAUTHORIZED,
                    fixed(r#"{"message":"Unauthorized"}"#),
                )
            }
            Refusal::InvalidToken(e) => {
                headers.push((WWW_AUTHENTICATE, invalid_token_header(e)));
                (
                    StatusCode::UNAUTHORIZED,
                    fixed(r#"{"message":"Unauthorized"}"#),
                )
            }
            Refusal::InsufficientScope(h) => {
                headers.push((WWW_AUTHENTICATE, h));
                (StatusCode::FORBIDDEN, fixed(r#"{"message":"Forbidden"}"#))
            }
            Refusal::PayloadTooLarge => {
                // The rest of the body was not read: the connection cannot be reused.
                headers.push((CONNECTION, HeaderValue::from_static("close")));
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    fixed(r#"{"message":"Request Entity Too Large"}"#),
                )
            }
            Refusal::RequestTimeout => {
                headers.push((CONNECTION, HeaderValue::from_static("close")));
                (
                    StatusCode::REQUEST_TIMEOUT,
                    fixed(r#"{"message":"Request Timeout"}"#),
                )
            }
            Refusal::BadGateway(_) => (
                StatusCode::BAD_GATEWAY,
                fixed(r#"{"message":"Bad Gateway"}"#),
            ),
            Refusal::GatewayTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                fixed(r#"{"message":"Endpoint request timed out"}"#),
            ),
            Refusal::ApiKey(_) => (StatusCode::FORBIDDEN, fixed(r#"{"message":"Forbidden"}"#)),
            Refusal::Throttled { retry_after, limit } => {
                headers.extend(limited(retry_after, limit));
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    fixed(r#"{"message":"Too Many Requests"}"#),
                )
            }
            Refusal::QuotaExceeded { retry_after, limit } => {
                headers.extend(limited(retry_after, limit));
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    fixed(r#"{"message":"Limit Exceeded"}"#),
                )
            }
            Refusal::LimitsUnavailable => {
                headers.push((RETRY_AFTER, HeaderValue::from_static("1")));
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    fixed(r#"{"message":"Service Unavailable"}"#),
                )
            }
            Refusal::PolicyDenied | Refusal::Forbidden(_) => {
                (StatusCode::FORBIDDEN, fixed(r#"{"message":"Forbidden"}"#))
            }
            Refusal::Unauthorized(_) => (
                StatusCode::UNAUTHORIZED,
                fixed(r#"{"message":"Unauthorized"}"#),
            ),
            Refusal::AuthorizerFailed => (
                StatusCode::INTERNAL_SERVER_ERROR,
                fixed(r#"{"message":"Internal server error"}"#),
            ),
            Refusal::UpgradeUnsupported => (
                StatusCode::NOT_IMPLEMENTED,
                fixed(r#"{"message":"Not Implemented"}"#),
            ),
            Refusal::OAuth(e) => {
                let (status, extra, body) = e.parts();
                headers.push((CACHE_CONTROL, HeaderValue::from_static("no-store")));
                headers.push((PRAGMA, HeaderValue::from_static("no-cache")));
                headers.extend(extra);
                (status, Bytes::from(body))
            }
        };
        let mut resp = crate::answer::json_public(status, body);
        for (k, v) in headers {
            resp.headers_mut().insert(k, v);
        }
        resp
    }
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

/// `Bearer error="insufficient_scope", scope="a b"` for a route's scopes. Scope strings are
/// validated at config load to be header-safe.
pub fn insufficient_scope_header(scopes: &[Box<str>]) -> Result<HeaderValue, String> {
    let joined = scopes.iter().map(|s| &**s).collect::<Vec<_>>().join(" ");
    HeaderValue::from_str(&format!(
        "Bearer error=\"insufficient_scope\", scope=\"{joined}\""
    ))
    .map_err(|_| format!("scopes {joined:?} cannot be sent in a header"))
}
