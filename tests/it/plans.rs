//! API keys and usage plans over real sockets: the 403 and 429 answers, throttles in the
//! contract's order, quotas that count only admitted requests, counters that survive reloads and
//! restarts, `/usage`, and CSV import.

use crate::support::gateway::{self, TestGateway};
use crate::support::upstream;

fn config(up: &str, extra_keys: &str, plans: &str, routes: &str) -> String {
    format!(
        r#"upstreams:
  app: {{ targets: [{up}] }}
usage_plans:
{plans}
api_keys:
  import: keys.csv
  keys:
    - {{ id: partner-a, key: "sha256:{a}", plan: gold }}
    - {{ id: partner-b, key: key-b-literal, plan: gold }}
    - {{ id: partner-off, key: key-off, plan: gold, enabled: false }}
{extra_keys}routes:
{routes}"#,
        a = tollgate::util::sha256_hex(b"key-a")
    )
}

const CSV: &str = "Name,Key,Description,Enabled,UsagePlanIds\ncsv-partner,key-csv,from the export,true,gold\ncsv-off,key-csv-off,,false,gold\n";

async fn start(plans: &str, routes: &str) -> (TestGateway, upstream::Upstream) {
    let up = upstream::start("a").await;
    let gw = gateway::start_with_files(&config(&up.url(), "", plans, routes), &[("keys.csv", CSV)])
        .await;
    (gw, up)
}

const GENEROUS: &str = "  gold: { throttle: { rate: 1000, burst: 1000 } }\n";
const KEYED: &str = "  - { route: \"ANY /{p+}\", upstream: app, api_key_required: true }\n";

