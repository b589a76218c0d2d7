//! Authorizer answers over the wire: 401 / 403 with the contract's headers and bodies, and the
//! identity headers the upstream receives.

use crate::support::{gateway, upstream};

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";

fn hs256(claims: serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn claims(scope: &str, aud: &str) -> serde_json::Value {
    let now = tollgate::auth::now_unix();
    serde_json::json!({"iss": "partner-idp", "sub": "user-7", "client_id": aud, "scope": scope,
                       "iat": now, "exp": now + 600, "token_use": "access"})
}

async fn partner_gateway(up: &upstream::Upstream) -> gateway::TestGateway {
    gateway::start(&format!(
        "authorizers:\n  partner: {{ type: jwt, issuer: partner-idp, audience: [app-1], algorithms: [HS256], secret: '{SECRET}' }}\n\
         upstreams:\n  app: {{ targets: [{}] }}\n\
         defaults: {{ authorizer: partner, scopes: [orders/read] }}\n\
         routes:\n\
         \x20 - {{ route: \"GET /orders\", upstream: app }}\n\
         \x20 - {{ route: \"DELETE /orders/{{id}}\", upstream: app, scopes: [orders/delete, orders/admin] }}\n\
         \x20 - {{ route: \"GET /open\", upstream: app, authorizer: none }}\n",
        up.url()
    ))
    .await
}

#[tokio::test]
async fn missing_bad_and_insufficient_tokens_get_the_contract_answers() {
    let up = upstream::start("a").await;
    let gw = partner_gateway(&up).await;

    let a = gw.get("/orders", &[]).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.text(), r#"{"message":"Unauthorized"}"#);
    assert_eq!(a.header("www-authenticate"), Some("Bearer"));

    let a = gw.get("/orders", &[("authorization", "Bearer ")]).await;
    assert_eq!(a.status, 401);
    assert_eq!(
        a.header("www-authenticate"),
        Some("Bearer"),
        "an empty bearer is no credentials"
    );

    let a = gw
        .get("/orders", &[("authorization", "Bearer not.a.jwt")])
        .await;
    assert_eq!(a.status, 401);
    assert_eq!(
        a.header("www-authenticate"),
        Some(r#"Bearer error="invalid_token", error_description="the token is malformed""#)
    );

    let wrong_aud = hs256(claims("orders/read", "someone-else"), SECRET);
    let a = gw
        .get(
            "/orders",
            &[("authorization", &format!("Bearer {wrong_aud}"))],
        )
        .await;
    assert_eq!(a.status, 401);
    assert!(
        a.header("www-authenticate").unwrap().contains("audience"),
        "{:?}",
        a.headers
    );

    let forged = hs256(
        claims("orders/read", "app-1"),
        "another-secret-of-at-least-32-bytes!",
    );
    let a = gw
        .get("/orders", &[("authorization", &format!("Bearer {forged}"))])
        .await;
    assert_eq!(a.status, 401);
    assert!(a.header("www-authenticate").unwrap().contains("signature"));

    let reader = hs256(claims("orders/read", "app-1"), SECRET);
    let a = gw
        .send(
            "DELETE",
            "/orders/9",
            &[("authorization", &format!("Bearer {reader}"))],
            "",
        )
        .await;
    assert_eq!(a.status, 403);
    assert_eq!(a.text(), r#"{"message":"Forbidden"}"#);
    assert_eq!(
        a.header("www-authenticate"),
        Some(r#"Bearer error="insufficient_scope", scope="orders/delete orders/admin""#)
    );
    assert!(
        up.seen().is_empty(),
        "no refused request reached the upstream"
    );
    gw.stop().await;
}

#[tokio::test]
async fn accepted_token_forwards_identity_and_any_one_scope_suffices() {
    let up = upstream::start("a").await;
    let gw = partner_gateway(&up).await;
    let admin = hs256(claims("orders/read orders/admin", "app-1"), SECRET);
    // Bare token (no "Bearer") is accepted too.
    let a = gw
        .send(
            "DELETE",
            "/orders/9",
            &[
                ("authorization", &admin),
                ("x-tollgate-principal", "forged"),
            ],
            "",
        )
        .await;
    assert_eq!(a.status, 200);
    let h = up.last().headers;
    assert_eq!(h["x-tollgate-principal"], "user-7");
    assert_eq!(h["x-tollgate-client-id"], "app-1");
    assert_eq!(h["x-tollgate-scopes"], "orders/read orders/admin");
    assert_eq!(h["x-tollgate-authorizer"], "partner");
    assert_eq!(
        h["authorization"],
        admin.as_str(),
        "the token itself is passed on to the upstream"
    );

    let a = gw.get("/open", &[("x-tollgate-principal", "forged")]).await;
    assert_eq!(a.status, 200);
    assert!(up.last().headers.get("x-tollgate-principal").is_none());
    gw.stop().await;
}

#[tokio::test]
async fn reload_swaps_config_and_a_bad_one_is_refused_while_the_old_keeps_serving() {
    let up = upstream::start("a").await;
    let gw = partner_gateway(&up).await;
    let post = |path: &'static str| {
        let req = http::Request::post(format!("http://{}{path}", gw.admin))
            .body(Default::default())
            .unwrap();
        gateway::client().request(req)
    };
    // A broken file: refused, counted, shown at /config; the old routes keep answering.
    let good = std::fs::read_to_string(&gw.config).unwrap();
    std::fs::write(&gw.config, format!("{good}\nbogus_key: 1\n")).unwrap();
    assert_eq!(post("/reload").await.unwrap().status(), 422);
    let cfg: serde_json::Value =
        serde_json::from_slice(&gw.admin_get("/config").await.body).unwrap();
    assert_eq!(cfg["generation"], 1);
    assert!(
        cfg["last_error"]
            .as_str()
            .unwrap()
            .contains("unknown field `bogus_key`")
    );
    assert_eq!(gw.get("/open", &[]).await.status, 200);
    assert!(
        gw.admin_get("/metrics")
            .await
            .text()
            .contains(r#"tollgate_config_reloads_total{result="error"} 1"#)
    );

    // A good change takes effect at once.
    std::fs::write(&gw.config, good.replace("GET /open", "GET /opened")).unwrap();
    assert_eq!(post("/reload").await.unwrap().status(), 200);
    assert_eq!(gw.get("/open", &[]).await.status, 404);
    assert_eq!(gw.get("/opened", &[]).await.status, 200);
    let cfg: serde_json::Value =
        serde_json::from_slice(&gw.admin_get("/config").await.body).unwrap();
    assert_eq!(
        cfg["generation"], 2,
        "a refused config does not use up a generation"
    );
    assert!(cfg["last_error"].is_null());
    gw.stop().await;
}

#[tokio::test]
async fn rs256_through_oidc_discovery_end_to_end() {
    use crate::support::jwks_server::{JwksServer, Mode};
    use crate::support::keys;
    let idp = JwksServer::start(Mode::Serve(keys::jwks(&[keys::rsa_key()]))).await;
    let up = upstream::start("a").await;
    let gw = gateway::start(&format!(
        "authorizers:\n  cognito: {{ type: jwt, issuer: \"{iss}\", audience: [app-1], token_use: access }}\n\
         upstreams:\n  app: {{ targets: [{up}] }}\n\
         routes:\n  - {{ route: \"GET /products\", upstream: app, authorizer: cognito, scopes: [product-api/read_product] }}\n",
        iss = idp.base(),
        up = up.url()
    ))
    .await;
    let token = keys::mint(
        keys::rsa_key(),
        keys::good_claims(&idp.base(), "app-1", "product-api/read_product"),
    );
    for _ in 0..5 {
        let a = gw
            .get(
                "/products",
                &[("authorization", &format!("Bearer {token}"))],
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.text());
    }
    assert_eq!(up.last().headers["x-tollgate-client-id"], "app-1");
    let metrics = gw.admin_get("/metrics").await.text();
    assert!(
        // Five requests: verified twice (cached the second time), then three hits.
        metrics.contains(r#"tollgate_token_cache_total{authorizer="cognito",result="hit"} 3"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"tollgate_jwks_refresh_total{authorizer="cognito",result="ok"}"#));
    assert!(idp.discovery_requests() >= 1);

    // The issuer goes down: the last good keys keep serving.
    idp.set(Mode::Down);
    let other = keys::mint(
        keys::rsa_key(),
        keys::good_claims(&idp.base(), "app-1", "product-api/read_product"),
    );
    let a = gw
        .get(
            "/products",
            &[("authorization", &format!("Bearer {other}"))],
        )
        .await;
    assert_eq!(a.status, 200);

    // A token signed by a key the issuer never published.
    let stranger = keys::mint(
        keys::rsa_key2(),
        keys::good_claims(&idp.base(), "app-1", "product-api/read_product"),
    );
    let a = gw
        .get(
            "/products",
            &[("authorization", &format!("Bearer {stranger}"))],
        )
        .await;
    assert_eq!(a.status, 401);
    assert!(
        a.header("www-authenticate")
            .unwrap()
            .contains("signing key is not known")
    );
    gw.stop().await;
}

#[tokio::test]
async fn reload_with_a_removed_key_stops_accepting_its_cached_tokens() {
    use crate::support::keys;
    let up = upstream::start("a").await;
    let both = keys::jwks(&[keys::rsa_key(), keys::rsa_key2()]);
    let gw = gateway::start_with_files(
        &format!(
            "authorizers:\n  files: {{ type: jwt, issuer: iss-1, jwks_file: jwks.json }}\n\
             upstreams:\n  app: {{ targets: [{}] }}\n\
             routes:\n  - {{ route: \"GET /x\", upstream: app, authorizer: files }}\n",
            up.url()
        ),
        &[("jwks.json", &both)],
    )
    .await;
    let t1 = keys::mint(keys::rsa_key(), keys::good_claims("iss-1", "c", "s"));
    let t2 = keys::mint(keys::rsa_key2(), keys::good_claims("iss-1", "c", "s"));
    let bearer = |t: &str| format!("Bearer {t}");
    assert_eq!(
        gw.get("/x", &[("authorization", &bearer(&t1))])
            .await
            .status,
        200
    );
    // Twice: a token is cached the second time it is verified.
    for _ in 0..2 {
        assert_eq!(
            gw.get("/x", &[("authorization", &bearer(&t2))])
                .await
                .status,
            200
        );
    }

    // Same file again: cached verdicts carry over (no new verification needed).
    let reload = || {
        let req = http::Request::post(format!("http://{}/reload", gw.admin))
            .body(Default::default())
            .unwrap();
        gateway::client().request(req)
    };
    assert_eq!(reload().await.unwrap().status(), 200);
    assert_eq!(
        gw.get("/x", &[("authorization", &bearer(&t2))])
            .await
            .status,
        200
    );
    let m = gw.admin_get("/metrics").await.text();
    assert!(
        m.contains(r#"tollgate_token_cache_total{authorizer="files",result="hit"} 1"#),
        "{m}"
    );

    // rsa-2 removed from the file: its token, though cached, is refused after the reload.
    std::fs::write(
        gw.dir.path().join("jwks.json"),
        keys::jwks(&[keys::rsa_key()]),
    )
    .unwrap();
    assert_eq!(reload().await.unwrap().status(), 200);
    assert_eq!(
        gw.get("/x", &[("authorization", &bearer(&t1))])
            .await
            .status,
        200
    );
    let a = gw.get("/x", &[("authorization", &bearer(&t2))]).await;
    assert_eq!(
        a.status, 401,
        "a token signed by a removed key must not be served from cache"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_correctly_signed_token_with_a_crit_header_is_401_invalid_token() {
    let up = upstream::start("a").await;
    let gw = partner_gateway(&up).await;
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let good = claims("orders/read", "app-1");
    let plain = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &good,
        &key,
    )
    .unwrap();
    let a = gw
        .get("/orders", &[("authorization", &format!("Bearer {plain}"))])
        .await;
    assert_eq!(a.status, 200, "the control without crit: {}", a.text());
    for crit in ["exp", "b64"] {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.crit = Some(vec![crit.to_string()]);
        let token = jsonwebtoken::encode(&header, &good, &key).unwrap();
        // Twice: the second time would be the first one served from the cache.
        for _ in 0..2 {
            let a = gw
                .get("/orders", &[("authorization", &format!("Bearer {token}"))])
                .await;
            assert_eq!(a.status, 401, "crit [{crit}]: {}", a.text());
            assert_eq!(a.text(), r#"{"message":"Unauthorized"}"#);
            assert_eq!(
                a.header("www-authenticate"),
                Some(
                    r#"Bearer error="invalid_token", error_description="the token requires an unsupported extension""#
                )
            );
        }
    }
    assert_eq!(up.seen().len(), 1, "only the control reached the upstream");
    let m = gw.admin_get("/metrics").await.text();
    assert!(
        m.lines().any(|l| l.starts_with("tollgate_denied_total{")
            && l.contains(r#"reason="token_crit_header""#)),
        "{m}"
    );
    gw.stop().await;
}
