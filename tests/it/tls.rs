//! TLS listeners with certificates made at test time: SNI selection, TLS 1.2 and 1.3, ALPN h2,
//! certificate hot swap seen by the next connection, mTLS (optional, required, per route,
//! forwarded identity), h2c prior knowledge, and listeners added and removed by a reload.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::support::gateway::{self, TestGateway};
use crate::support::pki::{Ca, Leaf, TlsClient};
use crate::support::upstream;

/// How long a changed certificate file may take to be served (debounce + reload).
const SWAP_DEADLINE: Duration = Duration::from_secs(3);

fn write(gw_dir: &std::path::Path, name: &str, text: &str) {
    let tmp = gw_dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, gw_dir.join(name)).unwrap();
}

fn client<'a>(name: &'a str, ca: &'a Ca) -> TlsClient<'a> {
    TlsClient {
        server_name: name,
        ca_pem: &ca.pem,
        client_cert: None,
        alpn: &[b"http/1.1"],
        version: None,
    }
}

/// A gateway with one TLS listener (default cert `gw.pem`, optional extra `tls:` lines) and
/// routes to `up`.
async fn tls_gateway(
    tls_extra: &str,
    files: &[(&str, &str)],
    up: &upstream::Upstream,
) -> TestGateway {
    let yaml = format!(
        r#"listeners:
  - bind: 127.0.0.1:0
    tls:
      cert: gw.pem
      key: gw.key
{tls_extra}admin: {{ bind: 127.0.0.1:0 }}
upstreams:
  app: {{ targets: ["{url}"] }}
routes:
  - {{ route: "GET /open", upstream: app }}
  - {{ route: "GET /strict", upstream: app, require_client_cert: true }}
"#,
        url = up.url()
    );
    gateway::start_raw(&yaml, files).await
}

