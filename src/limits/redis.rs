//! The Redis store: shared buckets and quota counters for a fleet of gateways.
//!
//! Every decision is one Lua script run atomically by Redis, so any number of replicas together
//! admit at most what one gateway would.
//!
//! Key layout (`P` is `state.key_prefix`, default `tollgate:`; `‹s›` is a length-prefixed part,
//! `LEN:s` with `LEN` the byte length of `s`, so a plan name, bucket name or key id containing
//! `:` can never reach into another one's keys — `a:b` + `c` is `3:a:b:1:c`, `a` + `b:c` is
//! `1:a:3:b:c`):
//!
//! | key                                  | value                          | expires            |
//! |--------------------------------------|--------------------------------|--------------------|
//! | `Pb:‹bucket›:‹key›` or `Pb:‹bucket›:*` | GCRA TAT, `SECONDS:MICROS`    | when the bucket is full again (≤ burst × interval) |
//! | `Pq:‹plan›:‹key id›:LABEL`           | requests counted in the period | period end + 1 day |
//! | `Pd:‹plan›:‹key id›:YYYY-MM-DD`      | requests counted that day      | 400 days           |
//!
//! (`*` is the unkeyed bucket; a keyed part always starts with a digit, so the key id `*` is
//! a different bucket.)
//!
//! Throttles use Redis's own clock (`TIME` inside the script), so replicas with skewed clocks
//! share one bucket consistently. Quota periods are calendar periods labelled from the
//! gateway's clock (the `now` the caller passes, as with the memory store): replicas need
//! roughly synchronised clocks (NTP) so that they agree on when a day, week or month turns.
//!
//! The connection is made in the background by a [`ConnectionManager`], which reconnects by
//! itself. While Redis cannot be reached (not connected yet, a command fails, or a command takes
//! longer than [`COMMAND_TIMEOUT`]), `state.on_error` decides: `allow` admits the request as if
//! the state were fresh (a full bucket: `remaining = burst - 1`, `reset` = one interval rounded
//! up to whole seconds; the period's first request: `remaining = limit - 1`, `reset` = seconds
//! left in the period) without counting it, `deny` refuses with [`LimitError::Unavailable`];
//! either way
//! `tollgate_redis_errors_total{result="allowed"|"denied"}` counts it. The outage is logged once
//! when it starts (warn) and once when it ends (info). During an outage only one request per
//! 200 ms (a probe) tries Redis; the others fall back at once rather than each waiting out the
//! timeout.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::Script;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use time::{Date, OffsetDateTime};
use tokio::task::JoinHandle;

use super::memory::USAGE_DAYS_KEPT;
use super::period::day_label;
use super::spec::{BucketSpec, BucketState, DayUsage, LimitError, QuotaSpec, QuotaState};
use crate::config::schema::OnError;
use crate::metrics::Metrics;

/// Longest wait for one Redis command. A limit check sits on every request's path: a stalled
/// Redis must cost a request at most this before `on_error` decides, while a healthy Redis on the
/// same network answers in well under a millisecond.
pub const COMMAND_TIMEOUT: Duration = Duration::from_millis(250);

/// While Redis is known to be down, one request per interval (a probe) still tries it, so that
/// recovery is noticed; the others follow `on_error` at once instead of each waiting out
/// [`COMMAND_TIMEOUT`] on a reconnect in progress.
const PROBE_INTERVAL: Duration = Duration::from_millis(200);

/// Longest wait for one TCP connection attempt (an unroutable host must not hang a reconnect).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Longest pause between connection attempts while Redis is down, so that recovery is noticed
/// within a couple of seconds.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// How often the Sentinel topology asks which server is the primary, so that a failover is
/// followed within this (plus Sentinel's own detection time).
const SENTINEL_POLL: Duration = Duration::from_millis(500);

