//! The running gateway: the current [`Snapshot`] in one `ArcSwap`, the [`Registry`] of state
//! beside it, the metrics, and readiness. Loading a config builds the whole next snapshot
//! before one atomic swap; a config that does not compile changes nothing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::config::{self, ConfigError};
use crate::metrics::Metrics;
use crate::snapshot::{self, Registry, Snapshot};

/// Shared state of a running gateway.
pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    registry: Registry,
    metrics: Arc<Metrics>,
    config_path: PathBuf,
    /// Serialises reloads (SIGHUP, admin, file watch may coincide).
    reloading: Mutex<()>,
    ready: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl Gateway {
    /// Loads the config at `path` and builds the first snapshot. `online: false` never fetches
    /// remote key sets (for `tollgate check`). Refuses a config with any error, listing all.
    pub fn load(path: &Path, online: bool) -> Result<Gateway, Vec<ConfigError>> {
        let metrics = Arc::new(Metrics::new());
        let registry = Registry::new(metrics.clone(), online);
        let parsed = config::read(path).map_err(|e| vec![e])?;
        let compiled = snapshot::compile(&parsed, &registry, 1);
        registry.sweep(compiled.is_ok());
        let snap = compiled?;
        metrics.config_reloads.with_label_values(&["ok"]).inc();
        metrics.config_generation.set(1);
        Ok(Gateway {
            snapshot: ArcSwap::from_pointee(snap),
            registry,
            metrics,
            config_path: path.to_path_buf(),
            reloading: Mutex::new(()),
            ready: AtomicBool::new(false),
            last_error: Mutex::new(None),
        })
    }

    /// The snapshot requests are served with right now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Re-reads the config file and swaps in the new snapshot. On error the old one keeps
    /// serving, and the error is logged, counted and kept for `/config`.
    pub fn reload(&self) -> Result<u64, Vec<ConfigError>> {
        let _one_at_a_time = self.reloading.lock().expect("not poisoned");
        let generation = self.snapshot.load().generation + 1;
        let result = config::read(&self.config_path)
            .map_err(|e| vec![e])
            .and_then(|p| snapshot::compile(&p, &self.registry, generation));
        self.registry.sweep(result.is_ok());
        match result {
            Ok(snap) => {
                self.snapshot.store(Arc::new(snap));
                self.metrics.config_reloads.with_label_values(&["ok"]).inc();
                self.metrics.config_generation.set(generation as i64);
                *self.last_error.lock().expect("not poisoned") = None;
                tracing::info!(generation, "config loaded");
                Ok(generation)
            }
            Err(errs) => {
                let text = errs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n");
                self.metrics
                    .config_reloads
                    .with_label_values(&["error"])
                    .inc();
                tracing::error!(errors = %text, "config refused; the previous one keeps serving");
                *self.last_error.lock().expect("not poisoned") = Some(text);
                Err(errs)
            }
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The config file path.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The last refused config's errors, if the last load failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("not poisoned").clone()
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Sets readiness (true once listening, false from the start of shutdown).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
}
