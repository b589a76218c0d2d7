//! The admin listener and the process lifecycle, and the admin listener's refusal of what a
//! browser sends on a web page's behalf (cross-site requests, DNS rebinding, form posts).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::support::gateway::{self, TestGateway};
use crate::support::upstream;

#[tokio::test]
async fn health_ready_config_and_metrics() {
    let gw = gateway::start(
        "routes:\n  - { route: \"GET /status\", authorizer: none, respond: { body: '{}' } }\n",
    )
    .await;
    assert_eq!(gw.admin_get("/healthz").await.status, 200);
    assert_eq!(gw.admin_get("/readyz").await.status, 200);
    let cfg: serde_json::Value =
        serde_json::from_slice(&gw.admin_get("/config").await.body).unwrap();
    assert_eq!(cfg["generation"], 1);
    assert_eq!(cfg["hash"].as_str().unwrap().len(), 64);
    assert!(cfg["loaded_at"].as_str().unwrap().ends_with("GMT"));
    assert!(cfg["last_error"].is_null());

    gw.get("/status", &[]).await;
    gw.get("/status", &[]).await;
    gw.get("/nope/123", &[]).await;
    let m = gw.admin_get("/metrics").await;
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    let text = m.text();
    assert!(
        text.contains(
            r#"tollgate_requests_total{api="default",method="GET",route="GET /status",stage="",status="200"} 2"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"tollgate_denied_total{api="default",reason="no_route",route="$unmatched",stage=""} 1"#
        ),
        "{text}"
    );
    assert!(!text.contains("/nope/123"), "raw paths never become labels");
    for name in [
        "tollgate_request_duration_seconds_bucket",
        "tollgate_config_reloads_total",
        "tollgate_config_generation 1",
        "tollgate_connections_active",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
    assert_eq!(gw.admin_get("/nothing").await.status, 404);
    gw.stop().await;
}

#[tokio::test]
async fn admin_token_is_required_when_configured() {
    let gw = gateway::start_raw(
        "listeners:\n  - bind: 127.0.0.1:0\nadmin: { bind: 127.0.0.1:0, token: { file: admin-token } }\nroutes: []\n",
        &[("admin-token", "s3cret-admin-token\n")],
    )
    .await;
    let c = gateway::client();
    let admin = gw.admin;
    let get = |auth: Option<&'static str>| {
        let mut b = http::Request::get(format!("http://{admin}/metrics"));
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        c.request(b.body(Default::default()).unwrap())
    };
    assert_eq!(get(None).await.unwrap().status(), 401);
    assert_eq!(get(Some("Bearer wrong")).await.unwrap().status(), 401);
    assert_eq!(
        get(Some("Bearer s3cret-admin-token"))
            .await
            .unwrap()
            .status(),
        200,
        "file secret read, newline trimmed"
    );
    gw.stop().await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_and_refuses_new_ones() {
    let up = upstream::start("a").await;
    let gw = gateway::start(&format!(
        "upstreams:\n  app: {{ targets: [{}] }}\nroutes:\n  - {{ route: \"ANY /{{p+}}\", upstream: app, authorizer: none }}\n",
        up.url()
    ))
    .await;
    let addr = gw.addr;
    let admin_addr = gw.admin;
    let url = gw.url("/slow");
    let in_flight = tokio::spawn(async move {
        let req = http::Request::get(url).body(Default::default()).unwrap();
        gateway::client().request(req).await.map(|r| r.status())
    });
    // Wait until the upstream has the request, then shut down.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while up.seen().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let gwy = gw.running.as_ref().unwrap().gateway.clone();
    let mut gw = gw;
    let running = gw.running.take().unwrap();
    let shutdown = tokio::spawn(running.shutdown(Some(Duration::from_secs(5))));
    // While the slow request drains (the upstream holds it 700 ms), the admin listener still
    // answers, and says not ready.
    let readyz = || {
        gateway::client().request(
            http::Request::get(format!("http://{admin_addr}/readyz"))
                .body(Default::default())
                .unwrap(),
        )
    };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    loop {
        let r = readyz().await.expect("admin answers during the drain");
        if r.status() == 503 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readyz never turned 503"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        !in_flight.is_finished(),
        "checked while the request was still in flight"
    );
    let status = in_flight
        .await
        .unwrap()
        .expect("in-flight request completed");
    assert_eq!(status, 200);
    assert!(
        shutdown.await.unwrap(),
        "all connections finished within the grace period"
    );
    assert!(!gwy.is_ready(), "readiness is off once shutdown starts");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}

/// The exposition must be valid for Prometheus itself: checked with `promtool check metrics`
/// (installed by scripts/test.sh from Debian's `prometheus` package).
#[tokio::test]
async fn metrics_pass_promtool() {
    let gw = gateway::start(
        "routes:\n  - { route: \"GET /status\", authorizer: none, respond: { body: '{}' } }\n",
    )
    .await;
    gw.get("/status", &[]).await;
    gw.get("/missing", &[]).await;
    let text = gw.admin_get("/metrics").await.text();
    gw.stop().await;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect(
            "promtool is needed: run scripts/test.sh, which installs Debian's prometheus package",
        );
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool refused the exposition:\n{said}\n---\n{text}"
    );
    // promtool's lint warnings (e.g. counters not ending in _total) are problems too.
    assert!(
        !said.contains("counter metrics should have \"_total\" suffix"),
        "{said}"
    );
}

