//! A real issuer for remote-JWKS tests: an HTTP/1 server on `127.0.0.1:0` serving
//! `/.well-known/openid-configuration` and `/jwks.json`, whose behaviour tests switch at run time.
//! It counts the requests it receives so tests can assert when keys were (re)fetched.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// Size of the body answered in [`Mode::Huge`].
pub const HUGE_BYTES: usize = 10 * 1024 * 1024;

/// Path of the key set; the discovery document points here.
pub const JWKS_PATH: &str = "/jwks.json";
/// Path of the OIDC discovery document.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// How the issuer behaves.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Discovery answers normally; `/jwks.json` answers 200 with this body.
    Serve(String),
    /// Every path answers 503.
    Down,
    /// Discovery answers normally; `/jwks.json` answers 200 with text that is not JSON.
    Garbage,
    /// Discovery answers normally; `/jwks.json` answers 200 with this JWKS padded with
    /// whitespace to [`HUGE_BYTES`] (still a valid JWKS, only too large to accept).
    Huge(String),
    /// No path ever answers (the connection stays open, the response never comes).
    Hang,
}

struct Shared {
    base: String,
    mode: Mutex<Mode>,
    jwks_requests: AtomicUsize,
    discovery_requests: AtomicUsize,
}

/// A running issuer; stops (and drops its open connections) when dropped.
pub struct JwksServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl JwksServer {
    /// Binds `127.0.0.1:0` and starts serving in `mode`. Requires a tokio runtime.
    pub async fn start(mode: Mode) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            base: format!("http://{addr}"),
            mode: Mutex::new(mode),
            jwks_requests: AtomicUsize::new(0),
            discovery_requests: AtomicUsize::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        JwksServer {
            shared,
            addr,
            accept,
        }
    }

    /// `http://127.0.0.1:PORT` — also the issuer named in the discovery document.
    pub fn base(&self) -> String {
        self.shared.base.clone()
    }

    /// The JWKS URL (what discovery names as `jwks_uri`).
    pub fn jwks_uri(&self) -> String {
        format!("{}{JWKS_PATH}", self.shared.base)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches the behaviour; applies to requests arriving from now on.
    pub fn set(&self, mode: Mode) {
        *self.shared.mode.lock().expect("not poisoned") = mode;
    }

    /// Requests received for `/jwks.json` so far (counted on arrival, whatever the answer).
    pub fn jwks_requests(&self) -> usize {
        self.shared.jwks_requests.load(Ordering::SeqCst)
    }

    /// Requests received for the discovery document so far.
    pub fn discovery_requests(&self) -> usize {
        self.shared.discovery_requests.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every open connection
        // (including those held by `Hang`).
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        let shared = shared.clone();
        connections.spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(respond(&shared, req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn response(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("valid response")
}

async fn respond(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let is_jwks = path == JWKS_PATH;
    let is_discovery = path == DISCOVERY_PATH;
    if is_jwks {
        shared.jwks_requests.fetch_add(1, Ordering::SeqCst);
    } else if is_discovery {
        shared.discovery_requests.fetch_add(1, Ordering::SeqCst);
    } else {
        return response(StatusCode::NOT_FOUND, "text/plain", "not found");
    }
    let mode = shared.mode.lock().expect("not poisoned").clone();
    match mode {
        Mode::Down => response(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "down"),
        Mode::Hang => std::future::pending().await,
        _ if is_discovery => {
            let doc = serde_json::json!({
                "issuer": shared.base,
                "jwks_uri": format!("{}{JWKS_PATH}", shared.base),
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
            });
            response(StatusCode::OK, "application/json", doc.to_string())
        }
        Mode::Serve(body) => response(StatusCode::OK, "application/json", body),
        Mode::Garbage => response(
            StatusCode::OK,
            "application/json",
            "<html><body>502 Bad Gateway</body></html>",
        ),
        Mode::Huge(jwks) => {
            let mut body = jwks.into_bytes();
            body.resize(HUGE_BYTES.max(body.len()), b' ');
            response(StatusCode::OK, "application/json", body)
        }
    }
}

/// An `http://` base URL on which nothing listens: connections to it are refused.
pub fn refused_base() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    drop(listener);
    format!("http://{addr}")
}
