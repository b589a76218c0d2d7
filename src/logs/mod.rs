//! Where log lines go: a shared buffer written to stderr in batches.
//!
//! Writing each access-log line to stderr on its own costs one `write` syscall per request. On
//! the 2-core bench machine (BENCHMARKS.md, "The access log") a proxied request then cost
//! 49–52 µs of CPU into a pipe and 61–64 µs into a file, against 34–46 µs with the log off.
//! tracing-appender's non-blocking writer moves the write to a thread, but at these rates it
//! wakes that thread for nearly every line, and measured no better.
//!
//! Here a line is appended to one in-memory buffer under a mutex (no syscall), and the buffer is
//! written out:
//! - by a background thread every [`FLUSH_INTERVAL`], so a line reaches stderr within about
//!   that long even when nothing else is logged;
//! - at once, by the logging thread, when the line is a warning or an error (together with every
//!   line before it, so the order of lines is kept), or when the buffer passes [`FLUSH_BYTES`];
//! - when the [`LogGuard`] returned by [`BatchWriter::new`] is dropped (the end of `main`).
//!
//! What it may lose: lines logged in the last [`FLUSH_INTERVAL`] before the process is killed
//! with SIGKILL or aborts. A SIGTERM shutdown returns from `main`, which writes them.

pub(crate) mod access;

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long an info line may wait in the buffer: short enough that a person tailing the log
/// sees a request as it happens, long enough that at a few thousand requests/s one write
/// carries hundreds of lines.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Buffer size at which the logging thread writes the buffer itself: bounds memory (and the
/// size of one `write`) when lines come faster than the interval drains them.
pub const FLUSH_BYTES: usize = 256 * 1024;

/// The sink and the lines waiting for it; one lock, so lines leave in the order they came.
struct Shared<W> {
    state: Mutex<State<W>>,
}

struct State<W> {
    buf: Vec<u8>,
    sink: W,
}

impl<W: Write> State<W> {
    /// Writes out every waiting line. A write error drops the lines: there is nowhere else to
    /// report it, and logging must never stop the gateway.
    fn flush(&mut self) {
        if !self.buf.is_empty() {
            let _ = self.sink.write_all(&self.buf);
            let _ = self.sink.flush();
            self.buf.clear();
        }
    }
}

impl<W> Shared<W> {
    fn lock(&self) -> MutexGuard<'_, State<W>> {
        // A panic while holding the lock leaves plain bytes behind: still fine to write.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A [`MakeWriter`] for `tracing_subscriber::fmt` that batches lines as the module describes.
/// Cloning shares the buffer.
pub struct BatchWriter<W> {
    shared: Arc<Shared<W>>,
}

impl<W> Clone for BatchWriter<W> {
    fn clone(&self) -> Self {
        BatchWriter {
            shared: self.shared.clone(),
        }
    }
}

/// Writes out the waiting lines when dropped, and stops the background thread.
#[must_use = "dropping the guard ends the timed flushes"]
pub struct LogGuard<W: Write> {
    shared: Arc<Shared<W>>,
    stop: Option<std::sync::mpsc::Sender<()>>,
}

impl<W: Write> Drop for LogGuard<W> {
    fn drop(&mut self) {
        // Dropping the sender wakes the flusher, which ends without waiting out its interval.
        self.stop.take();
        self.shared.lock().flush();
    }
}

impl<W: Write + Send + 'static> BatchWriter<W> {
    /// A writer over `sink`, and the guard that must live as long as logging should be timely.
    /// Starts one thread that flushes every `interval` until the guard is dropped. Refuses
    /// nothing; if the thread cannot be started, lines still leave on warnings, on
    /// [`FLUSH_BYTES`] and when the guard is dropped.
    pub fn new(sink: W, interval: Duration) -> (BatchWriter<W>, LogGuard<W>) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                buf: Vec::with_capacity(FLUSH_BYTES),
                sink,
            }),
        });
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let flusher = shared.clone();
        let _ = std::thread::Builder::new()
            .name("tollgate-logs".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(interval)
                {
                    flusher.lock().flush();
                }
            });
        (
            BatchWriter {
                shared: shared.clone(),
            },
            LogGuard {
                shared,
                stop: Some(stop),
            },
        )
    }
}

