//! Remote key sets: fetched by OIDC discovery or from a `jwks_uri`, cached, refreshed in the
//! background, refetched (rate-limited) when a token names an unknown `kid`, and kept as they
//! were while the issuer is unreachable. A `RemoteJwks` outlives config reloads: it is shared by
//! every authorizer (old or new snapshot) that names the same source.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::keys::KeySet;
use crate::fetch::Fetcher;
use crate::metrics::Metrics;

/// Deadline for one JWKS or discovery fetch (the contract's 1.5 s).
pub const FETCH_TIMEOUT: Duration = Duration::from_millis(1500);
/// Largest JWKS or discovery document accepted (the contract's 150 kB).
pub const MAX_DOCUMENT_BYTES: usize = 150 * 1024;
/// Background refresh period while the issuer answers; key rotations are seen this fast.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(600);
/// Retry period while the issuer does not answer (or never has).
pub const RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// Least time between two fetches caused by unknown `kid`s, so forged kids cannot hammer the issuer.
pub const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(10);

/// Where a remote key set comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum JwksSource {
    /// `{issuer}/.well-known/openid-configuration`, then its `jwks_uri`.
    Discovery {
        /// The issuer URL.
        issuer: String,
    },
    /// A JWKS URL.
    Uri(String),
}

/// A key set with a generation that changes whenever its keys do.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The keys.
    pub keys: KeySet,
    /// Bumped on every change of keys; verified-token cache entries of older generations are stale.
    pub generation: u64,
}

impl Loaded {
    /// A key set loaded once from `material` (a JWKS file's bytes or a secret). Its generation
    /// derives from the material, so the same keys keep their verified-token cache entries across
    /// reloads and changed keys do not.
    pub fn fixed(keys: KeySet, material: &[u8]) -> Loaded {
        let d = crate::util::sha256(material);
        let mut g = [0u8; 8];
        g.copy_from_slice(&d[..8]);
        Loaded {
            keys,
            // Remote sets count up from 1; keep fixed ones out of that small range.
            generation: u64::from_le_bytes(g) | (1 << 63),
        }
    }
}

/// A remotely fetched key set kept fresh by a background task.
pub struct RemoteJwks {
    source: JwksSource,
    label: String,
    fetcher: Fetcher,
    metrics: Arc<Metrics>,
    current: ArcSwap<Loaded>,
    /// Serialises fetches and remembers when the last one started.
    fetch_lock: tokio::sync::Mutex<Option<Instant>>,
    /// Hash of the last document, to tell a real change from a refresh.
    last_hash: Mutex<Option<String>>,
    discovered_uri: Mutex<Option<String>>,
    /// Whether the refresh task was started ([`RemoteJwks::activate`]).
    active: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteJwks")
            .field("source", &self.source)
            .finish()
    }
}

