//! Routing, mock responses and CORS over real sockets.

use crate::support::gateway;

fn respond(route: &str, body: &str) -> String {
    format!("  - {{ route: \"{route}\", authorizer: none, respond: {{ body: '{body}' }} }}\n")
}

#[tokio::test]
async fn route_priority_over_the_wire() {
    let mut yaml = String::from("routes:\n");
    for (r, b) in [
        ("GET /items/special", "literal"),
        ("GET /items/{id}", "param"),
        ("ANY /items/{id}", "any-param"),
        ("GET /items/{rest+}", "greedy"),
        ("$default", "default"),
    ] {
        yaml.push_str(&respond(r, b));
    }
    let gw = gateway::start(&yaml).await;
    for (method, path, want) in [
        ("GET", "/items/special", "literal"),
        ("GET", "/items/7", "param"),
        ("DELETE", "/items/7", "any-param"),
        ("GET", "/items/7/reviews", "greedy"),
        ("GET", "/items", "greedy"),
        ("POST", "/items/7/reviews", "default"),
        ("GET", "/elsewhere", "default"),
    ] {
        let a = gw.send(method, path, &[], "").await;
        assert_eq!(a.status, 200);
        assert_eq!(a.text(), want, "{method} {path}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn unmatched_is_404_json_with_request_id_and_mock_headers_apply() {
    let gw = gateway::start(
        "routes:\n  - { route: \"GET /status\", authorizer: none, respond: { status: 202, body: 'ok', headers: { content-type: text/plain, x-mock: yes } } }\n",
    )
    .await;
    let a = gw.get("/nothing", &[]).await;
    assert_eq!(a.status, 404);
    assert_eq!(a.text(), r#"{"message":"Not Found"}"#);
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert!(a.header("x-request-id").is_some());
    let a = gw.get("/status", &[]).await;
    assert_eq!(a.status, 202);
    assert_eq!(a.text(), "ok");
    assert_eq!(a.header("content-type"), Some("text/plain"));
    assert_eq!(a.header("x-mock"), Some("yes"));
    assert_eq!(
        gw.send("POST", "/status", &[], "").await.status,
        404,
        "method matters"
    );
    gw.stop().await;
}

#[tokio::test]
async fn cors_preflight_is_answered_before_auth_and_origins_are_checked() {
    let gw = gateway::start(
        "authorizers:\n  partner: { type: jwt, issuer: p, algorithms: [HS256], secret: 'a-test-secret-of-at-least-32-bytes!!' }\n\
         cors: { allow_origins: [\"https://app.example.com\"], allow_headers: [authorization, content-type], max_age: 10m }\n\
         routes:\n  - { route: \"POST /orders\", authorizer: partner, respond: { body: '{}' } }\n",
    )
    .await;
    let pre = gw
        .send(
            "OPTIONS",
            "/orders",
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "POST"),
            ],
            "",
        )
        .await;
    assert_eq!(pre.status, 204, "no token needed for a preflight");
    assert_eq!(
        pre.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        pre.header("access-control-allow-headers"),
        Some("authorization, content-type")
    );
    assert_eq!(pre.header("access-control-max-age"), Some("600"));
    assert!(
        pre.header("access-control-allow-methods")
            .unwrap()
            .contains("POST")
    );

    let evil = gw
        .send(
            "OPTIONS",
            "/orders",
            &[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "POST"),
            ],
            "",
        )
        .await;
    assert_eq!(evil.status, 204);
    assert!(evil.header("access-control-allow-origin").is_none());

    let unknown = gw
        .send(
            "OPTIONS",
            "/nowhere",
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "GET"),
            ],
            "",
        )
        .await;
    assert_eq!(unknown.status, 404);

    // An actual request still needs its token, and carries CORS headers for the allowed origin.
    let actual = gw
        .send(
            "POST",
            "/orders",
            &[("origin", "https://app.example.com")],
            "",
        )
        .await;
    assert_eq!(actual.status, 401);
    assert_eq!(
        actual.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    gw.stop().await;
}
