//! The admin listener and the process lifecycle.

use std::time::Duration;

use crate::support::{gateway, upstream};

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
            r#"tollgate_requests_total{method="GET",route="GET /status",status="200"} 2"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"tollgate_denied_total{reason="no_route",route="$unmatched"} 1"#),
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
