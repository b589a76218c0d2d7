//! Small helpers shared by several modules.

use aws_lc_rs::digest;

/// The directory a file is in: its parent, or `.` for a bare file name.
pub fn parent_dir(file: &std::path::Path) -> &std::path::Path {
    file.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
}

/// SHA-256 of `data` as lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data))
}

/// SHA-256 of `data` as 32 bytes.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// State that survives reloads: values by key, plus which keys the compile in progress used.
/// After a compile, [`CarriedMap::sweep`] drops what the new snapshot no longer uses (or, when
/// the compile failed, keeps everything). One lock covers both, and compiles are serialised.
pub struct CarriedMap<K, V> {
    inner: std::sync::Mutex<(
        std::collections::HashMap<K, V>,
        std::collections::HashSet<K>,
    )>,
}

impl<K: Eq + std::hash::Hash + Clone, V: Clone> Default for CarriedMap<K, V> {
    fn default() -> Self {
        CarriedMap {
            inner: std::sync::Mutex::new(Default::default()),
        }
    }
}

impl<K: Eq + std::hash::Hash + Clone, V: Clone> CarriedMap<K, V> {
    /// The value for `key`, made by `make` when there is none yet; marks `key` as used.
    pub fn get_or_insert_with(&self, key: K, make: impl FnOnce() -> V) -> V {
        self.get_or_try_insert_with(key, || Ok::<V, std::convert::Infallible>(make()))
            .unwrap_or_else(|e| match e {})
    }

    /// Like [`CarriedMap::get_or_insert_with`] for a `make` that may fail (nothing is stored
    /// then, but `key` still counts as used).
    pub fn get_or_try_insert_with<E>(
        &self,
        key: K,
        make: impl FnOnce() -> Result<V, E>,
    ) -> Result<V, E> {
        let mut guard = self.inner.lock().expect("not poisoned");
        let (values, used) = &mut *guard;
        used.insert(key.clone());
        if let Some(v) = values.get(&key) {
            return Ok(v.clone());
        }
        let v = make()?;
        values.insert(key, v.clone());
        Ok(v)
    }

    /// Ends a compile: when its snapshot went live (`kept`), values it did not use are dropped.
    /// Either way the record of what was used starts afresh.
    pub fn sweep(&self, kept: bool) {
        let mut guard = self.inner.lock().expect("not poisoned");
        let (values, used) = &mut *guard;
        if kept {
            values.retain(|k, _| used.contains(k));
        }
        used.clear();
    }

    /// Every value held.
    pub fn values(&self) -> Vec<V> {
        self.inner
            .lock()
            .expect("not poisoned")
            .0
            .values()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::CarriedMap;

    #[test]
    fn carried_values_survive_kept_compiles_that_use_them() {
        let m: CarriedMap<&str, u32> = CarriedMap::default();
        assert_eq!(m.get_or_insert_with("a", || 1), 1);
        assert_eq!(m.get_or_insert_with("b", || 2), 2);
        m.sweep(true);
        // Next compile uses only "a": a failed compile keeps "b", a kept one drops it.
        assert_eq!(m.get_or_insert_with("a", || 9), 1);
        m.sweep(false);
        assert_eq!(m.values().len(), 2);
        assert_eq!(m.get_or_insert_with("a", || 9), 1);
        m.sweep(true);
        assert_eq!(m.values(), vec![1]);
        assert_eq!(
            m.get_or_try_insert_with("c", || Err::<u32, _>("no")),
            Err("no")
        );
        assert_eq!(m.values(), vec![1]);
    }
}
