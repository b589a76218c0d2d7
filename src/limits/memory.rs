//! The in-process store: quota counters per (plan, key) for the current period, and per-day
//! counts for `/usage`. Counters are snapshotted to a JSON file under `state.path` at least once a
//! second while they change and at shutdown, and read back at start, so a restart or crash loses
//! at most a second of counts.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};

use super::period::{Period, day_label, parse_day, seconds_until};
use super::spec::{DayUsage, LimitError, QuotaSpec, QuotaState};

/// Days of per-day counts kept for `/usage` (older days are dropped).
pub const USAGE_DAYS_KEPT: i64 = 400;

/// One key's counter under one plan.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Counter {
    /// Label of the period `used` belongs to (`2026-11`).
    period: String,
    /// Requests counted in that period.
    used: u64,
    /// Per-day counts, oldest first (`YYYY-MM-DD`, count).
    days: Vec<(String, u64)>,
    /// The period kind, its start and the day of the last count: while they hold, `period`
    /// and the last entry of `days` are current, and counting formats no label.
    #[serde(skip)]
    last: Option<(Period, i64, Date)>,
}

/// The map key: (plan, key id), looked up by borrowed strings without allocating.
#[derive(Debug, Clone)]
struct PlanKey(Arc<str>, Arc<str>);

/// A (plan, key id) pair, owned or borrowed, hashed and compared as the pair of strings.
trait Pair {
    fn pair(&self) -> (&str, &str);
}

impl Pair for PlanKey {
    fn pair(&self) -> (&str, &str) {
        (&self.0, &self.1)
    }
}

impl Pair for (&str, &str) {
    fn pair(&self) -> (&str, &str) {
        (self.0, self.1)
    }
}

impl<'a> std::borrow::Borrow<dyn Pair + 'a> for PlanKey {
    fn borrow(&self) -> &(dyn Pair + 'a) {
        self
    }
}

impl std::hash::Hash for dyn Pair + '_ {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.pair().hash(h);
    }
}

impl PartialEq for dyn Pair + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.pair() == other.pair()
    }
}

impl Eq for dyn Pair + '_ {}

impl std::hash::Hash for PlanKey {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.pair().hash(h);
    }
}

impl PartialEq for PlanKey {
    fn eq(&self, other: &Self) -> bool {
        self.pair() == other.pair()
    }
}

impl Eq for PlanKey {}

#[derive(Debug, Serialize, Deserialize)]
struct SnapshotFile {
    version: u32,
    counters: Vec<(String, String, Counter)>,
}

/// Quota counters in memory.
pub struct MemoryStore {
    counters: DashMap<PlanKey, Counter>,
    dirty: AtomicBool,
    file: Option<PathBuf>,
}

