//! The embedded OAuth2 token issuer: a client-credentials token endpoint with resource servers
//! and custom scopes, the discovery document, and the JWKS, shaped like a managed user pool's
//! machine-to-machine tokens. Keys live in [`keys::KeyRing`]; failed client authentications
//! are counted per client IP, atomically, so secrets cannot be guessed online (see
//! [`FailureCounter`]).

pub mod keys;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use self::keys::KeyRing;
pub use self::keys::MAX_TOKEN_TTL;
use crate::answer::ResponseBody;
use crate::body::{BodyFailure, ReqBody};

/// Shortest token lifetime accepted in config.
pub const MIN_TOKEN_TTL: Duration = Duration::from_secs(300);
/// Default token lifetime (a managed user pool's default for access tokens).
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Largest token request body; real ones are a few hundred bytes.
pub const MAX_TOKEN_REQUEST_BYTES: usize = 16 * 1024;
/// Time allowed to receive a token request body.
pub const TOKEN_REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Failed client authentications allowed per client IP within [`FAILURE_WINDOW`]: enough for a
/// client with a mistyped or rotated secret to notice, far too few to guess one.
pub const MAX_FAILURES: u32 = 10;
/// The window over which failures are counted; also the `retry-after` of a 429.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(300);
/// Most client IPs whose failures are tracked at once (bounded memory).
pub const FAILURE_TRACKING_CAPACITY: u64 = 100_000;

/// Counts failed client authentications per client IP; outlives snapshots so a reload does not
/// forgive them.
///
/// The limit is enforced by `FailureCounter::reserve`: every token request whose credentials
/// are about to be compared first takes one of its IP's [`MAX_FAILURES`] slots with a single
/// atomic compare-and-increment, and is refused (429 `slow_down`) when none is left. A wrong
/// secret or unknown client id keeps its slot (it is the failure); a correct secret gives it
/// back, so successes neither use up nor reset an IP's budget. However many attempts race, at
/// most [`MAX_FAILURES`] per window are ever compared and answered `invalid_client`.
///
/// There is deliberately no per-client-id lockout: it would let anyone who knows a client id
/// (they are not secret) lock that client out by sending wrong secrets. Counting per
/// (client id, IP) as well would add nothing, since the per-IP count already covers every
/// client id. What bounds guessing across many IPs is the number of IPs times
/// [`MAX_FAILURES`] per window; client secrets should be long random values.
#[derive(Clone)]
pub struct FailureCounter {
    counts: moka::sync::Cache<String, Arc<AtomicU32>>,
}

impl Default for FailureCounter {
    fn default() -> Self {
        FailureCounter {
            counts: moka::sync::Cache::builder()
                .max_capacity(FAILURE_TRACKING_CAPACITY)
                .time_to_live(FAILURE_WINDOW)
                .build(),
        }
    }
}

impl FailureCounter {
    /// Whether `key` has no failure left in this window. A cheap early refusal before the body
    /// is read; it is not the limit itself (see [`FailureCounter::reserve`]).
    fn exhausted(&self, key: &str) -> bool {
        self.counts
            .get(key)
            .is_some_and(|c| c.load(Ordering::Acquire) >= MAX_FAILURES)
    }

    /// Takes one failure slot of `key` for an attempt about to be checked, or `None` when all
    /// [`MAX_FAILURES`] are taken. The increment and the comparison with the limit are one
    /// atomic step, so concurrent attempts cannot overshoot. The window of a key starts when
    /// its entry is created (its first reservation) and lasts [`FAILURE_WINDOW`].
    fn reserve(&self, key: &str) -> Option<Reservation> {
        let count = self
            .counts
            .get_with_by_ref(key, || Arc::new(AtomicU32::new(0)));
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (c < MAX_FAILURES).then_some(c + 1)
            })
            .ok()
            .map(|_| Reservation { count: Some(count) })
    }
}

