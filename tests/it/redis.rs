//! The Redis store against a real `redis-server` (tests/support/redis_server.rs): GCRA buckets,
//! quotas shared by replicas, per-day usage, key namespacing, and outages.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use time::macros::{date, datetime};
use tokio::task::JoinSet;
use tollgate::config::schema::OnError;
use tollgate::limits::redis::RedisStore;
use tollgate::limits::{BucketSpec, BucketState, LimitError, Period, QuotaSpec};
use tollgate::metrics::Metrics;

use crate::support::gateway::{self, TestGateway};
use crate::support::redis_server::RedisServer;

const PREFIX: &str = "t:";

fn store(url: &str, on_error: OnError) -> (RedisStore, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let s = RedisStore::new(url, PREFIX.into(), on_error, metrics.clone()).expect("valid URL");
    (s, metrics)
}

fn redis_errors(m: &Metrics, result: &str) -> u64 {
    m.redis_errors.with_label_values(&[result]).get()
}

/// Waits (polling, deadline 5 s) until the store has connected.
async fn ready(s: &RedisStore) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !s.is_connected() {
        assert!(
            Instant::now() < deadline,
            "store did not connect within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A raw connection for looking at keys.
async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn gcra_burst_then_refuse_then_refill() {
    let srv = RedisServer::start();
    let (s, m) = store(&srv.url(), OnError::Deny);
    ready(&s).await;
    // 10 tokens a second (one per 100 ms), 3 at once.
    let spec = BucketSpec::new(10.0, 3).unwrap();
    let started = Instant::now();
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let b = s.take("route", Some("k"), spec).await.unwrap();
        assert_eq!(b.limit, 3);
        assert_eq!(b.reset, 1, "full again within a second");
        remaining.push(b.remaining);
    }
    assert_eq!(remaining, vec![2, 1, 0]);
    assert_eq!(
        s.take("route", Some("k"), spec).await,
        Err(LimitError::Throttled { retry_after: 1 })
    );
    // Other keys, and the unkeyed bucket, are separate buckets.
    assert!(s.take("route", Some("other"), spec).await.is_ok());
    assert!(s.take("route", None, spec).await.is_ok());

    // The next token comes one interval after the burst began, not before.
    let deadline = Instant::now() + Duration::from_secs(2);
    while s.take("route", Some("k"), spec).await.is_err() {
        assert!(Instant::now() < deadline, "no token within 2 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(90),
        "a token came after {waited:?}, before one interval (100 ms)"
    );
    assert!(
        s.take("route", Some("k"), spec).await.is_err(),
        "only one token earned"
    );

    // The bucket key expires once the bucket would be full again (≤ burst × interval), so idle
    // buckets cost no memory; a full bucket admits the whole burst again.
    let mut c = raw(&srv.url()).await;
    let key = "t:b:5:route:1:k";
    let pttl: i64 = redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!((1..=300).contains(&pttl), "PTTL {pttl}");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let exists: i64 = redis::cmd("EXISTS")
            .arg(key)
            .query_async(&mut c)
            .await
            .unwrap();
        if exists == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "idle bucket key still there");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..3 {
        assert!(s.take("route", Some("k"), spec).await.is_ok());
    }
    assert!(s.take("route", Some("k"), spec).await.is_err());
    assert_eq!(redis_errors(&m, "denied") + redis_errors(&m, "allowed"), 0);
}

#[tokio::test]
async fn gcra_fractional_rates_admit_the_whole_burst() {
    // 1.5/s: an interval of 666 666.67 µs, which rounds badly in whole microseconds.
    let srv = RedisServer::start();
    let (s, _) = store(&srv.url(), OnError::Deny);
    ready(&s).await;
    let spec = BucketSpec::new(1.5, 10).unwrap();
    let mut remaining = Vec::new();
    for _ in 0..10 {
        remaining.push(s.take("slow", None, spec).await.unwrap().remaining);
    }
    assert_eq!(remaining, (0..10).rev().collect::<Vec<u64>>());
    assert_eq!(
        s.take("slow", None, spec).await,
        Err(LimitError::Throttled { retry_after: 1 })
    );
    // 0.25/s, burst 1: four seconds to the next token.
    let spec = BucketSpec::new(0.25, 1).unwrap();
    assert_eq!(s.take("slower", None, spec).await.unwrap().reset, 4);
    assert_eq!(
        s.take("slower", None, spec).await,
        Err(LimitError::Throttled { retry_after: 4 })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_hammering_admit_exactly_the_quota() {
    let srv = RedisServer::start();
    let (a, _) = store(&srv.url(), OnError::Deny);
    let (b, _) = store(&srv.url(), OnError::Deny);
    ready(&a).await;
    ready(&b).await;
    let replicas = [Arc::new(a), Arc::new(b)];
    let spec = QuotaSpec {
        limit: 37,
        period: Period::Day,
    };
    let now = OffsetDateTime::now_utc();
    let mut tasks = JoinSet::new();
    for i in 0..100 {
        let r = replicas[i % 2].clone();
        tasks.spawn(async move { r.count("gold", "key-1", spec, now).await });
    }
    let mut remaining = Vec::new();
    let mut refused = 0;
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(q) => {
                assert_eq!(q.limit, 37);
                assert_eq!(q.reset, Period::Day.seconds_left(now));
                remaining.push(q.remaining);
            }
            Err(LimitError::QuotaExceeded { retry_after }) => {
                assert_eq!(retry_after, Period::Day.seconds_left(now));
                refused += 1;
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    remaining.sort_unstable();
    assert_eq!(
        remaining,
        (0..37).collect::<Vec<u64>>(),
        "each count seen exactly once"
    );
    assert_eq!(refused, 63);
    // Refusals were not counted: both replicas see 37 for today.
    for r in &replicas {
        let u = r
            .usage("gold", "key-1", now.date(), now.date())
            .await
            .unwrap();
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].used, 37);
    }
}

#[tokio::test]
async fn calendar_periods_and_usage_per_day() {
    let srv = RedisServer::start();
    let (s, _) = store(&srv.url(), OnError::Deny);
    ready(&s).await;
    let spec = QuotaSpec {
        limit: 3,
        period: Period::Month,
    };
    let mut left = Vec::new();
    for t in [
        datetime!(2026-11-01 10:00 UTC),
        datetime!(2026-11-03 10:00 UTC),
        datetime!(2026-11-03 11:00 UTC),
    ] {
        left.push(s.count("p", "k", spec, t).await.unwrap().remaining);
    }
    assert_eq!(left, vec![2, 1, 0]);
    assert_eq!(
        s.count("p", "k", spec, datetime!(2026-11-30 23:00 UTC))
            .await,
        Err(LimitError::QuotaExceeded { retry_after: 3600 })
    );
    let u = s
        .usage("p", "k", date!(2026 - 10 - 31), date!(2026 - 11 - 04))
        .await
        .unwrap();
    let days: Vec<(&str, u64)> = u.iter().map(|d| (d.day.as_str(), d.used)).collect();
    assert_eq!(
        days,
        vec![
            ("2026-10-31", 0),
            ("2026-11-01", 1),
            ("2026-11-02", 0),
            ("2026-11-03", 2),
            ("2026-11-04", 0)
        ]
    );
    // December is a new period.
    let dec = s
        .count("p", "k", spec, datetime!(2026-12-01 0:00 UTC))
        .await
        .unwrap();
    assert_eq!((dec.remaining, dec.reset), (2, 31 * 86_400));
    // A limit of 0 admits nothing.
    let none = QuotaSpec {
        limit: 0,
        period: Period::Day,
    };
    assert!(matches!(
        s.count("p", "z", none, OffsetDateTime::now_utc()).await,
        Err(LimitError::QuotaExceeded { .. })
    ));
    // Counters expire: the period a day after its end, days after 400 days.
    let mut c = raw(&srv.url()).await;
    let ttl: i64 = redis::cmd("TTL")
        .arg("t:d:1:p:1:k:2026-11-03")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(ttl > 399 * 86_400 && ttl <= 400 * 86_400, "day TTL {ttl}");
    let ttl: i64 = redis::cmd("TTL")
        .arg("t:q:1:p:1:k:2026-12")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(
        (32 * 86_400 - 5..=32 * 86_400).contains(&ttl),
        "period TTL {ttl}"
    );
}

#[tokio::test]
async fn key_ids_with_colons_do_not_collide() {
    let srv = RedisServer::start();
    let (s, _) = store(&srv.url(), OnError::Deny);
    ready(&s).await;
    let one = QuotaSpec {
        limit: 1,
        period: Period::Day,
    };
    let now = OffsetDateTime::now_utc();
    // Joined naively, both would be `a:b:c`.
    assert!(s.count("a:b", "c", one, now).await.is_ok());
    assert!(s.count("a", "b:c", one, now).await.is_ok());
    assert!(s.count("a", "b:c", one, now).await.is_err());
    // A key id that spells a period label.
    assert!(
        s.count("a", &format!("b:c:{}", Period::Day.label(now)), one, now)
            .await
            .is_ok()
    );
    for (plan, key) in [("a:b", "c"), ("a", "b:c")] {
        let u = s.usage(plan, key, now.date(), now.date()).await.unwrap();
        assert_eq!(u[0].used, 1, "{plan} / {key}");
    }
    let spec = BucketSpec::new(1.0, 1).unwrap();
    assert!(s.take("x:y", Some("z"), spec).await.is_ok());
    assert!(s.take("x", Some("y:z"), spec).await.is_ok());
    assert!(s.take("x", None, spec).await.is_ok());
    assert!(
        s.take("x", Some("*"), spec).await.is_ok(),
        "key id `*` is not the shared bucket"
    );
    assert!(s.take("x", Some("y:z"), spec).await.is_err());
}

#[tokio::test]
async fn redis_down_at_start_follows_on_error_and_connects_when_it_comes_up() {
    let mut srv = RedisServer::start();
    srv.kill();
    let (deny, dm) = store(&srv.url(), OnError::Deny);
    let (allow, am) = store(&srv.url(), OnError::Allow);
    let bucket = BucketSpec::new(5.0, 3).unwrap();
    let quota = QuotaSpec {
        limit: 10,
        period: Period::Day,
    };
    let now = OffsetDateTime::now_utc();

    assert_eq!(
        deny.take("r", None, bucket).await,
        Err(LimitError::Unavailable)
    );
    assert_eq!(
        deny.count("p", "k", quota, now).await,
        Err(LimitError::Unavailable)
    );
    assert_eq!(redis_errors(&dm, "denied"), 2);
    assert_eq!(redis_errors(&dm, "allowed"), 0);

    // Allow: admitted as if the state were fresh, not counted anywhere.
    assert_eq!(
        allow.take("r", None, bucket).await,
        Ok(BucketState {
            limit: 3,
            remaining: 2,
            reset: 1
        })
    );
    let q = allow.count("p", "k", quota, now).await.unwrap();
    assert_eq!((q.limit, q.remaining), (10, 9));
    assert_eq!(redis_errors(&am, "allowed"), 2);
    assert_eq!(redis_errors(&am, "denied"), 0);
    assert!(deny.usage("p", "k", now.date(), now.date()).await.is_err());
    assert!(!deny.is_connected());

    // Redis comes up: the stores connect by themselves.
    srv.restart();
    ready(&deny).await;
    ready(&allow).await;
    assert!(deny.take("r", None, bucket).await.is_ok());
    assert_eq!(
        deny.count("p", "k", quota, now).await.unwrap().remaining,
        9,
        "the allowed request while down was not counted"
    );
    assert_eq!(redis_errors(&dm, "denied"), 2);
}

/// Captures what the store logs on this thread (the tests below run on one thread).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines_with(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }
}

fn capture_logs() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

#[tokio::test(flavor = "current_thread")]
async fn redis_killed_mid_run_recovers_without_a_restart_and_logs_once() {
    let (logs, _guard) = capture_logs();
    let mut srv = RedisServer::start();
    let (deny, dm) = store(&srv.url(), OnError::Deny);
    let (allow, am) = store(&srv.url(), OnError::Allow);
    ready(&deny).await;
    ready(&allow).await;
    let spec = BucketSpec::new(1000.0, 1000).unwrap();
    assert!(deny.take("r", None, spec).await.is_ok());
    assert!(allow.take("r", None, spec).await.is_ok());

    srv.kill();
    // A second of outage with steady traffic (reconnect attempts fail meanwhile): every request
    // follows on_error and is counted, and only probes (one per 200 ms per store) wait for
    // Redis; the others fall back at once.
    let outage = Instant::now();
    let (mut requests, mut slow) = (0, 0);
    while outage.elapsed() < Duration::from_secs(1) {
        let t = Instant::now();
        assert_eq!(
            deny.take("r", None, spec).await,
            Err(LimitError::Unavailable)
        );
        assert!(allow.take("r", None, spec).await.is_ok());
        requests += 1;
        if t.elapsed() >= Duration::from_millis(100) {
            slow += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(requests >= 10, "{requests} requests");
    assert!(
        slow <= 12,
        "{slow} of {requests} request pairs waited for Redis"
    );
    assert_eq!(redis_errors(&dm, "denied"), requests);
    assert_eq!(redis_errors(&am, "allowed"), requests);
    assert!(!deny.is_connected() && !allow.is_connected());

    srv.restart();
    let restarted = Instant::now();
    let deadline = restarted + Duration::from_secs(10);
    while deny.take("r", None, spec).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "deny store did not recover in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while !allow.is_connected() {
        allow.take("r", None, spec).await.unwrap();
        assert!(
            Instant::now() < deadline,
            "allow store did not recover in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recovered = restarted.elapsed();
    eprintln!(
        "outage: {requests} request pairs, {slow} slow; recovered {recovered:?} after the restart"
    );
    // Recovered: the counters stop moving.
    let (d, a) = (redis_errors(&dm, "denied"), redis_errors(&am, "allowed"));
    for _ in 0..5 {
        assert!(deny.take("r", None, spec).await.is_ok());
        assert!(allow.take("r", None, spec).await.is_ok());
    }
    assert_eq!(
        (redis_errors(&dm, "denied"), redis_errors(&am, "allowed")),
        (d, a)
    );
    // One warning when the outage began and one notice when it ended, per store.
    assert_eq!(
        logs.lines_with("Redis unreachable"),
        2,
        "{recovered:?}\n{}",
        String::from_utf8_lossy(&logs.0.lock().unwrap())
    );
    assert_eq!(logs.lines_with("Redis reachable again"), 2);
    assert!(logs.lines_with("WARN") >= 2);
}

#[tokio::test]
async fn a_stalled_redis_times_out_per_command() {
    let srv = RedisServer::start();
    let (s, m) = store(&srv.url(), OnError::Deny);
    ready(&s).await;
    let spec = BucketSpec::new(1000.0, 1000).unwrap();
    assert!(s.take("r", None, spec).await.is_ok());
    srv.pause();
    let t = Instant::now();
    let r = s.take("r", None, spec).await;
    let took = t.elapsed();
    srv.resume();
    assert_eq!(r, Err(LimitError::Unavailable));
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(2),
        "took {took:?}"
    );
    assert_eq!(redis_errors(&m, "denied"), 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.take("r", None, spec).await.is_err() {
        assert!(Instant::now() < deadline, "did not recover after SIGCONT");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (polling `/usage`, which needs Redis, deadline 5 s) until a gateway's store answers.
async fn gateway_ready(gw: &TestGateway, key_id: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.admin_get(&format!("/usage?key={key_id}")).await.status != 200 {
        assert!(
            Instant::now() < deadline,
            "gateway's Redis store not ready in 5 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_quota() {
    let srv = RedisServer::start();
    let yaml = crate::redis_topologies::quota_config(&format!(
        "{{ backend: redis, url: \"{}\" }}",
        srv.url()
    ));
    let gws = [
        gateway::start_raw(&yaml, &[]).await,
        gateway::start_raw(&yaml, &[]).await,
    ];
    for gw in &gws {
        gateway_ready(gw, "partner").await;
    }
    let mut ok = 0;
    for i in 0..60 {
        let a = gws[i % 2].get("/x", &[("x-api-key", "key-partner")]).await;
        match a.status.as_u16() {
            200 => ok += 1,
            429 => assert_eq!(a.text(), r#"{"message":"Limit Exceeded"}"#),
            s => panic!("request {i}: {s} {}", a.text()),
        }
    }
    assert_eq!(ok, 25);
    for gw in gws {
        let usage: serde_json::Value =
            serde_json::from_slice(&gw.admin_get("/usage?key=partner").await.body).unwrap();
        let today = usage["items"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(
            (today["used"].as_u64(), today["remaining"].as_u64()),
            (Some(25), Some(0))
        );
        let m = gw.admin_get("/metrics").await.text();
        assert!(!m.contains("tollgate_redis_errors_total{"), "{m}");
        gw.stop().await;
    }
}
