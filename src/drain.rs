//! Counting what shutdown waits for: the open public connections ([`crate::server`]) and the
//! spliced upgraded connections ([`crate::upgrade`]). Each is admitted with a guard that
//! uncounts it when dropped; shutdown raises one closing signal they all watch, and waits for
//! the count to reach zero.

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
