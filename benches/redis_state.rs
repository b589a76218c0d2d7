//! What the fleet state costs per request on each Redis deployment: `redis_round_trip/*` is
//! one request's throttle and quota, as the pipeline does them (a plan's GCRA bucket per key,
//! then the quota count), against a real `redis-server` started here on loopback: a single
//! server (`single`), a TLS-only server (`tls`, certificates made at run time) and a Redis
//! Cluster of three primaries with replicas (`cluster`, keys spread over the primaries).
//! Requests run one after another on one current-thread runtime, so each figure is one round
//! trip's latency plus both sides' CPU, not throughput.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use time::OffsetDateTime;
use tollgate::config::schema::OnError;
use tollgate::limits::redis::{RedisStore, TlsMaterial, Topology};
use tollgate::limits::{BucketSpec, LimitState, Period, QuotaSpec, Store};
use tollgate::metrics::Metrics;

#[allow(dead_code)]
#[path = "../tests/support/pki.rs"]
mod pki;
#[allow(dead_code)]
#[path = "../tests/support/redis_cluster.rs"]
mod redis_cluster;
#[allow(dead_code)]
#[path = "../tests/support/redis_server.rs"]
mod redis_server;

/// Keys used in turn, so that the cluster case touches every primary.
const KEYS: usize = 64;

mod support {
    pub(crate) use super::pki;
}

fn store(topology: Topology, tls: TlsMaterial) -> LimitState {
    let s = RedisStore::open(
        &topology,
        &tls,
        "bench:".into(),
        OnError::Deny,
        Arc::new(Metrics::new()),
    )
    .expect("valid settings");
    LimitState::new(Store::Redis(s))
}

fn round_trip(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let single = redis_server::RedisServer::start();
    let ca = pki::Ca::new("bench CA");
    let tls =
        redis_server::RedisServer::start_tls(&ca, &ca.server("redis", &["127.0.0.1"]), false, None);
    let cluster = redis_cluster::RedisCluster::start();
    let material = TlsMaterial {
        ca: Some(ca.pem.clone().into_bytes()),
        client: None,
    };
    let cases = [
        (
            "single",
            store(Topology::Single(single.url()), TlsMaterial::default()),
        ),
        ("tls", store(Topology::Single(tls.url()), material)),
        (
            "cluster",
            store(Topology::Cluster(cluster.seeds()), TlsMaterial::default()),
        ),
    ];
    let spec = BucketSpec::new(1_000_000.0, 1_000_000).unwrap();
    let quota = QuotaSpec {
        limit: u64::MAX / 2,
        period: Period::Month,
    };
    let ids: Vec<Arc<str>> = (0..KEYS).map(|i| Arc::from(format!("key-{i}"))).collect();
    let mut g = c.benchmark_group("redis_round_trip");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (name, limits) in &cases {
        let throttle = limits.throttle("plan:gold", spec);
        // Connected before measuring: the first call may still find no connection.
        rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(20);
            while limits.store.take(&throttle, Some(&ids[0])).await.is_err() {
                assert!(Instant::now() < deadline, "{name}: Redis not reachable");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let mut n = 0usize;
        g.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let now = OffsetDateTime::now_utc();
                    let start = Instant::now();
                    for _ in 0..iters {
                        let id = &ids[n % KEYS];
                        let t = limits.store.take(&throttle, Some(id)).await;
                        let q = limits.store.count("gold", id, quota, now).await;
                        assert!(t.is_ok() && q.is_ok(), "{name}: {t:?} {q:?}");
                        let _ = black_box((t, q));
                        n += 1;
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, round_trip);
criterion_main!(benches);
