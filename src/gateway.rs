//! The running gateway: the current `Snapshot` in one `ArcSwap`, the `Registry` of state
//! beside it, the metrics, and readiness. Loading a config builds the whole next snapshot
//! before one atomic swap; a config that does not compile changes nothing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::config::Parsed;
use crate::config::schema::{OnError, StateBackend};
use crate::config::{self, ConfigError};
use crate::limits::redis::{RedisStore, TlsMaterial, Topology};
use crate::limits::{LimitState, Store, memory::MemoryStore};
use crate::metrics::Metrics;
use crate::snapshot::{self, Registry, Snapshot};
use crate::upgrade::Upgrades;

/// File under `state.path` where the memory store snapshots quota counters.
pub const QUOTA_SNAPSHOT_FILE: &str = "quotas.json";
/// Default prefix of Redis keys.
pub const DEFAULT_REDIS_PREFIX: &str = "tollgate:";

/// The `state:` settings, validated and with defaults filled in: what the store is opened
/// with, and what a reload may not change.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StateSpec {
    /// `state.path`, resolved against the config file's directory.
    path: PathBuf,
    store: StoreSpec,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum StoreSpec {
    Memory,
    Redis {
        topology: Topology,
        /// `state.tls` files, resolved (read when the store opens, so that a rotated file
        /// needs no config change).
        tls: TlsPaths,
        prefix: String,
        on_error: OnError,
    },
}

/// `state.tls`, resolved against the config file's directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct TlsPaths {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

