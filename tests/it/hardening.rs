//! Issue 14's holes, in-process: the canonical path decides the route and is what the upstream
//! receives; upgrades pass only for allowed protocols; `X-Forwarded-For` is read as bytes;
//! identity headers cannot be spoofed with underscores; credentials cannot be sent twice; the
//! headers frameworks honour to rewrite a request never reach the upstream. The same holes are
//! attacked black-box, against real upstreams, in tests/interop/test_attack_*.py.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::gateway::{self, TestGateway};
use crate::support::upstream::{self, Upstream};

const WAIT: Duration = Duration::from_secs(3);

/// The issue's layout: a protected `DELETE /products/{id}` (HS256 token with the delete scope
/// and an IP policy nobody on loopback passes), `POST /products` with an API key, a protected
/// `/admin/{proxy+}`, and an open `$default` to the same upstream.
async fn products_gateway(up: &Upstream, extra: &str) -> TestGateway {
    gateway::start(&format!(
        r#"authorizers:
  partner: {{ type: jwt, issuer: partner-idp, algorithms: [HS256], secret: "0123456789abcdef0123456789abcdef" }}
policies:
  office: {{ allow: [192.0.2.0/24] }}
api_keys:
  keys: [{{ id: k1, key: "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08" }}]
upstreams:
  app: {{ targets: ["{url}"] }}
{extra}routes:
  - {{ route: "DELETE /products/{{id}}", upstream: app, authorizer: partner, scopes: [delete], policy: office }}
  - {{ route: "POST /products", upstream: app, api_key_required: true, authorizer: none }}
  - {{ route: "ANY /admin/{{proxy+}}", upstream: app, authorizer: partner, scopes: [admin] }}
  - {{ route: "$default", upstream: app, authorizer: none }}
"#,
        url = up.url()
    ))
    .await
}

/// The status line's code of a raw HTTP/1.1 answer.
fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

async fn raw_status(gw: &TestGateway, method: &str, target: &str, headers: &str) -> u16 {
    let req =
        format!("{method} {target} HTTP/1.1\r\nhost: gw\r\n{headers}connection: close\r\n\r\n");
    status_of(&gw.raw(req.as_bytes(), WAIT).await)
}

#[tokio::test]
async fn other_spellings_of_a_protected_path_take_the_protected_route() {
    let up = upstream::start("app").await;
    let gw = products_gateway(&up, "").await;
    // Spellings that decode to /products/1 or /admin/users are routed as those paths: the
    // protected routes refuse them (the DELETE route's policy: 403; the admin route's
    // authorizer, no token: 401), and none reaches the upstream.
    for (method, path, expected) in [
        ("DELETE", "/product%73/1", 403),
        ("DELETE", "/%70roducts/1", 403),
        ("DELETE", "/products/1/", 403),
        ("GET", "/%61dmin/users", 401),
        ("GET", "/ad%6Din/users/", 401),
        ("GET", "/admin%2Dx/../admin/users", 400),
    ] {
        let status = raw_status(&gw, method, path, "").await;
        assert_eq!(status, expected, "{method} {path}");
    }
    // A POST that needs a key still needs it however the path is spelled.
    assert_eq!(raw_status(&gw, "POST", "/product%73", "").await, 403);
    assert!(up.seen().is_empty(), "the upstream saw {:?}", up.seen());
}

#[tokio::test]
async fn ambiguous_paths_are_refused_before_routing() {
    let up = upstream::start("app").await;
    let gw = products_gateway(&up, "").await;
    for path in [
        "/products%2f1",
        "/products%5C1",
        "/products\\1",
        "//products/1",
        "/products/1;x=1",
        "/products/1%3bx",
        "/products/%2e%2e/admin",
        "/public/..;/admin/users",
        "/a%00b",
        "/a%0d%0ab",
        "/a%c0%af",
        "/a%ff",
        "/a%zz",
    ] {
        assert_eq!(raw_status(&gw, "GET", path, "").await, 400, "GET {path}");
    }
    // Absolute-form targets follow the same rules.
    assert_eq!(
        raw_status(&gw, "DELETE", "http://gw/product%73/1", "").await,
        403
    );
    assert_eq!(raw_status(&gw, "GET", "http://gw//admin/x", "").await, 400);
    assert!(up.seen().is_empty(), "the upstream saw {:?}", up.seen());
}