/// One failure slot taken by [`FailureCounter::reserve`]. Dropping it gives the slot back (the
/// attempt did not fail); [`Reservation::fail`] keeps it counted.
#[must_use = "dropping a reservation gives its slot back"]
struct Reservation {
    count: Option<Arc<AtomicU32>>,
}

impl Reservation {
    /// The attempt failed: its slot stays taken until the window ends.
    fn fail(mut self) {
        self.count = None;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(c) = self.count.take() {
            c.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// An OAuth2 error of the token endpoint (RFC 6749 section 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthError {
    /// Unknown client, wrong secret, or no client authentication. `basic`: HTTP Basic was tried.
    InvalidClient {
        /// Whether the client tried HTTP Basic (then `www-authenticate: Basic` is sent).
        basic: bool,
    },
    /// A required parameter is missing, repeated or malformed.
    InvalidRequest(&'static str),
    /// A scope the client may not have, or that does not exist.
    InvalidScope,
    /// A grant type other than `client_credentials`.
    UnsupportedGrantType,
    /// The client may not get tokens (it has no scopes).
    UnauthorizedClient,
    /// Too many failed attempts from this client IP; try again later.
    SlowDown,
    /// Not a POST.
    MethodNotAllowed,
}

impl OAuthError {
    /// The RFC 6749 `error` code.
    pub fn code(self) -> &'static str {
        match self {
            OAuthError::InvalidClient { .. } => "invalid_client",
            OAuthError::InvalidRequest(_) | OAuthError::MethodNotAllowed => "invalid_request",
            OAuthError::InvalidScope => "invalid_scope",
            OAuthError::UnsupportedGrantType => "unsupported_grant_type",
            OAuthError::UnauthorizedClient => "unauthorized_client",
            OAuthError::SlowDown => "slow_down",
        }
    }

    /// Status, headers and JSON body.
    pub fn parts(
        self,
    ) -> (
        StatusCode,
        Option<(header::HeaderName, HeaderValue)>,
        String,
    ) {
        let (status, extra, description) = match self {
            OAuthError::InvalidClient { basic } => (
                StatusCode::UNAUTHORIZED,
                basic.then(|| {
                    (
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Basic realm=\"tollgate\""),
                    )
                }),
                "client authentication failed",
            ),
            OAuthError::InvalidRequest(d) => (StatusCode::BAD_REQUEST, None, d),
            OAuthError::InvalidScope => (
                StatusCode::BAD_REQUEST,
                None,
                "a requested scope is invalid or not allowed for this client",
            ),
            OAuthError::UnsupportedGrantType => (
                StatusCode::BAD_REQUEST,
                None,
                "only grant_type=client_credentials is supported",
            ),
            OAuthError::UnauthorizedClient => (
                StatusCode::BAD_REQUEST,
                None,
                "this client may not use the client_credentials grant",
            ),
            OAuthError::SlowDown => (
                StatusCode::TOO_MANY_REQUESTS,
                Some((
                    header::RETRY_AFTER,
                    HeaderValue::from(FAILURE_WINDOW.as_secs()),
                )),
                "too many failed attempts; retry later",
            ),
            OAuthError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                Some((header::ALLOW, HeaderValue::from_static("POST"))),
                "the token endpoint accepts POST only",
            ),
        };
        let body =
            serde_json::json!({"error": self.code(), "error_description": description}).to_string();
        (status, extra, body)
    }
}

/// Which issuer endpoint a built-in route serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/oauth2/token`
    Token,
    /// `/.well-known/openid-configuration` and `/.well-known/oauth-authorization-server`
    Discovery,
    /// `/.well-known/jwks.json`
    Jwks,
}

/// The built-in routes of an issuer.
pub const ROUTES: [(&str, Endpoint); 4] = [
    ("ANY /oauth2/token", Endpoint::Token),
    ("GET /.well-known/openid-configuration", Endpoint::Discovery),
    (
        "GET /.well-known/oauth-authorization-server",
        Endpoint::Discovery,
    ),
    ("GET /.well-known/jwks.json", Endpoint::Jwks),
];

