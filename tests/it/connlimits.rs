//! What bounds the connections clients hold (issue 14: 250 idle h2c connections that answered
//! PINGs stopped all service at a 256-descriptor limit): `limits.h2_idle_timeout` (GOAWAY for an
//! HTTP/2 connection with no request in flight, PINGs or not), `limits.max_connection_age`
//! (HTTP/1 closes after the current response, HTTP/2 gets a GOAWAY and finishes its streams),
//! `limits.max_connections` per listener (more are closed at once and counted), and accept
//! failing with EMFILE (the real binary under a lowered `ulimit -n`: it keeps serving once
//! descriptors free up, and logs the spell once).
//!
//! HTTP/2 is spoken raw here (frames written and read by hand, HPACK with static-table entries
//! only), so that the tests see exactly which frames the gateway sends and when, and answer the
//! gateway's PINGs as a live client does.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::support::gateway::{self, TestGateway};
use crate::support::pki::{Ca, Sender, TlsClient};
use crate::support::upstream;

/// Longest any expected event may take; the configured timeouts are a few hundred ms.
const WAIT: Duration = Duration::from_secs(10);
/// The short timeouts configured below.
const SHORT: Duration = Duration::from_millis(300);

/// The HTTP/2 connection preface (RFC 9113 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Frame types (RFC 9113 6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
/// Flags.
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// One HTTP/2 frame.
#[derive(Debug)]
struct Frame {
    ty: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    /// A GOAWAY's last stream id and error code.
    fn goaway(&self) -> (u32, u32) {
        assert_eq!(self.ty, GOAWAY);
        let p = &self.payload;
        (
            u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff,
            u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
        )
    }

    /// Whether it ends `stream` (HEADERS or DATA with END_STREAM).
    fn ends(&self, stream: u32) -> bool {
        self.stream == stream
            && (self.ty == HEADERS || self.ty == DATA)
            && self.flags & END_STREAM != 0
    }
}

/// What [`H2::next`] saw.
#[derive(Debug)]
enum Next {
    Frame(Frame),
    /// The gateway closed the connection.
    Closed,
    /// Nothing before the deadline.
    Timeout,
}

/// A raw HTTP/2 client connection (h2c, prior knowledge) that answers SETTINGS and PINGs.
struct H2 {
    s: TcpStream,
    buf: Vec<u8>,
}

