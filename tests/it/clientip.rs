//! The client's IP over real sockets: trusted proxies and `X-Forwarded-For`, the PROXY protocol,
//! and resource policies (allow/deny CIDR lists) refusing with 403.

use std::time::{Duration, Instant};

use ppp::v2::{Builder, Command, Protocol, Type, Version};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::gateway::{TestGateway, read_for, start, start_raw};
use crate::support::upstream::{self, Upstream};

const FORBIDDEN: &str = r#"{"message":"Forbidden"}"#;

/// Routes: `/open/…` opts out of every policy, `/local/…` allows only loopback, anything else
/// takes `defaults.policy` (when `extra` sets one).
fn routes(up: &Upstream, extra: &str) -> String {
    format!(
        "upstreams:\n  app: {{ targets: [{}], timeout: 5s }}\n{extra}routes:\n  \
         - {{ route: \"ANY /open/{{proxy+}}\", upstream: app, policy: none }}\n  \
         - {{ route: \"ANY /{{proxy+}}\", upstream: app }}\n",
        up.url()
    )
}

/// The listener line of a PROXY-protocol gateway (`start_raw` takes the whole file).
const PROXY_HEAD: &str =
    "listeners:\n  - { bind: 127.0.0.1:0, proxy_protocol: true }\nadmin: { bind: 127.0.0.1:0 }\n";

/// The `x-forwarded-for` of the last request the upstream saw, which must be for `path`.
fn forwarded_for(up: &Upstream, path: &str) -> String {
    let seen = up.last();
    assert_eq!(seen.uri.path(), path, "the upstream saw the request");
    seen.headers
        .get("x-forwarded-for")
        .expect("x-forwarded-for reaches the upstream")
        .to_str()
        .unwrap()
        .to_string()
}

/// Asserts that `xff` ends with `ip` as its own entry.
fn ends_with_entry(xff: &str, ip: &str) {
    let last = xff.rsplit(',').next().unwrap().trim();
    assert_eq!(last, ip, "x-forwarded-for: {xff}");
}

/// GET `path` with an `x-forwarded-for`, expecting `status`; a 403 must be the policy's body and
/// must not reach the upstream.
async fn expect(gw: &TestGateway, up: &Upstream, path: &str, xff: &[&str], status: u16) {
    let before = up.seen().len();
    let headers: Vec<(&str, &str)> = xff.iter().map(|v| ("x-forwarded-for", *v)).collect();
    let a = gw.get(path, &headers).await;
    assert_eq!(
        a.status,
        status,
        "{path} with x-forwarded-for {xff:?}: {}",
        a.text()
    );
    if status == 403 {
        assert_eq!(a.text(), FORBIDDEN);
        assert_eq!(
            up.seen().len(),
            before,
            "a refused request never reaches the upstream"
        );
    }
}

/// Sends `header` then a GET for `path` on one new connection and returns everything the
/// gateway answers until it closes.
async fn over_proxy(gw: &TestGateway, header: &[u8], path: &str, extra: &str) -> String {
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(
        format!("GET {path} HTTP/1.1\r\nhost: gw\r\n{extra}connection: close\r\n\r\n").as_bytes(),
    );
    s.write_all(&bytes).await.unwrap();
    read_for(&mut s, Duration::from_secs(10)).await
}

fn v2_header(command: Command, src: &str, dst: &str) -> Vec<u8> {
    Builder::with_addresses(
        Version::Two | command,
        Protocol::Stream,
        (
            src.parse::<std::net::SocketAddr>().unwrap(),
            dst.parse::<std::net::SocketAddr>().unwrap(),
        ),
    )
    .write_tlv(Type::Authority, b"api.example.com")
    .unwrap()
    .build()
    .unwrap()
}

/// Writes `bytes`, half-closes, and returns what the gateway answers and how long it took.
async fn send_and_close(gw: &TestGateway, bytes: &[u8]) -> (String, Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let _ = s.shutdown().await;
    let out = read_for(&mut s, Duration::from_secs(10)).await;
    (out, started.elapsed())
}