/// An app client as the issuer keeps it.
#[derive(Debug)]
pub struct Client {
    /// SHA-256 of the secret (compared in constant time).
    pub secret_digest: [u8; 32],
    /// Scopes it may ask for.
    pub scopes: Vec<String>,
}

/// A compiled issuer.
pub struct Issuer {
    url: String,
    ttl: Duration,
    clients: HashMap<String, Client>,
    keys: Arc<KeyRing>,
    failures: FailureCounter,
    discovery: Bytes,
    issued: prometheus::IntCounterVec,
    errors: prometheus::IntCounterVec,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer").field("url", &self.url).finish()
    }
}

/// Constant-time equality of two digests.
fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

fn json_reply(
    status: StatusCode,
    body: impl Into<Bytes>,
    cacheable: bool,
) -> Response<ResponseBody> {
    let mut r = crate::answer::json_public(status, body);
    let h = r.headers_mut();
    if cacheable {
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=300"),
        );
    } else {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    }
    r
}

/// The credentials a token request presented.
struct Credentials {
    client_id: String,
    secret: String,
    basic: bool,
}

impl Issuer {
    /// Builds an issuer. `clients` must already be validated against the resource servers.
    pub fn new(
        url: String,
        ttl: Duration,
        clients: HashMap<String, Client>,
        scopes_supported: Vec<String>,
        keys: Arc<KeyRing>,
        failures: FailureCounter,
        metrics: &crate::metrics::Metrics,
    ) -> Issuer {
        let base = url.trim_end_matches('/');
        let discovery = serde_json::json!({
            "issuer": url,
            "token_endpoint": format!("{base}/oauth2/token"),
            "jwks_uri": format!("{base}/.well-known/jwks.json"),
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "scopes_supported": scopes_supported,
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        })
        .to_string();
        Issuer {
            url,
            ttl,
            clients,
            keys,
            failures,
            discovery: Bytes::from(discovery),
            issued: metrics.tokens_issued.clone(),
            errors: metrics.token_errors.clone(),
        }
    }

    /// The `iss` of issued tokens.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The key ring.
    pub fn keys(&self) -> &Arc<KeyRing> {
        &self.keys
    }

    /// Serves one issuer endpoint. The token endpoint refuses with an RFC 6749 error, counted in
    /// `tollgate_issuer_errors_total`.
    pub async fn serve(
        &self,
        endpoint: Endpoint,
        req: Request<ReqBody>,
        client_ip: IpAddr,
    ) -> Result<Response<ResponseBody>, OAuthError> {
        match endpoint {
            Endpoint::Discovery => Ok(json_reply(StatusCode::OK, self.discovery.clone(), true)),
            Endpoint::Jwks => Ok(json_reply(StatusCode::OK, self.keys.jwks(), true)),
            Endpoint::Token => self.token(req, client_ip).await.inspect_err(|e| {
                self.errors.with_label_values(&[e.code()]).inc();
            }),
        }
    }