#[tokio::test]
async fn the_upstream_receives_the_canonical_path() {
    let up = upstream::start("app").await;
    let gw = products_gateway(&up, "").await;
    for (sent, received) in [
        (
            "/open%7Efile/%61b%3ac?q=%2f%2e",
            "/open~file/ab%3Ac?q=%2f%2e",
        ),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/plain/path.json", "/plain/path.json"),
    ] {
        assert_eq!(raw_status(&gw, "GET", sent, "").await, 200, "{sent}");
        assert_eq!(up.last().uri.path_and_query().unwrap().as_str(), received);
    }
}

#[tokio::test]
async fn a_route_may_allow_encoded_slashes_empty_segments_and_semicolons() {
    let up = upstream::start("app").await;
    let gw = gateway::start(&format!(
        "upstreams:\n  app: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ route: \"GET /files/{{p+}}\", upstream: app, authorizer: none, allow_in_path: [encoded_slash, empty_segments, semicolon] }}\n  - {{ route: \"GET /strict/{{p+}}\", upstream: app, authorizer: none }}\n",
        up.url()
    ))
    .await;
    for path in ["/files/a%2fb", "/files//x", "/files/a;v=1"] {
        assert_eq!(raw_status(&gw, "GET", path, "").await, 200, "{path}");
    }
    assert_eq!(up.seen()[0].uri.path(), "/files/a%2Fb");
    // Dot segments stay refused on the lenient route; the strict one refuses every spelling.
    assert_eq!(
        raw_status(&gw, "GET", "/files/..%2f..%2fetc", "").await,
        400
    );
    for path in ["/strict/a%2fb", "/strict//x", "/strict/a;v=1"] {
        assert_eq!(raw_status(&gw, "GET", path, "").await, 400, "{path}");
    }
}

