//! Every refusal the gateway makes, and the one place that turns a refusal into what the client
//! sees. Bodies and headers follow the contract's table (section 3); the detail of *why* stays in
//! [`Refusal::reason`], which goes to the access log and the `reason` metric label only.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};

use crate::auth::TokenError;

/// The body of every response the gateway sends: a fixed one it made, or the upstream's stream.
pub type ResponseBody = Either<Full<Bytes>, hyper::body::Incoming>;

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
        }
    }

    /// The status, headers and JSON body the client receives. `x-request-id` is added by the
    /// pipeline to every response, this one included.
    pub fn into_response(self) -> Response<ResponseBody> {
        let (status, body, auth): (StatusCode, &'static str, Option<HeaderValue>) = match self {
            Refusal::NotFound => (StatusCode::NOT_FOUND, r#"{"message":"Not Found"}"#, None),
            Refusal::BadRequest(_) => (
                StatusCode::BAD_REQUEST,
                r#"{"message":"Bad Request"}"#,
                None,
            ),
            Refusal::NoCredentials => (
                StatusCode::UNAUTHORIZED,
                r#"{"message":"Unauthorized"}"#,
                Some(HeaderValue::from_static("Bearer")),
            ),
            Refusal::InvalidToken(e) => (
                StatusCode::UNAUTHORIZED,
                r#"{"message":"Unauthorized"}"#,
                Some(invalid_token_header(e)),
            ),
            Refusal::InsufficientScope(h) => {
                (StatusCode::FORBIDDEN, r#"{"message":"Forbidden"}"#, Some(h))
            }
            Refusal::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                r#"{"message":"Request Entity Too Large"}"#,
                None,
            ),
            Refusal::RequestTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                r#"{"message":"Request Timeout"}"#,
                None,
            ),
            Refusal::BadGateway(_) => (
                StatusCode::BAD_GATEWAY,
                r#"{"message":"Bad Gateway"}"#,
                None,
            ),
            Refusal::GatewayTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                r#"{"message":"Endpoint request timed out"}"#,
                None,
            ),
        };
        let mut resp = json_response(status, Bytes::from_static(body.as_bytes()));
        if let Some(h) = auth {
            resp.headers_mut().insert(WWW_AUTHENTICATE, h);
        }
        if status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body was not read: the connection cannot be reused.
            resp.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

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

/// A JSON response with the given status and body.
pub fn json_response(status: StatusCode, body: Bytes) -> Response<ResponseBody> {
    let mut resp = Response::new(Either::Left(Full::new(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
