//! Forwarding over real sockets: what the upstream receives, what the client gets back, and
//! every way an upstream or a client can misbehave.

use std::time::Duration;

use crate::support::gateway::{self, TestGateway};
use crate::support::upstream;

async fn open_gateway(targets: &str, extra: &str) -> TestGateway {
    gateway::start(&format!(
        "upstreams:\n  app: {{ targets: [{targets}], timeout: 1s, connect_timeout: 500ms }}\n{extra}routes:\n  - {{ route: \"ANY /{{proxy+}}\", upstream: app, authorizer: none }}\n"
    ))
    .await
}

#[tokio::test]
async fn upstream_receives_clean_headers_and_identity_of_the_connection() {
    let up = upstream::start("a").await;
    let gw = open_gateway(&up.url(), "").await;
    let a = gw
        .get(
            "/products?color=red",
            &[
                ("x-tollgate-principal", "forged"),
                ("x-tollgate-scopes", "admin"),
                ("connection", "x-private-hop"),
                ("x-private-hop", "secret"),
                ("proxy-authorization", "Basic Zm9vOmJhcg=="),
                ("x-forwarded-for", "198.51.100.7"),
                ("x-request-id", "client-id-42"),
            ],
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.text(), r#"{"upstream":"a"}"#);
    assert_eq!(a.header("x-request-id"), Some("client-id-42"));
    assert_eq!(a.header("x-upstream"), Some("a"));
    assert!(
        a.header("x-hop").is_none(),
        "headers the upstream's Connection names are dropped"
    );
    let seen = up.last();
    assert_eq!(
        seen.uri.path_and_query().unwrap().as_str(),
        "/products?color=red"
    );
    assert!(seen.headers.get("x-tollgate-principal").is_none());
    assert!(seen.headers.get("x-tollgate-scopes").is_none());
    assert!(seen.headers.get("x-private-hop").is_none());
    assert!(seen.headers.get("proxy-authorization").is_none());
    assert_eq!(seen.headers["x-forwarded-for"], "198.51.100.7, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(
        seen.headers["x-forwarded-host"],
        gw.addr.to_string().as_str()
    );
    assert_eq!(seen.headers["x-request-id"], "client-id-42");
    assert_eq!(seen.headers["host"], up.addr.to_string().as_str());
    gw.stop().await;
}

#[tokio::test]
async fn request_ids_are_generated_when_absent_or_insane() {
    let up = upstream::start("a").await;
    let gw = open_gateway(&up.url(), "").await;
    let a = gw
        .get("/x", &[("x-request-id", "has spaces and \"quotes\"")])
        .await;
    let id = a.header("x-request-id").unwrap().to_string();
    assert_eq!(id.len(), 36, "a UUID replaces an unsafe id: {id}");
    assert_eq!(up.last().headers["x-request-id"], id.as_str());
    let b = gw.get("/x", &[]).await;
    assert_ne!(b.header("x-request-id").unwrap(), id);
    gw.stop().await;
}

#[tokio::test]
async fn target_path_prefix_is_prepended() {
    let up = upstream::start("a").await;
    let gw = open_gateway(&format!("{}/base/", up.url()), "").await;
    assert_eq!(gw.get("/v1/items?q=1", &[]).await.status, 200);
    assert_eq!(
        up.last().uri.path_and_query().unwrap().as_str(),
        "/base/v1/items?q=1"
    );
    gw.stop().await;
}

#[tokio::test]
async fn bodies_are_forwarded_both_ways() {
    let up = upstream::start("a").await;
    let gw = open_gateway(&up.url(), "").await;
    let body = "x".repeat(200_000);
    let a = gw
        .send("POST", "/echo", &[("content-type", "text/plain")], &body)
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body.len(), 200_000);
    assert_eq!(up.last().body.len(), 200_000);
    gw.stop().await;
}

/// An address nothing listens on.
async fn dead_address() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