impl MemoryStore {
    /// A store that snapshots to `file` (none: counts are lost on restart), reading the file
    /// now if it exists. A corrupt file is reported and set aside, not fatal.
    pub fn open(file: Option<PathBuf>) -> MemoryStore {
        let store = MemoryStore {
            counters: DashMap::new(),
            dirty: AtomicBool::new(false),
            file,
        };
        if let Some(f) = &store.file {
            match std::fs::read(f) {
                Ok(bytes) => match serde_json::from_slice::<SnapshotFile>(&bytes) {
                    Ok(snap) => {
                        for (plan, key, c) in snap.counters {
                            store.counters.insert(PlanKey(plan.into(), key.into()), c);
                        }
                        tracing::info!(file = %f.display(), counters = store.counters.len(), "quota counters restored");
                    }
                    Err(e) => {
                        let aside = f.with_extension("corrupt");
                        let _ = std::fs::rename(f, &aside);
                        tracing::error!(file = %f.display(), error = %e, moved_to = %aside.display(), "quota snapshot unreadable; starting from zero");
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::error!(file = %f.display(), error = %e, "cannot read the quota snapshot")
                }
            }
        }
        store
    }

    /// Counts one request if the quota has room (see [`super::Store::count`]).
    pub fn count(
        &self,
        plan: &str,
        key_id: &str,
        spec: QuotaSpec,
        now: OffsetDateTime,
    ) -> Result<QuotaState, LimitError> {
        let (start, end) = spec.period.bounds(now);
        let reset = seconds_until(end, now);
        let today = now.date();
        let lookup: &dyn Pair = &(plan, key_id);
        let mut c = match self.counters.get_mut(lookup) {
            Some(c) => c,
            None => self
                .counters
                .entry(PlanKey(Arc::from(plan), Arc::from(key_id)))
                .or_default(),
        };
        let same_period =
            matches!(c.last, Some((p, s, _)) if p == spec.period && s == start.unix_timestamp());
        if !same_period {
            let label = spec.period.label(now);
            if c.period != label {
                c.period = label;
                c.used = 0;
            }
        }
        if c.used >= spec.limit {
            return Err(LimitError::QuotaExceeded { retry_after: reset });
        }
        c.used += 1;
        match (c.last, c.days.last_mut()) {
            (Some((_, _, day)), Some((_, n))) if day == today => *n += 1,
            _ => {
                let label = day_label(today);
                match c.days.last_mut() {
                    Some((d, n)) if *d == label => *n += 1,
                    _ => {
                        c.days.push((label, 1));
                        let oldest = today - time::Duration::days(USAGE_DAYS_KEPT);
                        c.days
                            .retain(|(d, _)| parse_day(d).is_some_and(|d| d > oldest));
                    }
                }
            }
        }
        c.last = Some((spec.period, start.unix_timestamp(), today));
        let remaining = spec.limit - c.used;
        drop(c);
        self.dirty.store(true, Ordering::Release);
        Ok(QuotaState {
            limit: spec.limit,
            remaining,
            reset,
        })
    }

    /// Per-day counts of `key_id` under `plan` between two days, inclusive (days without
    /// requests are reported as 0).
    pub fn usage(&self, plan: &str, key_id: &str, from: Date, to: Date) -> Vec<DayUsage> {
        let days: Vec<(String, u64)> = self
            .counters
            .get(&(plan, key_id) as &dyn Pair)
            .map(|c| c.days.clone())
            .unwrap_or_default();
        let mut out = Vec::new();
        let mut d = from;
        while d <= to {
            let label = day_label(d);
            let used = days
                .iter()
                .find(|(x, _)| *x == label)
                .map_or(0, |(_, n)| *n);
            out.push(DayUsage { day: label, used });
            match d.next_day() {
                Some(n) => d = n,
                None => break,
            }
        }
        out
    }

    /// Writes the counters to the snapshot file if they changed since the last write.
    /// Atomic (a temporary file renamed into place).
    pub fn save(&self) -> Result<(), String> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let snap = SnapshotFile {
            version: 1,
            counters: self
                .counters
                .iter()
                .map(|e| {
                    (
                        e.key().0.to_string(),
                        e.key().1.to_string(),
                        e.value().clone(),
                    )
                })
                .collect(),
        };
        let result = write_atomic(file, &serde_json::to_vec(&snap).map_err(|e| e.to_string())?);
        if result.is_err() {
            self.dirty.store(true, Ordering::Release);
        }
        result
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let dir = crate::util::parent_dir(path);
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Period;
    use time::macros::{date, datetime};

    #[test]
    fn a_plan_whose_period_kind_changes_starts_a_new_count() {
        // A day and a month can start at the same instant: the kind is part of the period.
        let s = MemoryStore::open(None);
        let now = datetime!(2026-11-01 10:00 UTC);
        let day = QuotaSpec {
            limit: 5,
            period: Period::Day,
        };
        let month = QuotaSpec {
            limit: 5,
            period: Period::Month,
        };
        s.count("p", "k", day, now).unwrap();
        assert_eq!(s.count("p", "k", day, now).unwrap().remaining, 3);
        assert_eq!(s.count("p", "k", month, now).unwrap().remaining, 4);
        // The per-day usage counts every request whatever the period.
        assert_eq!(
            s.usage("p", "k", date!(2026 - 11 - 01), date!(2026 - 11 - 01))[0].used,
            3
        );
    }

    #[test]
    fn counts_until_the_limit_then_refuses_without_counting() {
        let s = MemoryStore::open(None);
        let spec = QuotaSpec {
            limit: 2,
            period: Period::Day,
        };
        let now = datetime!(2026-11-22 23:00 UTC);
        assert_eq!(s.count("p", "k", spec, now).unwrap().remaining, 1);
        assert_eq!(s.count("p", "k", spec, now).unwrap().remaining, 0);
        assert_eq!(
            s.count("p", "k", spec, now),
            Err(LimitError::QuotaExceeded { retry_after: 3600 })
        );
        assert_eq!(
            s.usage("p", "k", date!(2026 - 11 - 22), date!(2026 - 11 - 22))[0].used,
            2
        );
        // A new day is a new period.
        assert!(
            s.count("p", "k", spec, datetime!(2026-11-23 0:00 UTC))
                .is_ok()
        );
        // Other keys and plans are separate.
        assert!(s.count("p", "other", spec, now).is_ok());
        assert!(s.count("q", "k", spec, now).is_ok());
    }

    #[test]
    fn monthly_quota_spans_days_and_usage_reports_each_day() {
        let s = MemoryStore::open(None);
        let spec = QuotaSpec {
            limit: 3,
            period: Period::Month,
        };
        s.count("p", "k", spec, datetime!(2026-11-01 10:00 UTC))
            .unwrap();
        s.count("p", "k", spec, datetime!(2026-11-03 10:00 UTC))
            .unwrap();
        s.count("p", "k", spec, datetime!(2026-11-03 11:00 UTC))
            .unwrap();
        assert!(
            s.count("p", "k", spec, datetime!(2026-11-30 11:00 UTC))
                .is_err()
        );
        let u = s.usage("p", "k", date!(2026 - 11 - 01), date!(2026 - 11 - 03));
        let used: Vec<u64> = u.iter().map(|d| d.used).collect();
        assert_eq!(used, vec![1, 0, 2]);
        assert!(
            s.count("p", "k", spec, datetime!(2026-12-01 0:00 UTC))
                .is_ok(),
            "December is new"
        );
    }

    #[test]
    fn snapshot_survives_a_restart_and_a_corrupt_file_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("quotas.json");
        let spec = QuotaSpec {
            limit: 5,
            period: Period::Month,
        };
        let now = datetime!(2026-11-22 10:00 UTC);
        let s = MemoryStore::open(Some(file.clone()));
        for _ in 0..3 {
            s.count("p", "k", spec, now).unwrap();
        }
        s.save().unwrap();
        let again = MemoryStore::open(Some(file.clone()));
        assert_eq!(again.count("p", "k", spec, now).unwrap().remaining, 1);
        std::fs::write(&file, "{not json").unwrap();
        let fresh = MemoryStore::open(Some(file.clone()));
        assert_eq!(fresh.count("p", "k", spec, now).unwrap().remaining, 4);
        assert!(file.with_extension("corrupt").exists());
    }
}