impl TlsPaths {
    /// Reads the files; an error names the file.
    fn read(&self) -> Result<TlsMaterial, String> {
        let read =
            |p: &PathBuf| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        if let Some(p) = &self.ca {
            // An empty trust store would only fail at connect time, with a vaguer error.
            if !read(p)?
                .windows(27)
                .any(|w| w == b"-----BEGIN CERTIFICATE-----")
            {
                return Err(format!("{} holds no PEM certificate", p.display()));
            }
        }
        Ok(TlsMaterial {
            ca: self.ca.as_ref().map(read).transpose()?,
            client: match (&self.cert, &self.key) {
                (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
                _ => None,
            },
        })
    }
}

/// Validates `state:`. Refuses Redis settings for the memory backend, a Redis backend without
/// exactly one of `url`, `cluster` and `sentinels` (the last with `master_name`), malformed
/// URLs, `tls` without `rediss://` and unreadable TLS files; each error at its key. Every
/// refusal of [`RedisStore::open`] ([`RedisStore::check`]) is a config error.
fn state_spec(p: &Parsed) -> Result<StateSpec, Vec<ConfigError>> {
    let s = &p.file.state;
    let store = match s.backend {
        StateBackend::Memory => {
            for (set, key) in [
                (s.url.is_some(), "url"),
                (s.cluster.is_some(), "cluster"),
                (s.sentinels.is_some(), "sentinels"),
                (s.master_name.is_some(), "master_name"),
                (s.tls.is_some(), "tls"),
            ] {
                if set {
                    return Err(vec![p.error_at(
                        &format!("state.{key}"),
                        format!("`{key}` is for `backend: redis`"),
                    )]);
                }
            }
            StoreSpec::Memory
        }
        StateBackend::Redis => {
            let topology = match (&s.url, &s.cluster, &s.sentinels, &s.master_name) {
                (Some(url), None, None, None) => Topology::Single(url.clone()),
                (None, Some(seeds), None, None) => Topology::Cluster(seeds.clone()),
                (None, None, Some(sentinels), Some(master)) => Topology::Sentinel {
                    sentinels: sentinels.clone(),
                    master: master.clone(),
                },
                (None, None, Some(_), None) => {
                    return Err(vec![p.error_at(
                        "state.sentinels",
                        "`sentinels` needs `master_name`, the primary's name in Sentinel",
                    )]);
                }
                (None, None, None, _) => {
                    return Err(vec![p.error_at(
                        "state.backend",
                        "`backend: redis` needs `url: redis://host:port`, `cluster: [...]` or \
                         `sentinels: [...]` with `master_name`",
                    )]);
                }
                _ => {
                    return Err(vec![p.error_at(
                        "state",
                        "give one of `url`, `cluster` and `sentinels` (with `master_name`)",
                    )]);
                }
            };
            let at = match &topology {
                Topology::Single(_) => "state.url",
                Topology::Cluster(_) => "state.cluster",
                Topology::Sentinel { .. } => "state.sentinels",
            };
            let tls = match &s.tls {
                None => TlsPaths::default(),
                Some(t) => {
                    if t.cert.is_some() != t.key.is_some() {
                        return Err(vec![p.error_at(
                            "state.tls",
                            "`cert` and `key` go together (a client certificate and its key)",
                        )]);
                    }
                    TlsPaths {
                        ca: t.ca.as_ref().map(|f| p.resolve(f)),
                        cert: t.cert.as_ref().map(|f| p.resolve(f)),
                        key: t.key.as_ref().map(|f| p.resolve(f)),
                    }
                }
            };
            let material = tls.read().map_err(|e| vec![p.error_at("state.tls", e)])?;
            let prefix = s
                .key_prefix
                .clone()
                .unwrap_or_else(|| DEFAULT_REDIS_PREFIX.to_string());
            let on_error = s.on_error.unwrap_or(OnError::Deny);
            let check = RedisStore::check(&topology, &material, &prefix);
            if let Err(e) = check {
                let at = if e.contains("tls") { "state.tls" } else { at };
                return Err(vec![p.error_at(at, e)]);
            }
            StoreSpec::Redis {
                topology,
                tls,
                prefix,
                on_error,
            }
        }
    };
    Ok(StateSpec {
        path: p.resolve(&s.path),
        store,
    })
}

/// Opens the throttle and quota store of `spec`: the one place a store is opened. Offline
/// (`check`), nothing is connected to and counters are neither read from nor written to disk.
fn open_store(spec: &StateSpec, online: bool, metrics: &Arc<Metrics>) -> Result<Store, String> {
    match &spec.store {
        StoreSpec::Memory => {
            let file = online.then(|| spec.path.join(QUOTA_SNAPSHOT_FILE));
            Ok(Store::Memory(MemoryStore::open(file)))
        }
        StoreSpec::Redis { .. } if !online => Ok(Store::Memory(MemoryStore::open(None))),
        StoreSpec::Redis {
            topology,
            tls,
            prefix,
            on_error,
        } => RedisStore::open(
            topology,
            &tls.read()?,
            prefix.clone(),
            *on_error,
            metrics.clone(),
        )
        .map(Store::Redis),
    }
}

/// Opens what the compile of `parsed` uses ([`Registry::activate`]), before the registry is
/// swept: a refusal then leaves the registry as the serving snapshot needs it. A key that cannot
/// be written is an error at `issuer`.
fn activate(registry: &Registry, parsed: &Parsed) -> Result<(), Vec<ConfigError>> {
    registry
        .activate()
        .map_err(|(at, e)| vec![parsed.error_at(at, e)])
}

/// Applies a new snapshot's `listeners:` to the running process (implemented by the server).
pub trait ListenerControl: Send + Sync {
    /// Runs before `next` is swapped in: binds every address `next` adds. Refuses (and so
    /// refuses the reload) when one cannot be bound, naming the listener's index. On success
    /// returns what to run right after the swap: start, update or stop accept loops.
    fn prepare(&self, next: &Snapshot) -> Result<ListenerCommit, BindFailure>;
}

/// Work to run once the snapshot it was prepared for is being served.
pub type ListenerCommit = Box<dyn FnOnce(&Arc<Snapshot>) + Send>;

/// A listener address that could not be bound.
#[derive(Debug)]
pub struct BindFailure {
    /// Index in `listeners:`.
    pub index: usize,
    /// The address.
    pub addr: std::net::SocketAddr,
    /// Why it could not be bound.
    pub error: std::io::Error,
}

/// Shared state of a running gateway.
pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    /// State beside the snapshots, including the metrics and the limiter state.
    registry: Registry,
    /// The `state:` settings the store was opened with; changing them needs a restart.
    state: StateSpec,
    config_path: PathBuf,
    /// Serialises reloads (SIGHUP, admin, file watch may coincide).
    reloading: Mutex<()>,
    ready: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// The running listeners, once the server has started them.
    listeners: std::sync::OnceLock<std::sync::Weak<dyn ListenerControl>>,
    /// Upgraded (WebSocket) connections, for shutdown to drain.
    upgrades: Arc<Upgrades>,
}

