//! Many APIs on one gateway, over real sockets: APIs with the same route keys under different
//! hosts and base paths of one host, each reaching its own upstream with its own authorizer and
//! scopes; exact hosts over wildcards over the default API; 404 for what no API claims; 421
//! when the `Host` selects other APIs than the TLS SNI name; keys of plans bound to API stages;
//! `/config` and `/usage` by API; APIs added and removed by a reload under traffic.

use crate::support::gateway::{self, TestGateway};
use crate::support::keys::{good_claims, jwks, mint, rsa_key, rsa_key2};
use crate::support::pki::{Ca, TlsClient};
use crate::support::traffic::Traffic;
use crate::support::upstream::{self, Upstream};

const ORDERS_ISSUER: &str = "https://orders.issuer.test";
const USERS_ISSUER: &str = "https://users.issuer.test";

struct Edge {
    gw: TestGateway,
    orders: Upstream,
    users: Upstream,
    partner: Upstream,
    fallback: Upstream,
}

/// The edge config: `orders` and `users` under two base paths of `api.example.test`, each with
/// its own JWT authorizer, scopes and upstream; `partner` on its own host; `wild` for every
/// other `*.example.test`; the top-level routes for every other host.
fn edge_yaml(orders: &str, users: &str, partner: &str, fallback: &str) -> String {
    format!(
        r#"authorizers:
  orders-jwt: {{ type: jwt, issuer: "{ORDERS_ISSUER}", jwks_file: orders-jwks.json }}
  users-jwt: {{ type: jwt, issuer: "{USERS_ISSUER}", jwks_file: users-jwks.json }}
upstreams:
  orders: {{ targets: ["{orders}"] }}
  users: {{ targets: ["{users}"] }}
  partner: {{ targets: ["{partner}"] }}
  fallback: {{ targets: ["{fallback}"] }}
usage_plans:
  orders-gold: {{ apis: [orders/prod], quota: {{ limit: 3, period: day }} }}
  users-silver: {{ apis: [users], quota: {{ limit: 100, period: day }} }}
  beta-testers: {{ apis: [orders/beta] }}
  every-orders-stage: {{ apis: [orders] }}
api_keys:
  keys:
    - {{ id: orders-only, key: key-orders, plan: orders-gold }}
    - {{ id: both, key: key-both, plans: [orders-gold, users-silver] }}
    - {{ id: planless, key: key-planless }}
    - {{ id: beta, key: key-beta, plan: beta-testers }}
    - {{ id: all-orders, key: key-all-orders, plan: every-orders-stage }}
apis:
  orders:
    hosts: [api.example.test]
    base_path: /orders
    stage: prod
    defaults: {{ authorizer: orders-jwt, scopes: [orders/read] }}
    cors: {{ allow_origins: ["https://shop.example.test"] }}
    routes:
      - {{ route: "GET /items", upstream: orders }}
      - {{ route: "GET /items/{{id}}", upstream: orders, api_key_required: true }}
  orders-beta:
    api: orders
    hosts: [beta.example.test]
    base_path: /orders
    stage: beta
    defaults: {{ authorizer: orders-jwt, scopes: [orders/read] }}
    routes:
      - {{ route: "GET /items/{{id}}", upstream: orders, api_key_required: true }}
  users:
    hosts: [api.example.test]
    base_path: /users
    stage: beta
    strip_base_path: false
    defaults: {{ authorizer: users-jwt, scopes: [users/read] }}
    routes:
      - {{ route: "GET /items", upstream: users }}
      - {{ route: "GET /items/{{id}}", upstream: users, api_key_required: true }}
  partner:
    hosts: [partner.example.test]
    routes:
      - {{ route: "GET /items", upstream: partner }}
  wild:
    hosts: ["*.example.test"]
    routes:
      - {{ route: "GET /items", respond: {{ body: '{{"api":"wild"}}' }} }}
routes:
  - {{ route: "GET /items", upstream: fallback }}
"#
    )
}

