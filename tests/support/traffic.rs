//! Steady client traffic while a test changes the gateway under it (reloads): a few clients
//! send one GET after another and count the answers that were not a whole 200.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Clients running until [`Traffic::finish`].
pub struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    /// Starts `clients` clients sending `GET url` (with `Host: host` when given).
    pub fn start(url: String, host: Option<&'static str>, clients: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let clients = (0..clients)
            .map(|_| {
                let (stop, sent, failed, url) =
                    (stop.clone(), sent.clone(), failed.clone(), url.clone());
                tokio::spawn(async move {
                    let client = crate::support::gateway::client();
                    while !stop.load(Ordering::Relaxed) {
                        let mut req = http::Request::get(&url);
                        if let Some(h) = host {
                            req = req.header("host", h);
                        }
                        let ok = match client.request(req.body(Default::default()).unwrap()).await {
                            Ok(r) => {
                                r.status() == 200
                                    && http_body_util::BodyExt::collect(r.into_body())
                                        .await
                                        .is_ok()
                            }
                            Err(_) => false,
                        };
                        sent.fetch_add(1, Ordering::Relaxed);
                        if !ok {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            sent,
            failed,
            clients,
        }
    }

    /// Stops the clients; (requests sent, requests that failed).
    pub async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients {
            c.await.unwrap();
        }
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}
