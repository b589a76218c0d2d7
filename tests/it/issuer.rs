//! The embedded issuer over real sockets: the token endpoint's successes and RFC 6749 errors,
//! discovery and JWKS, tokens accepted by `issuer: self` routes, brute-force slowing, the key
//! surviving a restart, and rotation.

use base64::Engine;

use crate::support::gateway::{self, Answer, TestGateway};
use crate::support::upstream;

const CONFIG: &str = r#"state: { path: state }
issuer:
  url: http://issuer.test
  resource_servers:
    - { identifier: product-api, scopes: [read_product, create_product, delete_product] }
  clients:
    - { client_id: inventory, client_secret: { file: inventory.secret }, scopes: [product-api/read_product, product-api/create_product, product-api/delete_product] }
    - { client_id: reader, client_secret: reader-secret, scopes: [product-api/read_product] }
    - { client_id: nothing, client_secret: nothing-secret, scopes: [] }
authorizers:
  local: { type: jwt, issuer: self }
upstreams:
  app: { targets: [UPSTREAM] }
defaults: { authorizer: local }
routes:
  - { route: "GET /products", upstream: app, scopes: [product-api/read_product] }
  - { route: "DELETE /products/{id}", upstream: app, scopes: [product-api/delete_product] }
"#;

async fn issuer_gateway(up: &upstream::Upstream) -> TestGateway {
    gateway::start_with_files(
        &CONFIG.replace("UPSTREAM", &up.url()),
        &[("inventory.secret", "inventory-secret\n")],
    )
    .await
}

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

fn basic(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

async fn token_basic(gw: &TestGateway, id: &str, secret: &str, form: &str) -> Answer {
    gw.send(
        "POST",
        "/oauth2/token",
        &[FORM, ("authorization", &basic(id, secret))],
        form,
    )
    .await
}

async fn token_post(gw: &TestGateway, form: &str) -> Answer {
    gw.send("POST", "/oauth2/token", &[FORM], form).await
}

fn json(a: &Answer) -> serde_json::Value {
    serde_json::from_slice(&a.body).unwrap_or_else(|_| panic!("not JSON: {}", a.text()))
}

/// The token's header and claims, decoded (not verified).
fn decode(token: &str) -> (serde_json::Value, serde_json::Value) {
    let mut parts = token.split('.');
    let mut next = || {
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts.next().unwrap())
            .unwrap();
        serde_json::from_slice(&b).unwrap()
    };
    (next(), next())
}

fn access_token(a: &Answer) -> String {
    assert_eq!(a.status, 200, "{}", a.text());
    json(a)["access_token"].as_str().unwrap().to_string()
}