/// Longest wait for one sentinel's answer (it also connects to the primary to check its
/// role): a host that died without a reset must not stall the lookup for TCP's minutes.
const SENTINEL_ASK: Duration = Duration::from_secs(2);

/// Seconds a quota period key outlives its period (so a late replica still finds it).
const PERIOD_KEY_MARGIN_SECS: u64 = 86_400;

/// GCRA in one step. KEYS[1]: the bucket; ARGV[1]: emission interval T in microseconds (may be
/// fractional); ARGV[2]: burst B. The stored value is the theoretical arrival time (TAT) as
/// `SECONDS:MICROS` — whole seconds of the Redis clock when it was written and microseconds
/// after them — so arithmetic stays on small numbers and keeps sub-microsecond precision (one
/// double of microseconds since 1970 only resolves 0.25 µs, and rounding would accumulate over
/// a burst). Admits when max(TAT, now) + T - now <= B*T, then stores the new TAT, expiring
/// when the bucket is full again. Returns {1, remaining, micros until full} or
/// {0, 0, micros until a token is available}.
const GCRA_LUA: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now_us = tonumber(t[2])
local interval = tonumber(ARGV[1])
local tau = interval * tonumber(ARGV[2])
local ahead = 0
local v = redis.call('GET', KEYS[1])
if v then
  local s, us = string.match(v, '^(%-?%d+):(.+)$')
  if s then
    ahead = (tonumber(s) - now_s) * 1000000 + tonumber(us) - now_us
  end
end
if ahead < 0 then ahead = 0 end
local after = ahead + interval
-- A billionth of the bucket's span absorbs floating-point error only.
if after > tau + tau * 1e-9 then
  return {0, 0, math.ceil(after - tau)}
end
redis.call('SET', KEYS[1], string.format('%d:%.17g', now_s, now_us + after),
  'PX', string.format('%d', math.max(1, math.ceil(after / 1000))))
return {1, math.floor((tau - after) / interval + 1e-9), math.ceil(after)}
";

/// Quota check-and-count. KEYS[1]: the period counter; KEYS[2]: the day counter; ARGV[1]:
/// limit; ARGV[2], ARGV[3]: their lifetimes in seconds. Returns the count after this request,
/// or -1 (nothing counted) when the limit was already reached.
const QUOTA_LUA: &str = r"
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used >= tonumber(ARGV[1]) then return -1 end
used = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return used
";

/// Which Redis deployment holds the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One server: `redis://` or, over TLS, `rediss://[user:password@]host:port[/db]`.
    Single(String),
    /// A Redis Cluster, by seed node URLs (all `redis://` or all `rediss://`).
    Cluster(Vec<String>),
    /// The primary that Sentinel names `master`, asked of `sentinels`; connections to the
    /// primary use the first sentinel URL's credentials, database and TLS.
    Sentinel {
        /// Sentinel URLs.
        sentinels: Vec<String>,
        /// The monitored primary's name.
        master: String,
    },
}

/// PEM material for TLS (`rediss://`) beyond the defaults (the system's root certificates, no
/// client certificate).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsMaterial {
    /// CA certificates the servers' certificates must chain to, instead of the system's.
    pub ca: Option<Vec<u8>>,
    /// A client certificate chain and its key, for servers that require one.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsMaterial {
    fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.ca.clone(),
        }
    }

    fn is_empty(&self) -> bool {
        self.ca.is_none() && self.client.is_none()
    }
}

/// The connection commands go on: each reconnects by itself (the cluster one also follows
/// `MOVED`/`ASK` and refreshes its slot map); Sentinel's is replaced when the primary moves.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// How the store reaches its topology.
enum Backend {
    Single(redis::Client),
    Cluster(ClusterClient),
    Sentinel(Sentinels),
}