impl H2 {
    /// Connects, sends the preface and empty SETTINGS.
    async fn open(addr: SocketAddr) -> H2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // A connection over the limit may be closed before the preface is written.
        let _ = s.write_all(PREFACE).await;
        let mut h = H2 { s, buf: Vec::new() };
        let _ = h.send(SETTINGS, 0, 0, &[]).await;
        h
    }

    async fn send(
        &mut self,
        ty: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
    ) -> std::io::Result<()> {
        let mut f = Vec::with_capacity(9 + payload.len());
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        f.push(ty);
        f.push(flags);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        self.s.write_all(&f).await
    }

    /// Opens `stream` with `GET path` (no body). HPACK: `:method GET` and `:scheme http` from
    /// the static table, `:path` and `:authority` as literals with static-table names.
    async fn get(&mut self, stream: u32, path: &str) {
        let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
        block.extend_from_slice(path.as_bytes());
        block.extend_from_slice(&[0x01, 9]);
        block.extend_from_slice(b"localhost");
        self.send(HEADERS, END_STREAM | END_HEADERS, stream, &block)
            .await
            .unwrap();
    }

    /// The next frame before `deadline`, answering SETTINGS and PINGs on the way as a live
    /// client does.
    async fn next(&mut self, deadline: Instant) -> Next {
        loop {
            if self.buf.len() >= 9 {
                let b = &self.buf;
                let len = u32::from_be_bytes([0, b[0], b[1], b[2]]) as usize;
                if b.len() >= 9 + len {
                    let f = Frame {
                        ty: b[3],
                        flags: b[4],
                        stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
                        payload: b[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    if f.flags & ACK == 0 {
                        if f.ty == SETTINGS {
                            let _ = self.send(SETTINGS, ACK, 0, &[]).await;
                        } else if f.ty == PING {
                            let _ = self.send(PING, ACK, 0, &f.payload).await;
                        }
                    }
                    return Next::Frame(f);
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Next::Closed,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => return Next::Timeout,
            }
        }
    }

    /// Reads until `stream` ends (asserting a 200), failing on a GOAWAY before that. Returns
    /// when the stream's end arrived.
    async fn finish_without_goaway(&mut self, stream: u32) -> Instant {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.next(deadline).await {
                Next::Frame(f) if f.ty == GOAWAY => {
                    panic!(
                        "GOAWAY {:?} while stream {stream} was in flight",
                        f.goaway()
                    )
                }
                Next::Frame(f) if f.ty == RST_STREAM && f.stream == stream => {
                    panic!("stream {stream} reset")
                }
                Next::Frame(f) => {
                    if f.ty == HEADERS && f.stream == stream {
                        // `:status 200` is static-table entry 8.
                        assert_eq!(f.payload.first(), Some(&0x88), "stream {stream} not a 200");
                    }
                    if f.ends(stream) {
                        return Instant::now();
                    }
                }
                Next::Closed => panic!("connection closed while stream {stream} was in flight"),
                Next::Timeout => panic!("stream {stream} did not end in time"),
            }
        }
    }

    /// Reads (answering PINGs) until the gateway closes the connection; returns when its first
    /// GOAWAY arrived (with that frame) or `None` if it closed without one. Fails when the
    /// connection is still open after [`WAIT`].
    async fn until_closed(&mut self, what: &str) -> Option<(Instant, Frame)> {
        let deadline = Instant::now() + WAIT;
        let mut goaway = None;
        loop {
            match self.next(deadline).await {
                Next::Frame(f) if f.ty == GOAWAY => {
                    goaway.get_or_insert((Instant::now(), f));
                }
                Next::Frame(_) => {}
                Next::Closed => return goaway,
                Next::Timeout => panic!("{what}: the connection was still open after {WAIT:?}"),
            }
        }
    }
}

/// A gateway with `limits` and routes `GET /status` (mock) and `GET /slow` (an upstream that
/// answers after 700 ms).
async fn gateway_with(limits: &str) -> (TestGateway, upstream::Upstream) {
    let up = upstream::start("app").await;
    let gw = gateway::start(&format!(
        "limits: {{ {limits} }}\nupstreams:\n  app: {{ targets: [\"{url}\"] }}\nroutes:\n  - {{ route: \"GET /status\", respond: {{ body: ok }} }}\n  - {{ route: \"GET /slow\", upstream: app, authorizer: none }}\n",
        url = up.url()
    ))
    .await;
    (gw, up)
}

#[tokio::test]
async fn an_idle_h2c_connection_that_answers_pings_gets_a_goaway_and_is_closed() {
    let (gw, _up) = gateway_with("h2_idle_timeout: 300ms").await;
    let opened = Instant::now();
    let mut h2 = H2::open(gw.addr).await;
    // The client pings every 50 ms and answers the gateway's PINGs: a live peer with nothing
    // to ask. PINGs must not count as activity.
    let deadline = opened + WAIT;
    let mut next_ping = Instant::now();
    let (mut pongs, mut goaway) = (0, None);
    loop {
        if Instant::now() >= next_ping {
            let _ = h2.send(PING, 0, 0, b"tollgate").await;
            next_ping += Duration::from_millis(50);
        }
        match h2.next(next_ping.min(deadline)).await {
            Next::Frame(f) if f.ty == GOAWAY => {
                goaway.get_or_insert((Instant::now(), f.goaway()));
            }
            Next::Frame(f) if f.ty == PING && f.flags & ACK != 0 => pongs += 1,
            Next::Frame(_) => {}
            Next::Closed => break,
            Next::Timeout => assert!(
                Instant::now() < deadline,
                "an idle h2c connection answering PINGs was still open after {WAIT:?}"
            ),
        }
    }
    assert!(pongs >= 3, "the gateway answered only {pongs} PINGs");
    let (at, (_, code)) = goaway.expect("a GOAWAY before the connection closed");
    assert_eq!(code, 0, "GOAWAY with NO_ERROR");
    assert!(
        at - opened >= SHORT,
        "GOAWAY after {:?}, before the idle timeout",
        at - opened
    );
    gw.stop().await;
}

#[tokio::test]
async fn an_h2c_connection_with_streams_in_flight_is_not_closed_by_the_idle_timer() {
    let (gw, _up) = gateway_with("h2_idle_timeout: 300ms").await;
    let mut h2 = H2::open(gw.addr).await;
    // Two 700 ms requests back to back: 1.4 s of streams in flight, the idle timeout 300 ms.
    h2.get(1, "/slow").await;
    h2.finish_without_goaway(1).await;
    h2.get(3, "/slow").await;
    let ended = h2.finish_without_goaway(3).await;
    // Then quiet: the idle timeout counts from the end of the last stream.
    let (at, f) = h2
        .until_closed("idle after its streams")
        .await
        .expect("a GOAWAY before the close");
    assert_eq!(f.goaway().1, 0);
    assert!(
        at - ended >= SHORT - Duration::from_millis(50),
        "GOAWAY {:?} after the last stream ended",
        at - ended
    );
    gw.stop().await;
}

#[tokio::test]
async fn an_idle_h2_connection_over_tls_is_closed() {
    let ca = Ca::new("Test CA");
    let cert = ca.server("gw", &["gw.test"]);
    let yaml = "listeners:\n  - bind: 127.0.0.1:0\n    tls: { cert: gw.pem, key: gw.key }\nadmin: { bind: 127.0.0.1:0 }\nlimits: { h2_idle_timeout: 300ms }\nroutes:\n  - { route: \"GET /status\", respond: { body: ok } }\n";
    let gw = gateway::start_raw(
        yaml,
        &[("gw.pem", &cert.cert_pem), ("gw.key", &cert.key_pem)],
    )
    .await;
    let client = TlsClient {
        server_name: "gw.test",
        ca_pem: &ca.pem,
        client_cert: None,
        alpn: &[b"h2"],
        version: None,
    };
    let mut conn = client.connect(gw.addr).await.unwrap();
    assert_eq!(
        conn.get("/status", &[]).await.unwrap().status,
        StatusCode::OK
    );
    let Sender::H2(sender) = &conn.sender else {
        panic!("not HTTP/2")
    };
    let since = Instant::now();
    while !sender.is_closed() {
        assert!(
            since.elapsed() < WAIT,
            "an idle h2 connection over TLS was never closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.stop().await;
}

#[tokio::test]
async fn max_connection_age_sends_goaway_and_lets_the_stream_in_flight_finish() {
    let (gw, _up) = gateway_with("max_connection_age: 300ms").await;
    let opened = Instant::now();
    let mut h2 = H2::open(gw.addr).await;
    h2.get(1, "/slow").await;
    let deadline = opened + WAIT;
    let (mut goaway, mut ended) = (None, None);
    loop {
        match h2.next(deadline).await {
            Next::Frame(f) if f.ty == GOAWAY => {
                goaway.get_or_insert((Instant::now(), f.goaway()));
            }
            Next::Frame(f) if f.ty == RST_STREAM => panic!("stream {} reset", f.stream),
            Next::Frame(f) => {
                if f.ty == HEADERS && f.stream == 1 {
                    assert_eq!(f.payload.first(), Some(&0x88), "not a 200");
                }
                if f.ends(1) {
                    ended = Some(Instant::now());
                }
            }
            Next::Closed => break,
            Next::Timeout => panic!("an aged h2c connection was still open after {WAIT:?}"),
        }
    }
    let (at, (_, code)) = goaway.expect("a GOAWAY at the maximum age");
    let ended = ended.expect("the stream in flight finished");
    assert_eq!(code, 0);
    assert!(at < ended, "the GOAWAY came only after the stream ended");
    assert!(
        at - opened >= SHORT - SHORT / 10,
        "GOAWAY after {:?}, before the maximum age",
        at - opened
    );
    gw.stop().await;
}

/// Reads one HTTP/1 response (head and `content-length` body) from `s`; `None` if the
/// connection closed first.
async fn http1_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:")?.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                buf.drain(..end + 4 + len);
                return Some(head);
            }
        }
        match tokio::time::timeout(WAIT, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("no response within {WAIT:?}"),
        }
    }
}