#[tokio::test]
async fn sni_picks_the_certificate_and_both_tls_versions_work() {
    let ca = Ca::new("Test CA");
    let default = ca.server("default", &["127.0.0.1", "default.test"]);
    let a = ca.server("a", &["a.test"]);
    let wild = ca.server("wild", &["*.wild.test"]);
    let up = upstream::start("app").await;
    let gw = tls_gateway(
        "      certificates:\n        - { cert: a.pem, key: a.key }\n        - { cert: wild.pem, key: wild.key }\n",
        &[
            ("gw.pem", &default.cert_pem),
            ("gw.key", &default.key_pem),
            ("a.pem", &a.cert_pem),
            ("a.key", &a.key_pem),
            ("wild.pem", &wild.cert_pem),
            ("wild.key", &wild.key_pem),
        ],
        &up,
    )
    .await;

    for (name, want) in [
        ("a.test", &a),
        ("x.wild.test", &wild),
        ("default.test", &default),
        // An IP address sends no SNI name: the default certificate.
        ("127.0.0.1", &default),
    ] {
        let ans = client(name, &ca).get(gw.addr, "/open", &[]).await.unwrap();
        assert_eq!(ans.status, StatusCode::OK, "{name}");
        assert_eq!(ans.server_cert, want.der, "certificate served for {name}");
    }
    // A name no certificate covers gets the default one, which the client then rejects.
    let err = client("nobody.test", &ca)
        .get(gw.addr, "/open", &[])
        .await
        .unwrap_err();
    assert!(err.contains("handshake"), "{err}");

    for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut c = client("a.test", &ca);
        c.version = Some(v);
        let ans = c.get(gw.addr, "/open", &[]).await.unwrap();
        assert_eq!(ans.status, StatusCode::OK);
        assert_eq!(ans.tls_version, v.version);
    }
    let seen = up.last();
    assert_eq!(seen.headers["x-forwarded-proto"], "https");

    // Every served certificate's expiry is exported, for alerts.
    let metrics = gw.admin_get("/metrics").await.text();
    for (file, leaf) in [("gw.pem", &default), ("a.pem", &a), ("wild.pem", &wild)] {
        let (_, parsed) = x509_parser::parse_x509_certificate(&leaf.der).unwrap();
        let want = parsed.validity().not_after.timestamp();
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with("tollgate_tls_certificate_expiry_timestamp_seconds{")
                    && l.contains(&format!("{file}\""))
            })
            .unwrap_or_else(|| panic!("no expiry series for {file}:\n{metrics}"));
        assert!(line.ends_with(&format!(" {want}")), "{line}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn an_oversized_head_over_tls_is_refused() {
    let ca = Ca::new("Test CA");
    let leaf = ca.server("gw", &["127.0.0.1"]);
    let up = upstream::start("app").await;
    let gw = tls_gateway(
        "",
        &[("gw.pem", &leaf.cert_pem), ("gw.key", &leaf.key_pem)],
        &up,
    )
    .await;
    // Over `limits.max_header_bytes` (64 KiB), sent in one go: read in large chunks, it must
    // still be measured as a whole head.
    let big = "b".repeat(100 * 1024);
    let ans = client("127.0.0.1", &ca)
        .get(gw.addr, "/open", &[("x-big", &big)])
        .await;
    if let Ok(ans) = &ans {
        assert_eq!(ans.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
    assert!(up.seen().is_empty(), "the oversized request was forwarded");
    let ok = client("127.0.0.1", &ca).get(gw.addr, "/open", &[]).await;
    assert_eq!(ok.unwrap().status, StatusCode::OK);
    gw.stop().await;
}

#[tokio::test]
async fn http2_over_tls_by_alpn_and_h2c_by_prior_knowledge() {
    let ca = Ca::new("Test CA");
    let cert = ca.server("gw", &["gw.test"]);
    let up = upstream::start("app").await;
    let yaml = format!(
        r#"listeners:
  - bind: 127.0.0.1:0
    tls: {{ cert: gw.pem, key: gw.key }}
  - bind: 127.0.0.1:0
admin: {{ bind: 127.0.0.1:0 }}
upstreams:
  app: {{ targets: ["{url}"] }}
routes:
  - {{ route: "GET /open", upstream: app }}
"#,
        url = up.url()
    );
    let gw = gateway::start_raw(
        &yaml,
        &[("gw.pem", &cert.cert_pem), ("gw.key", &cert.key_pem)],
    )
    .await;
    let addrs = gw.running.as_ref().unwrap().listener_addrs();

    let mut c = client("gw.test", &ca);
    c.alpn = &[b"h2", b"http/1.1"];
    let mut conn = c.connect(addrs[0]).await.unwrap();
    assert_eq!(conn.alpn.as_deref(), Some(&b"h2"[..]));
    // Several streams on one connection.
    for _ in 0..3 {
        let ans = conn.get("/open", &[]).await.unwrap();
        assert_eq!(ans.status, StatusCode::OK);
        assert_eq!(ans.version, Version::HTTP_2);
        assert_eq!(ans.text(), r#"{"upstream":"app"}"#);
    }
    c.alpn = &[b"http/1.1"];
    let ans = c.get(addrs[0], "/open", &[]).await.unwrap();
    assert_eq!(ans.version, Version::HTTP_11);

    // h2c: HTTP/2 without TLS, by prior knowledge, on the plain listener.
    let tcp = TcpStream::connect(addrs[1]).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://{}/open", addrs[1]))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], br#"{"upstream":"app"}"#);
    assert_eq!(up.last().headers["x-forwarded-proto"], "http");
    gw.stop().await;
}

#[tokio::test]
async fn a_rewritten_certificate_is_served_to_the_next_connection() {
    let ca = Ca::new("Test CA");
    let first = ca.server("first", &["gw.test"]);
    let second = ca.server("second", &["gw.test"]);
    let up = upstream::start("app").await;
    let gw = tls_gateway(
        "",
        &[("gw.pem", &first.cert_pem), ("gw.key", &first.key_pem)],
        &up,
    )
    .await;
    let dir = gw.dir.path().to_path_buf();
    let c = client("gw.test", &ca);
    let mut kept = c.connect(gw.addr).await.unwrap();
    assert_eq!(kept.server_cert, first.der);
    assert_eq!(kept.get("/open", &[]).await.unwrap().status, StatusCode::OK);

    // Key first, then certificate: the half-written pair is refused, then the whole one loads.
    write(&dir, "gw.key", &second.key_pem);
    write(&dir, "gw.pem", &second.cert_pem);
    let since = Instant::now();
    loop {
        let ans = c.get(gw.addr, "/open", &[]).await.unwrap();
        assert_eq!(ans.status, StatusCode::OK);
        if ans.server_cert == second.der {
            break;
        }
        assert!(
            since.elapsed() < SWAP_DEADLINE,
            "the new certificate was not served within {SWAP_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The connection opened before the swap keeps working.
    assert_eq!(kept.get("/open", &[]).await.unwrap().status, StatusCode::OK);

    // A key that does not fit the certificate is refused; the last good pair keeps serving.
    let stranger = ca.server("stranger", &["gw.test"]);
    write(&dir, "gw.key", &stranger.key_pem);
    let r = gw.admin_post("/reload").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text());
    assert!(r.text().contains("does not fit"), "{}", r.text());
    assert!(r.text().contains("gateway.yaml:4:"), "{}", r.text());
    let ans = c.get(gw.addr, "/open", &[]).await.unwrap();
    assert_eq!(ans.server_cert, second.der);
    gw.stop().await;
}

fn forwarded_cert(up: &upstream::Upstream) -> (Option<String>, Option<String>) {
    let h = up.last().headers;
    let get = |n: &str| h.get(n).map(|v| v.to_str().unwrap().to_string());
    (
        get("x-tollgate-client-cert-subject"),
        get("x-tollgate-client-cert-sha256"),
    )
}

#[tokio::test]
async fn optional_mtls_forwards_the_certificate_and_routes_can_require_it() {
    let ca = Ca::new("Test CA");
    let clients = Ca::new("Client CA");
    let other = Ca::new("Other CA");
    let cert = ca.server("gw", &["gw.test"]);
    let alice = clients.client("alice");
    let mallory = other.client("mallory");
    let up = upstream::start("app").await;
    let gw = tls_gateway(
        "      client_ca: clients.pem\n",
        &[
            ("gw.pem", &cert.cert_pem),
            ("gw.key", &cert.key_pem),
            ("clients.pem", &clients.pem),
        ],
        &up,
    )
    .await;
    let forged = [
        ("x-tollgate-client-cert-subject", "CN=admin"),
        ("x-tollgate-client-cert-sha256", "00"),
    ];

    let mut with = client("gw.test", &ca);
    with.client_cert = Some(&alice);
    let ans = with.get(gw.addr, "/strict", &forged).await.unwrap();
    assert_eq!(ans.status, StatusCode::OK);
    let (subject, sha) = forwarded_cert(&up);
    let subject = subject.unwrap();
    assert!(subject.contains("CN=alice"), "{subject}");
    assert!(subject.contains("O=Tollgate Tests"), "{subject}");
    assert_eq!(sha.unwrap(), tollgate::util::sha256_hex(&alice.der));

    // Without a certificate: open routes work (and forged headers never arrive), the strict
    // route refuses.
    let without = client("gw.test", &ca);
    let ans = without.get(gw.addr, "/open", &forged).await.unwrap();
    assert_eq!(ans.status, StatusCode::OK);
    assert_eq!(forwarded_cert(&up), (None, None));
    let before = up.seen().len();
    let ans = without.get(gw.addr, "/strict", &[]).await.unwrap();
    assert_eq!(ans.status, StatusCode::FORBIDDEN);
    assert_eq!(ans.text(), r#"{"message":"Forbidden"}"#);
    assert_eq!(
        up.seen().len(),
        before,
        "the upstream saw a refused request"
    );

    // A certificate from a CA the listener does not trust fails the handshake.
    let mut stranger = client("gw.test", &ca);
    stranger.client_cert = Some(&mallory);
    assert!(stranger.get(gw.addr, "/open", &[]).await.is_err());
    assert_eq!(up.seen().len(), before);
    let metrics = gw.admin_get("/metrics").await.text();
    assert!(
        metrics.contains("tollgate_tls_handshake_failures_total 1"),
        "{metrics}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn required_mtls_refuses_clients_without_a_certificate() {
    let ca = Ca::new("Test CA");
    let clients = Ca::new("Client CA");
    let cert = ca.server("gw", &["gw.test"]);
    let bob: Leaf = clients.client("bob");
    let up = upstream::start("app").await;
    let gw = tls_gateway(
        "      client_ca: clients.pem\n      require_client_cert: true\n",
        &[
            ("gw.pem", &cert.cert_pem),
            ("gw.key", &cert.key_pem),
            ("clients.pem", &clients.pem),
        ],
        &up,
    )
    .await;
    // TLS 1.3 lets the client finish its side first; the refusal arrives on the first read.
    assert!(
        client("gw.test", &ca)
            .get(gw.addr, "/open", &[])
            .await
            .is_err()
    );
    assert!(up.seen().is_empty());
    let mut with = client("gw.test", &ca);
    with.client_cert = Some(&bob);
    let ans = with.get(gw.addr, "/open", &[]).await.unwrap();
    assert_eq!(ans.status, StatusCode::OK);
    assert!(forwarded_cert(&up).0.unwrap().contains("CN=bob"));
    gw.stop().await;
}

#[tokio::test]
async fn tls_config_errors_are_located() {
    let ca = Ca::new("Test CA");
    let cert = ca.server("gw", &["gw.test"]);
    let no_names = ca.server("plain", &[]);
    let dir = tempfile::tempdir().unwrap();
    for (n, t) in [
        ("gw.pem", &cert.cert_pem),
        ("gw.key", &cert.key_pem),
        ("plain.pem", &no_names.cert_pem),
        ("plain.key", &no_names.key_pem),
        ("empty.pem", &String::new()),
    ] {
        std::fs::write(dir.path().join(n), t).unwrap();
    }
    let cases = [
        (
            "    tls: { cert: missing.pem, key: gw.key }\n",
            "3:",
            "cannot read certificates",
        ),
        (
            "    tls: { cert: empty.pem, key: gw.key }\n",
            "3:",
            "no certificate in",
        ),
        (
            "    tls: { cert: gw.pem, key: plain.key }\n",
            "3:",
            "does not fit",
        ),
        (
            "    tls: { cert: gw.pem, key: gw.key, require_client_cert: true }\n",
            "3:",
            "needs `client_ca`",
        ),
        (
            "    tls:\n      cert: gw.pem\n      key: gw.key\n      certificates: [{ cert: plain.pem, key: plain.key }]\n",
            "6:",
            "no DNS names",
        ),
        (
            "    tls: { cert: gw.pem, key: gw.key, client_ca: empty.pem }\n",
            "3:",
            "no certificate in",
        ),
    ];
    for (tls, line, message) in cases {
        let yaml = format!("listeners:\n  - bind: 127.0.0.1:0\n{tls}routes: []\n");
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, &yaml).unwrap();
        let errs = tollgate::gateway::Gateway::load(&path, false)
            .err()
            .unwrap_or_else(|| panic!("accepted: {yaml}"));
        let text = errs
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            text.contains(&format!("gateway.yaml:{line}")),
            "{yaml}\n{text}"
        );
        assert!(text.contains(message), "{yaml}\n{text}");
    }
}

#[tokio::test]
async fn reload_adds_and_removes_listeners_without_a_restart() {
    let ca = Ca::new("Test CA");
    let cert = ca.server("gw", &["gw.test"]);
    let config = |listeners: &str| {
        format!(
            "listeners:\n{listeners}admin: {{ bind: 127.0.0.1:0 }}\nroutes:\n  - {{ route: \"GET /ok\", respond: {{ body: ok }} }}\n"
        )
    };
    let plain = "  - bind: 127.0.0.1:0\n";
    // Distinct loopback addresses: a listener is recognised across reloads by its address.
    let tls = "  - bind: 127.0.0.2:0\n    tls: { cert: gw.pem, key: gw.key }\n";
    let gw = gateway::start_raw(
        &config(plain),
        &[("gw.pem", &cert.cert_pem), ("gw.key", &cert.key_pem)],
    )
    .await;
    let running = gw.running.as_ref().unwrap();
    let first = running.listener_addrs()[0];
    // Keep a connection open on the first listener.
    let tcp = TcpStream::connect(first).await.unwrap();
    let (mut kept, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);

    // Add a TLS listener (different YAML for the same first listener: it keeps its socket).
    std::fs::write(&gw.config, config(&format!("{plain}{tls}"))).unwrap();
    assert_eq!(gw.admin_post("/reload").await.status, StatusCode::OK);
    let addrs = running.listener_addrs();
    assert_eq!(addrs.len(), 2);
    assert_eq!(addrs[0], first, "the kept listener kept its socket");
    let ans = client("gw.test", &ca)
        .get(addrs[1], "/ok", &[])
        .await
        .unwrap();
    assert_eq!(ans.status, StatusCode::OK);

    // A listener on an address in use refuses the reload; both listeners keep serving.
    std::fs::write(
        &gw.config,
        config(&format!("{plain}{tls}  - bind: {}\n", gw.admin)),
    )
    .unwrap();
    let r = gw.admin_post("/reload").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.text().contains("cannot listen on"), "{}", r.text());
    assert!(r.text().contains("gateway.yaml:5:"), "{}", r.text());
    assert_eq!(running.listener_addrs(), addrs);

    // Remove the first listener: it stops accepting; its open connection still finishes.
    std::fs::write(&gw.config, config(tls)).unwrap();
    assert_eq!(gw.admin_post("/reload").await.status, StatusCode::OK);
    assert_eq!(running.listener_addrs(), vec![addrs[1]]);
    let refused = async {
        for _ in 0..100 {
            if TcpStream::connect(first).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    };
    assert!(refused.await, "the removed listener still accepts");
    let req = Request::get("/ok")
        .header("host", "gw")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = kept.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let ans = client("gw.test", &ca)
        .get(addrs[1], "/ok", &[])
        .await
        .unwrap();
    assert_eq!(ans.status, StatusCode::OK);
    gw.stop().await;
}