async fn edge() -> Edge {
    let orders = upstream::start("orders").await;
    let users = upstream::start("users").await;
    let partner = upstream::start("partner").await;
    let fallback = upstream::start("fallback").await;
    let yaml = edge_yaml(&orders.url(), &users.url(), &partner.url(), &fallback.url());
    let gw = gateway::start_with_files(
        &yaml,
        &[
            ("orders-jwks.json", &jwks(&[rsa_key()])),
            ("users-jwks.json", &jwks(&[rsa_key2()])),
        ],
    )
    .await;
    Edge {
        gw,
        orders,
        users,
        partner,
        fallback,
    }
}

fn orders_token(scope: &str) -> String {
    format!(
        "Bearer {}",
        mint(rsa_key(), good_claims(ORDERS_ISSUER, "shop", scope))
    )
}

fn users_token(scope: &str) -> String {
    format!(
        "Bearer {}",
        mint(rsa_key2(), good_claims(USERS_ISSUER, "crm", scope))
    )
}

/// The value after `line` (a metric with its labels) in the metrics text, or 0.
async fn metric(gw: &TestGateway, line: &str) -> u64 {
    let text = gw.admin_get("/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(line))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn same_route_keys_under_two_base_paths_reach_their_own_upstreams_and_authorizers() {
    let e = edge().await;
    let host = ("host", "api.example.test");
    let orders_read = orders_token("orders/read");
    let users_read = users_token("users/read");

    let a =
        e.gw.get(
            "/orders/items?page=2",
            &[host, ("authorization", &orders_read)],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let seen = e.orders.last();
    assert_eq!(seen.uri.path(), "/items", "orders strips its base path");
    assert_eq!(seen.uri.query(), Some("page=2"));
    assert_eq!(seen.headers["x-tollgate-stage"], "prod");
    assert_eq!(seen.headers["x-forwarded-prefix"], "/orders");

    let a =
        e.gw.get(
            "/users/items",
            &[
                host,
                ("authorization", &users_read),
                ("x-tollgate-stage", "forged"),
                ("x-forwarded-prefix", "/forged"),
            ],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let seen = e.users.last();
    assert_eq!(seen.uri.path(), "/users/items", "users keeps its base path");
    assert_eq!(seen.headers["x-tollgate-stage"], "beta");
    assert!(seen.headers.get("x-forwarded-prefix").is_none());
    assert_eq!(seen.headers.get_all("x-tollgate-stage").iter().count(), 1);

    // Each API's own authorizer: a token of the other API's issuer is not a token here.
    let a =
        e.gw.get("/users/items", &[host, ("authorization", &orders_read)])
            .await;
    assert_eq!(a.status, 401);
    // Each API's own scopes: a valid orders token without `orders/read`.
    let a =
        e.gw.get(
            "/orders/items",
            &[host, ("authorization", &orders_token("users/read"))],
        )
        .await;
    assert_eq!(a.status, 403);
    assert!(
        a.header("www-authenticate")
            .unwrap()
            .contains("orders/read")
    );
    assert_eq!(e.orders.seen().len(), 1);
    assert_eq!(e.users.seen().len(), 1);

    // A claimed host never falls through to the default or the wildcard API.
    for path in ["/items", "/ordersx/items", "/other"] {
        let a =
            e.gw.get(path, &[host, ("authorization", &orders_read)])
                .await;
        assert_eq!(a.status, 404, "{path}");
        assert_eq!(a.text(), r#"{"message":"Not Found"}"#);
    }
    assert!(e.fallback.seen().is_empty());
    assert_eq!(
        metric(
            &e.gw,
            r#"tollgate_denied_total{api="$unmatched",reason="no_api",route="$unmatched",stage=""}"#
        )
        .await,
        3
    );
    assert_eq!(
        metric(
            &e.gw,
            r#"tollgate_requests_total{api="orders",method="GET",route="GET /items",stage="prod",status="200"}"#
        )
        .await,
        1
    );
    // The users JWKS does not hold the orders issuer's key.
    assert_eq!(
        metric(
            &e.gw,
            r#"tollgate_denied_total{api="users",reason="token_unknown_kid",route="GET /items",stage="beta"}"#
        )
        .await,
        1
    );
}

#[tokio::test]
async fn exact_host_over_wildcard_over_the_default_api() {
    let e = edge().await;
    // Exact host, in any case, with a port and a trailing dot.
    for host in [
        "partner.example.test",
        "PARTNER.Example.TEST:8443",
        "partner.example.test.",
    ] {
        let a = e.gw.get("/items", &[("host", host)]).await;
        assert_eq!(a.status, 200, "{host}");
        assert_eq!(a.header("x-upstream"), Some("partner"));
    }
    assert_eq!(e.partner.seen().len(), 3);
    // Any other name under the wildcard, one label or several.
    for host in ["www.example.test", "a.b.example.test"] {
        let a = e.gw.get("/items", &[("host", host)]).await;
        assert_eq!(
            (a.status.as_u16(), a.text()),
            (200, r#"{"api":"wild"}"#.into()),
            "{host}"
        );
    }
    // The wildcard does not cover its own apex, nor other domains: the default API does.
    for host in ["example.test", "other.test", "127.0.0.1"] {
        let a = e.gw.get("/items", &[("host", host)]).await;
        assert_eq!(a.status, 200, "{host}");
    }
    assert_eq!(e.fallback.seen().len(), 3);
    // A host the default API has no route for: its 404.
    let a = e.gw.get("/nothing", &[("host", "other.test")]).await;
    assert_eq!(a.status, 404);
    assert!(e.orders.seen().is_empty() && e.users.seen().is_empty());
}

#[tokio::test]
async fn without_top_level_routes_unclaimed_hosts_get_404() {
    let up = upstream::start("a").await;
    let gw = gateway::start(&format!(
        "upstreams:\n  a: {{ targets: [\"{}\"] }}\napis:\n  only:\n    hosts: [only.example.test]\n    routes:\n      - {{ route: \"ANY /{{p+}}\", upstream: a }}\n",
        up.url()
    ))
    .await;
    assert_eq!(
        gw.get("/x", &[("host", "only.example.test")]).await.status,
        200
    );
    for host in ["other.example.test", "127.0.0.1"] {
        let a = gw.get("/x", &[("host", host)]).await;
        assert_eq!(a.status, 404, "{host}");
    }
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn host_spellings_that_could_pick_two_apis_are_refused() {
    let e = edge().await;
    // Two Host headers: RFC 9112 3.2 says 400, and one of them could select another API.
    let raw =
        e.gw.raw(
            b"GET /items HTTP/1.1\r\nHost: partner.example.test\r\nHost: other.test\r\n\r\n",
            std::time::Duration::from_secs(2),
        )
        .await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    // An absolute-form target names one host and the Host header another.
    let raw =
        e.gw.raw(
            b"GET http://partner.example.test/items HTTP/1.1\r\nHost: other.test\r\n\r\n",
            std::time::Duration::from_secs(2),
        )
        .await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    // What is not a host name with a numeric port: userinfo that a lax parser would strip
    // (and a wildcard would match), a non-numeric port, an escape, a space.
    for host in [
        "evil@partner.example.test",
        "partner.example.test:x",
        "partner%2eexample.test",
        "partner.example.test extra",
    ] {
        let raw =
            e.gw.raw(
                format!("GET /items HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
                std::time::Duration::from_secs(2),
            )
            .await;
        assert!(raw.starts_with("HTTP/1.1 400"), "{host}: {raw}");
    }
    // Both naming the same host (any case) is fine, and selects by it.
    let raw = e
        .gw
        .raw(
            b"GET http://partner.example.test/items HTTP/1.1\r\nHost: Partner.Example.Test\r\nConnection: close\r\n\r\n",
            std::time::Duration::from_secs(2),
        )
        .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert_eq!(e.partner.seen().len(), 1);
    assert!(e.fallback.seen().is_empty());
}

#[tokio::test]
async fn keys_are_accepted_only_on_the_apis_of_their_plans_and_count_per_plan() {
    let e = edge().await;
    let host = ("host", "api.example.test");
    let orders_read = orders_token("orders/read");
    let users_read = users_token("users/read");
    // One keyed request: host, path, token, key.
    let call = |host: &'static str, path: &'static str, token: &str, key: &'static str| {
        let (gw, token) = (&e.gw, token.to_string());
        async move {
            gw.get(
                path,
                &[
                    ("host", host),
                    ("authorization", &token),
                    ("x-api-key", key),
                ],
            )
            .await
        }
    };
    let orders = |key| call(host.1, "/orders/items/1", &orders_read, key);
    let users = |key| call(host.1, "/users/items/1", &users_read, key);
    // A key of a plan bound to orders/prod: accepted there, refused on users.
    assert_eq!(orders("key-orders").await.status, 200);
    let a = users("key-orders").await;
    assert_eq!(a.status, 403);
    assert_eq!(a.text(), r#"{"message":"Forbidden"}"#);
    assert_eq!(
        metric(
            &e.gw,
            r#"tollgate_denied_total{api="users",reason="key_not_for_api",route="GET /items/{id}",stage="beta"}"#
        )
        .await,
        1
    );
    assert!(e.users.seen().is_empty());

    // A key in two plans: each API counts against its own plan's quota.
    for _ in 0..3 {
        assert_eq!(orders("key-both").await.status, 200);
    }
    let a = orders("key-both").await;
    assert_eq!(a.status, 429, "orders-gold's quota of 3 is used up");
    assert_eq!(a.text(), r#"{"message":"Limit Exceeded"}"#);
    for _ in 0..5 {
        let a = users("key-both").await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("ratelimit-limit"), Some("100"));
    }
    assert_eq!(e.users.last().headers["x-tollgate-api-key-id"], "both");
    // Two stages of one API: a plan for `orders/beta` opens that stage only, a plan for
    // `orders` every stage of it.
    let beta = |key| call("beta.example.test", "/orders/items/1", &orders_read, key);
    assert_eq!(beta("key-beta").await.status, 200);
    assert_eq!(e.orders.last().headers["x-tollgate-stage"], "beta");
    assert_eq!(orders("key-beta").await.status, 403);
    assert_eq!(beta("key-orders").await.status, 403);
    assert_eq!(beta("key-all-orders").await.status, 200);
    assert_eq!(orders("key-all-orders").await.status, 200);
    assert_eq!(users("key-all-orders").await.status, 403);
    // A key without a plan may call every API, as before plans were bound to APIs.
    assert_eq!(orders("key-planless").await.status, 200);
    assert_eq!(users("key-planless").await.status, 200);

    // `/usage` by API (or plan); a key in several plans must say which.
    let usage = |q: &'static str| {
        let gw = &e.gw;
        async move {
            let a = gw.admin_get(&format!("/usage?key={q}")).await;
            let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
            (a.status.as_u16(), v)
        }
    };
    let (code, v) = usage("both&api=users").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["plan"], "users-silver");
    assert_eq!(
        v["items"].as_array().unwrap().last().unwrap()["used"],
        5,
        "{v}"
    );
    let (code, v) = usage("both&api=orders").await;
    assert_eq!((code, v["plan"].clone()), (200, "orders-gold".into()));
    assert_eq!(
        v["items"].as_array().unwrap().last().unwrap()["used"],
        3,
        "{v}"
    );
    let (code, v) = usage("both&plan=users-silver").await;
    assert_eq!((code, v["plan"].clone()), (200, "users-silver".into()));
    let (code, v) = usage("both&api=orders/prod").await;
    assert_eq!((code, v["plan"].clone()), (200, "orders-gold".into()));
    let (code, v) = usage("both").await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(usage("orders-only&api=users").await.0, 404);
    assert_eq!(usage("both&api=nope").await.0, 404);
}

#[tokio::test]
async fn cors_is_per_api() {
    let e = edge().await;
    let preflight = |host: &'static str, path: &'static str| {
        let gw = &e.gw;
        async move {
            gw.send(
                "OPTIONS",
                path,
                &[
                    ("host", host),
                    ("origin", "https://shop.example.test"),
                    ("access-control-request-method", "GET"),
                ],
                "",
            )
            .await
        }
    };
    let a = preflight("api.example.test", "/orders/items").await;
    assert_eq!(a.status, 204);
    assert_eq!(
        a.header("access-control-allow-origin"),
        Some("https://shop.example.test")
    );
    // `users` has no CORS: the preflight is an ordinary OPTIONS request there (no route).
    let a = preflight("api.example.test", "/users/items").await;
    assert!(a.header("access-control-allow-origin").is_none());
    assert_ne!(a.status, 204);
}

#[tokio::test]
async fn config_lists_the_apis() {
    let e = edge().await;
    let v: serde_json::Value =
        serde_json::from_slice(&e.gw.admin_get("/config").await.body).unwrap();
    let apis = v["apis"].as_array().unwrap();
    let by_name = |n: &str| apis.iter().find(|a| a["name"] == n).unwrap().clone();
    assert_eq!(apis.len(), 6, "{v}");
    let beta = by_name("orders-beta");
    assert_eq!(
        (beta["api"].clone(), beta["stage"].clone()),
        ("orders".into(), "beta".into())
    );
    let orders = by_name("orders");
    assert_eq!(orders["stage"], "prod");
    assert_eq!(orders["hosts"], serde_json::json!(["api.example.test"]));
    assert_eq!(orders["base_path"], "/orders");
    assert_eq!(orders["routes"], 2);
    assert_eq!(by_name("users")["strip_base_path"], false);
    assert_eq!(
        by_name("wild")["hosts"],
        serde_json::json!(["*.example.test"])
    );
    let default = by_name("default");
    assert_eq!(default["hosts"], serde_json::json!([]));
    assert_eq!(
        (default["base_path"].clone(), default["routes"].clone()),
        ("/".into(), 1.into())
    );
}

#[tokio::test]
async fn a_host_that_selects_other_apis_than_the_sni_name_is_misdirected() {
    let ca = Ca::new("apis-ca");
    let leaf = ca.server(
        "gw",
        &["api.example.test", "partner.example.test", "other.test"],
    );
    let orders = upstream::start("orders").await;
    let partner = upstream::start("partner").await;
    let fallback = upstream::start("fallback").await;
    let yaml = format!(
        r#"listeners:
  - bind: 127.0.0.1:0
    tls: {{ cert: gw.pem, key: gw.key }}
admin: {{ bind: 127.0.0.1:0 }}
upstreams:
  orders: {{ targets: ["{}"] }}
  partner: {{ targets: ["{}"] }}
  fallback: {{ targets: ["{}"] }}
apis:
  orders:
    hosts: [api.example.test]
    base_path: /orders
    routes: [{{ route: "GET /items", upstream: orders }}]
  partner:
    hosts: [partner.example.test]
    routes: [{{ route: "GET /items", upstream: partner }}]
routes:
  - {{ route: "GET /items", upstream: fallback }}
  - {{ route: "GET /orders/items", upstream: fallback }}
"#,
        orders.url(),
        partner.url(),
        fallback.url()
    );
    let gw = gateway::start_raw(
        &yaml,
        &[("gw.pem", &leaf.cert_pem), ("gw.key", &leaf.key_pem)],
    )
    .await;
    let (h1, h2): (&[&[u8]], &[&[u8]]) = (&[b"http/1.1"], &[b"h2"]);
    for alpn in [h1, h2] {
        let client = |sni: &'static str| TlsClient {
            server_name: sni,
            ca_pem: &ca.pem,
            client_cert: None,
            alpn,
            version: None,
        };
        // One connection for partner.example.test: its own host is served, another API's is not.
        let mut conn = client("partner.example.test")
            .connect(gw.addr)
            .await
            .unwrap();
        let a = conn.get("/items", &[]).await.unwrap();
        assert_eq!(a.status, 200, "{alpn:?}");
        for (host, path) in [
            ("api.example.test", "/orders/items"),
            ("other.test", "/items"),
        ] {
            let a = conn.get(path, &[("host", host)]).await.unwrap();
            assert_eq!(a.status, 421, "{alpn:?} {host}: {}", a.text());
            assert_eq!(a.text(), r#"{"message":"Misdirected Request"}"#);
        }
        // The same name in another spelling is the same host.
        let a = conn
            .get("/items", &[("host", "PARTNER.example.test:443")])
            .await
            .unwrap();
        assert_eq!(a.status, 200, "{alpn:?}");
        // A connection for an unclaimed name reaches the default API, not orders' base path.
        let a = client("other.test")
            .get(gw.addr, "/orders/items", &[])
            .await
            .unwrap();
        assert_eq!(a.status, 200);
        let a = client("api.example.test")
            .get(gw.addr, "/orders/items", &[])
            .await
            .unwrap();
        assert_eq!(a.status, 200);
    }
    assert_eq!(partner.seen().len(), 4);
    assert_eq!(fallback.seen().len(), 2);
    assert_eq!(orders.seen().len(), 2);
    assert_eq!(
        metric(
            &gw,
            r#"tollgate_denied_total{api="$unmatched",reason="misdirected",route="$unmatched",stage=""}"#
        )
        .await,
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apis_added_and_removed_by_a_reload_under_traffic_lose_no_request() {
    let stable = upstream::start("stable").await;
    let extra = upstream::start("extra").await;
    let yaml = |with_extra: bool| {
        let mut y = format!(
            "upstreams:\n  stable: {{ targets: [\"{}\"] }}\n  extra: {{ targets: [\"{}\"] }}\napis:\n  stable:\n    hosts: [api.example.test]\n    base_path: /stable\n    stage: v1\n    routes: [{{ route: \"GET /{{p+}}\", upstream: stable }}]\n",
            stable.url(),
            extra.url()
        );
        if with_extra {
            y.push_str("  extra:\n    hosts: [api.example.test]\n    base_path: /extra\n    routes: [{ route: \"GET /{p+}\", upstream: extra }]\n");
        }
        format!("{}{y}", gateway::HEAD)
    };
    let gw = gateway::start_raw(&yaml(false), &[]).await;
    let traffic = Traffic::start(gw.url("/stable/x"), Some("api.example.test"), 3);
    let host = [("host", "api.example.test")];
    for round in 0..6 {
        let with_extra = round % 2 == 0;
        std::fs::write(&gw.config, yaml(with_extra)).unwrap();
        let r = gw.admin_post("/reload").await;
        assert_eq!(r.status, 200, "{}", r.text());
        let a = gw.get("/extra/y", &host).await;
        assert_eq!(
            a.status,
            if with_extra { 200 } else { 404 },
            "round {round}"
        );
    }
    let (sent, failed) = traffic.finish().await;
    assert!(sent >= 50, "steady traffic: {sent} requests");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed across the reloads"
    );
    assert_eq!(extra.seen().len(), 3);
    assert!(
        stable
            .seen()
            .iter()
            .all(|s| s.uri.path() == "/x" && s.headers["x-tollgate-stage"] == "v1")
    );
}

#[tokio::test]
async fn a_plans_route_throttle_applies_to_that_route_in_each_of_its_apis_and_csv_keys_join_several_plans()
 {
    let up = upstream::start("a").await;
    let yaml = format!(
        r#"upstreams:
  a: {{ targets: ["{}"] }}
usage_plans:
  east: {{ apis: [east], route_throttle: {{ "GET /slow": {{ rate: 0.001, burst: 1 }} }} }}
  west: {{ apis: [west], route_throttle: {{ "GET /slow": {{ rate: 0.001, burst: 2 }} }} }}
api_keys:
  import: keys.csv
apis:
  east:
    hosts: [east.example.test]
    routes:
      - {{ route: "GET /slow", upstream: a, api_key_required: true }}
      - {{ route: "GET /fast", upstream: a, api_key_required: true }}
  west:
    hosts: [west.example.test]
    routes:
      - {{ route: "GET /slow", upstream: a, api_key_required: true }}
"#,
        up.url()
    );
    // The managed gateway's export: one key in two plans (UsagePlanIds "east;west").
    let csv = "Name,Key,Enabled,UsagePlanIds\nroamer,roamer-key,true,\"east;west\"\n";
    let gw = gateway::start_with_files(&yaml, &[("keys.csv", csv)]).await;
    let get = |host: &'static str, path: &'static str| {
        let gw = &gw;
        async move {
            gw.get(path, &[("host", host), ("x-api-key", "roamer-key")])
                .await
                .status
                .as_u16()
        }
    };
    assert_eq!(get("east.example.test", "/slow").await, 200);
    assert_eq!(
        get("east.example.test", "/slow").await,
        429,
        "east's bucket of 1"
    );
    assert_eq!(
        get("east.example.test", "/fast").await,
        200,
        "other routes unthrottled"
    );
    // The same route key in west: its own bucket (of 2), under its own plan.
    assert_eq!(get("west.example.test", "/slow").await, 200);
    assert_eq!(get("west.example.test", "/slow").await, 200);
    assert_eq!(get("west.example.test", "/slow").await, 429);
    assert_eq!(up.seen().len(), 4);
}

#[tokio::test]
async fn same_route_keys_on_two_hosts_reach_their_own_upstreams_with_their_own_authorizers() {
    let (a, b) = (upstream::start("a").await, upstream::start("b").await);
    let yaml = format!(
        r#"authorizers:
  a-jwt: {{ type: jwt, issuer: "{ORDERS_ISSUER}", jwks_file: a-jwks.json }}
  b-jwt: {{ type: jwt, issuer: "{USERS_ISSUER}", jwks_file: b-jwks.json }}
upstreams:
  a: {{ targets: ["{}"] }}
  b: {{ targets: ["{}"] }}
apis:
  a:
    hosts: [a.example.test]
    routes: [{{ route: "GET /items", upstream: a, authorizer: a-jwt, scopes: [a/read] }}]
  b:
    hosts: [b.example.test]
    routes: [{{ route: "GET /items", upstream: b, authorizer: b-jwt, scopes: [b/read] }}]
"#,
        a.url(),
        b.url()
    );
    let gw = gateway::start_with_files(
        &yaml,
        &[
            ("a-jwks.json", &jwks(&[rsa_key()])),
            ("b-jwks.json", &jwks(&[rsa_key2()])),
        ],
    )
    .await;
    let a_token = orders_token("a/read");
    let b_token = users_token("b/read");
    let get = |host: &'static str, token: String| {
        let gw = &gw;
        async move {
            gw.get("/items", &[("host", host), ("authorization", &token)])
                .await
                .status
                .as_u16()
        }
    };
    assert_eq!(get("a.example.test", a_token.clone()).await, 200);
    assert_eq!(get("b.example.test", b_token.clone()).await, 200);
    assert_eq!(
        get("a.example.test", b_token).await,
        401,
        "b's issuer is not a's"
    );
    assert_eq!(
        get("b.example.test", a_token).await,
        401,
        "a's issuer is not b's"
    );
    assert_eq!(
        get("a.example.test", orders_token("b/read")).await,
        403,
        "a's scope"
    );
    assert_eq!((a.seen().len(), b.seen().len()), (1, 1));
    assert_eq!(a.last().uri.path(), "/items");
}