#[tokio::test]
async fn shutdown_delay_keeps_accepting_while_not_ready() {
    let gw = gateway::start(
        "limits: { shutdown_delay: 400ms }\nroutes:\n  - { route: \"GET /status\", respond: { body: ok } }\n",
    )
    .await;
    let addr = gw.addr;
    let mut gw = gw;
    let running = gw.running.take().unwrap();
    let gwy = running.gateway.clone();
    let started = std::time::Instant::now();
    let shutdown = tokio::spawn(running.shutdown(Some(Duration::from_secs(2))));
    // Readiness turns off at once...
    while gwy.is_ready() {
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "readiness did not turn off"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // ...but requests are still served during the delay.
    let a = gw.get("/status", &[]).await;
    assert_eq!(a.status, 200);
    assert!(started.elapsed() < Duration::from_millis(400));
    assert!(shutdown.await.unwrap());
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "listeners closed only after the delay"
    );
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// One admin request with exactly these headers (`host` included when given) and body.
async fn admin_send(
    gw: &TestGateway,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, serde_json::Value) {
    let mut b = http::Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", gw.admin));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let resp = gateway::client()
        .request(req)
        .await
        .expect("admin answered");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, json)
}

fn forbidden() -> serde_json::Value {
    serde_json::json!({"message": "Forbidden"})
}

const ISSUER: &str = "state: { path: state }\nissuer:\n  url: http://issuer.test\n  resource_servers: [{ identifier: api, scopes: [read] }]\n  clients: [{ client_id: c, client_secret: s3cret, scopes: [api/read] }]\nroutes: []\n";

async fn current_kid(gw: &TestGateway) -> String {
    let jwks: serde_json::Value =
        serde_json::from_slice(&gw.get("/.well-known/jwks.json", &[]).await.body).unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{jwks}");
    keys[0]["kid"].as_str().unwrap().to_string()
}

