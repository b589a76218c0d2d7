//! State that outlives snapshots, handed to every compile.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::auth::TokenCache;
use crate::auth::jwks::{JwksSource, RemoteJwks};
use crate::fetch::Fetcher;
use crate::issuer::FailureCounter;
use crate::issuer::keys::KeyRing;
use crate::limits::LimitState;
use crate::metrics::Metrics;
use crate::util::CarriedMap;

/// State that outlives snapshots: remote key sets by source, token caches by authorizer
/// fingerprint (a changed authorizer gets a fresh cache), and the outbound fetch client.
pub struct Registry {
    metrics: Arc<Metrics>,
    limits: Arc<LimitState>,
    fetcher: Fetcher,
    /// Whether remote key sets are fetched (off for `tollgate check`).
    online: bool,
    jwks: CarriedMap<JwksSource, Arc<RemoteJwks>>,
    caches: CarriedMap<String, TokenCache>,
    rings: CarriedMap<PathBuf, Arc<KeyRing>>,
    pub(super) failures: FailureCounter,
}

impl Registry {
    /// A registry; `online: false` never starts network fetches.
    pub fn new(metrics: Arc<Metrics>, limits: Arc<LimitState>, online: bool) -> Registry {
        Registry {
            metrics,
            limits,
            fetcher: Fetcher::new(),
            online,
            jwks: CarriedMap::default(),
            caches: CarriedMap::default(),
            rings: CarriedMap::default(),
            failures: FailureCounter::default(),
        }
    }

    /// Ends a compile. When its snapshot went live (`kept`), state the snapshot does not use is
    /// dropped: remote key sets stop refreshing once the last old snapshot is gone, and caches
    /// of changed authorizers are freed. Either way the record of what was used is cleared.
    pub fn sweep(&self, kept: bool) {
        self.limits.sweep(kept);
        self.jwks.sweep(kept);
        self.caches.sweep(kept);
        self.rings.sweep(kept);
    }

    /// The issuer key ring for `path`, opened once and shared by later snapshots. When not
    /// online (`tollgate check`), an absent key is generated in memory and not written.
    pub(super) fn key_ring(&self, path: &Path) -> Result<Arc<KeyRing>, String> {
        if !self.online {
            return KeyRing::open(path, false).map(Arc::new);
        }
        self.rings.get_or_try_insert_with(path.to_path_buf(), || {
            KeyRing::open(path, true).map(Arc::new)
        })
    }

    /// Throttle and quota state.
    pub fn limits(&self) -> &Arc<LimitState> {
        &self.limits
    }

    /// The metrics every snapshot reports into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub(super) fn remote_jwks(&self, source: JwksSource, label: &str) -> Arc<RemoteJwks> {
        self.jwks.get_or_insert_with(source.clone(), || {
            RemoteJwks::start(
                source,
                label,
                self.fetcher.clone(),
                self.metrics.clone(),
                self.online,
            )
        })
    }

    pub(super) fn token_cache(&self, fingerprint: String) -> TokenCache {
        self.caches
            .get_or_insert_with(fingerprint, TokenCache::default)
    }
}