#[tokio::test]
async fn spoofed_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let up = upstream::start("a").await;
    let gw = start(&routes(
        &up,
        "client_ip: { trusted_proxies: [10.0.0.0/8, \"2001:db8:ffff::/48\"] }\n\
         policies:\n  office: { allow: [198.51.100.0/24] }\n\
         defaults: { policy: office }\n",
    ))
    .await;
    // 127.0.0.1 is not a trusted proxy: it is the client, whatever it claims.
    expect(&gw, &up, "/x", &["198.51.100.7"], 403).await;
    expect(&gw, &up, "/x", &["198.51.100.7, 10.0.0.1"], 403).await;
    expect(&gw, &up, "/x", &[], 403).await;
    // The route that opts out forwards, and the upstream learns the real client.
    expect(&gw, &up, "/open/x", &["198.51.100.7"], 200).await;
    let xff = forwarded_for(&up, "/open/x");
    ends_with_entry(&xff, "127.0.0.1");
    gw.stop().await;
}

#[tokio::test]
async fn trusted_peer_makes_the_rightmost_untrusted_entry_the_client() {
    let up = upstream::start("a").await;
    let gw = start(&routes(
        &up,
        "client_ip: { trusted_proxies: [127.0.0.1/32, 10.0.0.0/8] }\n\
         policies:\n  office: { allow: [198.51.100.0/24] }\n\
         defaults: { policy: office }\n",
    ))
    .await;
    expect(&gw, &up, "/a", &["203.0.113.9, 198.51.100.7"], 200).await;
    ends_with_entry(&forwarded_for(&up, "/a"), "198.51.100.7");
    expect(&gw, &up, "/b", &["198.51.100.7, 203.0.113.9"], 403).await;

    // Several trusted hops, on one line and over several header lines.
    expect(
        &gw,
        &up,
        "/c",
        &["203.0.113.9, 198.51.100.7, 10.0.0.2, 10.9.9.9"],
        200,
    )
    .await;
    ends_with_entry(&forwarded_for(&up, "/c"), "198.51.100.7");
    expect(
        &gw,
        &up,
        "/d",
        &["198.51.100.7", "10.0.0.2", "10.0.0.3"],
        200,
    )
    .await;
    expect(
        &gw,
        &up,
        "/e",
        &["198.51.100.7, 203.0.113.9", "10.0.0.2"],
        403,
    )
    .await;

    // Ports and IPv4-mapped addresses.
    expect(&gw, &up, "/f", &["198.51.100.7:5678"], 200).await;
    expect(&gw, &up, "/g", &["::ffff:198.51.100.7"], 200).await;
    ends_with_entry(&forwarded_for(&up, "/g"), "198.51.100.7");

    // Nothing left of garbage is believed: the client is the last trusted hop.
    expect(&gw, &up, "/h", &["198.51.100.7, not-an-ip"], 403).await;
    expect(&gw, &up, "/i", &["198.51.100.7, garbage, 10.0.0.2"], 403).await;
    // No header, or only trusted hops: the peer (127.0.0.1) is the client.
    expect(&gw, &up, "/j", &[], 403).await;
    expect(&gw, &up, "/k", &["10.0.0.2"], 403).await;
    expect(&gw, &up, "/open/l", &[], 200).await;
    ends_with_entry(&forwarded_for(&up, "/open/l"), "127.0.0.1");
    gw.stop().await;
}

#[tokio::test]
async fn explicit_deny_wins_over_allow() {
    let up = upstream::start("a").await;
    let yaml = format!(
        "upstreams:\n  app: {{ targets: [{}] }}\n\
         client_ip: {{ trusted_proxies: [127.0.0.1/32] }}\n\
         policies:\n  \
           office: {{ allow: [198.51.100.0/24, \"2001:db8::/32\"], deny: [198.51.100.66/32, \"2001:db8:bad::/48\"] }}\n  \
           blocklist: {{ deny: [203.0.113.0/24] }}\n  \
           narrow: {{ allow: [10.1.2.0/24], deny: [10.0.0.0/8] }}\n\
         defaults: {{ policy: office }}\n\
         routes:\n  \
           - {{ route: \"ANY /block/{{proxy+}}\", upstream: app, policy: blocklist }}\n  \
           - {{ route: \"ANY /narrow/{{proxy+}}\", upstream: app, policy: narrow }}\n  \
           - {{ route: \"ANY /open/{{proxy+}}\", upstream: app, policy: none }}\n  \
           - {{ route: \"ANY /{{proxy+}}\", upstream: app }}\n",
        up.url()
    );
    let gw = start(&yaml).await;
    expect(&gw, &up, "/x", &["198.51.100.67"], 200).await;
    expect(&gw, &up, "/x", &["198.51.100.66"], 403).await;
    expect(&gw, &up, "/x", &["::ffff:198.51.100.66"], 403).await;
    expect(&gw, &up, "/x", &["192.0.2.1"], 403).await;
    expect(&gw, &up, "/x", &["2001:db8:bad::1"], 403).await;
    // A deny list alone refuses only what it names.
    expect(&gw, &up, "/block/x", &["203.0.113.9"], 403).await;
    expect(&gw, &up, "/block/x", &["192.0.2.1"], 200).await;
    expect(&gw, &up, "/block/x", &["2001:db8::1"], 200).await;
    // A wide deny wins over a narrow allow.
    expect(&gw, &up, "/narrow/x", &["10.1.2.3"], 403).await;
    // `policy: none` opts out of the default.
    expect(&gw, &up, "/open/x", &["198.51.100.66"], 200).await;
    gw.stop().await;
}

