//! Counting what shutdown waits for: the open public connections ([`crate::server`]) and the
//! spliced upgraded connections ([`crate::upgrade`]). Each is admitted with a guard that
//! uncounts it when dropped; shutdown raises one closing signal they all watch, and waits for
//! the count to reach zero. [`Slots`] counts one listener's connections against its
//! `limits.max_connections`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// How many of one kind of connection are open, a gauge mirroring that count, and the signal
/// that asks them to close.
#[derive(Debug)]
pub struct Tracker {
    open: watch::Sender<usize>,
    closing: watch::Sender<bool>,
    gauge: prometheus::IntGauge,
}

/// One admitted connection; uncounted when dropped.
#[derive(Debug)]
pub struct Admitted(Arc<Tracker>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.open.send_modify(|n| *n -= 1);
        self.0.gauge.dec();
    }
}

impl Tracker {
    /// None open, not closing; `gauge` follows the count from now on.
    pub fn new(gauge: prometheus::IntGauge) -> Tracker {
        Tracker {
            open: watch::Sender::new(0),
            closing: watch::Sender::new(false),
            gauge,
        }
    }

    /// Counts one more connection until the returned guard is dropped.
    pub fn admit(self: &Arc<Self>) -> Admitted {
        self.open.send_modify(|n| *n += 1);
        self.gauge.inc();
        Admitted(self.clone())
    }

    /// How many are open now.
    pub fn open(&self) -> usize {
        *self.open.borrow()
    }

    /// The closing signal for one connection to watch: `true` once [`Tracker::close`] ran,
    /// including for connections admitted after it.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Asks every connection, open now or admitted later, to close.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Waits up to `limit` for none to be open. Returns whether that happened.
    pub async fn wait_empty(&self, limit: Duration) -> bool {
        let mut open = self.open.subscribe();
        tokio::time::timeout(limit, open.wait_for(|n| *n == 0))
            .await
            .is_ok()
    }
}

/// The open connections of one public listener against its `limits.max_connections`. Unlike
/// [`Tracker`], it refuses: [`Slots::take`] fails once the limit is reached.
#[derive(Debug, Default)]
pub struct Slots {
    open: std::sync::atomic::AtomicUsize,
}

/// One connection's place under a listener's limit; given back when dropped.
#[derive(Debug)]
pub struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Slots {
    /// A place for one more connection, or `None` when `max` are open already.
    pub fn take(self: &Arc<Self>, max: usize) -> Option<Slot> {
        use std::sync::atomic::Ordering;
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }

    /// How many places are taken now.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Resolves once shutdown has begun (or the signal's sender is gone).
pub(crate) async fn shutdown_begun(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|c| *c).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_refuse_beyond_the_limit_and_free_on_drop() {
        let slots = Arc::new(Slots::default());
        let a = slots.take(2).expect("first");
        let _b = slots.take(2).expect("second");
        assert!(slots.take(2).is_none(), "a third place under a limit of 2");
        assert_eq!(slots.open(), 2);
        drop(a);
        assert_eq!(slots.open(), 1);
        assert!(slots.take(2).is_some(), "a freed place is given again");
        // A lowered limit (a reload) refuses until enough have closed.
        assert!(slots.take(1).is_none());
    }
}
