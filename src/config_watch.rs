//! Reload on file changes: the config file and every file it names are watched through their
//! parent directories (so editors' rename-into-place and Kubernetes ConfigMap symlink swaps are
//! seen), and through the directory of the file a symlink points to (so an edit in place of the
//! target is seen too); events are debounced, and a reload happens only when the content of a
//! watched file (followed through symlinks) really changed.
//!
//! Every file a reload reads is fingerprinted *before* the reload reads it (the reload names the
//! new config's files as soon as it has parsed it), so a change landing while a reload runs is
//! never taken for the loaded one. A file is read and hashed only when its metadata (size, times,
//! inode) changed: reading it would itself raise an inotify event (notify watches opens too), and
//! re-reading a large key import on every event would burn a core. A refused config is logged
//! and counted once, and the previous one keeps serving until the files change again.

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

/// The directories to watch for `files`: each file's parent, and, for a file reached through a
/// symlink, the parent of the file it resolves to (a ConfigMap's current `..YYYY` directory, or
/// wherever an operator's link points).
fn watched_dirs(files: &[PathBuf]) -> HashSet<PathBuf> {
    let mut want = HashSet::new();
    for f in files {
        want.insert(crate::util::parent_dir(f).to_path_buf());
        if let Ok(real) = std::fs::canonicalize(f) {
            want.insert(crate::util::parent_dir(&real).to_path_buf());
        }
    }
    want
}

/// Adds to `known` (the current files, fingerprinted before the reload) a fingerprint of each
/// file in `named` it lacks: called by the reload with the new config's files, before it reads
/// them. Blocking: reads each newly named file.
fn note_named(known: &mut Vec<(PathBuf, Seen)>, named: &[PathBuf]) {
    let extra: Vec<PathBuf> = named
        .iter()
        .filter(|f| !known.iter().any(|(k, _)| k == *f))
        .cloned()
        .collect();
    let seen = fingerprint(&extra, &[]);
    known.extend(extra.into_iter().zip(seen));
}

/// What to remember after a reload: for each file the config now names, its fingerprint from
/// before the reload read it, so a change written while the reload ran still differs at the
/// next event. Every such file is in `known` (the old files, and those [`note_named`] added);
/// one that is not would be fingerprinted now.
fn seen_after_reload(known: &[(PathBuf, Seen)], new: &[PathBuf]) -> Vec<Seen> {
    new.iter()
        .map(|f| match known.iter().find(|(k, _)| k == f) {
            Some((_, seen)) => seen.clone(),
            None => fingerprint(std::slice::from_ref(f), &[]).remove(0),
        })
        .collect()
}

/// Watches the directories in `want` (from [`watched_dirs`]), and stops watching directories
/// no longer needed (a swapped-away ConfigMap version).
fn sync_watches(
    d: &mut Debouncer<RecommendedWatcher>,
    want: HashSet<PathBuf>,
    dirs: &mut HashSet<PathBuf>,
) {
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
    sync_watches(&mut debouncer, watched_dirs(&files), &mut dirs);
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
            let before = self.seen.clone();
            self.reload(before).await;
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
                    self.reload(now).await;
                }
            }
        }
    }

    /// Reloads, then watches what the config now names (it may name other files). `before` is
    /// the fingerprint of the current files, taken before the reload reads them.
    async fn reload(&mut self, before: Vec<Seen>) {
        let g = self.gw.clone();
        let mut known: Vec<(PathBuf, Seen)> = self.files.iter().cloned().zip(before).collect();
        // Blocking throughout: the reload, fingerprints, and resolving symlinks to watch.
        let after = tokio::task::spawn_blocking(move || {
            let _ = g.reload_noting(|named| note_named(&mut known, named));
            let files = g.snapshot().files.clone();
            let seen = seen_after_reload(&known, &files);
            (watched_dirs(&files), files, seen)
        })
        .await;
        // A panicked reload task leaves `seen` empty, so the next event reloads again.
        let (want, files, seen) = after.unwrap_or_else(|_| {
            let files = self.gw.snapshot().files.clone();
            (watched_dirs(&files), files, Vec::new())
        });
        sync_watches(&mut self.debouncer, want, &mut self.dirs);
        self.files = files;
        self.seen = seen;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_written_while_a_reload_runs_still_counts_as_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("gateway.yaml");
        std::fs::write(&cfg, "one").unwrap();
        let files = vec![cfg.clone()];
        let mut known: Vec<_> = files
            .iter()
            .cloned()
            .zip(fingerprint(&files, &[]))
            .collect();
        note_named(&mut known, &files);
        // The reload has read "one"; the operator's next write lands before it finishes.
        std::fs::write(&cfg, "two, longer").unwrap();
        let seen = seen_after_reload(&known, &files);
        let now = fingerprint(&files, &seen);
        assert!(
            !same_content(&now, &seen),
            "the write during the reload must trigger the next one"
        );
    }

    #[test]
    fn a_change_to_a_file_the_new_config_names_during_the_reload_still_counts() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, csv) = (dir.path().join("gateway.yaml"), dir.path().join("keys.csv"));
        std::fs::write(
            &cfg,
            "listeners:\n  - bind: 127.0.0.1:0\napi_keys:\n  import: keys.csv\n",
        )
        .unwrap();
        std::fs::write(&csv, "Name,Key\n").unwrap();
        let old = vec![cfg.clone()];
        let mut known: Vec<_> = old.iter().cloned().zip(fingerprint(&old, &[])).collect();
        let named = crate::snapshot::referenced_files(&crate::config::read(&cfg).unwrap());
        note_named(&mut known, &named);
        // The reload has read the import; a new version of it lands before the reload ends.
        std::fs::write(&csv, "Name,Key\nk,v\n").unwrap();
        let new = vec![cfg.clone(), csv.clone()];
        let seen = seen_after_reload(&known, &new);
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].digest, crate::util::sha256(b"Name,Key\n"));
        assert!(!same_content(&fingerprint(&new, &seen), &seen));
    }

    #[test]
    fn a_symlinked_file_is_watched_where_it_points_too() {
        let dir = tempfile::tempdir().unwrap();
        let (etc, real) = (dir.path().join("etc"), dir.path().join("real"));
        std::fs::create_dir(&etc).unwrap();
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("gateway.yaml"), "cfg").unwrap();
        std::os::unix::fs::symlink(real.join("gateway.yaml"), etc.join("gateway.yaml")).unwrap();
        let dirs = watched_dirs(&[etc.join("gateway.yaml")]);
        let real = std::fs::canonicalize(&real).unwrap();
        assert!(dirs.contains(&etc), "{dirs:?}");
        assert!(dirs.contains(&real), "{dirs:?}");
        assert_eq!(dirs.len(), 2);
    }
}
