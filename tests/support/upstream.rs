//! A recording mock upstream on 127.0.0.1:0. Every request is recorded (method, URI, headers,
//! body). The path chooses the behaviour:
//! `/hang…` never answers; `/slow…` answers after 700 ms; `/close-mid…` sends a head and part of the body, then drops the
//! connection; `/echo…` answers with the request body; anything else answers
//! `200 {"upstream":"<name>"}`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A running mock upstream.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    /// Requests received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The last request received.
    pub fn last(&self) -> Seen {
        self.seen()
            .last()
            .cloned()
            .expect("the upstream saw no request")
    }

    /// Base URL for gateway.yaml.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A body that sends one chunk, waits (so the head and chunk reach the gateway), then fails,
/// so hyper cuts the connection mid-response.
struct BreakingBody {
    sent: bool,
    pause: Pin<Box<tokio::time::Sleep>>,
}

impl Body for BreakingBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.sent {
            if self.pause.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            Poll::Ready(Some(Err(std::io::Error::other("upstream breaks"))))
        } else {
            self.sent = true;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"partial")))))
        }
    }
}

type MockBody = Either<Full<Bytes>, BreakingBody>;

/// Starts a mock upstream named `name`.
pub async fn start(name: &str) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = Upstream {
        addr: listener.local_addr().unwrap(),
        name: name.to_string(),
        seen: Arc::new(Mutex::new(Vec::new())),
    };
    let srv = up.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let srv = srv.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let srv = srv.clone();
                    async move { Ok::<_, Infallible>(answer(srv, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    up
}

async fn answer(srv: Upstream, req: Request<Incoming>) -> Response<MockBody> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Response::new(Either::Left(Full::new(Bytes::from_static(b"body failed"))));
        }
    };
    srv.seen.lock().unwrap().push(Seen {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    let path = parts.uri.path();
    if path.starts_with("/hang") {
        std::future::pending::<()>().await;
    }
    if path.starts_with("/slow") {
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    }
    if path.starts_with("/close-mid") {
        return Response::builder()
            .header("content-length", "1000")
            .body(Either::Right(BreakingBody {
                sent: false,
                pause: Box::pin(tokio::time::sleep(std::time::Duration::from_millis(100))),
            }))
            .unwrap();
    }
    if path.starts_with("/echo") {
        return Response::builder()
            .header("x-upstream", srv.name.as_str())
            .body(Either::Left(Full::new(body)))
            .unwrap();
    }
    Response::builder()
        .header("content-type", "application/json")
        .header("x-upstream", srv.name.as_str())
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "should not reach the client")
        .body(Either::Left(Full::new(Bytes::from(format!(
            "{{\"upstream\":\"{}\"}}",
            srv.name
        )))))
        .unwrap()
}