/// Waits for the gateway to close `s`; fails after [`WAIT`].
async fn until_eof(s: &mut TcpStream, what: &str) {
    let mut chunk = [0u8; 1024];
    match tokio::time::timeout(WAIT, s.read(&mut chunk)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!(
            "{what}: unexpected bytes {:?}",
            String::from_utf8_lossy(&chunk[..n])
        ),
        Err(_) => panic!("{what}: still open after {WAIT:?}"),
    }
}

const GET: &[u8] = b"GET /status HTTP/1.1\r\nhost: gw.test\r\n\r\n";

#[tokio::test]
async fn max_connection_age_closes_an_http1_keep_alive_connection_after_its_response() {
    let (gw, _up) = gateway_with("max_connection_age: 300ms").await;

    // Busy when it comes of age: the response in flight is sent with `connection: close`.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET /slow HTTP/1.1\r\nhost: gw.test\r\n\r\n")
        .await
        .unwrap();
    let head = http1_response(&mut s, &mut buf).await.expect("a response");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("\r\nconnection: close"),
        "no `connection: close` past the age: {head}"
    );
    until_eof(&mut s, "past its age, after its response").await;

    // Idle when it comes of age (long before `header_timeout`'s 10 s): closed.
    let opened = Instant::now();
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(GET).await.unwrap();
    let head = http1_response(&mut s, &mut buf).await.expect("a response");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        !head.contains("connection: close"),
        "closed before its age: {head}"
    );
    until_eof(&mut s, "idle past its age").await;
    assert!(
        opened.elapsed() >= SHORT - SHORT / 10,
        "closed after {:?}",
        opened.elapsed()
    );
    gw.stop().await;
}

