//! Plain HTTP/1 keep-alive connections across the idle release (`src/http1.rs`): a connection
//! idle for `IDLE_RELEASE_AFTER` gives hyper's buffers back and waits holding only its socket
//! (`tollgate_connections_idle`); its next request, pipelined bytes, request bodies and shutdown
//! must behave exactly as on a connection that kept them.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::gateway::{self, TestGateway};
use crate::support::upstream;

const WAIT: Duration = Duration::from_secs(10);

async fn open_gateway(targets: &str) -> TestGateway {
    gateway::start(&format!(
        "upstreams:\n  app: {{ targets: [{targets}] }}\nroutes:\n  - {{ route: \"ANY /app/{{proxy+}}\", upstream: app, authorizer: none }}\n"
    ))
    .await
}

/// Polls until `n` connections wait with their buffers released.
async fn until_idle(gw: &TestGateway, n: i64) {
    let since = Instant::now();
    while gw.gauge("tollgate_connections_idle").await != n {
        assert!(since.elapsed() < WAIT, "never {n} idle connections");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A raw HTTP/1 client connection that reads responses one at a time.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(gw: &TestGateway) -> Conn {
        Conn {
            s: TcpStream::connect(gw.addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.s.write_all(bytes).await
    }

    /// The next response's status (its `content-length` body is consumed); `None` if the
    /// connection closed first.
    async fn response(&mut self) -> Option<u16> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let status = head.split(' ').nth(1)?.parse().ok()?;
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                if self.buf.len() >= end + 4 + len {
                    self.buf.drain(..end + 4 + len);
                    return Some(status);
                }
            }
            match tokio::time::timeout(WAIT, self.s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => panic!("no response within {WAIT:?}"),
            }
        }
    }
}

#[tokio::test]
async fn an_idle_connection_gives_back_its_buffers_and_serves_its_next_requests() {
    let up = upstream::start("a").await;
    let gw = open_gateway(&up.url()).await;
    let mut s = Conn::open(&gw).await;
    s.send(b"GET /app/one HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(s.response().await.unwrap(), 200);
    until_idle(&gw, 1).await;

    // A request with a body, forwarded (and so read to its end): released again afterwards.
    s.send(b"POST /app/two HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello")
        .await
        .unwrap();
    assert_eq!(s.response().await.unwrap(), 200);
    assert_eq!(up.last().uri.path(), "/app/two");
    assert_eq!(&up.last().body[..], b"hello");
    until_idle(&gw, 1).await;

    // Chunked, too.
    s.send(
        b"POST /app/three HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(s.response().await.unwrap(), 200);
    assert_eq!(&up.last().body[..], b"abc");
    until_idle(&gw, 1).await;

    // Two requests in one write, answered in order on the same connection.
    s.send(b"GET /app/four HTTP/1.1\r\nhost: x\r\n\r\nGET /nowhere HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(s.response().await.unwrap(), 200);
    assert_eq!(s.response().await.unwrap(), 404);
    let paths: Vec<String> = up.seen().iter().map(|r| r.uri.path().to_owned()).collect();
    assert_eq!(paths, ["/app/one", "/app/two", "/app/three", "/app/four"]);
    assert_eq!(gw.gauge("tollgate_connections_active").await, 1);
    gw.stop().await;
}

#[tokio::test]
async fn bytes_of_the_next_request_read_before_the_release_are_not_lost() {
    let up = upstream::start("a").await;
    let gw = open_gateway(&up.url()).await;
    let mut s = Conn::open(&gw).await;
    // The first request and the start of the second arrive together: hyper has read part of the
    // second head when the connection turns idle.
    s.send(b"GET /app/first HTTP/1.1\r\nhost: x\r\n\r\nGET /app/sec")
        .await
        .unwrap();
    assert_eq!(s.response().await.unwrap(), 200);
    // The idle spell itself is what is tested here: longer than the release delay, so the
    // connection is taken apart with those bytes in hyper's buffer.
    tokio::time::sleep(tollgate::transport::IDLE_RELEASE_AFTER * 3).await;
    s.send(b"ond HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    assert_eq!(s.response().await.unwrap(), 200);
    assert_eq!(up.last().uri.path(), "/app/second");
    // And the connection is released as usual after that.
    until_idle(&gw, 1).await;
    s.send(b"GET /app/third HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(s.response().await.unwrap(), 200);
    assert_eq!(up.seen().len(), 3);
    gw.stop().await;
}

#[tokio::test]
async fn an_unread_body_is_never_taken_for_the_next_request() {
    let up = upstream::start("a").await;
    let gw = open_gateway(&up.url()).await;
    // Refused before its body is read (no route), with a body that looks like a request and
    // arrives only after the connection has been idle: hyper is in the middle of the message.
    let smuggled = "GET /app/smuggled HTTP/1.1\r\nhost: x\r\n\r\n";
    for (framing, body) in [
        (
            format!("content-length: {}", smuggled.len()),
            smuggled.to_owned(),
        ),
        (
            "transfer-encoding: chunked".to_owned(),
            format!("{:x}\r\n{smuggled}\r\n0\r\n\r\n", smuggled.len()),
        ),
    ] {
        let mut s = Conn::open(&gw).await;
        s.send(format!("POST /nowhere HTTP/1.1\r\nhost: x\r\n{framing}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(s.response().await.unwrap(), 404);
        tokio::time::sleep(tollgate::transport::IDLE_RELEASE_AFTER * 3).await;
        // The connection may have been closed; if it is open, it answers the next request.
        if s.send(body.as_bytes()).await.is_ok()
            && s.send(b"GET /app/next HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .is_ok()
            && let Some(status) = s.response().await
        {
            assert_eq!(status, 200, "{framing}");
        }
    }
    assert!(
        up.seen().iter().all(|r| r.uri.path() != "/app/smuggled"),
        "a body was served as a request"
    );
    gw.stop().await;
}

#[tokio::test]
async fn shutdown_closes_idle_connections_at_once() {
    let up = upstream::start("a").await;
    let gw = open_gateway(&up.url()).await;
    let mut s = Conn::open(&gw).await;
    s.send(b"GET /app/one HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(s.response().await.unwrap(), 200);
    until_idle(&gw, 1).await;
    let started = Instant::now();
    gw.stop().await;
    // Well under the 5 s grace `stop` allows: nothing was in flight.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let mut rest = [0u8; 16];
    let n = tokio::time::timeout(WAIT, s.s.read(&mut rest))
        .await
        .expect("closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "the idle connection was closed");
}