fn oauth_error(a: &Answer) -> String {
    json(a)["error"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn tokens_by_basic_and_by_form_have_the_managed_pools_claims() {
    let up = upstream::start("a").await;
    let gw = issuer_gateway(&up).await;

    let a = token_basic(
        &gw,
        "inventory",
        "inventory-secret",
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("cache-control"), Some("no-store"));
    let body = json(&a);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    let token = body["access_token"].as_str().unwrap();
    let (header, claims) = decode(token);
    assert_eq!(header["alg"], "RS256");
    let kid = header["kid"].as_str().unwrap();
    assert_eq!(claims["sub"], "inventory");
    assert_eq!(claims["client_id"], "inventory");
    assert_eq!(claims["token_use"], "access");
    assert_eq!(claims["iss"], "http://issuer.test");
    assert_eq!(claims["version"], 2);
    assert_eq!(
        claims["scope"],
        "product-api/read_product product-api/create_product product-api/delete_product"
    );
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        3600
    );
    assert!(claims["auth_time"].is_u64());
    assert_eq!(claims["jti"].as_str().unwrap().len(), 36);

    let jwks = json(&gw.get("/.well-known/jwks.json", &[]).await);
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == kid)
    );
    for path in [
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
    ] {
        let d = json(&gw.get(path, &[]).await);
        assert_eq!(d["issuer"], "http://issuer.test");
        assert_eq!(d["token_endpoint"], "http://issuer.test/oauth2/token");
        assert_eq!(d["jwks_uri"], "http://issuer.test/.well-known/jwks.json");
        assert_eq!(d["grant_types_supported"][0], "client_credentials");
    }

    // client_secret_post, with a subset of scopes.
    let a = token_post(&gw, "grant_type=client_credentials&client_id=inventory&client_secret=inventory-secret&scope=product-api%2Fdelete_product").await;
    let (_, claims) = decode(&access_token(&a));
    assert_eq!(claims["scope"], "product-api/delete_product");

    // The token works on `issuer: self` routes, verified in-process.
    let a = gw
        .send(
            "DELETE",
            "/products/3",
            &[("authorization", &format!("Bearer {token}"))],
            "",
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(up.last().headers["x-tollgate-client-id"], "inventory");
    assert_eq!(up.last().headers["x-tollgate-authorizer"], "local");

    let reader = access_token(
        &token_basic(
            &gw,
            "reader",
            "reader-secret",
            "grant_type=client_credentials",
        )
        .await,
    );
    let a = gw
        .send(
            "DELETE",
            "/products/3",
            &[("authorization", &format!("Bearer {reader}"))],
            "",
        )
        .await;
    assert_eq!(a.status, 403);
    assert_eq!(
        gw.get(
            "/products",
            &[("authorization", &format!("Bearer {reader}"))]
        )
        .await
        .status,
        200
    );
    assert_eq!(gw.get("/products", &[]).await.status, 401);

    let m = gw.admin_get("/metrics").await.text();
    assert!(
        m.contains(r#"tollgate_tokens_issued_total{client_id="inventory"} 2"#),
        "{m}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn oauth_errors_follow_rfc_6749() {
    let up = upstream::start("a").await;
    let gw = issuer_gateway(&up).await;
    let cc = "grant_type=client_credentials";

    let a = token_basic(&gw, "inventory", "wrong", cc).await;
    assert_eq!(
        (a.status.as_u16(), oauth_error(&a).as_str()),
        (401, "invalid_client")
    );
    assert_eq!(
        a.header("www-authenticate"),
        Some(r#"Basic realm="tollgate""#)
    );
    let a = token_post(
        &gw,
        "grant_type=client_credentials&client_id=ghost&client_secret=x",
    )
    .await;
    assert_eq!(
        (a.status.as_u16(), oauth_error(&a).as_str()),
        (401, "invalid_client")
    );
    assert!(
        a.header("www-authenticate").is_none(),
        "no Basic challenge when Basic was not used"
    );
    let a = token_post(&gw, cc).await;
    assert_eq!(
        (a.status.as_u16(), oauth_error(&a).as_str()),
        (401, "invalid_client"),
        "no credentials"
    );

    let a = token_basic(
        &gw,
        "reader",
        "reader-secret",
        "grant_type=client_credentials&scope=product-api/delete_product",
    )
    .await;
    assert_eq!(
        (a.status.as_u16(), oauth_error(&a).as_str()),
        (400, "invalid_scope")
    );
    let a = token_basic(
        &gw,
        "reader",
        "reader-secret",
        "grant_type=client_credentials&scope=nope/nothing",
    )
    .await;
    assert_eq!(oauth_error(&a), "invalid_scope");

    let a = token_basic(
        &gw,
        "reader",
        "reader-secret",
        "grant_type=password&username=a&password=b",
    )
    .await;
    assert_eq!(
        (a.status.as_u16(), oauth_error(&a).as_str()),
        (400, "unsupported_grant_type")
    );
    let a = token_basic(&gw, "reader", "reader-secret", "").await;
    assert_eq!(
        (a.status.as_u16(), oauth_error(&a).as_str()),
        (400, "invalid_request")
    );
    let a = token_basic(
        &gw,
        "reader",
        "reader-secret",
        "grant_type=client_credentials&grant_type=client_credentials",
    )
    .await;
    assert_eq!(oauth_error(&a), "invalid_request");
    let a = token_basic(
        &gw,
        "reader",
        "reader-secret",
        "grant_type=client_credentials&client_secret=reader-secret",
    )
    .await;
    assert_eq!(
        oauth_error(&a),
        "invalid_request",
        "two authentication methods"
    );
    let a = token_basic(&gw, "nothing", "nothing-secret", cc).await;
    assert_eq!(
        (a.status.as_u16(), oauth_error(&a).as_str()),
        (400, "unauthorized_client")
    );

    let a = gw
        .send(
            "POST",
            "/oauth2/token",
            &[
                ("content-type", "application/json"),
                ("authorization", &basic("reader", "reader-secret")),
            ],
            r#"{"grant_type":"client_credentials"}"#,
        )
        .await;
    assert_eq!(
        (a.status.as_u16(), oauth_error(&a).as_str()),
        (400, "invalid_request")
    );
    let a = token_basic(
        &gw,
        "reader",
        "reader-secret",
        &format!("{cc}&pad={}", "x".repeat(20_000)),
    )
    .await;
    assert_eq!(
        (a.status.as_u16(), oauth_error(&a).as_str()),
        (400, "invalid_request"),
        "oversized body"
    );
    let a = gw.get("/oauth2/token", &[]).await;
    assert_eq!(a.status, 405);
    assert_eq!(a.header("allow"), Some("POST"));

    let m = gw.admin_get("/metrics").await.text();
    assert!(
        m.contains(r#"tollgate_token_errors_total{error="invalid_client"} 3"#),
        "{m}"
    );
    assert!(
        m.contains(r#"tollgate_denied_total{reason="invalid_scope",route="ANY /oauth2/token"} 2"#),
        "{m}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn guessing_secrets_is_slowed_per_client_and_per_ip() {
    let up = upstream::start("a").await;
    let gw = issuer_gateway(&up).await;
    let cc = "grant_type=client_credentials";
    for i in 0..10 {
        let a = token_basic(&gw, "reader", &format!("guess-{i}"), cc).await;
        assert_eq!(a.status, 401, "attempt {i}");
    }
    let a = token_basic(&gw, "reader", "reader-secret", cc).await;
    assert_eq!(
        a.status, 429,
        "even the right secret waits once the limit is reached"
    );
    assert_eq!(oauth_error(&a), "slow_down");
    assert_eq!(a.header("retry-after"), Some("300"));
    // The same IP is slowed for other clients too.
    let a = token_basic(&gw, "inventory", "inventory-secret", cc).await;
    assert_eq!(a.status, 429);
    // A reload does not forgive the failures.
    assert_eq!(gw.admin_post("/reload").await.status, 200);
    assert_eq!(
        token_basic(&gw, "reader", "reader-secret", cc).await.status,
        429
    );
    gw.stop().await;
}

#[tokio::test]
async fn the_key_survives_a_restart_and_rotation_keeps_old_tokens_valid() {
    let up = upstream::start("a").await;
    let gw = issuer_gateway(&up).await;
    let key_file = gw.dir.path().join("state/issuer.pem");
    assert!(key_file.exists());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let old = access_token(
        &token_basic(
            &gw,
            "reader",
            "reader-secret",
            "grant_type=client_credentials",
        )
        .await,
    );
    let old_kid = decode(&old).0["kid"].as_str().unwrap().to_string();

    let gw = gw.restart().await;
    let again = access_token(
        &token_basic(
            &gw,
            "reader",
            "reader-secret",
            "grant_type=client_credentials",
        )
        .await,
    );
    assert_eq!(
        decode(&again).0["kid"],
        old_kid.as_str(),
        "same key after a restart"
    );
    assert_eq!(
        gw.get("/products", &[("authorization", &format!("Bearer {old}"))])
            .await
            .status,
        200
    );

    let r = gw.admin_post("/issuer/rotate").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let new_kid = json(&r)["kid"].as_str().unwrap().to_string();
    assert_ne!(new_kid, old_kid);
    let fresh = access_token(
        &token_basic(
            &gw,
            "reader",
            "reader-secret",
            "grant_type=client_credentials",
        )
        .await,
    );
    assert_eq!(decode(&fresh).0["kid"], new_kid.as_str());
    let jwks = json(&gw.get("/.well-known/jwks.json", &[]).await);
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, vec![new_kid.as_str(), old_kid.as_str()]);
    for t in [&old, &fresh] {
        assert_eq!(
            gw.get("/products", &[("authorization", &format!("Bearer {t}"))])
                .await
                .status,
            200
        );
    }
    // And after another restart, both keys are still there.
    let gw = gw.restart().await;
    assert_eq!(
        gw.get("/products", &[("authorization", &format!("Bearer {old}"))])
            .await
            .status,
        200
    );
    assert_eq!(
        gw.get(
            "/products",
            &[("authorization", &format!("Bearer {fresh}"))]
        )
        .await
        .status,
        200
    );
    gw.stop().await;
}