impl RemoteJwks {
    /// Creates the key set, empty and idle: nothing is fetched until [`RemoteJwks::activate`]
    /// (or a token naming an unknown `kid`).
    pub fn new(
        source: JwksSource,
        label: &str,
        fetcher: Fetcher,
        metrics: Arc<Metrics>,
    ) -> Arc<RemoteJwks> {
        Arc::new(RemoteJwks {
            source,
            label: label.to_string(),
            fetcher,
            metrics,
            current: ArcSwap::from_pointee(Loaded::default()),
            fetch_lock: tokio::sync::Mutex::new(None),
            last_hash: Mutex::new(None),
            discovered_uri: Mutex::new(None),
            active: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Starts the task that fetches the set now and refreshes it, once (later calls do
    /// nothing); the task ends when the last owner drops the set. A running gateway activates
    /// the sets of a snapshot before serving it; `tollgate check` never does.
    pub fn activate(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if !self.active.swap(true, Ordering::AcqRel) {
            tokio::spawn(refresh_loop(Arc::downgrade(self)));
        }
    }

    /// The keys as of now.
    pub fn current(&self) -> Arc<Loaded> {
        self.current.load_full()
    }

    /// Called when a token names a `kid` the set lacks: fetches again unless another fetch
    /// happened meanwhile or one started less than [`MIN_REFETCH_INTERVAL`] ago, then returns
    /// the (possibly new) keys. Concurrent callers share one fetch.
    pub async fn refetch_for_unknown_kid(&self, seen_generation: u64) -> Arc<Loaded> {
        let mut last = self.fetch_lock.lock().await;
        let now = self.current();
        if now.generation != seen_generation {
            return now;
        }
        if last.is_some_and(|t| t.elapsed() < MIN_REFETCH_INTERVAL) {
            return now;
        }
        *last = Some(Instant::now());
        let _ = self.fetch_now().await;
        self.current()
    }

    async fn fetch_now(&self) -> Result<(), String> {
        // A span only when a request waits on the fetch (an unknown `kid`), not for refreshes.
        let mut span =
            crate::telemetry::child(opentelemetry::trace::SpanKind::Client, || "jwks fetch");
        let result = self.fetch_inner().await;
        if let Some(span) = &mut span {
            span.attr("tollgate.authorizer", self.label.clone());
            if let Err(e) = &result {
                span.fail(e.clone());
            }
        }
        let label = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .jwks_refresh
            .with_label_values(&[self.label.as_str(), label])
            .inc();
        if let Err(e) = &result {
            tracing::warn!(authorizer = %self.label, source = ?self.source, error = %e,
                "JWKS fetch failed; keeping the last good keys");
        }
        result
    }

    async fn fetch_inner(&self) -> Result<(), String> {
        let url = match &self.source {
            JwksSource::Uri(u) => u.clone(),
            JwksSource::Discovery { issuer } => {
                let known = self.discovered_uri.lock().expect("not poisoned").clone();
                match known {
                    Some(u) => u,
                    None => {
                        let u = self.discover(issuer).await?;
                        *self.discovered_uri.lock().expect("not poisoned") = Some(u.clone());
                        u
                    }
                }
            }
        };
        let body = self
            .fetcher
            .get(&url, FETCH_TIMEOUT, MAX_DOCUMENT_BYTES)
            .await?;
        let hash = crate::util::sha256_hex(&body);
        let mut last = self.last_hash.lock().expect("not poisoned");
        if last.as_deref() == Some(hash.as_str()) {
            return Ok(());
        }
        let keys = KeySet::from_jwks(&body)?;
        let generation = self.current().generation + 1;
        tracing::info!(authorizer = %self.label, keys = keys.len(), generation, "JWKS loaded");
        self.current.store(Arc::new(Loaded { keys, generation }));
        *last = Some(hash);
        Ok(())
    }

    async fn discover(&self, issuer: &str) -> Result<String, String> {
        #[derive(serde::Deserialize)]
        struct Discovery {
            issuer: Option<String>,
            jwks_uri: String,
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let body = self
            .fetcher
            .get(&url, FETCH_TIMEOUT, MAX_DOCUMENT_BYTES)
            .await?;
        let doc: Discovery = serde_json::from_slice(&body)
            .map_err(|e| format!("discovery document is not valid: {e}"))?;
        if let Some(i) = &doc.issuer
            && i != issuer
        {
            return Err(format!(
                "discovery document names issuer {i:?}, expected {issuer:?}"
            ));
        }
        Ok(doc.jwks_uri)
    }
}

async fn refresh_loop(me: Weak<RemoteJwks>) {
    loop {
        let wait = {
            let Some(jwks) = me.upgrade() else { return };
            let ok = {
                let mut last = jwks.fetch_lock.lock().await;
                *last = Some(Instant::now());
                jwks.fetch_now().await.is_ok()
            };
            if ok && !jwks.current().keys.is_empty() {
                REFRESH_INTERVAL
            } else {
                RETRY_INTERVAL
            }
        };
        tokio::time::sleep(wait).await;
    }
}