/// One event's output: `tracing_subscriber::fmt` formats the whole line first and hands it over
/// in one `write_all`.
pub struct LineWriter<'a, W> {
    shared: &'a Shared<W>,
    urgent: bool,
}

impl<W: Write> Write for LineWriter<'_, W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut state = self.shared.lock();
        state.buf.extend_from_slice(bytes);
        if self.urgent || state.buf.len() >= FLUSH_BYTES {
            state.flush();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a, W: Write + 'a> MakeWriter<'a> for BatchWriter<W> {
    type Writer = LineWriter<'a, W>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
            urgent: true,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
            urgent: *meta.level() <= tracing::Level::WARN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A sink tests can read while the writer holds it.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// A subscriber writing plain messages (no time, level or target) through `w`.
    fn subscriber(w: BatchWriter<Captured>) -> impl tracing::Subscriber + Send + Sync {
        tracing_subscriber::fmt()
            .with_writer(w)
            .without_time()
            .with_level(false)
            .with_target(false)
            .with_ansi(false)
            .finish()
    }

    const LONG: Duration = Duration::from_secs(3600);

    #[test]
    fn info_lines_wait_and_a_warning_writes_them_first_in_order() {
        let out = Captured::default();
        let (w, _guard) = BatchWriter::new(out.clone(), LONG);
        tracing::subscriber::with_default(subscriber(w), || {
            tracing::info!("one");
            tracing::info!("two");
            assert_eq!(out.text(), "", "info lines are batched");
            tracing::warn!("three");
            assert_eq!(out.text(), "one\ntwo\nthree\n");
            tracing::info!("four");
        });
        assert_eq!(out.text(), "one\ntwo\nthree\n");
    }

    #[test]
    fn dropping_the_guard_writes_what_waits() {
        let out = Captured::default();
        let (w, guard) = BatchWriter::new(out.clone(), LONG);
        tracing::subscriber::with_default(subscriber(w), || tracing::info!("last words"));
        assert_eq!(out.text(), "");
        drop(guard);
        assert_eq!(out.text(), "last words\n");
    }

    #[test]
    fn the_background_thread_writes_an_info_line_within_the_interval() {
        let out = Captured::default();
        let (w, _guard) = BatchWriter::new(out.clone(), Duration::from_millis(20));
        tracing::subscriber::with_default(subscriber(w), || tracing::info!("eventually"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while out.text().is_empty() {
            assert!(Instant::now() < deadline, "never flushed");
            std::thread::yield_now();
        }
        assert_eq!(out.text(), "eventually\n");
    }

    #[test]
    fn a_full_buffer_is_written_by_the_logging_thread() {
        let out = Captured::default();
        let (w, _guard) = BatchWriter::new(out.clone(), LONG);
        let line = "x".repeat(1000);
        let lines = FLUSH_BYTES / 1001 + 1;
        tracing::subscriber::with_default(subscriber(w), || {
            for _ in 0..lines {
                tracing::info!("{line}");
            }
        });
        let text = out.text();
        assert!(
            text.len() >= FLUSH_BYTES,
            "only {} bytes written",
            text.len()
        );
        assert!(text.lines().all(|l| l == line));
    }

    #[test]
    fn lines_from_many_threads_arrive_whole() {
        let out = Captured::default();
        let (w, guard) = BatchWriter::new(out.clone(), Duration::from_millis(1));
        let dispatch = tracing::Dispatch::new(subscriber(w));
        std::thread::scope(|s| {
            for t in 0..4 {
                let dispatch = dispatch.clone();
                s.spawn(move || {
                    tracing::dispatcher::with_default(&dispatch, || {
                        for i in 0..2000 {
                            tracing::info!("thread {t} line {i} {}", "y".repeat(100));
                        }
                    })
                });
            }
        });
        drop(guard);
        let text = out.text();
        let mut next = [0usize; 4];
        for l in text.lines() {
            let mut parts = l.split(' ');
            assert_eq!(parts.next(), Some("thread"));
            let t: usize = parts.next().unwrap().parse().unwrap();
            assert_eq!(parts.next(), Some("line"));
            let i: usize = parts.next().unwrap().parse().unwrap();
            assert_eq!(parts.next().map(str::len), Some(100), "torn line: {l}");
            assert_eq!(i, next[t], "thread {t}'s lines out of order");
            next[t] += 1;
        }
        assert_eq!(next, [2000; 4]);
    }
}