/// One client per sentinel, asked in turn from the last one that answered: redis-rs's own
/// client tries its sentinels in list order with no timeout, so one unreachable sentinel would
/// stall every lookup.
struct Sentinels {
    clients: Vec<tokio::sync::Mutex<SentinelClient>>,
    /// Rebuilds client `i` (a client that timed out may hold a hung connection).
    build: Box<dyn Fn(usize) -> redis::RedisResult<SentinelClient> + Send + Sync>,
    /// Where the next lookup starts.
    next: AtomicU64,
}

impl Sentinels {
    /// The primary's client, from the first sentinel that answers within [`SENTINEL_ASK`].
    async fn primary(&self) -> redis::RedisResult<redis::Client> {
        let n = self.clients.len();
        let start = self.next.load(Ordering::Relaxed) as usize;
        let mut last = None;
        for k in 0..n {
            let i = (start + k) % n;
            let mut c = self.clients[i].lock().await;
            match tokio::time::timeout(SENTINEL_ASK, c.async_get_client()).await {
                Ok(Ok(client)) => {
                    self.next.store(i as u64, Ordering::Relaxed);
                    return Ok(client);
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    if let Ok(fresh) = (self.build)(i) {
                        *c = fresh;
                    }
                    last = Some(redis::RedisError::from((
                        redis::ErrorKind::IoError,
                        "sentinel did not answer",
                        format!("within {SENTINEL_ASK:?}"),
                    )));
                }
            }
        }
        Err(last.expect("at least one sentinel"))
    }
}

/// Throttle and quota state in Redis, shared by gateway replicas.
pub struct RedisStore {
    inner: Arc<Inner>,
    connector: Mutex<Option<JoinHandle<()>>>,
}

struct Inner {
    backend: Backend,
    /// `host:port` of the server or the first seed or sentinel (never the password), for logs.
    addr: String,
    /// Which topology (`single`, `cluster`, `sentinel`), for `/config`.
    kind: &'static str,
    /// Whether quota keys carry a hash tag, so that a script's keys share a cluster slot.
    tagged: bool,
    /// The last error seen talking to Redis (cleared when it answers), for `/config`.
    last_error: Mutex<Option<String>>,
    prefix: String,
    on_error: OnError,
    metrics: Arc<Metrics>,
    conn: ArcSwapOption<Conn>,
    /// Redis is known to be unreachable (an outage was logged and its end is not yet).
    down: AtomicBool,
    /// Reference for `last_try`.
    epoch: Instant,
    /// When (ms after `epoch`) a command last went to Redis during an outage.
    last_try: AtomicU64,
    gcra: Script,
    quota: Script,
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        if let Some(task) = self.connector.lock().expect("not poisoned").take() {
            task.abort();
        }
    }
}

impl RedisStore {
    /// A store for one server at `url` (`redis://host:port/db`), without extra TLS material.
    /// See [`RedisStore::open`].
    pub fn new(
        url: &str,
        prefix: String,
        on_error: OnError,
        metrics: Arc<Metrics>,
    ) -> Result<RedisStore, String> {
        Self::open(
            &Topology::Single(url.to_string()),
            &TlsMaterial::default(),
            prefix,
            on_error,
            metrics,
        )
    }

    /// A store for `topology`. Never fails because Redis is down: it connects in the background
    /// and follows `on_error` meanwhile. Refuses a malformed URL, TLS material without
    /// `rediss://`, and (Cluster) a key prefix with `{` or `}`, which would break the hash
    /// tags. Inside a tokio runtime the connection starts at once; otherwise at the first call.
    pub fn open(
        topology: &Topology,
        tls: &TlsMaterial,
        prefix: String,
        on_error: OnError,
        metrics: Arc<Metrics>,
    ) -> Result<RedisStore, String> {
        let (backend, addr, kind) = backend(topology, tls, &prefix)?;
        let store = RedisStore {
            inner: Arc::new(Inner {
                backend,
                addr,
                kind,
                tagged: matches!(topology, Topology::Cluster(_)),
                last_error: Mutex::new(None),
                prefix,
                on_error,
                metrics,
                conn: ArcSwapOption::empty(),
                down: AtomicBool::new(false),
                epoch: Instant::now(),
                last_try: AtomicU64::new(0),
                gcra: Script::new(GCRA_LUA),
                quota: Script::new(QUOTA_LUA),
            }),
            connector: Mutex::new(None),
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            store.start_connecting();
        }
        Ok(store)
    }

