//! The pipeline driven in-process, without a listener or a client socket: a gateway loaded
//! offline, requests with fixed bodies handed to `pipeline::handle` with the connection they
//! would have come from. Every refusal row of the contract's table (section 3), the 400s before
//! it, and the order of the phases: a request that several phases would refuse gets the
//! earliest one's answer, and the `reason` label names that phase.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use tollgate::body::ClientBody;
use tollgate::gateway::Gateway;
use tollgate::service::ConnInfo;

use crate::external::Authz;

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";
/// Outside the `office` policy.
const OUTSIDE: &str = "198.51.100.7:40000";
/// Inside it.
const OFFICE: &str = "192.0.2.10:40000";

struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_else(|| panic!("no {name} in {:?}", self.headers))
    }
}

/// A gateway loaded as `tollgate run` would (offline: no listener is bound, nothing fetched),
/// whose upstreams are a closed port (`dead`) and a socket that never answers (`silent`).
struct Offline {
    gw: Arc<Gateway>,
    _dir: tempfile::TempDir,
    _silent: std::net::TcpListener,
    _authz: Authz,
}

async fn offline() -> Offline {
    // Bound and listening, never accepted: connections complete in the backlog, no answer.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let authz = Authz::start().await;
    let yaml = format!(
        r#"listeners: [{{ bind: "127.0.0.1:0" }}]
admin: {{ bind: "127.0.0.1:0" }}
limits: {{ max_body: 1KiB }}
cors: {{ allow_origins: ["https://app.example"] }}
authorizers:
  partner: {{ type: jwt, issuer: partner-idp, algorithms: [HS256], secret: "{SECRET}" }}
  ext: {{ type: http, url: "{authz}", identity: ["header:Authorization"] }}
policies:
  office: {{ allow: [192.0.2.0/24] }}
usage_plans:
  gold: {{ throttle: {{ rate: 0.01, burst: 1 }} }}
  metered: {{ quota: {{ limit: 1, period: day }} }}
api_keys:
  keys:
    - {{ id: k-gold, key: key-gold, plan: gold }}
    - {{ id: k-metered, key: key-metered, plan: metered }}
    - {{ id: k-off, key: key-off, plan: gold, enabled: false }}
upstreams:
  dead: {{ targets: ["http://{dead}"] }}
  silent: {{ targets: ["http://{silent}"], timeout: 300ms }}
routes:
  - {{ route: "GET /office", authorizer: none, policy: office, respond: {{ body: ok }} }}
  - {{ route: "GET /office/jwt", authorizer: partner, policy: office, respond: {{ body: ok }} }}
  - {{ route: "GET /jwt", authorizer: partner, scopes: [read], respond: {{ body: ok }} }}
  - {{ route: "GET /jwt/keyed", authorizer: partner, scopes: [read], api_key_required: true, respond: {{ body: ok }} }}
  - {{ route: "GET /ext", authorizer: ext, respond: {{ body: ok }} }}
  - {{ route: "GET /keyed", authorizer: none, api_key_required: true, respond: {{ body: ok }} }}
  - {{ route: "POST /upload", authorizer: none, respond: {{ body: ok }} }}
  - {{ route: "GET /files/{{path+}}", authorizer: none, respond: {{ body: ok }} }}
  - {{ route: "GET /dead", authorizer: none, upstream: dead }}
  - {{ route: "GET /silent", authorizer: none, upstream: silent }}
"#,
        authz = authz.url(),
        dead = dead,
        silent = silent.local_addr().unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, yaml).unwrap();
    let gw = Gateway::load(&path, false).unwrap_or_else(|e| panic!("config refused: {e:?}"));
    Offline {
        gw: Arc::new(gw),
        _dir: dir,
        _silent: silent,
        _authz: authz,
    }
}