#[tokio::test]
async fn ipv6_client_via_forwarded_for() {
    let up = upstream::start("a").await;
    let gw = start(&routes(
        &up,
        "client_ip: { trusted_proxies: [127.0.0.1/32, \"2001:db8:ffff::/48\"] }\n\
         policies:\n  office: { allow: [\"2001:db8::/32\"], deny: [\"2001:db8:bad::/48\"] }\n\
         defaults: { policy: office }\n",
    ))
    .await;
    expect(&gw, &up, "/a", &["2001:db8::7"], 200).await;
    ends_with_entry(&forwarded_for(&up, "/a"), "2001:db8::7");
    expect(&gw, &up, "/b", &["[2001:db8::7]:443"], 200).await;
    expect(&gw, &up, "/c", &["2001:db8::7, 2001:db8:ffff::1"], 200).await;
    ends_with_entry(&forwarded_for(&up, "/c"), "2001:db8::7");
    expect(&gw, &up, "/d", &["2001:db8:bad::1"], 403).await;
    expect(&gw, &up, "/e", &["2001:db9::1"], 403).await;
    expect(&gw, &up, "/f", &["198.51.100.7"], 403).await;
    gw.stop().await;
}

#[tokio::test]
async fn proxy_v1_source_address_is_the_client() {
    let up = upstream::start("a").await;
    let gw = start_raw(
        &format!(
            "{PROXY_HEAD}{}",
            routes(
                &up,
                "policies:\n  office: { allow: [198.51.100.0/24] }\ndefaults: { policy: office }\n",
            )
        ),
        &[],
    )
    .await;
    let out = over_proxy(
        &gw,
        b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 443\r\n",
        "/a",
        "",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    ends_with_entry(&forwarded_for(&up, "/a"), "198.51.100.7");

    let out = over_proxy(
        &gw,
        b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 443\r\n",
        "/b",
        "",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert!(out.ends_with(FORBIDDEN), "{out}");

    // The header's source is not a trusted proxy, so its X-Forwarded-For is not believed.
    let out = over_proxy(
        &gw,
        b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 443\r\n",
        "/c",
        "x-forwarded-for: 198.51.100.7\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");

    let out = over_proxy(
        &gw,
        b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n",
        "/open/d",
        "",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    ends_with_entry(&forwarded_for(&up, "/open/d"), "2001:db8::7");

    // UNKNOWN (a load balancer's health check): the TCP peer is the client.
    let out = over_proxy(&gw, b"PROXY UNKNOWN\r\n", "/e", "").await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    let out = over_proxy(&gw, b"PROXY UNKNOWN\r\n", "/open/f", "").await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    ends_with_entry(&forwarded_for(&up, "/open/f"), "127.0.0.1");
    gw.stop().await;
}

#[tokio::test]
async fn proxy_v2_ipv4_and_ipv6_source_address_is_the_client() {
    let up = upstream::start("a").await;
    let gw = start_raw(
        &format!(
            "{PROXY_HEAD}{}",
            routes(
                &up,
                "client_ip: { trusted_proxies: [10.0.0.0/8] }\n\
                 policies:\n  office: { allow: [198.51.100.0/24, \"2001:db8::/32\"] }\n\
                 defaults: { policy: office }\n",
            )
        ),
        &[],
    )
    .await;
    let h = v2_header(Command::Proxy, "198.51.100.7:40000", "10.0.0.1:443");
    let out = over_proxy(&gw, &h, "/a", "").await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    ends_with_entry(&forwarded_for(&up, "/a"), "198.51.100.7");

    let h = v2_header(Command::Proxy, "[2001:db8::7]:40000", "[2001:db8::1]:443");
    let out = over_proxy(&gw, &h, "/b", "").await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    ends_with_entry(&forwarded_for(&up, "/b"), "2001:db8::7");

    let h = v2_header(Command::Proxy, "[2001:db9::1]:40000", "[2001:db8::1]:443");
    let out = over_proxy(&gw, &h, "/c", "").await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert!(out.ends_with(FORBIDDEN), "{out}");

    // A header naming a trusted proxy: its X-Forwarded-For is believed.
    let h = v2_header(Command::Proxy, "10.0.0.5:40000", "10.0.0.1:443");
    let out = over_proxy(
        &gw,
        &h,
        "/d",
        "x-forwarded-for: 203.0.113.9, 198.51.100.7\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    ends_with_entry(&forwarded_for(&up, "/d"), "198.51.100.7");

    // LOCAL (health check): the TCP peer, 127.0.0.1, is the client.
    let h = v2_header(Command::Local, "198.51.100.7:40000", "10.0.0.1:443");
    let out = over_proxy(&gw, &h, "/e", "").await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    let out = over_proxy(&gw, &h, "/open/f", "").await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    ends_with_entry(&forwarded_for(&up, "/open/f"), "127.0.0.1");
    gw.stop().await;
}

#[tokio::test]
async fn proxy_listener_closes_connections_without_a_valid_header() {
    let up = upstream::start("a").await;
    let gw = start_raw(&format!("{PROXY_HEAD}{}", routes(&up, "")), &[]).await;
    let get = b"GET /open/x HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n";

    // Missing: plain HTTP is refused at its first byte, without an HTTP answer.
    let (out, took) = send_and_close(&gw, get).await;
    assert_eq!(out, "", "no header: closed without an answer");
    assert!(took < Duration::from_secs(4), "closed at once: {took:?}");

    // Truncated v1, then the client stops sending.
    let (out, took) = send_and_close(&gw, b"PROXY TCP4 198.51.100.7 127.0.0.1 40").await;
    assert_eq!(out, "", "truncated v1");
    assert!(took < Duration::from_secs(4), "{took:?}");

    // Malformed v1 followed by HTTP.
    let mut bytes = b"PROXY TCP4 198.51.100.7\r\n".to_vec();
    bytes.extend_from_slice(get);
    let (out, _) = send_and_close(&gw, &bytes).await;
    assert_eq!(out, "", "malformed v1");

    // Truncated v2: the fixed part and half of the addresses.
    let h = v2_header(Command::Proxy, "198.51.100.7:40000", "10.0.0.1:443");
    let (out, took) = send_and_close(&gw, &h[..22]).await;
    assert_eq!(out, "", "truncated v2");
    assert!(took < Duration::from_secs(4), "{took:?}");

    // A v2 signature that is off by one byte.
    let mut bad = h.clone();
    bad[11] = b'X';
    bad.extend_from_slice(get);
    let (out, _) = send_and_close(&gw, &bad).await;
    assert_eq!(out, "", "wrong v2 signature");

    assert!(up.seen().is_empty(), "nothing reached the upstream");
    // The listener still serves valid connections.
    let out = over_proxy(&gw, &h, "/open/ok", "").await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    gw.stop().await;
}

#[tokio::test]
async fn ten_thousand_cidr_deny_list_answers_correctly() {
    let up = upstream::start("a").await;
    // 10.0.0.0/24 … 10.39.15.0/24, and a few IPv6 networks.
    let mut deny: Vec<String> = (0..10_000u32)
        .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
        .collect();
    deny.extend((0..16u32).map(|i| format!("\"2001:db8:{i:x}::/48\"")));
    let gw = start(&routes(
        &up,
        &format!(
            "client_ip: {{ trusted_proxies: [127.0.0.1/32] }}\n\
             policies:\n  big: {{ deny: [{}] }}\n\
             defaults: {{ policy: big }}\n",
            deny.join(", ")
        ),
    ))
    .await;
    expect(&gw, &up, "/a", &["10.0.0.1"], 403).await;
    expect(&gw, &up, "/b", &["10.39.15.77"], 403).await;
    expect(&gw, &up, "/c", &["10.20.30.40"], 403).await;
    expect(&gw, &up, "/d", &["10.39.16.1"], 200).await;
    expect(&gw, &up, "/e", &["198.51.100.7"], 200).await;
    expect(&gw, &up, "/f", &["2001:db8:f::1"], 403).await;
    expect(&gw, &up, "/g", &["2001:db8:10::1"], 200).await;
    // The peer itself (no header) is not denied.
    expect(&gw, &up, "/h", &[], 200).await;
    gw.stop().await;
}
