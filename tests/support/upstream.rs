//! A recording mock upstream on 127.0.0.1:0, over plain HTTP/1.1 ([`start`]), HTTP/2 with prior
//! knowledge ([`start_h2c`]) or TLS with ALPN `h2` / `http/1.1` ([`start_tls`]). Every request
//! is recorded (method, URI, headers, body, HTTP version, TLS server name). The path chooses the
//! behaviour:
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
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The request's trailers, if it sent any.
    pub trailers: Option<HeaderMap>,
    /// The HTTP version the request arrived in.
    pub version: http::Version,
    /// The server name (SNI) the client asked for over TLS.
    pub sni: Option<String>,
}

/// A running mock upstream.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    tls: bool,
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

    /// Base URL for gateway.yaml (`https://localhost:PORT` for a TLS upstream, so the
    /// certificate's name and SNI are exercised).
    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
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

/// How a mock upstream speaks.
enum Mode {
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/1.1 or HTTP/2 with prior knowledge (h2c), whichever the client opens with.
    Cleartext,
    /// TLS, then HTTP/2 or HTTP/1.1 as ALPN chose.
    Tls(tokio_rustls::TlsAcceptor),
}

/// Starts a mock upstream named `name` (HTTP/1.1).
pub async fn start(name: &str) -> Upstream {
    start_mode(name, Mode::Http1).await
}

/// Starts a mock upstream that also speaks HTTP/2 with prior knowledge (h2c).
pub async fn start_h2c(name: &str) -> Upstream {
    start_mode(name, Mode::Cleartext).await
}

/// Starts a TLS mock upstream presenting `server` (ALPN `h2`, `http/1.1`).
pub async fn start_tls(name: &str, server: rustls::ServerConfig) -> Upstream {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    start_mode(name, Mode::Tls(acceptor)).await
}

async fn start_mode(name: &str, mode: Mode) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = Upstream {
        addr: listener.local_addr().unwrap(),
        name: name.to_string(),
        seen: Arc::new(Mutex::new(Vec::new())),
        tls: matches!(mode, Mode::Tls(_)),
    };
    let srv = up.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let srv = srv.clone();
            match &mode {
                Mode::Http1 => {
                    tokio::spawn(async move {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service(srv, None))
                            .await;
                    });
                }
                Mode::Cleartext => {
                    tokio::spawn(serve_auto(stream, srv, None));
                }
                Mode::Tls(acceptor) => {
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        // A refused handshake (untrusted certificate) records nothing.
                        let Ok(tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        let sni = tls.get_ref().1.server_name().map(str::to_string);
                        serve_auto(tls, srv, sni).await;
                    });
                }
            }
        }
    });
    up
}

/// Serves one connection in HTTP/1.1 or HTTP/2, whichever the client speaks.
async fn serve_auto<S>(stream: S, srv: Upstream, sni: Option<String>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service(srv, sni))
        .await;
}

fn service(
    srv: Upstream,
    sni: Option<String>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<MockBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<MockBody>, Infallible>> + Send,
> + Clone {
    service_fn(move |req: Request<Incoming>| {
        let srv = srv.clone();
        let sni = sni.clone();
        async move { Ok::<_, Infallible>(answer(srv, sni, req).await) }
    })
}

async fn answer(srv: Upstream, sni: Option<String>, req: Request<Incoming>) -> Response<MockBody> {
    let (parts, body) = req.into_parts();
    let (body, trailers) = match body.collect().await {
        Ok(b) => {
            let trailers = b.trailers().cloned();
            (b.to_bytes(), trailers)
        }
        Err(_) => {
            return Response::new(Either::Left(Full::new(Bytes::from_static(b"body failed"))));
        }
    };
    srv.seen.lock().unwrap().push(Seen {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        headers: parts.headers.clone(),
        body: body.clone(),
        trailers,
        version: parts.version,
        sni,
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