impl Offline {
    async fn send(&self, from: &str, req: Request<ClientBody>) -> Answer {
        let conn = Arc::new(ConnInfo {
            peer: from.parse::<SocketAddr>().unwrap(),
            tls: false,
            client_cert: None,
            sni: None,
        });
        let resp: Response<_> = tollgate::pipeline::handle(self.gw.clone(), conn, req).await;
        let (parts, body) = resp.into_parts();
        let body: Bytes = body.collect().await.unwrap().to_bytes();
        Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    }

    async fn get(&self, from: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut b = Request::get(path).header("host", "gw");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.send(from, b.body(ClientBody::from_bytes("")).unwrap())
            .await
    }

    /// `tollgate_denied_total{api, route, reason}` (the default API).
    fn denied(&self, route: &str, reason: &str) -> u64 {
        let text = self.gw.metrics().render();
        let line = format!(
            "tollgate_denied_total{{api=\"default\",reason=\"{reason}\",route=\"{route}\",stage=\"\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&line))
            .map_or(0, |n| n.trim().parse().unwrap())
    }
}

fn token(scope: &str) -> String {
    let now = tollgate::auth::now_unix();
    let claims = serde_json::json!({"iss": "partner-idp", "sub": "user-7", "scope": scope,
                                    "iat": now, "exp": now + 600});
    let t = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    format!("Bearer {t}")
}

fn assert_refused(a: &Answer, status: u16, body: &str) {
    assert_eq!(a.status, status, "{}", a.body);
    assert_eq!(a.body, body);
    assert_eq!(a.header("content-type"), "application/json");
    assert!(!a.header("x-request-id").is_empty());
}

const NOT_FOUND: &str = r#"{"message":"Not Found"}"#;
const FORBIDDEN: &str = r#"{"message":"Forbidden"}"#;
const UNAUTHORIZED: &str = r#"{"message":"Unauthorized"}"#;
const BAD_REQUEST: &str = r#"{"message":"Bad Request"}"#;

#[tokio::test]
async fn every_refusal_row_of_the_contract() {
    let g = offline().await;

    // Route match.
    let a = g.get(OUTSIDE, "/nowhere", &[]).await;
    assert_refused(&a, 404, NOT_FOUND);
    assert_eq!(g.denied("$unmatched", "no_route"), 1);

    // CORS preflight: answered before the policy and the authorizer would refuse it.
    let a = g
        .send(
            OUTSIDE,
            Request::options("/office/jwt")
                .header("host", "gw")
                .header("origin", "https://app.example")
                .header("access-control-request-method", "GET")
                .body(ClientBody::from_bytes(""))
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, 204);
    assert!(a.header("access-control-allow-methods").contains("GET"));

    // Resource policy.
    let a = g.get(OUTSIDE, "/office", &[]).await;
    assert_refused(&a, 403, FORBIDDEN);
    assert_eq!(g.denied("GET /office", "policy_denied"), 1);
    assert_eq!(g.get(OFFICE, "/office", &[]).await.status, 200);

    // Authorizer: no credentials, a bad token, a valid one without the scope.
    let a = g.get(OUTSIDE, "/jwt", &[]).await;
    assert_refused(&a, 401, UNAUTHORIZED);
    assert_eq!(a.header("www-authenticate"), "Bearer");
    let a = g
        .get(OUTSIDE, "/jwt", &[("authorization", "Bearer not.a.token")])
        .await;
    assert_refused(&a, 401, UNAUTHORIZED);
    assert!(
        a.header("www-authenticate")
            .starts_with("Bearer error=\"invalid_token\", error_description=\""),
        "{:?}",
        a.headers
    );
    let a = g
        .get(OUTSIDE, "/jwt", &[("authorization", &token("write"))])
        .await;
    assert_refused(&a, 403, FORBIDDEN);
    assert_eq!(
        a.header("www-authenticate"),
        "Bearer error=\"insufficient_scope\", scope=\"read\""
    );
    assert_eq!(g.denied("GET /jwt", "insufficient_scope"), 1);
    assert_eq!(
        g.get(OUTSIDE, "/jwt", &[("authorization", &token("read"))])
            .await
            .status,
        200
    );

    // External authorizer: denies, fails.
    let a = g
        .get(OUTSIDE, "/ext", &[("authorization", "deny-mallory")])
        .await;
    assert_refused(&a, 403, FORBIDDEN);
    let a = g.get(OUTSIDE, "/ext", &[("authorization", "500")]).await;
    assert_refused(&a, 500, r#"{"message":"Internal server error"}"#);
    assert_eq!(g.denied("GET /ext", "authorizer_failed"), 1);

    // API key missing, unknown, disabled.
    for key in [None, Some("key-nobody"), Some("key-off")] {
        let headers: Vec<(&str, &str)> = key.map(|k| ("x-api-key", k)).into_iter().collect();
        let a = g.get(OUTSIDE, "/keyed", &headers).await;
        assert_refused(&a, 403, FORBIDDEN);
    }
    for reason in ["api_key_missing", "api_key_unknown", "api_key_disabled"] {
        assert_eq!(g.denied("GET /keyed", reason), 1, "{reason}");
    }

    // Throttle (the plan's bucket holds one request), then quota (one a day).
    let gold = [("x-api-key", "key-gold")];
    assert_eq!(g.get(OUTSIDE, "/keyed", &gold).await.status, 200);
    let a = g.get(OUTSIDE, "/keyed", &gold).await;
    assert_refused(&a, 429, r#"{"message":"Too Many Requests"}"#);
    assert!(a.header("retry-after").parse::<u64>().unwrap() > 0);
    let metered = [("x-api-key", "key-metered")];
    assert_eq!(g.get(OUTSIDE, "/keyed", &metered).await.status, 200);
    let a = g.get(OUTSIDE, "/keyed", &metered).await;
    assert_refused(&a, 429, r#"{"message":"Limit Exceeded"}"#);
    let to_midnight = a.header("retry-after").parse::<u64>().unwrap();
    assert!((1..=86_400).contains(&to_midnight), "{to_midnight}");

    // Request body over the limit (1 KiB), declared.
    let a = g
        .send(
            OUTSIDE,
            Request::post("/upload")
                .header("host", "gw")
                .header("content-length", "2048")
                .body(ClientBody::from_bytes(vec![b'x'; 2048]))
                .unwrap(),
        )
        .await;
    assert_refused(&a, 413, r#"{"message":"Request Entity Too Large"}"#);

    // Upstream unreachable, upstream timeout.
    let a = g.get(OUTSIDE, "/dead", &[]).await;
    assert_refused(&a, 502, r#"{"message":"Bad Gateway"}"#);
    assert_eq!(g.denied("GET /dead", "upstream_connect"), 1);
    let a = g.get(OUTSIDE, "/silent", &[]).await;
    assert_refused(&a, 504, r#"{"message":"Endpoint request timed out"}"#);
    assert_eq!(g.denied("GET /silent", "upstream_timeout"), 1);
}

#[tokio::test]
async fn requests_that_cannot_be_decided_safely_are_400_before_routing() {
    let g = offline().await;
    for (path, route, reason) in [
        ("/of%66ice/../jwt", "$unmatched", "dot_segment"),
        ("/office%00", "$unmatched", "path_control_byte"),
        // Refused by the route's path rules: routing did not succeed, so no route label.
        ("/files/a%2fb", "$unmatched", "path_encoded_slash"),
        ("/files/a//b", "$unmatched", "path_empty_segment"),
        ("/files/a;b", "$unmatched", "path_semicolon"),
    ] {
        let a = g.get(OUTSIDE, path, &[]).await;
        assert_refused(&a, 400, BAD_REQUEST);
        assert_eq!(g.denied(route, reason), 1, "{path}");
    }
    assert_eq!(g.get(OUTSIDE, "/files/a/b", &[]).await.status, 200);
    let a = g
        .send(
            OUTSIDE,
            Request::builder()
                .method("get")
                .uri("/office")
                .header("host", "gw")
                .body(ClientBody::from_bytes(""))
                .unwrap(),
        )
        .await;
    assert_refused(&a, 400, BAD_REQUEST);
    let a = g
        .get(
            OUTSIDE,
            "/jwt",
            &[
                ("authorization", &token("read")),
                ("authorization", "Bearer x"),
            ],
        )
        .await;
    assert_refused(&a, 400, BAD_REQUEST);
    assert_eq!(g.denied("$unmatched", "duplicate_credential"), 1);
    assert_eq!(g.denied("$unmatched", "method_case"), 1);
    // An escaped unreserved character is decoded before routing: `/of%66ice` is `/office`,
    // and its policy applies.
    let a = g.get(OUTSIDE, "/of%66ice", &[]).await;
    assert_refused(&a, 403, FORBIDDEN);
}

#[tokio::test]
async fn the_earliest_phase_that_refuses_answers() {
    let g = offline().await;
    // No route beats a bad token.
    let a = g
        .get(OUTSIDE, "/nowhere", &[("authorization", "Bearer junk")])
        .await;
    assert_eq!(a.status, 404);
    // The policy beats the authorizer: outside the office without a token is 403, not 401.
    let a = g.get(OUTSIDE, "/office/jwt", &[]).await;
    assert_refused(&a, 403, FORBIDDEN);
    assert_eq!(g.denied("GET /office/jwt", "policy_denied"), 1);
    assert_eq!(g.get(OFFICE, "/office/jwt", &[]).await.status, 401);
    // The authorizer beats the API key: no token and no key is 401.
    let a = g.get(OUTSIDE, "/jwt/keyed", &[]).await;
    assert_eq!(a.status, 401);
    assert_eq!(g.denied("GET /jwt/keyed", "no_credentials"), 1);
    // The scope beats the key: a token without the scope and no key is the scope's 403.
    let a = g
        .get(OUTSIDE, "/jwt/keyed", &[("authorization", &token("write"))])
        .await;
    assert_eq!(a.status, 403);
    assert!(a.header("www-authenticate").contains("insufficient_scope"));
    assert_eq!(g.denied("GET /jwt/keyed", "api_key_missing"), 0);
    // The key beats the throttle: with the bucket empty, a missing key is still 403.
    let gold = [("x-api-key", "key-gold")];
    assert_eq!(g.get(OUTSIDE, "/keyed", &gold).await.status, 200);
    assert_eq!(g.get(OUTSIDE, "/keyed", &gold).await.status, 429);
    let a = g.get(OUTSIDE, "/keyed", &[]).await;
    assert_refused(&a, 403, FORBIDDEN);
    assert_eq!(g.denied("GET /keyed", "throttled"), 1);
    assert_eq!(g.denied("GET /keyed", "api_key_missing"), 1);
}

/// Every keep-alive connection's transport moves the request's future into place before it
/// polls it, and holds it while the request is served: the phases' state (upstream call,
/// external authorizer, Redis) is boxed, so that move copies a few hundred bytes, not KiBs.
#[tokio::test]
async fn a_requests_future_is_small_enough_to_move() {
    let o = offline().await;
    let conn = Arc::new(ConnInfo {
        peer: "192.0.2.1:5000".parse().unwrap(),
        tls: false,
        client_cert: None,
        sni: None,
    });
    let req = Request::get("/office")
        .header("host", "gw")
        .body(ClientBody::from_bytes(""))
        .unwrap();
    let fut = tollgate::pipeline::handle(o.gw.clone(), conn, req);
    let size = std::mem::size_of_val(&fut);
    eprintln!("pipeline::handle future: {size} bytes");
    assert!(size <= 2048, "the request's future is {size} bytes");
    assert_eq!(fut.await.status(), 200);
}
