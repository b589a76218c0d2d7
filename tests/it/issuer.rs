//! The embedded issuer over real sockets: the token endpoint's successes and RFC 6749 errors,
//! discovery and JWKS, tokens accepted by `issuer: self` routes, brute-force slowing per client
//! IP (atomic under concurrency, never locking out a client's right secret from elsewhere), the key
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
        m.contains(r#"tollgate_denied_total{api="default",reason="invalid_scope",route="ANY /oauth2/token",stage=""} 2"#),
        "{m}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn guessing_secrets_is_slowed_per_ip() {
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
        "even the right secret waits once the IP's limit is reached"
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

/// Sends `n` token requests with wrong secrets on `n` connections at once: every request head
/// first, and only once all of them wait for their bodies, every body. The requests take turns
/// among the three clients of [`CONFIG`], so no one client id sees more than a third of them.
/// Returns the statuses.
async fn concurrent_wrong_secrets(gw: &TestGateway, n: usize) -> Vec<u16> {
    use tokio::io::AsyncWriteExt;
    let body = "grant_type=client_credentials";
    let mut conns = Vec::new();
    for i in 0..n {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let head = format!(
            "POST /oauth2/token HTTP/1.1\r\nhost: gw.test\r\ncontent-type: application/x-www-form-urlencoded\r\nauthorization: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            basic(
                ["reader", "inventory", "nothing"][i % 3],
                &format!("guess-{i}")
            ),
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        conns.push(s);
    }
    // Let the gateway take every request in and wait for its body.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let answers = conns.into_iter().map(|mut s| {
        tokio::spawn(async move {
            s.write_all(body.as_bytes()).await.unwrap();
            gateway::read_for(&mut s, std::time::Duration::from_secs(10)).await
        })
    });
    let mut statuses = Vec::new();
    for a in answers.collect::<Vec<_>>() {
        let text = a.await.unwrap();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {text:?}"));
        statuses.push(status);
    }
    statuses
}

/// Review finding: the per-IP limit was checked before the body was read and counted after
/// the secret check, so 40 concurrent failures from one IP all got their secret compared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_failures_from_one_ip_never_exceed_the_limit() {
    let up = upstream::start("a").await;
    let gw = issuer_gateway(&up).await;
    let statuses = concurrent_wrong_secrets(&gw, 40).await;
    let rejected = statuses.iter().filter(|s| **s == 401).count();
    let slowed = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(
        (rejected, slowed),
        (10, 30),
        "exactly the limit of 10 evaluated, the rest refused unseen: {statuses:?}"
    );
    let a = token_basic(
        &gw,
        "reader",
        "reader-secret",
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(a.status, 429, "the IP's budget is used up");
    gw.stop().await;
}

/// Review finding: 10 wrong secrets for a client id locked that client out from every IP,
/// right secret included. Failures count per client IP only, so other IPs' failures never
/// refuse a client presenting its correct secret.
#[tokio::test]
async fn wrong_secrets_from_other_ips_never_lock_out_the_right_secret() {
    let up = upstream::start("a").await;
    let gw = gateway::start_with_files(
        &format!(
            "client_ip: {{ trusted_proxies: [127.0.0.1/32] }}\n{}",
            CONFIG.replace("UPSTREAM", &up.url())
        ),
        &[("inventory.secret", "inventory-secret\n")],
    )
    .await;
    let g = &gw;
    let from = |ip: String, secret: String| async move {
        g.send(
            "POST",
            "/oauth2/token",
            &[
                FORM,
                ("authorization", &basic("reader", &secret)),
                ("x-forwarded-for", &ip),
            ],
            "grant_type=client_credentials",
        )
        .await
    };
    // IP A uses up its budget on the client...
    for i in 0..10 {
        assert_eq!(
            from("198.51.100.1".into(), format!("guess-{i}"))
                .await
                .status,
            401
        );
    }
    assert_eq!(
        from("198.51.100.1".into(), "guess-x".into()).await.status,
        429
    );
    // ...and 20 more IPs guess it once each.
    for i in 2..22 {
        let a = from(format!("198.51.100.{i}"), "guess".into()).await;
        assert_eq!(a.status, 401, "{}", a.text());
    }
    // The client, from its own IP, still gets its token.
    let a = from("203.0.113.7".into(), "reader-secret".into()).await;
    let token = access_token(&a);
    assert_eq!(decode(&token).1["client_id"], "reader");
    // Its successes do not use up its IP's budget either.
    for _ in 0..15 {
        assert_eq!(
            from("203.0.113.7".into(), "reader-secret".into())
                .await
                .status,
            200
        );
    }
    // IP A is still slowed, for the right secret too.
    assert_eq!(
        from("198.51.100.1".into(), "reader-secret".into())
            .await
            .status,
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

/// `tollgate check` opens nothing: the issuer key a first start would create is made in memory
/// only, so checking a config does not leave a key file behind (a running gateway writes it
/// when it activates the snapshot, see the restart test above).
#[test]
fn check_writes_no_issuer_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("inventory.secret"), "inventory-secret\n").unwrap();
    let (code, out) = crate::config::check_in(
        dir.path(),
        &format!(
            "listeners: [{{ bind: 127.0.0.1:0 }}]\n{}",
            CONFIG.replace("UPSTREAM", "http://127.0.0.1:9")
        ),
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        !dir.path().join("state/issuer.pem").exists(),
        "check wrote the issuer key"
    );
}
