//! `gateway.throttle`: one bucket for everything the gateway admits, on one gateway in memory
//! and across two gateways sharing Redis, over real sockets: the number admitted under a load
//! far above `rate` is `burst + rate × time` within 1%, the rest get 429 `gateway_throttle`,
//! and the key's quota counts only what was admitted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::gateway::{self, HEAD, TestGateway};
use crate::support::redis_server::RedisServer;

/// How long each load runs: long enough that `rate × time` dwarfs the first and last token's
/// timing, short enough for the test command.
const LOAD: Duration = Duration::from_secs(2);
const RATE: f64 = 150.0;
const BURST: u64 = 30;

fn config(state: &str) -> String {
    format!(
        r#"{HEAD}{state}
gateway: {{ throttle: {{ rate: {RATE}, burst: {BURST} }} }}
usage_plans:
  gold: {{ quota: {{ limit: 1000000, period: day }} }}
api_keys:
  keys:
    - {{ id: partner, key: key-partner, plan: gold }}
routes:
  - {{ route: "GET /open", respond: {{ body: '{{}}' }}, authorizer: none }}
  - {{ route: "GET /keyed", api_key_required: true, respond: {{ body: '{{}}' }}, authorizer: none }}
"#
    )
}

/// Sends requests to `gws` from 4 concurrent clients each for [`LOAD`], half of them with the
/// API key; (admitted, admitted with the key, refused, seconds from the first request sent to
/// the last answer).
async fn load(gws: &[Arc<TestGateway>]) -> (u64, u64, u64, f64) {
    let ok = Arc::new(AtomicU64::new(0));
    let keyed = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..4 {
        let gw = gws[i % gws.len()].clone();
        let (ok, keyed, refused) = (ok.clone(), keyed.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            while started.elapsed() < LOAD {
                let path = if i % 2 == 0 { "/open" } else { "/keyed" };
                let a = gw.get(path, &[("x-api-key", "key-partner")]).await;
                match a.status.as_u16() {
                    200 => {
                        if path == "/keyed" {
                            keyed.fetch_add(1, Ordering::Relaxed);
                        }
                        ok.fetch_add(1, Ordering::Relaxed)
                    }
                    429 => {
                        assert_eq!(a.text(), r#"{"message":"Too Many Requests"}"#);
                        assert_eq!(a.header("ratelimit-limit"), Some("30"));
                        assert!(a.header("retry-after").is_some());
                        refused.fetch_add(1, Ordering::Relaxed)
                    }
                    s => panic!("unexpected {s}: {}", a.text()),
                };
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    (n(&ok), n(&keyed), n(&refused), secs)
}

fn assert_within_one_percent(admitted: u64, secs: f64) {
    let expected = BURST as f64 + RATE * secs;
    let off = (admitted as f64 - expected).abs() / expected;
    assert!(
        off <= 0.01,
        "{admitted} admitted in {secs:.3} s, {expected:.1} expected ({:.2}% off)",
        off * 100.0
    );
}

/// `tollgate_denied_total{reason="gateway_throttle"}` summed over its other labels.
async fn denied(gw: &TestGateway) -> u64 {
    let text = gw.admin_get("/metrics").await.text();
    text.lines()
        .filter(|l| {
            l.starts_with("tollgate_denied_total{") && l.contains("reason=\"gateway_throttle\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The key's requests counted today (`/usage`).
async fn used(gw: &TestGateway) -> u64 {
    let u: serde_json::Value =
        serde_json::from_slice(&gw.admin_get("/usage?key=partner").await.body).unwrap();
    u["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["used"].as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gateway_in_memory_admits_burst_plus_rate_times_time() {
    let gw = Arc::new(gateway::start_raw(&config(""), &[]).await);
    let (admitted, keyed, refused, secs) = load(std::slice::from_ref(&gw)).await;
    assert!(
        refused > admitted,
        "the load must exceed the rate: {admitted} / {refused}"
    );
    assert_within_one_percent(admitted, secs);
    assert_eq!(denied(&gw).await, refused);
    assert_eq!(
        used(&gw).await,
        keyed,
        "refused requests use none of the quota"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_redis_share_one_bucket() {
    let srv = RedisServer::start();
    let yaml = config(&format!(
        "state: {{ backend: redis, url: \"{}\", on_error: deny }}",
        srv.url()
    ));
    let gws = [
        Arc::new(gateway::start_raw(&yaml, &[]).await),
        Arc::new(gateway::start_raw(&yaml, &[]).await),
    ];
    for gw in &gws {
        let deadline = Instant::now() + Duration::from_secs(5);
        while gw.admin_get("/usage?key=partner").await.status != 200 {
            assert!(Instant::now() < deadline, "Redis store not ready");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let (admitted, keyed, refused, secs) = load(&gws).await;
    assert!(
        refused > admitted,
        "the load must exceed the rate: {admitted} / {refused}"
    );
    assert_within_one_percent(admitted, secs);
    assert_eq!(denied(&gws[0]).await + denied(&gws[1]).await, refused);
    assert_eq!(
        used(&gws[0]).await,
        keyed,
        "refused requests use none of the quota"
    );
}