    async fn token(
        &self,
        req: Request<ReqBody>,
        client_ip: IpAddr,
    ) -> Result<Response<ResponseBody>, OAuthError> {
        if req.method() != Method::POST {
            return Err(OAuthError::MethodNotAllowed);
        }
        let form_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                v.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        if !form_type {
            return Err(OAuthError::InvalidRequest(
                "content-type must be application/x-www-form-urlencoded",
            ));
        }
        let ip_key = format!("ip:{client_ip}");
        // Early refusal, so a tripped IP's bodies are not even read; the limit itself is the
        // reservation below.
        if self.failures.exhausted(&ip_key) {
            return Err(OAuthError::SlowDown);
        }
        let (parts, body) = req.into_parts();
        let body = body
            .collect(MAX_TOKEN_REQUEST_BYTES, TOKEN_REQUEST_BODY_TIMEOUT)
            .await
            .map_err(|e| match e {
                BodyFailure::Stalled => {
                    OAuthError::InvalidRequest("the request body did not arrive in time")
                }
                BodyFailure::TooLarge | BodyFailure::Aborted => {
                    OAuthError::InvalidRequest("the request body is too large or incomplete")
                }
            })?;
        let mut form: HashMap<String, String> = HashMap::new();
        for (k, v) in form_urlencoded::parse(&body) {
            if form.insert(k.into_owned(), v.into_owned()).is_some() {
                return Err(OAuthError::InvalidRequest(
                    "a parameter appears more than once",
                ));
            }
        }
        match form.get("grant_type").map(String::as_str) {
            None | Some("") => return Err(OAuthError::InvalidRequest("grant_type is required")),
            Some("client_credentials") => {}
            Some(_) => return Err(OAuthError::UnsupportedGrantType),
        }
        let creds = credentials(&parts.headers, &form)?;
        // Count the attempt before comparing: concurrent attempts from one IP cannot all pass
        // a check made before any of them was counted.
        let slot = self.failures.reserve(&ip_key).ok_or(OAuthError::SlowDown)?;
        let known = self.clients.get(&creds.client_id);
        let presented = crate::util::sha256(creds.secret.as_bytes());
        // Unknown clients still pay for a comparison, so timing does not tell ids apart.
        let expected = known.map_or([0u8; 32], |c| c.secret_digest);
        let secret_ok = digests_equal(&presented, &expected);
        let client = match known {
            Some(c) if secret_ok => {
                drop(slot);
                c
            }
            _ => {
                slot.fail();
                tracing::info!(client_id_known = known.is_some(), %client_ip, "token request with bad client credentials");
                return Err(OAuthError::InvalidClient { basic: creds.basic });
            }
        };
        if client.scopes.is_empty() {
            return Err(OAuthError::UnauthorizedClient);
        }
        let scopes: Vec<&str> = match form
            .get("scope")
            .map(|s| s.split_whitespace().collect::<Vec<_>>())
        {
            None => client.scopes.iter().map(String::as_str).collect(),
            Some(asked) if asked.is_empty() => client.scopes.iter().map(String::as_str).collect(),
            Some(asked) => {
                if asked.iter().any(|s| !client.scopes.iter().any(|c| c == s)) {
                    return Err(OAuthError::InvalidScope);
                }
                let mut unique: Vec<&str> = Vec::new();
                for s in asked {
                    if !unique.contains(&s) {
                        unique.push(s);
                    }
                }
                unique
            }
        };
        let token = self.mint(&creds.client_id, &scopes.join(" "))?;
        self.issued
            .with_label_values(&[creds.client_id.as_str()])
            .inc();
        let body = serde_json::json!({
            "access_token": token,
            "expires_in": self.ttl.as_secs(),
            "token_type": "Bearer",
        })
        .to_string();
        Ok(json_reply(StatusCode::OK, body, false))
    }