#[tokio::test]
async fn route_options_that_would_reopen_a_hole_are_config_errors() {
    for (route_opts, expect) in [
        (
            "allow_in_path: [dot_segments]",
            "cannot be allowed in paths",
        ),
        ("upgrades: [h2c]", "cannot be allowed"),
        ("upgrades: [websocket, HTTP/2.0]", "cannot be allowed"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.yaml");
        std::fs::write(
            &path,
            format!("{}routes:\n  - {{ route: \"GET /x\", authorizer: none, respond: {{ status: 200 }}, {route_opts} }}\n", gateway::HEAD),
        )
        .unwrap();
        let err = tollgate::server::start(&path)
            .await
            .err()
            .unwrap_or_else(|| panic!("{route_opts} was accepted"));
        assert!(err.to_string().contains(expect), "{route_opts}: {err}");
    }
}

#[tokio::test]
async fn a_standard_method_in_another_case_is_refused() {
    let up = upstream::start("app").await;
    let gw = products_gateway(&up, "").await;
    for m in ["get", "Delete", "pOST", "options"] {
        assert_eq!(raw_status(&gw, m, "/products/1", "").await, 400, "{m}");
    }
    // Extension methods are routed as before (here to `$default`).
    assert_eq!(raw_status(&gw, "PROPFIND", "/x", "").await, 200);
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn a_credential_sent_twice_is_refused() {
    let up = upstream::start("app").await;
    let gw = products_gateway(&up, "").await;
    let none_token = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.";
    assert_eq!(
        raw_status(
            &gw,
            "GET",
            "/anything",
            &format!("authorization: Bearer a.b.c\r\nauthorization: Bearer {none_token}\r\n")
        )
        .await,
        400
    );
    assert_eq!(
        raw_status(
            &gw,
            "POST",
            "/products",
            "x-api-key: test\r\nx-api-key: other\r\ncontent-length: 0\r\n"
        )
        .await,
        400
    );
    // Once is fine (`test` is the configured key).
    assert_eq!(
        raw_status(
            &gw,
            "POST",
            "/products",
            "x-api-key: test\r\ncontent-length: 0\r\n"
        )
        .await,
        200
    );
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn identity_and_override_headers_never_reach_the_upstream() {
    let up = upstream::start("app").await;
    let gw = products_gateway(&up, "").await;
    let a = gw
        .get(
            "/open",
            &[
                ("X_Tollgate_Principal", "admin"),
                ("x-tollgate_scopes", "admin"),
                ("x_custom", "1"),
                ("forwarded", "for=10.9.9.9"),
                ("x-real-ip", "10.9.9.9"),
                ("x-original-url", "/admin/users"),
                ("x-rewrite-url", "/admin/users"),
                ("x-http-method-override", "DELETE"),
                ("x-method-override", "DELETE"),
                ("x-kept", "1"),
            ],
        )
        .await;
    assert_eq!(a.status, 200);
    let seen = up.last();
    let names: Vec<&str> = seen.headers.keys().map(|k| k.as_str()).collect();
    for bad in [
        "x_tollgate_principal",
        "x-tollgate_scopes",
        "x_custom",
        "forwarded",
        "x-real-ip",
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-method-override",
    ] {
        assert!(
            !names.contains(&bad),
            "{bad} reached the upstream: {names:?}"
        );
    }
    assert!(names.contains(&"x-kept"));
}

#[tokio::test]
async fn underscores_may_be_allowed_but_identity_headers_still_go() {
    let up = upstream::start("app").await;
    let gw = products_gateway(&up, "headers: { allow_underscores: true }\n").await;
    let a = gw
        .get(
            "/open",
            &[("X_Tollgate_Principal", "admin"), ("x_custom", "1")],
        )
        .await;
    assert_eq!(a.status, 200);
    let seen = up.last();
    assert!(seen.headers.contains_key("x_custom"));
    assert!(!seen.headers.contains_key("x_tollgate_principal"));
}

#[tokio::test]
async fn a_trusted_proxys_forwarded_header_is_rewritten_to_the_client() {
    let up = upstream::start("app").await;
    let gw = products_gateway(&up, "client_ip: { trusted_proxies: [127.0.0.1/32] }\n").await;
    let a = gw
        .get(
            "/open",
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("forwarded", "for=10.1.1.1;proto=https"),
            ],
        )
        .await;
    assert_eq!(a.status, 200);
    let seen = up.last();
    assert_eq!(seen.headers["forwarded"], "for=203.0.113.9;proto=http");
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.9");
}

#[tokio::test]
async fn a_non_text_forwarded_for_entry_does_not_hide_the_client() {
    let up = upstream::start("app").await;
    let gw = gateway::start(&format!(
        "client_ip: {{ trusted_proxies: [127.0.0.1/32] }}\npolicies:\n  no-bad: {{ deny: [203.0.113.9/32] }}\n  proxies-only: {{ allow: [127.0.0.0/8] }}\nupstreams:\n  app: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ route: \"GET /deny\", upstream: app, authorizer: none, policy: no-bad }}\n  - {{ route: \"GET /allow\", upstream: app, authorizer: none, policy: proxies-only }}\n",
        up.url()
    ))
    .await;
    // What nginx's `$proxy_add_x_forwarded_for` makes of a client's `\xff`: the client's bytes,
    // then the address the proxy saw.
    let mut xff = b"x-forwarded-for: \xff, 203.0.113.9\r\n".to_vec();
    for path in ["/deny", "/allow"] {
        let mut req =
            format!("GET {path} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n").into_bytes();
        req.append(&mut xff.clone());
        req.extend_from_slice(b"\r\n");
        let answer = gw.raw(&req, WAIT).await;
        assert_eq!(status_of(&answer), 403, "{path}: {answer}");
    }
    // Two header lines, the bad one first: the same.
    let req = b"GET /deny HTTP/1.1\r\nhost: gw\r\nconnection: close\r\nx-forwarded-for: \xfe\xff\r\nx-forwarded-for: 203.0.113.9\r\n\r\n";
    assert_eq!(status_of(&gw.raw(req, WAIT).await), 403);
    xff.clear();
    assert!(up.seen().is_empty(), "the upstream saw {:?}", up.seen());
}

/// An upstream that answers every request with `101` and `Upgrade: <granted>`, and reports the
/// request head it read.
async fn always_101(granted: &'static str) -> (String, tokio::sync::mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&head).into_owned()).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: {granted}\r\n\r\n").as_bytes())
                    .await;
                // Then serve anything that comes, raw, so a splice would be visible.
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nSECRET")
                    .await;
            });
        }
    });
    (url, rx)
}

async fn upgrade_gateway(url: &str, route_opts: &str) -> TestGateway {
    gateway::start(&format!(
        "upstreams:\n  app: {{ targets: [\"{url}\"] }}\nroutes:\n  - {{ route: \"ANY /{{p+}}\", upstream: app, authorizer: none{route_opts} }}\n"
    ))
    .await
}