/// `tollgate_connections_refused_total{listener=addr,reason="max_connections"}`.
async fn refused(gw: &TestGateway) -> u64 {
    let series = format!(
        "tollgate_connections_refused_total{{listener=\"{}\",reason=\"max_connections\"}} ",
        gw.addr
    );
    let text = gw.admin_get("/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(&series)?.parse().ok())
        .unwrap_or_else(|| panic!("{series} not in /metrics:\n{text}"))
}

#[tokio::test]
async fn a_connection_beyond_max_connections_is_closed_and_counted_until_one_frees() {
    let (gw, _up) = gateway_with("max_connections: 3").await;
    assert_eq!(refused(&gw).await, 0);
    // Three keep-alive connections, each served (so each is admitted) and kept open.
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        let mut buf = Vec::new();
        s.write_all(GET).await.unwrap();
        let head = http1_response(&mut s, &mut buf).await.expect("served");
        assert!(head.starts_with("http/1.1 200"), "{head}");
        open.push(s);
    }
    // A fourth is closed without an answer, and counted.
    let mut fourth = TcpStream::connect(gw.addr).await.unwrap();
    let _ = fourth.write_all(GET).await;
    let mut buf = Vec::new();
    assert_eq!(
        http1_response(&mut fourth, &mut buf).await,
        None,
        "a fourth connection was served with max_connections: 3"
    );
    assert_eq!(refused(&gw).await, 1);
    // h2c too: the limit is on connections, whatever they speak.
    let mut h2 = H2::open(gw.addr).await;
    assert!(
        matches!(h2.next(Instant::now() + WAIT).await, Next::Closed),
        "an h2c connection over the limit was not closed"
    );
    assert_eq!(refused(&gw).await, 2);

    // One closes: new connections are served again (once the gateway has seen it go).
    drop(open.pop());
    let since = Instant::now();
    loop {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        let _ = s.write_all(GET).await;
        let mut buf = Vec::new();
        if let Some(head) = http1_response(&mut s, &mut buf).await {
            assert!(head.starts_with("http/1.1 200"), "{head}");
            break;
        }
        assert!(
            since.elapsed() < WAIT,
            "never served again after a connection closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.stop().await;
}

/// The real binary, started under `sh -c 'ulimit -n N; exec tollgate run -c FILE'` (which
/// lowers both the soft and the hard descriptor limit, so the gateway cannot raise it back),
/// its JSON log lines collected as they come. Killed when dropped.
struct Limited {
    child: std::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    seen: Arc<Mutex<Vec<serde_json::Value>>>,
    _dir: tempfile::TempDir,
}

impl Limited {
    fn start(nofile: u32, yaml: &str) -> Limited {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gateway.yaml");
        std::fs::write(&config, yaml).unwrap();
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("ulimit -n \"$1\" && exec \"$2\" run -c \"$3\"")
            .arg("sh")
            .arg(nofile.to_string())
            .arg(env!("CARGO_BIN_EXE_tollgate"))
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("sh runs");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let keep = seen.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let v: serde_json::Value =
                    serde_json::from_str(&line).unwrap_or(serde_json::Value::String(line));
                keep.lock().unwrap().push(v.clone());
                let _ = tx.send(v);
            }
        });
        Limited {
            child,
            lines,
            seen,
            _dir: dir,
        }
    }

    /// The next log line whose message is `message` (waiting at most [`WAIT`]).
    async fn line(&mut self, message: &str) -> serde_json::Value {
        let deadline = Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(v)) if v["message"] == message => return v,
                Ok(Some(_)) => {}
                Ok(None) => panic!(
                    "the gateway exited before logging {message:?}: {:#?}",
                    self.seen()
                ),
                Err(_) => panic!(
                    "no {message:?} log line within {WAIT:?}: {:#?}",
                    self.seen()
                ),
            }
        }
    }

    /// Every line logged so far.
    fn seen(&self) -> Vec<serde_json::Value> {
        self.seen.lock().unwrap().clone()
    }

    /// Lines logged so far whose message starts with `prefix`.
    fn count(&self, prefix: &str) -> usize {
        self.seen()
            .iter()
            .filter(|v| v["message"].as_str().is_some_and(|m| m.starts_with(prefix)))
            .count()
    }

    /// The public and admin addresses, from the start-up lines.
    async fn addrs(&mut self) -> (SocketAddr, SocketAddr) {
        let public = self.line("listening").await["addr"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let admin = self.line("tollgate serving").await["admin"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        (public, admin)
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `GET path` on a new connection to `addr`: the status line, or `None` if the connection
/// closed without an answer.
async fn get_status(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut buf = Vec::new();
    let head = http1_response(&mut s, &mut buf).await?;
    Some(head.lines().next().unwrap_or_default().to_string())
}

const LIMITED_HEAD: &str = "listeners:\n  - bind: 127.0.0.1:0\nadmin: { bind: 127.0.0.1:0 }\nroutes:\n  - { route: \"GET /status\", respond: { body: ok } }\n";

#[cfg(unix)]
#[tokio::test]
async fn out_of_descriptors_the_gateway_logs_once_and_serves_again_once_they_free_up() {
    // A limit far above the descriptors, so that accept runs into EMFILE; silent clients held
    // for a minute by `header_timeout`.
    let mut gw = Limited::start(
        64,
        &format!("{LIMITED_HEAD}limits: {{ max_connections: 100000, header_timeout: 60s }}\n"),
    );
    let (addr, _) = gw.addrs().await;
    assert_eq!(
        get_status(addr, "/status").await.as_deref(),
        Some("http/1.1 200 ok")
    );
    // More silent connections than the process has descriptors: the kernel completes them all
    // (the backlog), the gateway accepts until EMFILE.
    let mut hogs = Vec::new();
    for _ in 0..100 {
        hogs.push(TcpStream::connect(addr).await.unwrap());
    }
    gw.line("accept failed; retrying until it works (out of file descriptors? see limits.max_connections)")
        .await;
    drop(hogs);
    // Descriptors free up as the gateway sees its clients gone; the backlog drains and a new
    // connection is served.
    assert_eq!(
        get_status(addr, "/status").await.as_deref(),
        Some("http/1.1 200 ok")
    );
    // The spell is over with the first accept a second (SPELL_QUIET) after its last failure:
    // keep connecting (each one an accept) until the gateway says so.
    let deadline = Instant::now() + WAIT;
    while gw.count("accepting connections again") == 0 {
        assert!(
            Instant::now() < deadline,
            "no \"accepting connections again\" within {WAIT:?}: {:#?}",
            gw.seen()
        );
        assert_eq!(
            get_status(addr, "/status").await.as_deref(),
            Some("http/1.1 200 ok")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        gw.count("accept failed"),
        1,
        "one warning per spell: {:#?}",
        gw.seen()
    );
}

#[cfg(unix)]
#[tokio::test]
async fn idle_h2c_connections_no_longer_stop_service_at_256_descriptors() {
    // The reported case: `ulimit -n 256`, 250 idle h2c connections that answer PINGs. The
    // default max_connections is (256 - 64) / 2 = 96.
    let up = upstream::start("app").await;
    let mut gw = Limited::start(
        256,
        &format!(
            "listeners:\n  - bind: 127.0.0.1:0\nadmin: {{ bind: 127.0.0.1:0 }}\nlimits: {{ h2_idle_timeout: 2s }}\nupstreams:\n  app: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ route: \"GET /status\", respond: {{ body: ok }} }}\n  - {{ route: \"GET /app\", upstream: app, authorizer: none }}\n",
            up.url()
        ),
    );
    let (addr, admin) = gw.addrs().await;
    let listening = gw
        .seen()
        .into_iter()
        .find(|v| v["message"] == "listening")
        .unwrap();
    assert_eq!(listening["max_connections"], 96);
    // An HTTP/1 client already connected keeps being served throughout.
    let mut kept = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    kept.write_all(GET).await.unwrap();
    assert!(
        http1_response(&mut kept, &mut buf)
            .await
            .unwrap()
            .starts_with("http/1.1 200")
    );

    let mut idle = Vec::new();
    for _ in 0..250 {
        let mut h2 = H2::open(addr).await;
        idle.push(tokio::spawn(async move {
            h2.until_closed("an idle h2c connection").await.is_some()
        }));
    }
    // The listener is full: a new connection is closed at once, not left hanging.
    assert_eq!(get_status(addr, "/status").await, None);
    // The admin listener is still served, and so is the connection already open, proxied to
    // an upstream (descriptors are left for upstream connections).
    assert_eq!(
        get_status(admin, "/healthz").await.as_deref(),
        Some("http/1.1 200 ok")
    );
    kept.write_all(b"GET /app HTTP/1.1\r\nhost: gw.test\r\n\r\n")
        .await
        .unwrap();
    assert!(
        http1_response(&mut kept, &mut buf)
            .await
            .unwrap()
            .starts_with("http/1.1 200")
    );
    // Every idle connection ends: those over the limit at once, the others with a GOAWAY.
    let mut goaways = 0;
    for t in idle {
        goaways += usize::from(t.await.unwrap());
    }
    assert_eq!(
        goaways, 95,
        "the 95 admitted beside the HTTP/1 client get a GOAWAY"
    );
    assert_eq!(
        get_status(addr, "/status").await.as_deref(),
        Some("http/1.1 200 ok")
    );
    let metrics = admin_metrics(admin).await;
    assert!(
        metrics.contains(&format!(
            "tollgate_connections_refused_total{{listener=\"{addr}\",reason=\"max_connections\"}} 156"
        )),
        "{metrics}"
    );
    assert_eq!(
        gw.count("connection limit reached"),
        1,
        "one warning per spell"
    );
    assert_eq!(
        up.seen().len(),
        1,
        "the proxied request reached the upstream"
    );
}

/// The admin `/metrics` text of a gateway in another process.
async fn admin_metrics(admin: SocketAddr) -> String {
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nhost: {admin}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