#[tokio::test]
async fn missing_unknown_and_disabled_keys_are_forbidden() {
    let (gw, up) = start(GENEROUS, KEYED).await;
    for headers in [
        vec![],
        vec![("x-api-key", "nope")],
        vec![("x-api-key", "key-off")],
        vec![("x-api-key", "key-csv-off")],
        vec![("x-api-key", "")],
    ] {
        let a = gw.get("/x", &headers).await;
        assert_eq!(a.status, 403, "{headers:?}");
        assert_eq!(a.text(), r#"{"message":"Forbidden"}"#);
    }
    assert!(up.seen().is_empty());
    for (key, id) in [
        ("key-a", "partner-a"),
        ("key-b-literal", "partner-b"),
        ("key-csv", "csv-partner"),
    ] {
        let a = gw
            .get(
                "/x",
                &[("x-api-key", key), ("x-tollgate-api-key-id", "forged")],
            )
            .await;
        assert_eq!(a.status, 200, "{key}");
        assert_eq!(up.last().headers["x-tollgate-api-key-id"], id);
        assert!(a.header("ratelimit-limit").is_some() && a.header("ratelimit-remaining").is_some());
    }
    // A plan without a quota still reports the key's traffic.
    let usage: serde_json::Value =
        serde_json::from_slice(&gw.admin_get("/usage?key=partner-a").await.body).unwrap();
    let today = usage["items"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(today["used"], 1, "{usage}");
    assert!(
        today["remaining"].is_null(),
        "no quota, nothing remaining to report"
    );
    let m = gw.admin_get("/metrics").await.text();
    for (reason, n) in [
        ("api_key_unknown", 1),
        ("api_key_missing", 2),
        ("api_key_disabled", 2),
    ] {
        let line = format!(
            r#"tollgate_denied_total{{api="default",reason="{reason}",route="ANY /{{p+}}",stage=""}} {n}"#
        );
        assert!(m.contains(&line), "{line}\n{m}");
    }
    assert!(
        m.contains(r#"tollgate_api_key_requests_total{plan="gold",result="admitted"} 3"#),
        "{m}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn unknown_keys_never_create_limiter_state() {
    let (gw, _up) = start("  gold: { throttle: { rate: 1, burst: 1 } }\n", KEYED).await;
    let limits = gw.running.as_ref().unwrap().gateway.limits().clone();
    for i in 0..50 {
        assert_eq!(
            gw.get("/x", &[("x-api-key", &format!("guess-{i}"))])
                .await
                .status,
            403
        );
    }
    assert_eq!(limits.bucket_count(), 0);
    assert_eq!(gw.get("/x", &[("x-api-key", "key-a")]).await.status, 200);
    assert_eq!(limits.bucket_count(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn plan_throttle_then_per_route_override() {
    let plans = "  gold:\n    throttle: { rate: 0.01, burst: 3 }\n    route_throttle: { \"GET /tight\": { rate: 0.01, burst: 1 } }\n";
    let routes = "  - { route: \"GET /tight\", upstream: app, api_key_required: true }\n  - { route: \"GET /wide\", upstream: app, api_key_required: true }\n";
    let (gw, _up) = start(plans, routes).await;
    for i in 0..3 {
        let a = gw.get("/wide", &[("x-api-key", "key-a")]).await;
        assert_eq!(a.status, 200, "request {i}");
        assert_eq!(
            a.header("ratelimit-remaining"),
            Some((2 - i).to_string().as_str())
        );
    }
    let a = gw.get("/wide", &[("x-api-key", "key-a")]).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.text(), r#"{"message":"Too Many Requests"}"#);
    let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (90..=101).contains(&retry),
        "one token per 100 s: retry-after {retry}"
    );
    assert_eq!(a.header("ratelimit-remaining"), Some("0"));
    assert_eq!(a.header("ratelimit-limit"), Some("3"));
    // Another key has its own bucket; the per-route override is its own bucket too.
    assert_eq!(
        gw.get("/wide", &[("x-api-key", "key-b-literal")])
            .await
            .status,
        200
    );
    assert_eq!(
        gw.get("/tight", &[("x-api-key", "key-a")]).await.status,
        200
    );
    assert_eq!(
        gw.get("/tight", &[("x-api-key", "key-a")]).await.status,
        429
    );
    gw.stop().await;
}

#[tokio::test]
async fn route_and_default_throttles_are_shared_by_all_callers() {
    let routes = "  - { route: \"GET /own\", upstream: app, throttle: { rate: 0.01, burst: 2 } }\n  - { route: \"GET /dflt\", upstream: app }\n";
    let up = upstream::start("a").await;
    let yaml = config(&up.url(), "", GENEROUS, routes).replace(
        "routes:\n",
        "defaults: { throttle: { rate: 0.01, burst: 1 } }\nroutes:\n",
    );
    let gw = gateway::start_with_files(&yaml, &[("keys.csv", CSV)]).await;
    assert_eq!(gw.get("/own", &[]).await.status, 200);
    assert_eq!(gw.get("/own", &[("x-api-key", "key-a")]).await.status, 200);
    assert_eq!(
        gw.get("/own", &[("x-api-key", "key-b-literal")])
            .await
            .status,
        429,
        "one bucket for everyone"
    );
    assert_eq!(gw.get("/dflt", &[]).await.status, 200);
    assert_eq!(
        gw.get("/dflt", &[]).await.status,
        429,
        "defaults.throttle applies to routes without one"
    );
    gw.stop().await;
}

#[tokio::test]
async fn quota_counts_only_admitted_requests_and_answers_limit_exceeded() {
    let plans =
        "  gold:\n    throttle: { rate: 0.01, burst: 4 }\n    quota: { limit: 3, period: day }\n";
    let (gw, up) = start(plans, KEYED).await;
    // A declared oversize body is refused before it counts.
    let big = "x".repeat(11 * 1024 * 1024);
    assert_eq!(
        gw.send("POST", "/x", &[("x-api-key", "key-a")], &big)
            .await
            .status,
        413
    );
    // That used a throttle token (3 left) but no quota.
    for i in 0..3 {
        let a = gw.get("/x", &[("x-api-key", "key-a")]).await;
        assert_eq!(a.status, 200, "request {i}");
        assert_eq!(
            a.header("ratelimit-limit"),
            Some("3"),
            "quota is what the headers report"
        );
        assert_eq!(
            a.header("ratelimit-remaining"),
            Some((2 - i).to_string().as_str())
        );
    }
    // Throttle now empty: 429 Too Many Requests, and not counted.
    let a = gw.get("/x", &[("x-api-key", "key-a")]).await;
    assert_eq!(a.text(), r#"{"message":"Too Many Requests"}"#);
    let usage: serde_json::Value =
        serde_json::from_slice(&gw.admin_get("/usage?key=partner-a").await.body).unwrap();
    assert_eq!(usage["plan"], "gold");
    assert_eq!(usage["quota"]["limit"], 3);
    let today = usage["items"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (today["used"].as_u64(), today["remaining"].as_u64()),
        (Some(3), Some(0))
    );
    assert_eq!(up.seen().len(), 3);
    gw.stop().await;

    // With throttle room left, the quota is what refuses.
    let (gw, _up) = start("  gold: { quota: { limit: 2, period: day } }\n", KEYED).await;
    for _ in 0..2 {
        assert_eq!(gw.get("/x", &[("x-api-key", "key-a")]).await.status, 200);
    }
    let a = gw.get("/x", &[("x-api-key", "key-a")]).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.text(), r#"{"message":"Limit Exceeded"}"#);
    let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
    let now = time::OffsetDateTime::now_utc();
    let to_midnight = 86_400
        - u64::from(now.hour()) * 3600
        - u64::from(now.minute()) * 60
        - u64::from(now.second());
    assert!(
        retry.abs_diff(to_midnight) <= 2,
        "retry-after {retry} points at the next UTC day ({to_midnight})"
    );
    assert_eq!(
        gw.get("/x", &[("x-api-key", "key-b-literal")]).await.status,
        200,
        "other keys have their own quota"
    );
    gw.stop().await;
}

#[tokio::test]
async fn counters_survive_a_reload_and_a_restart() {
    let plans = "  gold: { quota: { limit: 4, period: month } }\n";
    let (gw, _up) = start(plans, KEYED).await;
    assert_eq!(gw.get("/x", &[("x-api-key", "key-a")]).await.status, 200);
    assert_eq!(gw.admin_post("/reload").await.status, 200);
    assert_eq!(gw.get("/x", &[("x-api-key", "key-a")]).await.status, 200);
    let gw = gw.restart().await;
    assert!(gw.dir.path().join("state/quotas.json").exists());
    assert_eq!(gw.get("/x", &[("x-api-key", "key-a")]).await.status, 200);
    assert_eq!(gw.get("/x", &[("x-api-key", "key-a")]).await.status, 200);
    assert_eq!(
        gw.get("/x", &[("x-api-key", "key-a")]).await.status,
        429,
        "4 of 4 used across a reload and a restart"
    );
    let usage: serde_json::Value =
        serde_json::from_slice(&gw.admin_get("/usage?key=partner-a").await.body).unwrap();
    let total: u64 = usage["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["used"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 4);
    assert_eq!(gw.admin_get("/usage?key=ghost").await.status, 404);
    assert_eq!(gw.admin_get("/usage").await.status, 400);
    assert_eq!(
        gw.admin_get("/usage?key=partner-a&start=2026-13-01")
            .await
            .status,
        400
    );
    gw.stop().await;
}

#[tokio::test]
async fn changing_the_state_settings_needs_a_restart() {
    let (gw, _up) = start(GENEROUS, KEYED).await;
    let yaml = std::fs::read_to_string(&gw.config).unwrap();
    std::fs::write(&gw.config, format!("state: {{ path: elsewhere }}\n{yaml}")).unwrap();
    let r = gw.admin_post("/reload").await;
    assert_eq!(r.status, 422);
    assert!(
        r.text().contains("cannot change while running"),
        "{}",
        r.text()
    );
    gw.stop().await;
}