#[tokio::test]
async fn h2c_and_unlisted_upgrades_are_never_passed_on() {
    let (url, mut heads) = always_101("h2c").await;
    let gw = upgrade_gateway(&url, "").await;
    for (upgrade, extra) in [
        ("h2c", "http2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"),
        ("anything", ""),
        ("websocket, h2c", ""),
    ] {
        let req = format!(
            "GET / HTTP/1.1\r\nhost: gw\r\nupgrade: {upgrade}\r\nconnection: Upgrade, HTTP2-Settings\r\n{extra}\r\nGET /admin/secret HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n"
        );
        let answer = gw.raw(req.as_bytes(), WAIT).await;
        assert_eq!(status_of(&answer), 502, "{upgrade}: {answer}");
        assert!(!answer.contains("SECRET"), "{upgrade}: spliced: {answer}");
        let head = heads.recv().await.unwrap().to_ascii_lowercase();
        assert!(!head.contains("upgrade:"), "{upgrade}: forwarded {head}");
        assert!(
            !head.contains("http2-settings"),
            "{upgrade}: forwarded {head}"
        );
    }
}

#[tokio::test]
async fn a_101_for_another_protocol_than_asked_is_a_502() {
    let (url, mut heads) = always_101("h2c").await;
    let gw = upgrade_gateway(&url, "").await;
    let req = "GET /ws HTTP/1.1\r\nhost: gw\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\nGET /admin/secret HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n";
    let answer = gw.raw(req.as_bytes(), WAIT).await;
    assert_eq!(status_of(&answer), 502, "{answer}");
    assert!(!answer.contains("SECRET"), "spliced: {answer}");
    let head = heads.recv().await.unwrap().to_ascii_lowercase();
    assert!(head.contains("upgrade: websocket"), "{head}");
}

#[tokio::test]
async fn a_route_without_upgrades_forwards_a_websocket_handshake_as_a_plain_request() {
    let (url, mut heads) = always_101("websocket").await;
    let gw = upgrade_gateway(&url, ", upgrades: []").await;
    let req = "GET /ws HTTP/1.1\r\nhost: gw\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n";
    let answer = gw.raw(req.as_bytes(), WAIT).await;
    assert_eq!(status_of(&answer), 502, "{answer}");
    let head = heads.recv().await.unwrap().to_ascii_lowercase();
    assert!(!head.contains("upgrade:"), "{head}");
}