    /// Signs an access token for `client_id` with `scope`.
    fn mint(&self, client_id: &str, scope: &str) -> Result<String, OAuthError> {
        let key = self.keys.current();
        let now = crate::auth::now_unix();
        let claims = serde_json::json!({
            "sub": client_id,
            "token_use": "access",
            "scope": scope,
            "auth_time": now,
            "iss": self.url,
            "exp": now + self.ttl.as_secs(),
            "iat": now,
            "version": 2,
            "jti": uuid::Uuid::new_v4().to_string(),
            "client_id": client_id,
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, &claims, &key.encoding).map_err(|e| {
            tracing::error!(error = %e, "signing a token failed");
            OAuthError::InvalidRequest("the token could not be issued")
        })
    }
}

/// Client credentials from HTTP Basic (`client_secret_basic`) or the form
/// (`client_secret_post`). Refuses both at once, a malformed Basic header, and neither.
fn credentials(
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<Credentials, OAuthError> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .map(|(_, rest)| rest.trim());
    match basic {
        Some(b64) => {
            if form.contains_key("client_secret") {
                return Err(OAuthError::InvalidRequest(
                    "use one client authentication method, not two",
                ));
            }
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
                .ok_or(OAuthError::InvalidClient { basic: true })?;
            let (id, secret) = decoded
                .split_once(':')
                .ok_or(OAuthError::InvalidClient { basic: true })?;
            // RFC 6749 2.3.1: both parts are form-urlencoded before base64.
            let id: String = form_urlencoded::parse(format!("a={id}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            let secret: String = form_urlencoded::parse(format!("a={secret}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            if let Some(form_id) = form.get("client_id")
                && *form_id != id
            {
                return Err(OAuthError::InvalidRequest(
                    "client_id differs from the authenticated client",
                ));
            }
            Ok(Credentials {
                client_id: id,
                secret,
                basic: true,
            })
        }
        None => match (form.get("client_id"), form.get("client_secret")) {
            (Some(id), Some(secret)) if !id.is_empty() => Ok(Credentials {
                client_id: id.clone(),
                secret: secret.clone(),
                basic: false,
            }),
            _ => Err(OAuthError::InvalidClient { basic: false }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let mut h = HeaderMap::new();
        let raw = base64::engine::general_purpose::STANDARD.encode("my%20client:p%3Ass%2Bw");
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {raw}")).unwrap(),
        );
        let c = credentials(&h, &form(&[])).unwrap();
        assert_eq!(
            (c.client_id.as_str(), c.secret.as_str(), c.basic),
            ("my client", "p:ss+w", true)
        );
        assert_eq!(
            credentials(&h, &form(&[("client_secret", "x")])).err(),
            Some(OAuthError::InvalidRequest(
                "use one client authentication method, not two"
            ))
        );
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert_eq!(
            credentials(&h, &form(&[])).err(),
            Some(OAuthError::InvalidClient { basic: true })
        );
    }

    #[test]
    fn post_credentials_and_none() {
        let h = HeaderMap::new();
        let c = credentials(&h, &form(&[("client_id", "a"), ("client_secret", "b")])).unwrap();
        assert!(!c.basic);
        assert_eq!(
            credentials(&h, &form(&[("client_id", "a")])).err(),
            Some(OAuthError::InvalidClient { basic: false })
        );
    }

    #[test]
    fn failure_counter_trips_at_the_limit() {
        let f = FailureCounter::default();
        for _ in 0..MAX_FAILURES - 1 {
            f.reserve("ip:1").unwrap().fail();
        }
        assert!(!f.exhausted("ip:1"));
        f.reserve("ip:1").unwrap().fail();
        assert!(f.exhausted("ip:1"));
        assert!(f.reserve("ip:1").is_none(), "no slot is left");
        assert!(!f.exhausted("ip:2"));
    }

    #[test]
    fn a_reservation_given_back_does_not_count() {
        let f = FailureCounter::default();
        for _ in 0..3 * MAX_FAILURES {
            drop(
                f.reserve("ip:1")
                    .expect("successes never use up the budget"),
            );
        }
        for _ in 0..MAX_FAILURES {
            f.reserve("ip:1").unwrap().fail();
        }
        assert!(f.reserve("ip:1").is_none());
    }

    #[test]
    fn concurrent_reservations_never_exceed_the_limit() {
        let f = FailureCounter::default();
        let barrier = std::sync::Barrier::new(64);
        let granted = AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..64 {
                s.spawn(|| {
                    barrier.wait();
                    if let Some(r) = f.reserve("ip:1") {
                        granted.fetch_add(1, Ordering::Relaxed);
                        r.fail();
                    }
                });
            }
        });
        assert_eq!(granted.load(Ordering::Relaxed), MAX_FAILURES);
    }
}
