//! WebSockets through the gateway with a real client library (tokio-tungstenite): the handshake
//! passes the route's checks like any request (a JWT-protected route here), then frames flow both
//! ways; a refused handshake never reaches the upstream; an upstream that does not switch
//! protocols is answered as usual; an h2 upstream cannot take an upgrade; and at shutdown an open
//! WebSocket keeps working through the grace period and is closed after it.

use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use http::StatusCode;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::support::gateway::{self, TestGateway};
use crate::support::{upstream, ws_upstream};

const SECRET: &str = "a-websocket-test-secret-of-32-bytes!";
/// Longest any single step (handshake, echo, close) may take before the test gives up.
const WAIT: Duration = Duration::from_secs(10);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn token() -> String {
    let now = tollgate::auth::now_unix();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"iss": "partner-idp", "sub": "user-7", "client_id": "app-1",
                            "scope": "chat/use", "iat": now, "exp": now + 600,
                            "token_use": "access"}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// `GET /chat` to the echo upstream, `GET /not-ws` to a plain HTTP upstream, `GET /h2` to an
/// h2c upstream, all behind a JWT authorizer.
async fn ws_gateway(ws: &str, plain: &str, h2c: &str) -> TestGateway {
    gateway::start(&format!(
        "authorizers:\n  partner: {{ type: jwt, issuer: partner-idp, audience: [app-1], algorithms: [HS256], secret: '{SECRET}' }}\n\
         upstreams:\n  ws: {{ targets: [\"{ws}\"] }}\n  plain: {{ targets: [\"{plain}\"] }}\n  h2: {{ targets: [\"{h2c}\"], protocol: h2c }}\n\
         defaults: {{ authorizer: partner, scopes: [chat/use] }}\n\
         routes:\n\
         \x20 - {{ route: \"GET /chat\", upstream: ws }}\n\
         \x20 - {{ route: \"GET /not-ws\", upstream: plain }}\n\
         \x20 - {{ route: \"GET /h2\", upstream: h2 }}\n"
    ))
    .await
}

/// A WebSocket handshake to `path` on the gateway, with a bearer token when given.
async fn connect(
    gw: &TestGateway,
    path: &str,
    token: Option<&str>,
) -> Result<(Ws, tungstenite::handshake::client::Response), tungstenite::Error> {
    let mut req = format!("ws://{}{path}", gw.addr)
        .into_client_request()
        .unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake answered in time")
}

/// The HTTP answer of a refused handshake.
fn refusal(
    r: Result<(Ws, tungstenite::handshake::client::Response), tungstenite::Error>,
) -> http::Response<Option<Vec<u8>>> {
    match r {
        Err(tungstenite::Error::Http(resp)) => *resp,
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, the handshake was accepted"),
    }
}

async fn next(ws: &mut Ws) -> Message {
    tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("a message in time")
        .expect("the socket is open")
        .expect("a message, not an error")
}

/// Sends `msg` and expects it back from the echo upstream.
async fn echo(ws: &mut Ws, msg: Message) {
    ws.send(msg.clone()).await.unwrap();
    assert_eq!(next(ws).await, msg);
}

