//! Starts a whole gateway in-process from YAML text, on 127.0.0.1:0, and gives tests an HTTP
//! client and raw-socket helpers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate::server::Running;

/// A gateway started for one test.
pub struct TestGateway {
    pub running: Option<Running>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

/// The listener and admin lines every test config starts with.
pub const HEAD: &str = "listeners:\n  - bind: 127.0.0.1:0\nadmin: { bind: 127.0.0.1:0 }\n";

/// Writes `yaml` (prefixed with [`HEAD`]) to a temp dir and starts a gateway on it. Extra files
/// (name, contents) are written beside it first.
pub async fn start_with_files(yaml: &str, files: &[(&str, &str)]) -> TestGateway {
    start_raw(&format!("{HEAD}{yaml}"), files).await
}

/// Starts a gateway on `yaml` exactly as given (it must bind port 0 itself).
pub async fn start_raw(yaml: &str, files: &[(&str, &str)]) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    for (name, contents) in files {
        std::fs::write(dir.path().join(name), contents).unwrap();
    }
    std::fs::write(dir.path().join("gateway.yaml"), yaml).unwrap();
    start_at(dir, "gateway.yaml").await
}

/// Starts a gateway on the config at `rel` inside `dir`, which the caller has laid out (for
/// symlinked layouts).
pub async fn start_at(dir: tempfile::TempDir, rel: &str) -> TestGateway {
    let config = dir.path().join(rel);
    let running = tollgate::server::start(&config)
        .await
        .unwrap_or_else(|e| panic!("gateway did not start: {e}"));
    TestGateway {
        addr: running.public_addrs[0],
        admin: running.admin_addr,
        running: Some(running),
        dir,
        config,
    }
}

/// [`start_with_files`] without extra files.
pub async fn start(yaml: &str) -> TestGateway {
    start_with_files(yaml, &[]).await
}

/// An answer as a test sees it.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A fresh HTTP/1.1 client.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

impl TestGateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends a request; `headers` as (name, value) pairs.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        let mut b = Request::builder().method(method).uri(self.url(path));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(Bytes::from(body.to_string()))).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(20), client().request(req))
            .await
            .expect("gateway answered in time")
            .expect("request sent");
        let (parts, body) = resp.into_parts();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default(),
        }
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        self.send("GET", path, headers, "").await
    }

    /// GET on the admin listener.
    pub async fn admin_get(&self, path: &str) -> Answer {
        self.admin_request(http::Method::GET, path).await
    }

    /// The value of an unlabelled gauge (or counter) on the admin `/metrics`.
    pub async fn gauge(&self, name: &str) -> i64 {
        let text = self.admin_get("/metrics").await.text();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in /metrics"))
    }

    /// POST on the admin listener.
    pub async fn admin_post(&self, path: &str) -> Answer {
        self.admin_request(http::Method::POST, path).await
    }

    async fn admin_request(&self, method: http::Method, path: &str) -> Answer {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.admin, path))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = client().request(req).await.expect("admin answered");
        let (parts, body) = resp.into_parts();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    /// Writes raw bytes on a new connection and reads until the server closes or `wait` passes.
    pub async fn raw(&self, bytes: &[u8], wait: Duration) -> String {
        let mut s = TcpStream::connect(self.addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        read_for(&mut s, wait).await
    }

    /// Stops this gateway and starts a new one on the same config file and directory.
    pub async fn restart(mut self) -> TestGateway {
        if let Some(r) = self.running.take() {
            r.shutdown(Some(Duration::from_secs(5))).await;
        }
        let running = tollgate::server::start(&self.config)
            .await
            .unwrap_or_else(|e| panic!("gateway did not restart: {e}"));
        TestGateway {
            addr: running.public_addrs[0],
            admin: running.admin_addr,
            running: Some(running),
            dir: self.dir,
            config: self.config,
        }
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown(Some(Duration::from_secs(5))).await;
        }
    }
}

/// Reads what arrives until EOF or `wait` passes.
pub async fn read_for(s: &mut TcpStream, wait: Duration) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