/// Review finding: without a token, a web page could make the operator's browser rotate the
/// issuer's signing key (`<form method=post>` or `fetch(..., {mode: "no-cors"})`).
#[tokio::test]
async fn a_cross_site_post_cannot_rotate_the_issuer_key() {
    let gw = gateway::start(ISSUER).await;
    let kid = current_kid(&gw).await;
    let origin = ("origin", "https://evil.example");
    let cases: [&[(&str, &str)]; 5] = [
        // An HTML form.
        &[
            origin,
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        // fetch() with a string body, no-cors.
        &[origin, ("content-type", "text/plain;charset=UTF-8")],
        // fetch() without a body.
        &[origin],
        // An old browser that sends neither Origin nor Sec-Fetch-*: a form still has its type.
        &[("content-type", "multipart/form-data; boundary=x")],
        // A browser that sends Sec-Fetch-Site but not Origin.
        &[("sec-fetch-site", "cross-site")],
    ];
    for headers in cases {
        let (status, body) = admin_send(&gw, "POST", "/issuer/rotate", headers, "").await;
        assert_eq!((status, body), (403, forbidden()), "{headers:?}");
    }
    assert_eq!(current_kid(&gw).await, kid, "the key was not rotated");
    // What an operator's tool sends still rotates.
    let (status, body) = admin_send(&gw, "POST", "/issuer/rotate", &[], "").await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(body["kid"], kid);
    gw.stop().await;
}

/// Review finding: any `Host` was served, so a page whose name was rebound to 127.0.0.1 could
/// read `/config` and `/usage` through the operator's browser.
#[tokio::test]
async fn a_rebound_host_name_cannot_read_the_admin_listener() {
    let gw = gateway::start("routes: []\n").await;
    let port = gw.admin.port();
    let evil = format!("evil.example:{port}");
    for path in ["/config", "/usage?key=k", "/metrics", "/healthz"] {
        let (status, body) = admin_send(&gw, "GET", path, &[("host", &evil)], "").await;
        assert_eq!((status, body), (403, forbidden()), "{path}");
    }
    let (status, _) =
        admin_send(&gw, "GET", "/config", &[("origin", "http://127.0.0.1")], "").await;
    assert_eq!(status, 403, "a cross-origin read is refused too");
    // The bind address and localhost, as curl and Prometheus send them, are served.
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let (status, body) = admin_send(&gw, "GET", "/config", &[("host", &host)], "").await;
        assert_eq!(status, 200, "{host}: {body}");
        assert_eq!(body["generation"], 1);
    }
    let (status, _) = admin_send(&gw, "GET", "/metrics", &[("sec-fetch-site", "none")], "").await;
    assert_eq!(status, 200, "typed into the address bar");
    gw.stop().await;
}

/// The port is part of the check when `admin.bind` names one, and `admin.hosts` adds names.
#[tokio::test]
async fn admin_hosts_and_the_bind_port() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = gateway::start_raw(
        &format!(
            "listeners:\n  - bind: 127.0.0.1:0\nadmin: {{ bind: 127.0.0.1:{port}, hosts: [Admin.GW.internal] }}\nroutes: []\n"
        ),
        &[],
    )
    .await;
    assert_eq!(gw.admin.port(), port);
    for (host, want) in [
        (format!("127.0.0.1:{port}"), 200),
        (format!("127.0.0.1:{}", port ^ 1), 403), // another port
        ("127.0.0.1".to_string(), 403),           // port 80
        (format!("admin.gw.internal:{port}"), 200),
        ("admin.gw.internal".to_string(), 200), // a configured name, any port
        (format!("gw.internal:{port}"), 403),
    ] {
        let (status, _) = admin_send(&gw, "GET", "/config", &[("host", &host)], "").await;
        assert_eq!(status, want, "{host}");
    }
    gw.stop().await;

    // A bad entry is a config error with its position.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(
        &path,
        "admin:\n  bind: 127.0.0.1:0\n  hosts: [ok.internal, \"gw.internal:9901\"]\nroutes: []\n",
    )
    .unwrap();
    let errs = tollgate::gateway::Gateway::load(&path, false)
        .err()
        .expect("refused");
    let text = errs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(text.contains("gateway.yaml:3:"), "{text}");
    assert!(text.contains("without a port"), "{text}");
}

/// Review finding: state-changing endpoints accepted bodies a browser can send cross-site
/// without a preflight. They need no body, a non-form content type, or the token.
#[tokio::test]
async fn form_like_posts_cannot_reload() {
    let gw = gateway::start("routes: []\n").await;
    let generation = || async {
        admin_send(&gw, "GET", "/config", &[], "").await.1["generation"]
            .as_u64()
            .unwrap()
    };
    for (ct, body) in [
        ("text/plain", "x"),
        ("text/plain", ""),
        ("TEXT/PLAIN; charset=utf-8", "{}"),
        ("application/x-www-form-urlencoded", "a=b"),
        ("multipart/form-data; boundary=b", "--b--"),
    ] {
        let (status, json) =
            admin_send(&gw, "POST", "/reload", &[("content-type", ct)], body).await;
        assert_eq!((status, json), (403, forbidden()), "{ct}");
    }
    let (status, _) = admin_send(&gw, "POST", "/reload", &[], "a body without a type").await;
    assert_eq!(status, 403);
    assert_eq!(generation().await, 1, "nothing was reloaded");
    // curl -X POST, and a JSON client.
    let (status, json) = admin_send(&gw, "POST", "/reload", &[], "").await;
    assert_eq!((status, json["generation"].as_u64()), (200, Some(2)));
    let (status, json) = admin_send(
        &gw,
        "POST",
        "/reload",
        &[("content-type", "application/json")],
        "{}",
    )
    .await;
    assert_eq!((status, json["generation"].as_u64()), (200, Some(3)));
    gw.stop().await;
}