#[tokio::test]
async fn an_idle_spliced_connection_is_closed_and_uncounted() {
    let (url, _heads) = always_101("websocket").await;
    let gw = upgrade_gateway(&url, "").await;
    // A gateway with a short idle timeout for spliced connections.
    let gw2 = gateway::start(&format!(
        "limits: {{ upgrade_idle_timeout: 300ms }}\nupstreams:\n  app: {{ targets: [\"{url}\"] }}\nroutes:\n  - {{ route: \"ANY /{{p+}}\", upstream: app, authorizer: none }}\n"
    ))
    .await;
    drop(gw);
    let mut s = tokio::net::TcpStream::connect(gw2.addr).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nhost: gw\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while gw2.gauge("tollgate_upgraded_connections_active").await != 1 {
        assert!(tokio::time::Instant::now() < deadline, "never counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing is sent either way: the gateway closes the splice after 300 ms.
    let closed = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "still open: {closed:?}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while gw2.gauge("tollgate_upgraded_connections_active").await != 0 {
        assert!(tokio::time::Instant::now() < deadline, "still counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn http2_paths_follow_the_same_rules() {
    use http_body_util::{BodyExt, Full};
    let up = upstream::start("app").await;
    let gw = products_gateway(&up, "").await;
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<bytes::Bytes>>();
    for (method, path, expected) in [
        ("DELETE", "/product%73/1", 403),
        ("GET", "/%61dmin/users", 401),
        ("GET", "/products%2f1", 400),
        ("GET", "/a%00", 400),
        ("get", "/products", 400),
        ("GET", "/open%7e", 200),
    ] {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", gw.addr))
            .body(Full::default())
            .unwrap();
        let resp = h2.request(req).await.expect("h2c answered");
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let status = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        assert_eq!(status, expected, "{method} {path} over h2c");
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].uri.path(), "/open~");
}

#[tokio::test]
async fn trailers_towards_an_http2_upstream_lose_identity_hop_by_hop_and_underscore_fields() {
    use http_body_util::{BodyExt, StreamBody};
    let up = upstream::start_h2c("app").await;
    let gw = gateway::start(&format!(
        "upstreams:\n  app: {{ targets: [\"{}\"], protocol: h2c }}\nroutes:\n  - {{ route: \"POST /upload\", upstream: app, authorizer: none }}\n",
        up.url()
    ))
    .await;
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<StreamBody<
            futures_util::stream::Iter<
                std::vec::IntoIter<
                    Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>,
                >,
            >,
        >>();
    let mut trailers = http::HeaderMap::new();
    for (name, value) in [
        ("x-tollgate-principal", "admin"),
        ("x_tollgate_principal", "admin"),
        ("x_user", "root"),
        ("x-forwarded-for", "10.0.0.1"),
        ("x-http-method-override", "DELETE"),
        ("content-length", "0"),
        ("te", "trailers"),
        ("x-checksum", "abc123"),
    ] {
        trailers.insert(
            http::HeaderName::from_static(name),
            http::HeaderValue::from_static(value),
        );
    }
    let frames = vec![
        Ok(http_body::Frame::data(bytes::Bytes::from_static(
            b"payload",
        ))),
        Ok(http_body::Frame::trailers(trailers)),
    ];
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}/upload", gw.addr))
        .header("te", "trailers")
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap();
    let resp = h2.request(req).await.expect("h2c answered");
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await;
    let seen = up.last();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(seen.body, "payload");
    let got = seen.trailers.expect("the upstream received the trailers");
    let names: Vec<&str> = got.keys().map(|n| n.as_str()).collect();
    assert_eq!(
        names,
        ["x-checksum"],
        "trailers that reached the upstream: {got:?}"
    );
    gw.stop().await;
}

/// A gateway whose `$default` route, open, forwards everything to `up`.
async fn open_default(up: &Upstream) -> TestGateway {
    gateway::start(&format!(
        "upstreams:\n  app: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ route: \"$default\", upstream: app, authorizer: none }}\n",
        up.url()
    ))
    .await
}

/// A client whose first bytes are a prefix of the HTTP/2 preface (`P`, then the rest of an
/// HTTP/1.1 request) is served by the one HTTP/1 configuration, so `limits.max_header_bytes`
/// still bounds its head: before, such a connection went to hyper-util's auto builder, which
/// could not set `max_header_size`, and a 100 KiB head read in large chunks reached the upstream.
#[tokio::test]
async fn a_head_that_starts_like_the_http2_preface_is_still_bounded() {
    let up = upstream::start("app").await;
    let gw = open_default(&up).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(b"P").await.unwrap();
    // A slow client: the gateway's first read sees only the `P`.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rest = format!(
        "OST /big HTTP/1.1\r\nhost: gw\r\nx-big: {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        "b".repeat(100 * 1024)
    );
    s.write_all(rest.as_bytes()).await.unwrap();
    let out = gateway::read_for(&mut s, WAIT).await;
    assert!(
        out.is_empty() || out.starts_with("HTTP/1.1 431"),
        "oversized head after a preface-like start: {out:?}"
    );
    assert!(
        up.seen().is_empty(),
        "the upstream received the oversized head"
    );

    // A client that starts like the preface and then differs is HTTP/1.1.
    let out = gw
        .raw(
            b"PRI /x HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
            WAIT,
        )
        .await;
    assert!(
        out.starts_with("HTTP/1.1 "),
        "not answered as HTTP/1.1: {out:?}"
    );
}

/// The HTTP/2 preface split over two segments (a strict prefix first) is still HTTP/2 by prior
/// knowledge: the gateway answers the client's SETTINGS with its own.
#[tokio::test]
async fn a_preface_sent_in_two_parts_is_http2() {
    let up = upstream::start("app").await;
    let gw = open_default(&up).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    // A slow client: the gateway sees a strict prefix of the preface first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(b"\r\nSM\r\n\r\n").await.unwrap();
    // An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let mut frame = [0u8; 9];
    tokio::time::timeout(WAIT, s.read_exact(&mut frame))
        .await
        .expect("an answer in time")
        .expect("a frame header");
    assert_eq!(frame[3], 4, "the first frame is not SETTINGS: {frame:?}");
}
