//! The external HTTP authorizer against a real authorizer server: a hyper server on a real
//! socket that decides by the payload's `authorization` header, counts its calls and keeps the
//! last payload. First `ExternalAuthorizer` directly, then over the wire through a gateway.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tollgate::auth::external::{ExternalAuthorizer, ExternalError};
use tollgate::metrics::Metrics;

use crate::support::{gateway, upstream};

/// How long the `slow` answer takes: well past every timeout used here.
const SLOW: Duration = Duration::from_secs(3);
/// How long a token containing `wait` takes, so concurrent requests overlap the call.
const WAIT: Duration = Duration::from_millis(200);

/// A running authorizer. By the payload's `authorization` header: `allow-<user>` allows with
/// context `{"user": "<user>", "tier": 3, "admin": true}` (after [`WAIT`] when the token
/// contains `wait`), `deny-*` denies, `slow` answers after [`SLOW`], `garbage` answers `not
/// json`, `500` answers status 500, `first-*` allows only the first call with such a token
/// (every later one is denied, so a second call shows as a denial), anything else denies.
#[derive(Clone)]
pub(crate) struct Authz {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    firsts: Arc<AtomicUsize>,
    last: Arc<Mutex<Option<Value>>>,
}

impl Authz {
    pub(crate) async fn start() -> Authz {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authz = Authz {
            addr: listener.local_addr().unwrap(),
            calls: Arc::new(AtomicUsize::new(0)),
            firsts: Arc::new(AtomicUsize::new(0)),
            last: Arc::new(Mutex::new(None)),
        };
        let srv = authz.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let srv = srv.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let srv = srv.clone();
                        async move { Ok::<_, Infallible>(srv.answer(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        authz
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}/authorize", self.addr)
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn last(&self) -> Value {
        self.last
            .lock()
            .unwrap()
            .clone()
            .expect("the authorizer saw no call")
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let (parts, body) = req.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let ok_request = parts.method == http::Method::POST
            && parts.uri.path() == "/authorize"
            && parts
                .headers
                .get("content-type")
                .is_some_and(|v| v == "application/json");
        *self.last.lock().unwrap() = Some(payload.clone());
        if !ok_request {
            return reply(StatusCode::BAD_REQUEST, "bad request".into());
        }
        let token = payload["headers"]["authorization"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if token.contains("wait") {
            tokio::time::sleep(WAIT).await;
        }
        if token.starts_with("first-") && self.firsts.fetch_add(1, Ordering::SeqCst) == 0 {
            return reply(StatusCode::OK, r#"{"isAuthorized":true}"#.into());
        }
        if let Some(user) = token.strip_prefix("allow-") {
            let answer = json!({"isAuthorized": true,
                                "context": {"user": user, "tier": 3, "admin": true}});
            return reply(StatusCode::OK, answer.to_string());
        }
        match token.as_str() {
            "slow" => {
                tokio::time::sleep(SLOW).await;
                reply(StatusCode::OK, r#"{"isAuthorized":true}"#.into())
            }
            "garbage" => reply(StatusCode::OK, "not json".into()),
            "500" => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                r#"{"isAuthorized":true}"#.into(),
            ),
            _ => reply(StatusCode::OK, r#"{"isAuthorized":false}"#.into()),
        }
    }
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// An authorizer named `ext` on `header:Authorization`.
fn authorizer(
    url: &str,
    cache_ttl: Duration,
    timeout: Duration,
    metrics: &Metrics,
) -> ExternalAuthorizer {
    ExternalAuthorizer::new(
        "ext",
        url,
        &["header:Authorization".to_string()],
        cache_ttl,
        timeout,
        metrics,
    )
    .unwrap()
}

fn five_minutes(authz: &Authz, metrics: &Metrics) -> ExternalAuthorizer {
    authorizer(
        &authz.url(),
        Duration::from_secs(300),
        Duration::from_secs(5),
        metrics,
    )
}

fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = Request::get(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn ip() -> IpAddr {
    "198.51.100.7".parse().unwrap()
}

async fn ask(az: &ExternalAuthorizer, token: &str) -> Result<Vec<(String, String)>, ExternalError> {
    let p = parts("/orders", &[("authorization", token)]);
    az.authorize(&p, "GET /orders", ip(), "req-1")
        .await
        .map(|d| {
            d.context_headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
                .collect()
        })
}

/// `tollgate_authorizer_cache_total{authorizer="ext",result=<result>}`, 0 when absent.
fn cache_count(metrics: &Metrics, result: &str) -> u64 {
    let label = format!("result=\"{result}\"");
    metrics
        .render()
        .lines()
        .find(|l| {
            l.starts_with("tollgate_authorizer_cache_total{")
                && l.contains("authorizer=\"ext\"")
                && l.contains(&label)
        })
        .and_then(|l| l.rsplit(' ').next())
        .map(|n| n.parse().unwrap())
        .unwrap_or(0)
}

#[tokio::test]
async fn allow_forwards_the_context_as_headers() {
    let authz = Authz::start().await;
    let m = Metrics::new();
    let az = five_minutes(&authz, &m);
    let mut h = ask(&az, "allow-alice").await.unwrap();
    h.sort();
    assert_eq!(
        h,
        [
            ("x-tollgate-ctx-admin".to_string(), "true".to_string()),
            ("x-tollgate-ctx-tier".to_string(), "3".to_string()),
            ("x-tollgate-ctx-user".to_string(), "alice".to_string()),
        ]
    );
    assert_eq!(authz.calls(), 1);
}

#[tokio::test]
async fn deny_is_denied() {
    let authz = Authz::start().await;
    let m = Metrics::new();
    let az = five_minutes(&authz, &m);
    assert_eq!(ask(&az, "deny-bob").await, Err(ExternalError::Denied));
    assert_eq!(authz.calls(), 1);
}

#[tokio::test]
async fn missing_identity_makes_no_call() {
    let authz = Authz::start().await;
    let m = Metrics::new();
    let az = five_minutes(&authz, &m);
    let p = parts("/orders", &[]);
    let r = az.authorize(&p, "GET /orders", ip(), "r").await;
    assert_eq!(r.unwrap_err(), ExternalError::MissingIdentity);
    let p = parts("/orders", &[("authorization", "")]);
    let r = az.authorize(&p, "GET /orders", ip(), "r").await;
    assert_eq!(r.unwrap_err(), ExternalError::MissingIdentity);
    assert_eq!(authz.calls(), 0);
    assert_eq!(cache_count(&m, "hit") + cache_count(&m, "miss"), 0);

    // Every source must be present: a query parameter and the route key too.
    let az = ExternalAuthorizer::new(
        "ext",
        &authz.url(),
        &["header:Authorization".into(), "query:tenant".into()],
        Duration::from_secs(300),
        Duration::from_secs(5),
        &m,
    )
    .unwrap();
    let p = parts("/orders?other=1", &[("authorization", "allow-a")]);
    let r = az.authorize(&p, "GET /orders", ip(), "r").await;
    assert_eq!(r.unwrap_err(), ExternalError::MissingIdentity);
    assert_eq!(authz.calls(), 0);
    let p = parts("/orders?tenant=t1", &[("authorization", "allow-a")]);
    assert!(az.authorize(&p, "GET /orders", ip(), "r").await.is_ok());
    assert_eq!(authz.calls(), 1);
}

#[tokio::test]
async fn answers_are_cached_by_identity() {
    let authz = Authz::start().await;
    let m = Metrics::new();
    let az = five_minutes(&authz, &m);
    for _ in 0..10 {
        let h = ask(&az, "allow-alice").await.unwrap();
        assert_eq!(h.len(), 3);
    }
    assert_eq!(authz.calls(), 1, "ten identical requests, one call");
    assert_eq!(cache_count(&m, "miss"), 1);
    assert_eq!(cache_count(&m, "hit"), 9);

    // Another identity is another cache entry.
    let h = ask(&az, "allow-carol").await.unwrap();
    assert!(h.contains(&("x-tollgate-ctx-user".into(), "carol".into())));
    assert_eq!(authz.calls(), 2);
    assert_eq!(cache_count(&m, "miss"), 2);
    // And alice is still cached with her own context.
    let h = ask(&az, "allow-alice").await.unwrap();
    assert!(h.contains(&("x-tollgate-ctx-user".into(), "alice".into())));
    assert_eq!(authz.calls(), 2);
    assert_eq!(cache_count(&m, "hit"), 10);
}

#[tokio::test]
async fn the_route_key_as_identity_keeps_routes_apart() {
    let authz = Authz::start().await;
    let m = Metrics::new();
    let az = ExternalAuthorizer::new(
        "ext",
        &authz.url(),
        &["header:Authorization".into(), "route".into()],
        Duration::from_secs(300),
        Duration::from_secs(5),
        &m,
    )
    .unwrap();
    let p = parts("/orders", &[("authorization", "allow-a")]);
    for route in [
        "GET /orders",
        "GET /orders",
        "DELETE /orders",
        "GET /orders",
    ] {
        az.authorize(&p, route, ip(), "r").await.unwrap();
    }
    assert_eq!(authz.calls(), 2);
    assert_eq!(
        authz.last()["identitySource"],
        json!(["allow-a", "DELETE /orders"])
    );
}

#[tokio::test]
async fn denials_are_cached_too() {
    let authz = Authz::start().await;
    let m = Metrics::new();
    let az = five_minutes(&authz, &m);
    for _ in 0..5 {
        assert_eq!(ask(&az, "deny-bob").await, Err(ExternalError::Denied));
    }
    assert_eq!(authz.calls(), 1);
    assert_eq!(cache_count(&m, "miss"), 1);
    assert_eq!(cache_count(&m, "hit"), 4);
}

#[tokio::test]
async fn cached_answers_expire_after_the_ttl() {
    let authz = Authz::start().await;
    let m = Metrics::new();
    let az = authorizer(
        &authz.url(),
        Duration::from_secs(1),
        Duration::from_secs(5),
        &m,
    );
    ask(&az, "allow-alice").await.unwrap();
    ask(&az, "allow-alice").await.unwrap();
    assert_eq!(authz.calls(), 1);
    // The wait for expiry is the behaviour under test.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    ask(&az, "allow-alice").await.unwrap();
    assert_eq!(authz.calls(), 2, "the expired answer was asked for again");
    ask(&az, "allow-alice").await.unwrap();
    assert_eq!(authz.calls(), 2, "and cached again");
}

#[tokio::test]
async fn ttl_zero_calls_every_time() {
    let authz = Authz::start().await;
    let m = Metrics::new();
    let az = authorizer(&authz.url(), Duration::ZERO, Duration::from_secs(5), &m);
    for _ in 0..3 {
        ask(&az, "allow-alice").await.unwrap();
    }
    assert_eq!(ask(&az, "deny-bob").await, Err(ExternalError::Denied));
    assert_eq!(authz.calls(), 4);
}

#[tokio::test]
async fn a_slow_authorizer_times_out_as_a_failure() {
    let authz = Authz::start().await;
    let m = Metrics::new();
    let az = authorizer(
        &authz.url(),
        Duration::from_secs(300),
        Duration::from_millis(300),
        &m,
    );
    let started = Instant::now();
    assert_eq!(ask(&az, "slow").await, Err(ExternalError::Failed));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(1),
        "took {took:?}"
    );
    // Not cached: the next request asks again.
    assert_eq!(ask(&az, "slow").await, Err(ExternalError::Failed));
    assert_eq!(authz.calls(), 2);
}

#[tokio::test]
async fn garbage_and_errors_fail_and_are_not_cached() {
    let authz = Authz::start().await;
    let m = Metrics::new();
    let az = five_minutes(&authz, &m);
    assert_eq!(ask(&az, "garbage").await, Err(ExternalError::Failed));
    assert_eq!(ask(&az, "garbage").await, Err(ExternalError::Failed));
    assert_eq!(authz.calls(), 2, "a failure is not cached");
    assert_eq!(
        ask(&az, "500").await,
        Err(ExternalError::Failed),
        "a 500 fails even with an allow body"
    );
    assert_eq!(ask(&az, "500").await, Err(ExternalError::Failed));
    assert_eq!(authz.calls(), 4);
    assert_eq!(cache_count(&m, "miss"), 4);
    assert_eq!(cache_count(&m, "hit"), 0);
}

#[tokio::test]
async fn an_unreachable_authorizer_fails() {
    // A port that was just free: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let m = Metrics::new();
    let az = authorizer(
        &format!("http://127.0.0.1:{port}/authorize"),
        Duration::from_secs(300),
        Duration::from_secs(2),
        &m,
    );
    let started = Instant::now();
    assert_eq!(ask(&az, "allow-alice").await, Err(ExternalError::Failed));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_identical_requests_make_one_call() {
    let authz = Authz::start().await;
    let m = Metrics::new();
    let az = Arc::new(five_minutes(&authz, &m));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let az = az.clone();
        tasks.spawn(async move { ask(&az, "allow-wait-alice").await });
    }
    let mut allowed = 0;
    while let Some(r) = tasks.join_next().await {
        let h = r.unwrap().unwrap();
        assert!(h.contains(&("x-tollgate-ctx-user".into(), "wait-alice".into())));
        allowed += 1;
    }
    assert_eq!(allowed, 100);
    assert_eq!(authz.calls(), 1, "the callers shared one call");
    assert_eq!(cache_count(&m, "miss"), 1);
    assert_eq!(
        cache_count(&m, "hit"),
        99,
        "coalesced waiters count as hits"
    );
}

#[tokio::test]
async fn the_payload_describes_the_request() {
    let authz = Authz::start().await;
    let m = Metrics::new();
    let az = five_minutes(&authz, &m);
    let mut b = Request::post("/orders/42?expand=items&expand=notes&q=a%20b")
        .header("authorization", "allow-alice")
        .header("x-custom", "one")
        .header("x-custom", "two")
        .header("user-agent", "tests/1.0");
    b = b.version(http::Version::HTTP_11);
    let p = b.body(()).unwrap().into_parts().0;
    az.authorize(&p, "POST /orders/{id}", ip(), "req-42")
        .await
        .unwrap();
    let v = authz.last();
    assert_eq!(v["version"], "2.0");
    assert_eq!(v["type"], "REQUEST");
    assert_eq!(v["routeKey"], "POST /orders/{id}");
    assert_eq!(v["rawPath"], "/orders/42");
    assert_eq!(v["rawQueryString"], "expand=items&expand=notes&q=a%20b");
    assert_eq!(v["identitySource"], json!(["allow-alice"]));
    assert_eq!(v["headers"]["authorization"], "allow-alice");
    assert_eq!(v["headers"]["x-custom"], "one,two");
    assert_eq!(
        v["queryStringParameters"],
        json!({"expand": "items,notes", "q": "a b"})
    );
    let rc = &v["requestContext"];
    assert_eq!(rc["http"]["method"], "POST");
    assert_eq!(rc["http"]["path"], "/orders/42");
    assert_eq!(rc["http"]["protocol"], "HTTP/1.1");
    assert_eq!(rc["http"]["sourceIp"], "198.51.100.7");
    assert_eq!(rc["http"]["userAgent"], "tests/1.0");
    assert_eq!(rc["requestId"], "req-42");
    assert_eq!(rc["routeKey"], "POST /orders/{id}");
    assert!(rc["timeEpoch"].as_u64().is_some());
}

#[tokio::test]
async fn over_the_wire_through_a_gateway() {
    let authz = Authz::start().await;
    let up = upstream::start("app").await;
    let gw = gateway::start(&format!(
        "authorizers:\n  ext: {{ type: http, url: \"{}\", identity: [\"header:Authorization\"], cache_ttl: 300s }}\n\
         upstreams:\n  app: {{ targets: [{}] }}\n\
         routes:\n  - {{ route: \"GET /orders\", upstream: app, authorizer: ext }}\n",
        authz.url(),
        up.url()
    ))
    .await;

    let a = gw.get("/orders", &[]).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.text(), r#"{"message":"Unauthorized"}"#);
    assert_eq!(authz.calls(), 0, "no identity, no call");

    let a = gw
        .get(
            "/orders",
            &[
                ("authorization", "allow-alice"),
                ("x-tollgate-ctx-user", "mallory"),
            ],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let seen = up.last();
    let ctx: Vec<_> = seen
        .headers
        .get_all("x-tollgate-ctx-user")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ctx,
        ["alice"],
        "the client's own ctx header is not forwarded"
    );
    assert_eq!(seen.headers["x-tollgate-ctx-tier"], "3");
    assert_eq!(seen.headers["x-tollgate-ctx-admin"], "true");
    assert_eq!(authz.last()["routeKey"], "GET /orders");

    let a = gw.get("/orders", &[("authorization", "allow-alice")]).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        authz.calls(),
        1,
        "the second request was answered from the cache"
    );

    let a = gw.get("/orders", &[("authorization", "deny-bob")]).await;
    assert_eq!(a.status, 403);
    assert_eq!(a.text(), r#"{"message":"Forbidden"}"#);

    let a = gw.get("/orders", &[("authorization", "garbage")]).await;
    assert_eq!(a.status, 500);
    assert_eq!(a.text(), r#"{"message":"Internal server error"}"#);

    assert_eq!(
        up.seen().len(),
        2,
        "only allowed requests reached the upstream"
    );
    let metrics = gw.admin_get("/metrics").await.text();
    assert!(
        metrics.contains(r#"tollgate_authorizer_cache_total{authorizer="ext",result="hit"} 1"#),
        "{metrics}"
    );
    gw.stop().await;
}

/// Asks `az` with `authorization` set to the raw bytes `token` (which need not be UTF-8).
async fn ask_raw(az: &ExternalAuthorizer, token: &[u8]) -> Result<(), ExternalError> {
    let mut p = parts("/orders", &[]);
    p.headers.insert(
        "authorization",
        http::HeaderValue::from_bytes(token).unwrap(),
    );
    az.authorize(&p, "GET /orders", ip(), "req-1")
        .await
        .map(|_| ())
}

#[tokio::test]
async fn identities_that_differ_only_in_bytes_that_are_not_utf8_are_asked_apart() {
    // Both values are shown to the authorizer as `first-tok\u{fffd}`; the cache must still
    // not hand the second caller the first one's allow.
    let authz = Authz::start().await;
    let m = Metrics::new();
    let az = five_minutes(&authz, &m);
    assert_eq!(ask_raw(&az, b"first-tok\xfe").await, Ok(()));
    assert_eq!(authz.calls(), 1);
    assert_eq!(authz.last()["identitySource"], json!(["first-tok\u{fffd}"]));
    assert_eq!(
        ask_raw(&az, b"first-tok\xff").await,
        Err(ExternalError::Denied),
        "the other caller got its own answer, not the cached allow"
    );
    assert_eq!(authz.calls(), 2, "two identities, two calls");
    // Each answer stays cached under its own bytes.
    assert_eq!(ask_raw(&az, b"first-tok\xfe").await, Ok(()));
    assert_eq!(
        ask_raw(&az, b"first-tok\xff").await,
        Err(ExternalError::Denied)
    );
    assert_eq!(authz.calls(), 2);
}

#[tokio::test]
async fn header_lines_are_separate_identities_even_when_they_join_alike() {
    let authz = Authz::start().await;
    let m = Metrics::new();
    let az = five_minutes(&authz, &m);
    let ask_lines = |lines: &'static [&'static str]| {
        let az = &az;
        async move {
            let mut p = parts("/orders", &[]);
            for l in lines {
                p.headers
                    .append("authorization", http::HeaderValue::from_static(l));
            }
            az.authorize(&p, "GET /orders", ip(), "r").await.map(|_| ())
        }
    };
    assert_eq!(ask_lines(&["first-a,b", "c"]).await, Ok(()));
    assert_eq!(
        ask_lines(&["first-a", "b,c"]).await,
        Err(ExternalError::Denied),
        "`first-a,b` + `c` and `first-a` + `b,c` are two identities"
    );
    assert_eq!(authz.calls(), 2);
}

#[tokio::test]
async fn over_the_wire_bytes_that_are_not_utf8_do_not_share_an_answer() {
    let authz = Authz::start().await;
    let up = upstream::start("app").await;
    let gw = gateway::start(&format!(
        "authorizers:\n  ext: {{ type: http, url: \"{}\", identity: [\"header:Authorization\"], cache_ttl: 300s }}\n\
         upstreams:\n  app: {{ targets: [{}] }}\n\
         routes:\n  - {{ route: \"GET /orders\", upstream: app, authorizer: ext }}\n",
        authz.url(),
        up.url()
    ))
    .await;
    let status = |answer: &str| answer.split(' ').nth(1).unwrap_or("").to_string();
    let request = |byte: u8| {
        let mut r = b"GET /orders HTTP/1.1\r\nhost: gw.test\r\nconnection: close\r\nauthorization: first-tok".to_vec();
        r.push(byte);
        r.extend_from_slice(b"\r\n\r\n");
        r
    };
    let a = gw.raw(&request(0xfe), Duration::from_secs(5)).await;
    assert_eq!(status(&a), "200", "{a}");
    let b = gw.raw(&request(0xff), Duration::from_secs(5)).await;
    assert_eq!(
        status(&b),
        "403",
        "the second caller was served the first one's cached allow: {b}"
    );
    assert_eq!(authz.calls(), 2);
    assert_eq!(
        up.seen().len(),
        1,
        "only the allowed request reached the upstream"
    );
    gw.stop().await;
}