/// Polls `/readyz` until shutdown has turned readiness off.
async fn until_not_ready(gw: &TestGateway) {
    let since = Instant::now();
    while gw.admin_get("/readyz").await.status != StatusCode::SERVICE_UNAVAILABLE {
        assert!(since.elapsed() < WAIT, "readiness never turned off");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn websocket_frames_flow_both_ways_and_the_upstream_sees_the_identity() {
    let up = ws_upstream::start().await;
    let plain = upstream::start("plain").await;
    let gw = ws_gateway(&up.url(), &plain.url(), &plain.url()).await;

    let (mut ws, resp) = connect(&gw, "/chat", Some(&token()))
        .await
        .expect("handshake accepted");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert!(resp.headers().contains_key("x-request-id"));
    echo(&mut ws, Message::text("hello through the gateway")).await;
    echo(&mut ws, Message::binary(vec![0u8, 1, 2, 0x80, 0xfe, 0xff])).await;
    // Larger than any single read or write buffer on the way.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    echo(&mut ws, Message::binary(big)).await;
    echo(&mut ws, Message::text("still open")).await;

    let handshakes = up.handshakes();
    assert_eq!(handshakes.len(), 1);
    let h = &handshakes[0];
    assert_eq!(h["x-tollgate-principal"], "user-7");
    assert_eq!(h["x-tollgate-client-id"], "app-1");
    assert_eq!(h["x-tollgate-scopes"], "chat/use");
    assert_eq!(h["x-tollgate-authorizer"], "partner");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["upgrade"], "websocket");
    assert_eq!(h["connection"], "upgrade");

    assert_eq!(gw.gauge("tollgate_upgraded_connections_active").await, 1);
    let metrics = gw.admin_get("/metrics").await.text();
    assert!(
        metrics
            .contains(r#"tollgate_requests_total{api="default",method="GET",route="GET /chat",stage="",status="101"} 1"#),
        "{metrics}"
    );

    ws.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, ws.next()).await {}
    drop(ws);
    let since = Instant::now();
    while gw.gauge("tollgate_upgraded_connections_active").await != 0 {
        assert!(
            since.elapsed() < WAIT,
            "the closed WebSocket is still counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_handshake_without_a_token_is_refused_and_never_reaches_the_upstream() {
    let up = ws_upstream::start().await;
    let plain = upstream::start("plain").await;
    let gw = ws_gateway(&up.url(), &plain.url(), &plain.url()).await;

    let resp = refusal(connect(&gw, "/chat", None).await);
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        resp.body().as_deref(),
        Some(br#"{"message":"Unauthorized"}"#.as_slice())
    );
    let resp = refusal(connect(&gw, "/chat", Some("not.a.token")).await);
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(
        up.handshakes().is_empty(),
        "a refused handshake was forwarded"
    );
    assert_eq!(gw.gauge("tollgate_upgraded_connections_active").await, 0);
    gw.stop().await;
}

#[tokio::test]
async fn an_upstream_that_answers_200_to_an_upgrade_is_passed_back_as_a_response() {
    let up = ws_upstream::start().await;
    let plain = upstream::start("plain").await;
    let gw = ws_gateway(&up.url(), &plain.url(), &plain.url()).await;

    let resp = refusal(connect(&gw, "/not-ws", Some(&token())).await);
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.body().as_deref(),
        Some(br#"{"upstream":"plain"}"#.as_slice())
    );
    assert_eq!(resp.headers()["x-upstream"], "plain");
    let seen = plain.last();
    assert_eq!(
        seen.headers["upgrade"], "websocket",
        "the upgrade was asked for"
    );
    assert_eq!(seen.headers["x-tollgate-principal"], "user-7");
    assert_eq!(gw.gauge("tollgate_upgraded_connections_active").await, 0);

    // The same route still answers ordinary requests.
    let a = gw
        .get(
            "/not-ws",
            &[("authorization", &format!("Bearer {}", token()))],
        )
        .await;
    assert_eq!(a.status, 200);
    gw.stop().await;
}

#[tokio::test]
async fn an_upgrade_to_an_http2_upstream_is_refused_with_501() {
    let up = ws_upstream::start().await;
    let h2c = upstream::start_h2c("h2c").await;
    let gw = ws_gateway(&up.url(), &h2c.url(), &h2c.url()).await;

    let resp = refusal(connect(&gw, "/h2", Some(&token())).await);
    assert_eq!(resp.status(), StatusCode::NOT_IMPLEMENTED);
    assert_eq!(
        resp.body().as_deref(),
        Some(br#"{"message":"Not Implemented"}"#.as_slice())
    );
    assert!(h2c.seen().is_empty());
    // The checks still come first.
    let resp = refusal(connect(&gw, "/h2", None).await);
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    gw.stop().await;
}

#[tokio::test]
async fn at_shutdown_an_open_websocket_works_through_the_grace_period_then_is_closed() {
    let up = ws_upstream::start().await;
    let plain = upstream::start("plain").await;
    let mut gw = ws_gateway(&up.url(), &plain.url(), &plain.url()).await;
    let (mut ws, _) = connect(&gw, "/chat", Some(&token()))
        .await
        .expect("handshake accepted");
    echo(&mut ws, Message::text("before shutdown")).await;

    let grace = Duration::from_secs(2);
    let started = Instant::now();
    let shutdown = tokio::spawn(gw.running.take().unwrap().shutdown(Some(grace)));
    until_not_ready(&gw).await;
    echo(&mut ws, Message::text("during the grace period")).await;
    echo(&mut ws, Message::binary(vec![7u8; 1000])).await;

    // Nothing more is sent: the gateway ends the socket once the grace period is over.
    let end = tokio::time::timeout(grace + WAIT, ws.next())
        .await
        .expect("the socket was closed after the grace period");
    assert!(
        !matches!(end, Some(Ok(Message::Text(_) | Message::Binary(_)))),
        "{end:?}"
    );
    assert!(
        started.elapsed() >= grace,
        "closed after {:?}, before the grace period ({grace:?}) was over",
        started.elapsed()
    );
    let clean = tokio::time::timeout(WAIT, shutdown)
        .await
        .expect("shutdown returned")
        .unwrap();
    assert!(
        !clean,
        "a connection had to be cut, so shutdown was not clean"
    );
    assert!(
        TcpStream::connect(gw.addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn shutdown_ends_as_soon_as_the_last_websocket_closes() {
    let up = ws_upstream::start().await;
    let plain = upstream::start("plain").await;
    let mut gw = ws_gateway(&up.url(), &plain.url(), &plain.url()).await;
    let (mut ws, _) = connect(&gw, "/chat", Some(&token()))
        .await
        .expect("handshake accepted");

    let grace = Duration::from_secs(60);
    let started = Instant::now();
    let shutdown = tokio::spawn(gw.running.take().unwrap().shutdown(Some(grace)));
    until_not_ready(&gw).await;
    echo(&mut ws, Message::text("last words")).await;
    ws.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, ws.next()).await {}
    drop(ws);

    let clean = tokio::time::timeout(WAIT, shutdown)
        .await
        .expect("shutdown returned once the WebSocket closed")
        .unwrap();
    assert!(clean);
    assert!(started.elapsed() < grace);
}