    /// What [`RedisStore::open`] refuses, without a store: for `tollgate check` and reloads.
    /// Builds the clients (which connect to nothing) and drops them.
    pub fn check(topology: &Topology, tls: &TlsMaterial, prefix: &str) -> Result<(), String> {
        backend(topology, tls, prefix).map(drop)
    }

    /// The topology's name (`single`, `cluster`, `sentinel`) and the last error talking to
    /// Redis, if it has not answered since: what `/config` shows.
    pub fn status(&self) -> (&'static str, Option<String>) {
        (
            self.inner.kind,
            self.inner.last_error.lock().expect("not poisoned").clone(),
        )
    }

    /// Whether Redis is connected and the last command succeeded.
    pub fn is_connected(&self) -> bool {
        self.inner.conn.load().is_some() && !self.inner.down.load(Ordering::Acquire)
    }

    /// Starts the background connection task once (needs a tokio runtime).
    fn start_connecting(&self) {
        let mut slot = self.connector.lock().expect("not poisoned");
        if slot.is_none() {
            *slot = Some(tokio::spawn(connect(self.inner.clone())));
        }
    }

    /// The connection to send a command on: `None` while there is none yet, and during an
    /// outage except for one probe per [`PROBE_INTERVAL`].
    fn conn(&self) -> Option<Conn> {
        // A guard, not a counted `Arc`: this runs for every limit check.
        let guard = self.inner.conn.load();
        let Some(c) = guard.as_ref() else {
            self.start_connecting();
            return None;
        };
        self.inner.may_try().then(|| (**c).clone())
    }

