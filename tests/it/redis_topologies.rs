//! The Redis store on the deployments people run: a TLS-only server (certificates made at
//! test time, with and without client certificates, with a password), a Redis Cluster built
//! with `redis-cli --cluster create` (three primaries, each with a replica) and a primary with
//! a replica watched by Sentinel. For each: two gateways together admit exactly the quota; a
//! wrong CA or password is a clear error in the log and in `/config`; a primary's failover
//! while traffic runs follows `on_error` while it lasts and counts correctly afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::task::JoinSet;
use tollgate::config::schema::OnError;
use tollgate::limits::redis::{RedisStore, TlsMaterial, Topology};
use tollgate::limits::{LimitError, Period, QuotaSpec};
use tollgate::metrics::Metrics;

use crate::support::gateway::{self, HEAD};
use crate::support::pki::Ca;
use crate::support::redis_server::RedisServer;

/// How long a store gets to connect (or to report why it cannot).
const CONNECT_WAIT: Duration = Duration::from_secs(10);

fn open(topology: Topology, tls: TlsMaterial) -> RedisStore {
    RedisStore::open(
        &topology,
        &tls,
        "t:".into(),
        OnError::Deny,
        Arc::new(Metrics::new()),
    )
    .expect("valid settings")
}

async fn connected(s: &RedisStore) {
    let deadline = Instant::now() + CONNECT_WAIT;
    while !s.is_connected() {
        assert!(
            Instant::now() < deadline,
            "not connected within {CONNECT_WAIT:?}: {:?}",
            s.status()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The store's error once it has one.
async fn error_of(s: &RedisStore) -> String {
    let deadline = Instant::now() + CONNECT_WAIT;
    loop {
        if let (_, Some(e)) = s.status() {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "no error within {CONNECT_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Two stores count 100 requests concurrently against a quota of 37: exactly 37 admitted.
async fn two_replicas_admit_exactly_the_quota(a: RedisStore, b: RedisStore, key: &str) {
    connected(&a).await;
    connected(&b).await;
    // The first calls load the scripts (on every node of a cluster): done before the burst, so
    // that no call of the burst waits on it past the 250 ms a command gets.
    remaining(&a, "warm-up").await;
    remaining(&b, "warm-up").await;
    let replicas = [Arc::new(a), Arc::new(b)];
    let spec = QuotaSpec {
        limit: 37,
        period: Period::Day,
    };
    let now = OffsetDateTime::now_utc();
    let mut tasks = JoinSet::new();
    for i in 0..100 {
        let r = replicas[i % 2].clone();
        let key = key.to_string();
        tasks.spawn(async move { r.count("gold", &key, spec, now).await });
    }
    let (mut ok, mut refused) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(_) => ok += 1,
            Err(LimitError::QuotaExceeded { .. }) => refused += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!((ok, refused), (37, 63));
}

fn tls_material(ca: &Ca) -> TlsMaterial {
    TlsMaterial {
        ca: Some(ca.pem.clone().into_bytes()),
        client: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_only_redis_shares_a_quota_between_replicas() {
    let ca = Ca::new("redis test CA");
    let srv = RedisServer::start_tls(&ca, &ca.server("redis", &["127.0.0.1"]), false, None);
    assert!(srv.url().starts_with("rediss://"));
    let store = || open(Topology::Single(srv.url()), tls_material(&ca));
    two_replicas_admit_exactly_the_quota(store(), store(), "tls-key").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_client_certificate_and_a_password() {
    let ca = Ca::new("redis test CA");
    let srv = RedisServer::start_tls(
        &ca,
        &ca.server("redis", &["127.0.0.1"]),
        true,
        Some("s3cret-pass"),
    );
    let client = ca.client("tollgate");
    let material = TlsMaterial {
        ca: Some(ca.pem.clone().into_bytes()),
        client: Some((client.cert_pem.into_bytes(), client.key_pem.into_bytes())),
    };
    let url = srv.url().replace("rediss://", "rediss://:s3cret-pass@");
    let s = open(Topology::Single(url.clone()), material.clone());
    connected(&s).await;
    // Without the client certificate the server refuses the handshake.
    let bare = open(Topology::Single(url), tls_material(&ca));
    let e = error_of(&bare).await;
    assert!(!bare.is_connected());
    assert!(!e.is_empty());
    // A wrong password is named as such.
    let wrong = srv.url().replace("rediss://", "rediss://:not-the-pass@");
    let w = open(Topology::Single(wrong), material);
    let e = error_of(&w).await;
    assert!(
        e.contains("WRONGPASS") || e.to_lowercase().contains("password"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_a_clear_error_in_the_log_and_in_config() {
    let ca = Ca::new("redis test CA");
    let other = Ca::new("some other CA");
    let srv = RedisServer::start_tls(&ca, &ca.server("redis", &["127.0.0.1"]), false, None);
    let s = open(Topology::Single(srv.url()), tls_material(&other));
    let e = error_of(&s).await;
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    // The same through a gateway: `/config` names the topology and the error.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &other.pem).unwrap();
    let yaml = format!(
        "{HEAD}state: {{ backend: redis, url: \"{}\", tls: {{ ca: ca.pem }} }}\n\
         routes:\n  - {{ route: \"GET /x\", respond: {{ body: ok }}, authorizer: none }}\n",
        srv.url()
    );
    std::fs::write(dir.path().join("gateway.yaml"), yaml).unwrap();
    let gw = gateway::start_at(dir, "gateway.yaml").await;
    let deadline = Instant::now() + CONNECT_WAIT;
    let state = loop {
        let c: serde_json::Value =
            serde_json::from_slice(&gw.admin_get("/config").await.body).unwrap();
        if c["state"]["error"].is_string() {
            break c["state"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no state error in /config: {c:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(state["backend"], "redis");
    assert_eq!(state["topology"], "single");
    assert_eq!(state["connected"], false);
    assert!(
        state["error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("certificate"),
        "{state}"
    );
    gw.stop().await;
}

#[test]
fn tls_settings_are_checked_where_they_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let check = |state: &str| -> String {
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, format!("{HEAD}state: {state}\nroutes: []\n")).unwrap();
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["--log-level", "off", "check", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let out = check("{ backend: redis, url: \"redis://127.0.0.1:1\", tls: { ca: missing.pem } }");
    // Located at `tls` on the `state:` line (line 4), naming the file.
    assert!(
        out.contains("gateway.yaml:4:") && out.contains("missing.pem"),
        "{out}"
    );
    std::fs::write(dir.path().join("ca.pem"), "x").unwrap();
    let out = check("{ backend: redis, url: \"rediss://127.0.0.1:1\", tls: { ca: ca.pem } }");
    assert!(out.contains("holds no PEM certificate"), "{out}");
    std::fs::write(dir.path().join("ca.pem"), Ca::new("check CA").pem).unwrap();
    let out = check("{ backend: redis, url: \"redis://127.0.0.1:1\", tls: { ca: ca.pem } }");
    assert!(out.contains("rediss://"), "{out}");
    let out = check(
        "{ backend: redis, sentinels: [\"redis://127.0.0.1:1\"], master_name: m, tls: { ca: ca.pem } }",
    );
    assert!(out.contains("not used with `sentinels`"), "{out}");
    let out = check("{ backend: redis, url: \"rediss://127.0.0.1:1\", tls: { cert: ca.pem } }");
    assert!(out.contains("`cert` and `key` go together"), "{out}");
    let out = check("{ backend: redis, sentinels: [\"redis://127.0.0.1:1\"] }");
    assert!(out.contains("master_name"), "{out}");
    let out = check(
        "{ backend: redis, url: \"redis://127.0.0.1:1\", cluster: [\"redis://127.0.0.1:2\"] }",
    );
    assert!(
        out.contains("one of `url`, `cluster` and `sentinels`"),
        "{out}"
    );
    let out = check("{ backend: redis, cluster: [\"redis://127.0.0.1:2\"], key_prefix: \"{t}:\" }");
    assert!(out.contains("hash tags"), "{out}");
    let out = check("{ backend: memory, cluster: [\"redis://127.0.0.1:2\"] }");
    assert!(out.contains("`cluster` is for `backend: redis`"), "{out}");
    let out = check("{ backend: redis, url: \"rediss://127.0.0.1:1\" }");
    assert!(
        out.contains("OK"),
        "rediss:// with the system's roots is fine: {out}"
    );
}

use crate::support::redis_cluster::{RedisCluster, SentinelSetup, cli};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_shares_a_quota_between_replicas_across_slots() {
    let cluster = RedisCluster::start();
    // Several keys, so that their counters live on different primaries.
    for key in ["alpha", "bravo", "charlie", "delta"] {
        let store = || open(Topology::Cluster(cluster.seeds()), TlsMaterial::default());
        two_replicas_admit_exactly_the_quota(store(), store(), key).await;
    }
    let owners: std::collections::BTreeSet<usize> = ["alpha", "bravo", "charlie", "delta"]
        .iter()
        .map(|k| cluster.primary_of(&format!("t:q:{{4:gold:{}:{k}}}:x", k.len())))
        .collect();
    assert!(
        owners.len() > 1,
        "the keys spread over primaries: {owners:?}"
    );
}

/// A quota no failover test uses up: what it counts is the point.
const BIG_QUOTA: u64 = 1_000_000_000;

/// Counts requests of `key` against a quota of [`BIG_QUOTA`] through `store` until `stop`, recording
/// (admitted, unavailable) and panicking on anything else.
async fn hammer(store: Arc<RedisStore>, key: &str, run: Duration) -> (u64, u64) {
    let spec = QuotaSpec {
        limit: BIG_QUOTA,
        period: Period::Day,
    };
    let (mut ok, mut unavailable) = (0, 0);
    let started = Instant::now();
    while started.elapsed() < run {
        match store
            .count("gold", key, spec, OffsetDateTime::now_utc())
            .await
        {
            Ok(_) => ok += 1,
            Err(LimitError::Unavailable) => {
                unavailable += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    (ok, unavailable)
}

/// The quota's remaining count as the store now sees it (one more request counted).
async fn remaining(store: &RedisStore, key: &str) -> u64 {
    let spec = QuotaSpec {
        limit: BIG_QUOTA,
        period: Period::Day,
    };
    let deadline = Instant::now() + CONNECT_WAIT;
    loop {
        match store
            .count("gold", key, spec, OffsetDateTime::now_utc())
            .await
        {
            Ok(q) => return q.remaining,
            Err(LimitError::Unavailable) => {
                assert!(Instant::now() < deadline, "Redis did not come back");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
}

/// After a failover counting goes on from what the promoted replica had, within the window
/// docs/configuration.md states: the last writes the old primary acknowledged but had not yet
/// replicated are lost, and a request that failed (timed out) during the failover may have
/// been applied anyway; a few requests either way, never the traffic before the failover.
async fn failover_counts(store: &RedisStore, key: &str, admitted: u64, unavailable: u64) {
    let counted = BIG_QUOTA - remaining(store, key).await;
    let admitted = admitted + 1;
    assert!(
        counted <= admitted + unavailable.min(FAILOVER_SLACK),
        "{counted} counted, {admitted} admitted"
    );
    assert!(
        admitted <= counted + FAILOVER_SLACK,
        "{} admitted requests were lost in the failover ({counted} counted)",
        admitted - counted
    );
}

/// What a failover may count wrongly in these tests: loopback replication is sub-millisecond.
const FAILOVER_SLACK: u64 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_primary_failover_follows_on_error_then_counts_on() {
    let mut cluster = RedisCluster::start();
    let key = "failover";
    let store = Arc::new(open(
        Topology::Cluster(cluster.seeds()),
        TlsMaterial::default(),
    ));
    connected(&store).await;
    let (before, _) = hammer(store.clone(), key, Duration::from_millis(300)).await;
    assert!(before > 0);
    // Kill the primary holding the key's slot while traffic runs; its replica takes over.
    let victim = cluster.primary_of(&format!("t:q:{{4:gold:{}:{key}}}:x", key.len()));
    let traffic = tokio::spawn(hammer(store.clone(), key, Duration::from_secs(6)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    cluster.nodes[victim].kill();
    let (during, unavailable) = traffic.await.unwrap();
    assert!(unavailable > 0, "the outage was seen (on_error: deny)");
    cluster.wait_ok();
    assert_ne!(
        cluster.primary_of(&format!("t:q:{{4:gold:{}:{key}}}:x", key.len())),
        victim
    );
    failover_counts(&store, key, before + during, unavailable).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_shares_a_quota_and_follows_a_failover() {
    let mut s = SentinelSetup::start();
    let sentinels = vec![s.sentinel.url()];
    let topo = || Topology::Sentinel {
        sentinels: sentinels.clone(),
        master: "mymaster".into(),
    };
    two_replicas_admit_exactly_the_quota(
        open(topo(), TlsMaterial::default()),
        open(topo(), TlsMaterial::default()),
        "sentinel-key",
    )
    .await;
    let key = "sentinel-failover";
    let store = Arc::new(open(topo(), TlsMaterial::default()));
    connected(&store).await;
    let (before, _) = hammer(store.clone(), key, Duration::from_millis(300)).await;
    let old = s.primary.port();
    let traffic = tokio::spawn(hammer(store.clone(), key, Duration::from_secs(8)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.primary.kill();
    let (during, unavailable) = traffic.await.unwrap();
    assert!(unavailable > 0, "the outage was seen (on_error: deny)");
    let deadline = Instant::now() + crate::support::redis_cluster::SETTLE;
    while s.primary_port() != s.replica.port() {
        assert!(Instant::now() < deadline, "Sentinel promoted the replica");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(s.primary_port(), old);
    failover_counts(&store, key, before + during, unavailable).await;
    let port = s.replica.port().to_string();
    assert!(
        cli(&["-p", &port, "info", "replication"])
            .unwrap()
            .contains("role:master")
    );
}

/// A gateway config with `state`: key `partner` (`key-partner`) in plan `gold`, a quota of
/// 25 a day, on `GET /x`.
pub fn quota_config(state: &str) -> String {
    format!(
        r#"{HEAD}state: {state}
usage_plans:
  gold: {{ quota: {{ limit: 25, period: day }} }}
api_keys:
  keys:
    - {{ id: partner, key: key-partner, plan: gold }}
    - {{ id: warm, key: key-warm, plan: gold }}
routes:
  - {{ route: "GET /x", api_key_required: true, respond: {{ body: '{{}}' }}, authorizer: none }}
"#
    )
}

/// Two whole gateways with `state` (files written beside their configs) under concurrent load
/// on one key: together they admit exactly the quota of 25.
async fn two_gateways_admit_exactly_the_quota(state: &str, files: &[(&str, &str)]) {
    let yaml = quota_config(state);
    let gws = [
        Arc::new(gateway::start_raw(&yaml, files).await),
        Arc::new(gateway::start_raw(&yaml, files).await),
    ];
    for gw in &gws {
        let deadline = Instant::now() + CONNECT_WAIT;
        while gw.admin_get("/usage?key=partner").await.status != 200 {
            assert!(Instant::now() < deadline, "store not ready: {state}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The scripts loaded before the burst (another key's request counts nothing here).
        while gw.get("/x", &[("x-api-key", "key-warm")]).await.status != 200 {
            assert!(Instant::now() < deadline, "store not warm: {state}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut tasks = JoinSet::new();
    for i in 0..60 {
        let gw = gws[i % 2].clone();
        tasks.spawn(async move { gw.get("/x", &[("x-api-key", "key-partner")]).await.status });
    }
    let (mut ok, mut limited) = (0, 0);
    while let Some(s) = tasks.join_next().await {
        match s.unwrap().as_u16() {
            200 => ok += 1,
            429 => limited += 1,
            other => panic!("unexpected {other} with {state}"),
        }
    }
    assert_eq!((ok, limited), (25, 35), "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_each_topology_admit_exactly_the_quota() {
    let ca = Ca::new("redis test CA");
    let tls = RedisServer::start_tls(&ca, &ca.server("redis", &["127.0.0.1"]), false, None);
    two_gateways_admit_exactly_the_quota(
        &format!(
            "{{ backend: redis, url: \"{}\", tls: {{ ca: ca.pem }} }}",
            tls.url()
        ),
        &[("ca.pem", &ca.pem)],
    )
    .await;
    let cluster = RedisCluster::start();
    let seeds: Vec<String> = cluster.seeds().iter().map(|s| format!("\"{s}\"")).collect();
    two_gateways_admit_exactly_the_quota(
        &format!("{{ backend: redis, cluster: [{}] }}", seeds.join(", ")),
        &[],
    )
    .await;
    let s = SentinelSetup::start();
    two_gateways_admit_exactly_the_quota(
        &format!(
            "{{ backend: redis, sentinels: [\"{}\"], master_name: mymaster }}",
            s.sentinel.url()
        ),
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_known_primary_keeps_serving_while_no_sentinel_answers() {
    let mut s = SentinelSetup::start();
    let store = Arc::new(open(
        Topology::Sentinel {
            sentinels: vec![s.sentinel.url()],
            master: "mymaster".into(),
        },
        TlsMaterial::default(),
    ));
    connected(&store).await;
    remaining(&store, "warm-up").await;
    s.sentinel.kill();
    // Several polls later, every count still reaches the primary.
    let (ok, unavailable) = hammer(store.clone(), "no-sentinel", Duration::from_secs(2)).await;
    assert!(ok > 0);
    assert_eq!(unavailable, 0, "the primary answered all along");
    assert!(store.is_connected());
}