impl Gateway {
    /// Loads the config at `path` and builds the first snapshot. With `online`, the resources
    /// it names are opened after it compiled, in one place: the state store (connected, quota
    /// counters read from disk) and the registry's (`Registry::activate`: key sets fetched,
    /// issuer keys written). Without (`tollgate check`), nothing is connected to or written.
    /// Refuses a config with any error, listing all.
    pub fn load(path: &Path, online: bool) -> Result<Gateway, Vec<ConfigError>> {
        let metrics = Arc::new(Metrics::new());
        let parsed = config::read(path).map_err(|e| vec![e])?;
        let state = state_spec(&parsed)?;
        let store = open_store(&state, online, &metrics)
            .map_err(|e| vec![parsed.error_at("state.url", e)])?;
        let limits = Arc::new(LimitState::new(store));
        let registry = Registry::new(metrics.clone(), limits.clone());
        let compiled = snapshot::compile(&parsed, &registry, 1).and_then(|snap| {
            if online {
                activate(&registry, &parsed)?;
            }
            Ok(snap)
        });
        registry.sweep(compiled.is_ok());
        let snap = compiled?;
        metrics.config_reloads.with_label_values(&["ok"]).inc();
        metrics.config_generation.set(1);
        Ok(Gateway {
            upgrades: Arc::new(Upgrades::new(metrics.upgraded_connections_active.clone())),
            snapshot: ArcSwap::from_pointee(snap),
            registry,
            state,
            config_path: path.to_path_buf(),
            reloading: Mutex::new(()),
            ready: AtomicBool::new(false),
            last_error: Mutex::new(None),
            listeners: std::sync::OnceLock::new(),
        })
    }

    /// The snapshot requests are served with right now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Re-reads the config file and swaps in the new snapshot. On error the old one keeps
    /// serving, and the error is logged, counted and kept for `/config`.
    pub fn reload(&self) -> Result<u64, Vec<ConfigError>> {
        self.reload_noting(|_| {})
    }

    /// [`Gateway::reload`], handing `note` the files the config names (the config file first)
    /// once it is parsed, before any of them is read: the file watcher fingerprints them there,
    /// so a change written during the reload is not mistaken for the one loaded. Not called
    /// when the config cannot be read or parsed.
    pub fn reload_noting(&self, note: impl FnOnce(&[PathBuf])) -> Result<u64, Vec<ConfigError>> {
        let _one_at_a_time = self.reloading.lock().expect("not poisoned");
        let generation = self.snapshot.load().generation + 1;
        let result = config::read(&self.config_path)
            .map_err(|e| vec![e])
            .and_then(|p| {
                note(&snapshot::referenced_files(&p));
                if state_spec(&p)? != self.state {
                    return Err(vec![p.error_at(
                        "state",
                        "the state settings (backend, url, cluster, sentinels, master_name, tls, path, key_prefix, on_error) cannot change while running; restart to apply them",
                    )]);
                }
                let snap = snapshot::compile(&p, &self.registry, generation)?;
                let commit = match self.listeners.get().and_then(std::sync::Weak::upgrade) {
                    Some(l) => Some(l.prepare(&snap).map_err(|f| {
                        vec![p.error_at(
                            &format!("listeners.{}.bind", f.index),
                            format!("cannot listen on {}: {}", f.addr, f.error),
                        )]
                    })?),
                    None => None,
                };
                // What the new snapshot opens is opened before it serves; a failure refuses it.
                activate(&self.registry, &p)?;
                Ok((snap, commit))
            });
        self.registry.sweep(result.is_ok());
        match result {
            Ok((snap, commit)) => {
                let snap = Arc::new(snap);
                self.snapshot.store(snap.clone());
                if let Some(commit) = commit {
                    commit(&snap);
                }
                self.metrics()
                    .config_reloads
                    .with_label_values(&["ok"])
                    .inc();
                self.metrics().config_generation.set(generation as i64);
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
                self.metrics()
                    .config_reloads
                    .with_label_values(&["error"])
                    .inc();
                tracing::error!(errors = %text, "config refused; the previous one keeps serving");
                *self.last_error.lock().expect("not poisoned") = Some(text);
                Err(errs)
            }
        }
    }

    /// Hands reloads the server's listeners, so `listeners:` changes apply without a restart.
    /// Only the first call has an effect.
    pub fn attach_listeners(&self, control: std::sync::Weak<dyn ListenerControl>) {
        let _ = self.listeners.set(control);
    }

    /// Throttle and quota state.
    pub fn limits(&self) -> &Arc<LimitState> {
        self.registry.limits()
    }

    /// Upgraded (WebSocket) connections spliced to upstreams.
    pub fn upgrades(&self) -> &Arc<Upgrades> {
        &self.upgrades
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        self.registry.metrics()
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
