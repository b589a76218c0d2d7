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
use crate::telemetry::{ExportSpec, Exporter};
use crate::util::CarriedMap;

/// State that outlives snapshots: remote key sets by source, token caches by authorizer
/// fingerprint (a changed authorizer gets a fresh cache), and the outbound fetch client.
pub struct Registry {
    metrics: Arc<Metrics>,
    limits: Arc<LimitState>,
    fetcher: Fetcher,
    jwks: CarriedMap<JwksSource, Arc<RemoteJwks>>,
    caches: CarriedMap<String, TokenCache>,
    rings: CarriedMap<PathBuf, Arc<KeyRing>>,
    exporters: CarriedMap<ExportSpec, Arc<Exporter>>,
    pub(super) failures: FailureCounter,
}

impl Registry {
    /// An empty registry. It opens nothing by itself: see [`Registry::activate`].
    pub fn new(metrics: Arc<Metrics>, limits: Arc<LimitState>) -> Registry {
        Registry {
            metrics,
            limits,
            fetcher: Fetcher::new(),
            jwks: CarriedMap::default(),
            caches: CarriedMap::default(),
            rings: CarriedMap::default(),
            exporters: CarriedMap::default(),
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
        self.exporters.sweep(kept);
    }

    /// The issuer key ring for `path`, opened once (nothing written: see [`Registry::activate`])
    /// and shared by later snapshots.
    pub(super) fn key_ring(&self, path: &Path) -> Result<Arc<KeyRing>, String> {
        self.rings
            .get_or_try_insert_with(path.to_path_buf(), || KeyRing::open(path).map(Arc::new))
    }

    /// Opens the live resources of what the last compile used, once it is to be served (never
    /// for `tollgate check`): remote key sets start fetching and refreshing, and issuer key rings
    /// write a key they generated. Compiling itself opens nothing. Refuses when a key cannot
    /// be written.
    pub fn activate(&self) -> Result<(), (&'static str, String)> {
        for jwks in self.jwks.values() {
            jwks.activate();
        }
        for ring in self.rings.values() {
            ring.persist().map_err(|e| ("issuer", e))?;
        }
        for exporter in self.exporters.values() {
            exporter.activate().map_err(|e| ("telemetry.tracing", e))?;
        }
        Ok(())
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
            RemoteJwks::new(source, label, self.fetcher.clone(), self.metrics.clone())
        })
    }

    /// The span exporter for `spec`: the one an earlier snapshot used when its settings were
    /// the same (its queue and connection carry over), else a new one (started on activation).
    pub(super) fn exporter(&self, spec: ExportSpec) -> Arc<Exporter> {
        self.exporters.get_or_insert_with(spec.clone(), || {
            Arc::new(Exporter::new(spec, &self.metrics))
        })
    }

    pub(super) fn token_cache(&self, fingerprint: String) -> TokenCache {
        self.caches
            .get_or_insert_with(fingerprint, TokenCache::default)
    }
}