    /// Runs `invocation` with the per-command timeout, recording the outage state.
    /// A sampled request's span for it is named `redis {what}` (`throttle`, `quota`).
    async fn run<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Option<T> {
        let mut span =
            crate::telemetry::child(opentelemetry::trace::SpanKind::Client, || match what {
                "throttle" => "redis throttle",
                _ => "redis quota",
            });
        if let Some(span) = &mut span {
            span.attr("db.system.name", "redis");
            span.attr("db.operation.name", "EVALSHA");
            span.attr("tollgate.limit", what);
        }
        let Some(mut conn) = self.conn() else {
            if let Some(span) = &mut span {
                span.fail("no connection");
            }
            return None;
        };
        let failure =
            match tokio::time::timeout(COMMAND_TIMEOUT, invocation.invoke_async(&mut conn)).await {
                Ok(Ok(v)) => {
                    self.inner.up();
                    return Some(v);
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {COMMAND_TIMEOUT:?}"),
            };
        self.inner.down(&failure);
        if let Some(span) = &mut span {
            span.fail(failure);
        }
        None
    }

    /// `on_error` for a request whose state could not be read: `allowed` or Unavailable.
    fn fallback<T>(&self, allowed: T) -> Result<T, LimitError> {
        match self.inner.on_error {
            OnError::Allow => {
                self.inner
                    .metrics
                    .redis_errors
                    .with_label_values(&["allowed"])
                    .inc();
                Ok(allowed)
            }
            OnError::Deny => {
                self.inner
                    .metrics
                    .redis_errors
                    .with_label_values(&["denied"])
                    .inc();
                Err(LimitError::Unavailable)
            }
        }
    }

    /// Takes a token from `bucket` (per `key` when given).
    pub async fn take(
        &self,
        bucket: &str,
        key: Option<&str>,
        spec: BucketSpec,
    ) -> Result<BucketState, LimitError> {
        let limit = u64::from(spec.burst);
        let redis_key = bucket_key(&self.inner.prefix, bucket, key);
        let mut inv = self.inner.gcra.prepare_invoke();
        inv.key(redis_key)
            .arg(1_000_000.0 / spec.rate)
            .arg(spec.burst);
        match self.run::<(i64, i64, i64)>("throttle", &inv).await {
            Some((1, remaining, micros)) => Ok(BucketState {
                limit,
                remaining: (remaining.max(0) as u64).min(limit),
                reset: ceil_secs(micros),
            }),
            Some((_, _, micros)) => Err(LimitError::Throttled {
                retry_after: ceil_secs(micros).max(1),
            }),
            None => self.fallback(BucketState {
                limit,
                remaining: limit - 1,
                reset: spec.interval().as_secs_f64().ceil() as u64,
            }),
        }
    }

    /// Counts one request against a quota.
    pub async fn count(
        &self,
        plan: &str,
        key_id: &str,
        spec: QuotaSpec,
        now: OffsetDateTime,
    ) -> Result<QuotaState, LimitError> {
        let reset = spec.period.seconds_left(now);
        if spec.limit == 0 {
            return Err(LimitError::QuotaExceeded { retry_after: reset });
        }
        let label = spec.period.label(now);
        let today = day_label(now.date());
        let p = &self.inner.prefix;
        let mut inv = self.inner.quota.prepare_invoke();
        let tag = self.inner.tagged;
        inv.key(quota_key(p, plan, key_id, &label, tag))
            .key(day_key(p, plan, key_id, &today, tag))
            .arg(spec.limit)
            .arg(reset + PERIOD_KEY_MARGIN_SECS)
            .arg(USAGE_DAYS_KEPT as u64 * 86_400);
        match self.run::<i64>("quota", &inv).await {
            Some(used) if used >= 0 => Ok(QuotaState {
                limit: spec.limit,
                remaining: spec.limit.saturating_sub(used as u64),
                reset,
            }),
            Some(_) => Err(LimitError::QuotaExceeded { retry_after: reset }),
            None => self.fallback(QuotaState {
                limit: spec.limit,
                remaining: spec.limit - 1,
                reset,
            }),
        }
    }

    /// Per-day usage: requests counted each day from `from` to `to` inclusive (0 for days
    /// without requests). Fails while Redis cannot be reached.
    pub async fn usage(
        &self,
        plan: &str,
        key_id: &str,
        from: Date,
        to: Date,
    ) -> Result<Vec<DayUsage>, String> {
        let mut days = Vec::new();
        let mut d = from;
        while d <= to {
            days.push(day_label(d));
            match d.next_day() {
                Some(n) => d = n,
                None => break,
            }
        }
        if days.is_empty() {
            return Ok(Vec::new());
        }
        let Some(mut conn) = self.conn() else {
            return Err(format!("Redis at {} is unreachable", self.inner.addr));
        };
        let keys: Vec<String> = days
            .iter()
            .map(|day| day_key(&self.inner.prefix, plan, key_id, day, self.inner.tagged))
            .collect();
        let mut cmd = redis::cmd("MGET");
        cmd.arg(&keys);
        let counts: Vec<Option<u64>> =
            match tokio::time::timeout(COMMAND_TIMEOUT, cmd.query_async(&mut conn)).await {
                Ok(Ok(v)) => {
                    self.inner.up();
                    v
                }
                Ok(Err(e)) => {
                    self.inner.down(&e.to_string());
                    return Err(format!("Redis at {}: {e}", self.inner.addr));
                }
                Err(_) => {
                    let why = format!("no answer within {COMMAND_TIMEOUT:?}");
                    self.inner.down(&why);
                    return Err(format!("Redis at {}: {why}", self.inner.addr));
                }
            };
        Ok(days
            .into_iter()
            .zip(counts)
            .map(|(day, used)| DayUsage {
                day,
                used: used.unwrap_or(0),
            })
            .collect())
    }
}

impl Inner {
    fn millis(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether a command may go to Redis now: always while it is up, once per
    /// [`PROBE_INTERVAL`] while it is down.
    fn may_try(&self) -> bool {
        if !self.down.load(Ordering::Acquire) {
            return true;
        }
        let now = self.millis();
        let last = self.last_try.load(Ordering::Acquire);
        now.saturating_sub(last) >= PROBE_INTERVAL.as_millis() as u64
            && self
                .last_try
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Records a failure; logs only when this starts an outage.
    fn down(&self, error: &str) {
        self.last_try.store(self.millis(), Ordering::Release);
        *self.last_error.lock().expect("not poisoned") = Some(error.to_string());
        if !self.down.swap(true, Ordering::AcqRel) {
            let on_error = match self.on_error {
                OnError::Allow => "allow",
                OnError::Deny => "deny",
            };
            tracing::warn!(redis = %self.addr, error, on_error, "Redis unreachable; limits follow state.on_error until it is back");
        }
    }

    /// Records a success; logs only when this ends an outage.
    fn up(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            *self.last_error.lock().expect("not poisoned") = None;
            tracing::info!(redis = %self.addr, "Redis reachable again");
        }
    }
}

/// The client for `topology` (nothing connects yet), its address for logs and its kind.
/// Refuses what [`RedisStore::open`] documents.
fn backend(
    topology: &Topology,
    tls: &TlsMaterial,
    prefix: &str,
) -> Result<(Backend, String, &'static str), String> {
    let bad = |e: redis::RedisError| format!("not a Redis URL: {e}");
    let tls_url = |u: &str| u.starts_with("rediss://");
    let built = match topology {
        Topology::Single(url) => {
            if !tls.is_empty() && !tls_url(url) {
                return Err("`tls` needs a `rediss://` URL".into());
            }
            let client = if tls.is_empty() {
                redis::Client::open(url.as_str())
            } else {
                redis::Client::build_with_tls(url.as_str(), tls.certificates())
            }
            .map_err(bad)?;
            let addr = client.get_connection_info().addr.to_string();
            (Backend::Single(client), addr, "single")
        }
        Topology::Cluster(seeds) => {
            if seeds.is_empty() {
                return Err("a cluster needs at least one seed node".into());
            }
            if seeds.iter().any(|s| tls_url(s)) != seeds.iter().all(|s| tls_url(s)) {
                return Err("seed nodes must all be `redis://` or all `rediss://`".into());
            }
            if !tls.is_empty() && !tls_url(&seeds[0]) {
                return Err("`tls` needs `rediss://` seed nodes".into());
            }
            if prefix.contains(['{', '}']) {
                return Err(
                    "a cluster's key_prefix may not contain `{` or `}` (they are hash tags)".into(),
                );
            }
            let first =
                redis::IntoConnectionInfo::into_connection_info(seeds[0].as_str()).map_err(bad)?;
            // The client's own timeout stays well behind ours: when ours fires first, the
            // caller has gone and the client does not resend the script (it would resend
            // one that timed out on its side, which could count it twice).
            let mut b = ClusterClient::builder(seeds.iter().map(String::as_str))
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(COMMAND_TIMEOUT * 4)
                .retries(2);
            if !tls.is_empty() {
                b = b.certs(tls.certificates());
            }
            let client = b.build().map_err(bad)?;
            (Backend::Cluster(client), first.addr.to_string(), "cluster")
        }
        Topology::Sentinel { sentinels, master } => {
            let Some(first) = sentinels.first() else {
                return Err("Sentinel needs at least one sentinel URL".into());
            };
            let info =
                redis::IntoConnectionInfo::into_connection_info(first.as_str()).map_err(bad)?;
            let node = SentinelNodeConnectionInfo {
                tls_mode: tls_url(first).then_some(redis::TlsMode::Secure),
                redis_connection_info: Some(info.redis.clone()),
            };
            if !tls.is_empty() {
                return Err(
                    "`tls` files are not used with `sentinels` (the system's roots are)".into(),
                );
            }
            let urls = sentinels.clone();
            let name = master.clone();
            let build = move |i: usize| {
                SentinelClient::build(
                    vec![urls[i].as_str()],
                    name.clone(),
                    Some(node.clone()),
                    SentinelServerType::Master,
                )
            };
            let clients = (0..sentinels.len())
                .map(|i| build(i).map(tokio::sync::Mutex::new))
                .collect::<Result<Vec<_>, _>>()
                .map_err(bad)?;
            (
                Backend::Sentinel(Sentinels {
                    clients,
                    build: Box::new(build),
                    next: AtomicU64::new(0),
                }),
                format!("{} (sentinel, primary {master})", info.addr),
                "sentinel",
            )
        }
    };
    Ok(built)
}

/// Connects until it succeeds. One server's [`ConnectionManager`] and the cluster connection
/// then reconnect by themselves; with Sentinel the task stays, asking every [`SENTINEL_POLL`]
/// which server is the primary and moving the connection when that changes (a failover).
async fn connect(inner: Arc<Inner>) {
    let mut pause = Duration::from_millis(100);
    let mut primary: Option<String> = None;
    loop {
        let attempt = match &inner.backend {
            Backend::Single(client) => single(client).await.map(|c| (Conn::Single(c), None)),
            Backend::Cluster(client) => client
                .get_async_connection()
                .await
                .map(|c| (Conn::Cluster(c), None)),
            Backend::Sentinel(sentinels) => {
                let found = sentinels.primary().await;
                match found {
                    Ok(client) => {
                        let at = client.get_connection_info().addr.to_string();
                        if primary.as_deref() == Some(&at) && inner.conn.load().is_some() {
                            tokio::time::sleep(SENTINEL_POLL).await;
                            continue;
                        }
                        single(&client).await.map(|c| (Conn::Single(c), Some(at)))
                    }
                    // The sentinels are unreachable but the primary may well answer: keep
                    // using it (its own failures count as outages) and ask again later.
                    Err(e) if inner.conn.load().is_some() => {
                        tracing::debug!(redis = %inner.addr, error = %e, "no sentinel answered");
                        tokio::time::sleep(SENTINEL_POLL).await;
                        continue;
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match attempt {
            Ok((conn, at)) => {
                let moved = at.is_some() && primary.is_some();
                inner.conn.store(Some(Arc::new(conn)));
                if moved {
                    tracing::warn!(redis = %inner.addr, primary = at.as_deref().unwrap_or(""), "Redis primary moved (failover); following it");
                } else if !inner.down.load(Ordering::Acquire) {
                    tracing::info!(redis = %inner.addr, "connected to Redis");
                }
                inner.up();
                pause = Duration::from_millis(100);
                if at.is_none() {
                    return;
                }
                primary = at;
                tokio::time::sleep(SENTINEL_POLL).await;
            }
            Err(e) => {
                inner.down(&e.to_string());
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_RECONNECT_DELAY);
            }
        }
    }
}

/// A connection manager for one server, after a first single attempt succeeded (so that an
/// outage at start is reported at once rather than after the manager's retries).
async fn single(client: &redis::Client) -> redis::RedisResult<ConnectionManager> {
    // The manager's reconnect backoff starts at 1 s and, by default, grows to a minute; capping
    // it keeps recovery within a couple of seconds. Its retries are few: when a round runs out,
    // the next command starts a fresh one.
    let config = ConnectionManagerConfig::new()
        .set_factor(2)
        .set_max_delay(MAX_RECONNECT_DELAY.as_millis() as u64)
        .set_number_of_retries(2)
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_response_timeout(COMMAND_TIMEOUT);
    let probe = redis::AsyncConnectionConfig::new().set_connection_timeout(CONNECT_TIMEOUT);
    client
        .get_multiplexed_async_connection_with_config(&probe)
        .await?;
    ConnectionManager::new_with_config(client.clone(), config).await
}

/// Whole seconds (rounded up) in `micros` microseconds.
fn ceil_secs(micros: i64) -> u64 {
    (micros.max(0) as u64).div_ceil(1_000_000)
}

/// A length-prefixed key part: `LEN:s`.
fn part(s: &str) -> String {
    format!("{}:{s}", s.len())
}

fn bucket_key(prefix: &str, bucket: &str, key: Option<&str>) -> String {
    match key {
        Some(k) => format!("{prefix}b:{}:{}", part(bucket), part(k)),
        None => format!("{prefix}b:{}:*", part(bucket)),
    }
}

/// The plan and key part of quota keys: in a cluster inside `{...}`, a hash tag, so that the
/// period and day counters a script updates together share a slot.
fn owner(plan: &str, key_id: &str, tagged: bool) -> String {
    if tagged {
        format!("{{{}:{}}}", part(plan), part(key_id))
    } else {
        format!("{}:{}", part(plan), part(key_id))
    }
}

fn quota_key(prefix: &str, plan: &str, key_id: &str, label: &str, tagged: bool) -> String {
    format!("{prefix}q:{}:{label}", owner(plan, key_id, tagged))
}

fn day_key(prefix: &str, plan: &str, key_id: &str, day: &str, tagged: bool) -> String {
    format!("{prefix}d:{}:{day}", owner(plan, key_id, tagged))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_parts_are_length_prefixed() {
        assert_eq!(
            quota_key("t:", "gold", "k1", "2026-11", false),
            "t:q:4:gold:2:k1:2026-11"
        );
        assert_eq!(
            day_key("t:", "gold", "k1", "2026-11-22", false),
            "t:d:4:gold:2:k1:2026-11-22"
        );
        assert_eq!(bucket_key("t:", "r|5r2b", None), "t:b:6:r|5r2b:*");
        assert_eq!(bucket_key("t:", "r", Some("k")), "t:b:1:r:1:k");
    }

    #[test]
    fn colons_in_names_do_not_collide() {
        assert_ne!(
            quota_key("", "a:b", "c", "L", false),
            quota_key("", "a", "b:c", "L", false)
        );
        assert_ne!(
            day_key("", "a:b", "c", "D", false),
            day_key("", "a", "b:c", "D", false)
        );
        assert_ne!(
            bucket_key("", "x:y", Some("z")),
            bucket_key("", "x", Some("y:z"))
        );
        assert_ne!(bucket_key("", "x", None), bucket_key("", "x", Some("*")));
        // A key id that spells another key's tail stays inside its own length.
        assert_ne!(
            quota_key("", "p", "k:2026-11", "2026-12", false),
            quota_key("", "p", "k", "2026-11:2026-12", false)
        );
    }

    #[test]
    fn malformed_urls_are_refused_and_a_down_redis_is_not() {
        let m = Arc::new(Metrics::new());
        assert!(RedisStore::new("http://x", "t:".into(), OnError::Deny, m.clone()).is_err());
        assert!(RedisStore::new("not a url", "t:".into(), OnError::Deny, m.clone()).is_err());
        // Outside a runtime nothing is spawned; the store exists regardless.
        let s = RedisStore::new("redis://127.0.0.1:1", "t:".into(), OnError::Deny, m).unwrap();
        assert!(!s.is_connected());
    }

    #[test]
    fn ceil_seconds() {
        assert_eq!(ceil_secs(0), 0);
        assert_eq!(ceil_secs(1), 1);
        assert_eq!(ceil_secs(1_000_000), 1);
        assert_eq!(ceil_secs(1_000_001), 2);
        assert_eq!(ceil_secs(-5), 0);
    }
}
