//! Reload on file changes: the config file and every file it names are watched through their
//! parent directories (so editors' rename-into-place and Kubernetes ConfigMap symlink swaps are
//! seen), events are debounced, and a reload happens only when the content of a watched file
//! (followed through symlinks) really changed. A file is read and hashed only when its metadata
//! (size, times, inode) changed: reading it would itself raise an inotify event (notify watches
//! opens too), and re-reading a large key import on every event would burn a core. A refused config is logged and counted once, and
//! the previous one keeps serving until the files change again.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify_debouncer_mini::notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_mini::{DebounceEventResult, Debouncer, new_debouncer};
use tokio::sync::watch;

use crate::gateway::Gateway;

/// Quiet time after the last event before files are compared: editors and ConfigMap updates
/// write several events for one change.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// What `stat` says about a file (through symlinks): any write, rename or swap changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
    dev: u64,
}

fn stamp(f: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(f).ok()?;
    Some(Stamp {
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
        ino: m.ino(),
        dev: m.dev(),
    })
}

/// One watched file as last seen: its metadata and the digest of its content (a missing file
/// digests as zeros).
#[derive(Debug, Clone)]
struct Seen {
    stamp: Option<Stamp>,
    digest: [u8; 32],
}

/// The watched files' digests, re-reading only files whose metadata differs from `prev` (same
/// order as `files`; pass `&[]` to read every file).
fn fingerprint(files: &[PathBuf], prev: &[Seen]) -> Vec<Seen> {
    files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let stamp = stamp(f);
            match prev.get(i) {
                Some(p) if stamp.is_some() && p.stamp == stamp => p.clone(),
                _ => Seen {
                    digest: std::fs::read(f)
                        .map(|b| crate::util::sha256(&b))
                        .unwrap_or([0; 32]),
                    stamp,
                },
            }
        })
        .collect()
}

/// Whether two fingerprints name the same contents.
fn same_content(a: &[Seen], b: &[Seen]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.digest == y.digest)
}

/// [`fingerprint`] off the async workers (reading a large key import blocks).
async fn fingerprint_blocking(files: &[PathBuf], prev: &[Seen]) -> Vec<Seen> {
    let (files, prev) = (files.to_vec(), prev.to_vec());
    tokio::task::spawn_blocking(move || fingerprint(&files, &prev))
        .await
        .unwrap_or_default()
}

/// Watches the parent directory of every file in `files`, and stops watching directories no
/// longer needed.
fn sync_watches(
    d: &mut Debouncer<RecommendedWatcher>,
    files: &[PathBuf],
    dirs: &mut HashSet<PathBuf>,
) {
    let want: HashSet<PathBuf> = files
        .iter()
        .map(|f| crate::util::parent_dir(f).to_path_buf())
        .collect();
    for gone in dirs.difference(&want).cloned().collect::<Vec<_>>() {
        let _ = d.watcher().unwatch(&gone);
        dirs.remove(&gone);
    }
    for dir in want {
        if !dirs.contains(&dir) {
            match d.watcher().watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    dirs.insert(dir);
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch for config changes")
                }
            }
        }
    }
}

/// Starts watching now (so any change after this returns is seen) and spawns the task that
/// reloads `gw` whenever a watched file's content changes, until `stop` fires. Without file
/// watching (no inotify), logs a warning; SIGHUP and `POST /reload` still work.
pub fn spawn(gw: Arc<Gateway>, stop: watch::Receiver<bool>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut debouncer = match new_debouncer(DEBOUNCE, move |res: DebounceEventResult| {
        if res.is_ok() {
            let _ = tx.send(());
        }
    }) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "file watching unavailable; reload with SIGHUP or POST /reload");
            return;
        }
    };
    let mut dirs = HashSet::new();
    let files = gw.snapshot().files.clone();
    sync_watches(&mut debouncer, &files, &mut dirs);
    // A change between loading and watching shows up as a config that is not the loaded one.
    let seen = fingerprint(&files, &[]);
    let changed_before =
        seen.first().map(|s| hex::encode(s.digest)) != Some(gw.snapshot().hash.clone());
    let state = Watching {
        gw,
        debouncer,
        dirs,
        files,
        seen,
    };
    tokio::spawn(state.run(stop, rx, changed_before));
}

/// The watcher task's state: what is watched, and how the watched files looked last.
struct Watching {
    gw: Arc<Gateway>,
    debouncer: Debouncer<RecommendedWatcher>,
    dirs: HashSet<PathBuf>,
    files: Vec<PathBuf>,
    seen: Vec<Seen>,
}

impl Watching {
    async fn run(
        mut self,
        mut stop: watch::Receiver<bool>,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<()>,
        changed_before: bool,
    ) {
        if changed_before {
            self.reload().await;
        }
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                event = rx.recv() => {
                    if event.is_none() {
                        return;
                    }
                    let now = fingerprint_blocking(&self.files, &self.seen).await;
                    if same_content(&now, &self.seen) {
                        // Metadata may have changed (a touch, an identical rewrite): remember it.
                        self.seen = now;
                        continue;
                    }
                    self.reload().await;
                }
            }
        }
    }

    /// Reloads, then watches what the config now names (it may name other files).
    async fn reload(&mut self) {
        let g = self.gw.clone();
        let _ = tokio::task::spawn_blocking(move || g.reload()).await;
        self.files = self.gw.snapshot().files.clone();
        sync_watches(&mut self.debouncer, &self.files, &mut self.dirs);
        self.seen = fingerprint_blocking(&self.files, &[]).await;
    }
}