/// With `admin.token`, the token is what authorises: a request carrying it is served whatever
/// its `Host`, `Origin` or content type (a browser never adds a bearer token by itself), and one
/// without it gets 401 as before.
#[tokio::test]
async fn the_token_still_authorises_as_before() {
    let gw = gateway::start_raw(
        "listeners:\n  - bind: 127.0.0.1:0\nadmin: { bind: 127.0.0.1:0, token: { file: admin-token } }\nroutes: []\n",
        &[("admin-token", "s3cret-admin-token\n")],
    )
    .await;
    let odd = [
        ("host", "tollgate.example:1"),
        ("origin", "https://console.example"),
        ("content-type", "text/plain"),
    ];
    let with_token = [&odd[..], &[("authorization", "Bearer s3cret-admin-token")]].concat();
    let (status, json) = admin_send(&gw, "POST", "/reload", &with_token, "x").await;
    assert_eq!((status, json["result"].as_str()), (200, Some("ok")));
    let (status, _) = admin_send(&gw, "GET", "/config", &with_token, "").await;
    assert_eq!(status, 200);
    let (status, json) = admin_send(&gw, "POST", "/reload", &odd, "").await;
    assert_eq!(
        (status, json),
        (401, serde_json::json!({"message": "Unauthorized"}))
    );
    let (status, _) = admin_send(&gw, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 401);
    gw.stop().await;
}

/// `GET /openapi.json` is what `tollgate openapi` writes for the running config, and refuses
/// to mix it with a changed file (409) until a reload.
#[tokio::test]
async fn the_openapi_document_of_the_running_config() {
    let yaml = "upstreams:\n  a: { targets: [\"http://127.0.0.1:9\"] }\n\
                routes:\n  - { route: \"GET /items/{id}\", upstream: a, authorizer: none }\n\
                apis:\n  shop:\n    hosts: [shop.example.com]\n    stage: prod\n    routes:\n      \
                - { route: \"POST /orders\", upstream: a, authorizer: none }\n";
    let gw = gateway::start(yaml).await;
    let which = gw.admin_get("/openapi.json").await;
    assert_eq!(which.status, 400, "{}", which.text());
    assert!(which.text().contains("shop"), "{}", which.text());
    let doc = gw.admin_get("/openapi.json?api=shop").await;
    assert_eq!(doc.status, 200, "{}", doc.text());
    let d: serde_json::Value = serde_json::from_slice(&doc.body).unwrap();
    assert_eq!(d["openapi"], "3.1.0");
    assert!(d["paths"]["/orders"]["post"].is_object(), "{d:#}");
    assert!(d["paths"].get("/items/{id}").is_none());
    let aws = gw
        .admin_get("/openapi.json?api=shop&aws_extensions=true")
        .await;
    let a: serde_json::Value = serde_json::from_slice(&aws.body).unwrap();
    assert_eq!(
        a["paths"]["/orders"]["post"]["x-amazon-apigateway-integration"]["uri"],
        "http://127.0.0.1:9/orders"
    );
    assert_eq!(gw.admin_get("/openapi.json?api=nope").await.status, 404);
    // The file changes: the document would mix two configs until the reload.
    let changed = std::fs::read_to_string(&gw.config)
        .unwrap()
        .replace("POST /orders", "PUT /orders");
    std::fs::write(&gw.config, changed).unwrap();
    let during = gw.admin_get("/openapi.json?api=shop").await;
    let config: serde_json::Value =
        serde_json::from_slice(&gw.admin_get("/config").await.body).unwrap();
    if config["generation"] == 1 {
        assert_eq!(during.status, 409, "{}", during.text());
    } // else the file watcher reloaded first (it waits 200 ms): no window to see.
    assert_eq!(gw.admin_post("/reload").await.status, 200);
    let d: serde_json::Value =
        serde_json::from_slice(&gw.admin_get("/openapi.json?api=shop").await.body).unwrap();
    assert!(d["paths"]["/orders"]["put"].is_object(), "{d:#}");
    gw.stop().await;
}