#[tokio::test]
async fn round_robin_skips_a_target_that_refused() {
    let a = upstream::start("a").await;
    let b = upstream::start("b").await;
    let dead = dead_address().await;
    let gw = open_gateway(&format!("{}, {dead}, {}", a.url(), b.url()), "").await;
    let mut bad = 0;
    for _ in 0..3 {
        if gw.get("/x", &[]).await.status == 502 {
            bad += 1;
        }
    }
    assert_eq!(
        bad, 1,
        "the dead target costs exactly one 502 before it is set aside"
    );
    for _ in 0..10 {
        assert_eq!(gw.get("/x", &[]).await.status, 200);
    }
    let (na, nb) = (a.seen().len(), b.seen().len());
    assert_eq!(na + nb, 12);
    assert!(
        na >= 5 && nb >= 5,
        "both live targets share the load: a={na} b={nb}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn refused_connection_is_502_and_hang_is_504() {
    let dead = dead_address().await;
    let gw = open_gateway(&dead, "").await;
    let a = gw.get("/x", &[]).await;
    assert_eq!(a.status, 502);
    assert_eq!(a.text(), r#"{"message":"Bad Gateway"}"#);
    assert!(a.header("x-request-id").is_some());
    gw.stop().await;

    let up = upstream::start("a").await;
    let gw = open_gateway(&up.url(), "").await;
    let started = std::time::Instant::now();
    let a = gw.get("/hang", &[]).await;
    assert_eq!(a.status, 504);
    assert_eq!(a.text(), r#"{"message":"Endpoint request timed out"}"#);
    assert!(started.elapsed() < Duration::from_secs(3));
    // Well-behaved requests are unaffected.
    assert_eq!(gw.get("/fine", &[]).await.status, 200);
    gw.stop().await;
}

#[tokio::test]
async fn upstream_closing_mid_response_cuts_that_response_only() {
    let up = upstream::start("a").await;
    let gw = open_gateway(&up.url(), "").await;
    let req = http::Request::get(gw.url("/close-mid"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = gateway::client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200, "the head was already sent");
    let body = http_body_util::BodyExt::collect(resp.into_body()).await;
    assert!(
        body.is_err(),
        "the client sees a truncated body, not a complete one"
    );
    assert_eq!(gw.get("/fine", &[]).await.status, 200);
    gw.stop().await;
}

#[tokio::test]
async fn body_limit_declared_and_streamed() {
    let up = upstream::start("a").await;
    let gw = open_gateway(&up.url(), "limits: { max_body: 1KiB }\n").await;
    let a = gw.send("POST", "/echo", &[], &"y".repeat(2048)).await;
    assert_eq!(a.status, 413);
    assert_eq!(a.text(), r#"{"message":"Request Entity Too Large"}"#);
    assert!(
        up.seen().is_empty(),
        "a declared oversize body never reaches the upstream"
    );
    assert_eq!(
        gw.send("POST", "/echo", &[], &"y".repeat(1024))
            .await
            .status,
        200
    );

    // Chunked, no declared length: counted while streaming.
    let chunk = "z".repeat(600);
    let raw = format!(
        "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let out = gw.raw(raw.as_bytes(), Duration::from_secs(3)).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    gw.stop().await;
}

#[tokio::test]
async fn client_that_stops_sending_mid_body_gets_408_and_others_are_unaffected() {
    let up = upstream::start("a").await;
    let gw = open_gateway(&up.url(), "limits: { body_idle_timeout: 300ms }\n").await;
    let started = std::time::Instant::now();
    let out = gw
        .raw(
            b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nonly-ten!!",
            Duration::from_secs(5),
        )
        .await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(4));
    // A client that vanishes mid-body.
    {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(
            &mut s,
            b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nabc",
        )
        .await
        .unwrap();
    }
    assert_eq!(gw.get("/fine", &[]).await.status, 200);
    gw.stop().await;
}

#[tokio::test]
async fn hostile_requests_get_clear_answers() {
    let up = upstream::start("a").await;
    let gw = open_gateway(
        &up.url(),
        "limits: { header_timeout: 500ms, max_headers: 50 }\n",
    )
    .await;
    let wait = Duration::from_secs(3);

    let out = gw.raw(b"GET /x HTTP/1.1\r\n\r\n", wait).await;
    assert!(out.starts_with("HTTP/1.1 400"), "no Host: {out}");
    assert!(out.contains(r#"{"message":"Bad Request"}"#));

    let out = gw.raw(b"GET http://example.org/abs?q=1 HTTP/1.1\r\nhost: example.org\r\nconnection: close\r\n\r\n", wait).await;
    assert!(out.starts_with("HTTP/1.1 200"), "absolute-form: {out}");
    assert_eq!(up.last().uri.path_and_query().unwrap().as_str(), "/abs?q=1");
    assert_eq!(up.last().headers["x-forwarded-host"], "example.org");

    let out = gw
        .raw(
            b"GET /a/../admin HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            wait,
        )
        .await;
    assert!(out.starts_with("HTTP/1.1 400"), "dot segments: {out}");
    let out = gw
        .raw(
            b"GET /a/%2e%2E/admin HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            wait,
        )
        .await;
    assert!(
        out.starts_with("HTTP/1.1 400"),
        "encoded dot segments: {out}"
    );

    let mut flood = String::from("GET /x HTTP/1.1\r\nhost: x\r\n");
    for i in 0..200 {
        flood.push_str(&format!("x-flood-{i}: {i}\r\n"));
    }
    flood.push_str("\r\n");
    let out = gw.raw(flood.as_bytes(), wait).await;
    assert!(out.starts_with("HTTP/1.1 431"), "header flood: {out}");

    let big = format!(
        "GET /x HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "b".repeat(100 * 1024)
    );
    let out = gw.raw(big.as_bytes(), wait).await;
    assert!(
        out.is_empty() || out.starts_with("HTTP/1.1 431"),
        "oversized head: {out:?}"
    );

    // Slowloris: an unfinished head is cut off after the header timeout.
    let started = std::time::Instant::now();
    let out = gw
        .raw(
            b"GET /x HTTP/1.1\r\nhost: x\r\nx-slow: ",
            Duration::from_secs(5),
        )
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "slow client cut off"
    );
    assert!(!out.contains("200 OK"));

    let before = up.seen().len();
    assert_eq!(gw.get("/fine", &[]).await.status, 200);
    assert_eq!(up.seen().len(), before + 1);
    gw.stop().await;
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let up = upstream::start("a").await;
    let gw = open_gateway(&up.url(), "").await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let resp = client
        .request(
            http::Request::get(gw.url("/h2"))
                .body(Default::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(up.last().uri.path(), "/h2");
    gw.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    let up = upstream::start("a").await;
    let gw = open_gateway(&up.url(), "limits: { header_timeout: 500ms }\n").await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    // Reads the answer, then waits for the gateway to close the idle connection.
    let out = crate::support::gateway::read_for(&mut s, Duration::from_secs(5)).await;
    let closed_after = started.elapsed();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        closed_after >= Duration::from_millis(400) && closed_after < Duration::from_secs(3),
        "closed after {closed_after:?}"
    );
    gw.stop().await;
}
