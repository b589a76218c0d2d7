//! A WebSocket echo upstream on 127.0.0.1:0 (tokio-tungstenite's server side): every text and
//! binary message is sent back as it came, and the headers of every handshake are recorded.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt as _, StreamExt as _};
use http::HeaderMap;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// A running echo upstream.
#[derive(Clone)]
pub struct WsUpstream {
    pub addr: SocketAddr,
    handshakes: Arc<Mutex<Vec<HeaderMap>>>,
}

impl WsUpstream {
    /// Base URL for gateway.yaml.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The headers of every handshake received so far.
    pub fn handshakes(&self) -> Vec<HeaderMap> {
        self.handshakes.lock().unwrap().clone()
    }
}

/// Starts the echo upstream.
pub async fn start() -> WsUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = WsUpstream {
        addr: listener.local_addr().unwrap(),
        handshakes: Arc::new(Mutex::new(Vec::new())),
    };
    let seen = up.handshakes.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                // The signature is tungstenite's handshake callback, large `Err` and all.
                #[allow(clippy::result_large_err)]
                let record = |req: &Request, resp: Response| {
                    seen.lock().unwrap().push(req.headers().clone());
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Text(_) | Message::Binary(_) => {
                            if ws.send(msg).await.is_err() {
                                return;
                            }
                        }
                        Message::Close(_) => return,
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                    }
                }
            });
        }
    });
    up
}
