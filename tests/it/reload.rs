//! Live reload from file changes: steady traffic while the config is rewritten 20 times
//! (routes added and removed, a key revoked, broken files in between) loses no request, and each
//! change is served within a second; a Kubernetes ConfigMap-style symlink swap is seen too.

use std::time::{Duration, Instant};

use crate::support::gateway::{self, TestGateway};
use crate::support::traffic::Traffic;

/// How long a change may take to be served.
const CHANGE_DEADLINE: Duration = Duration::from_secs(1);

fn config(version: usize, key_enabled: bool) -> String {
    format!(
        r#"{head}usage_plans:
  basic: {{}}
api_keys:
  keys:
    - {{ id: k1, key: "sha256:{hash}", plan: basic, enabled: {key_enabled} }}
routes:
  - {{ route: "GET /stable", respond: {{ body: stable }} }}
  - {{ route: "GET /keyed", api_key_required: true, respond: {{ body: keyed }} }}
  - {{ route: "GET /v{version}", respond: {{ body: "v{version}" }} }}
"#,
        head = gateway::HEAD,
        hash = tollgate::util::sha256_hex(b"key-one"),
    )
}

/// Writes like an editor: a temporary file renamed over the old one.
fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls `path` until it answers `status`, within [`CHANGE_DEADLINE`] of `since`.
async fn served_within(
    gw: &TestGateway,
    path: &str,
    headers: &[(&str, &str)],
    status: u16,
    since: Instant,
) {
    loop {
        if gw.get(path, headers).await.status == status {
            return;
        }
        assert!(
            since.elapsed() < CHANGE_DEADLINE,
            "{path} did not answer {status} within {CHANGE_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn reload_errors(gw: &TestGateway) -> u64 {
    let m = gw.admin_get("/metrics").await.text();
    m.lines()
        .find(|l| l.starts_with(r#"tollgate_config_reloads_total{result="error"}"#))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_rewrites_under_steady_traffic_lose_nothing() {
    let gw = gateway::start_raw(&config(0, true), &[]).await;
    let traffic = Traffic::start(gw.url("/stable"), None, 4);

    let mut key_enabled = true;
    for version in 1..=20 {
        if version % 5 == 0 {
            // A broken file: refused, counted, and the previous config keeps serving.
            let errors = reload_errors(&gw).await;
            let since = Instant::now();
            write_atomically(
                &gw.config,
                &format!("{}\nnot_a_key: [\n", config(version - 1, key_enabled)),
            );
            loop {
                if reload_errors(&gw).await > errors {
                    break;
                }
                assert!(since.elapsed() < CHANGE_DEADLINE, "broken file not noticed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(gw.get(&format!("/v{}", version - 1), &[]).await.status, 200);
        }
        if version == 10 {
            key_enabled = false;
        }
        let since = Instant::now();
        let text = config(version, key_enabled);
        if version % 2 == 0 {
            write_atomically(&gw.config, &text);
        } else {
            std::fs::write(&gw.config, &text).unwrap(); // in place, like `>` in a shell
        }
        served_within(&gw, &format!("/v{version}"), &[], 200, since).await;
        served_within(&gw, &format!("/v{}", version - 1), &[], 404, since).await;
        let expected = if key_enabled { 200 } else { 403 };
        served_within(&gw, "/keyed", &[("x-api-key", "key-one")], expected, since).await;
    }
    let (sent, failed) = traffic.finish().await;
    assert!(sent >= 1000, "steady traffic: {sent} requests");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed during the rewrites"
    );
    let cfg: serde_json::Value =
        serde_json::from_slice(&gw.admin_get("/config").await.body).unwrap();
    assert_eq!(cfg["generation"], 21, "one generation per good rewrite");
    gw.stop().await;
}

#[tokio::test]
async fn an_edit_in_place_of_a_symlinked_config_is_seen() {
    // /etc-style link to a file kept elsewhere; the operator edits the target, not the link.
    let dir = tempfile::tempdir().unwrap();
    let d = &dir.path().to_path_buf();
    std::fs::create_dir(d.join("etc")).unwrap();
    std::fs::create_dir(d.join("real")).unwrap();
    std::fs::write(d.join("real/gateway.yaml"), config(1, true)).unwrap();
    std::os::unix::fs::symlink(d.join("real/gateway.yaml"), d.join("etc/gateway.yaml")).unwrap();
    let gw = gateway::start_at(dir, "etc/gateway.yaml").await;
    assert_eq!(gw.get("/v1", &[]).await.status, 200);
    let since = Instant::now();
    std::fs::write(d.join("real/gateway.yaml"), config(2, true)).unwrap();
    served_within(&gw, "/v2", &[], 200, since).await;
    assert_eq!(gw.get("/v1", &[]).await.status, 404);
    gw.stop().await;
}

#[tokio::test]
async fn configmap_symlink_swap_and_named_files_are_watched() {
    // The layout Kubernetes uses: gateway.yaml -> ..data/gateway.yaml, ..data -> ..v1.
    let dir = tempfile::tempdir().unwrap();
    let d = &dir.path().to_path_buf();
    std::fs::create_dir(d.join("..v1")).unwrap();
    std::fs::write(d.join("..v1/gateway.yaml"), config(1, true)).unwrap();
    std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/gateway.yaml", d.join("gateway.yaml")).unwrap();
    let gw = gateway::start_at(dir, "gateway.yaml").await;
    assert_eq!(gw.get("/v1", &[]).await.status, 200);
    std::fs::create_dir(d.join("..v2")).unwrap();
    std::fs::write(d.join("..v2/gateway.yaml"), config(2, true)).unwrap();
    let since = Instant::now();
    std::os::unix::fs::symlink("..v2", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    served_within(&gw, "/v2", &[], 200, since).await;
    assert_eq!(gw.get("/v1", &[]).await.status, 404);

    // A file the config names (a key import) is watched as well.
    let csv = d.join("keys.csv");
    std::fs::write(&csv, "Name,Key,UsagePlanIds\ncsv-key,key-two,basic\n").unwrap();
    std::fs::write(
        d.join("..v2/gateway.yaml"),
        config(2, true).replace("api_keys:\n", "api_keys:\n  import: keys.csv\n"),
    )
    .unwrap();
    served_within(
        &gw,
        "/keyed",
        &[("x-api-key", "key-two")],
        200,
        Instant::now(),
    )
    .await;
    let since = Instant::now();
    std::fs::write(
        &csv,
        "Name,Key,Enabled,UsagePlanIds\ncsv-key,key-two,false,basic\n",
    )
    .unwrap();
    served_within(&gw, "/keyed", &[("x-api-key", "key-two")], 403, since).await;
    gw.stop().await;
}

/// An `issuer: self` gateway with the clients `clients` (YAML flow items), the route
/// `GET /read` (scope `api/read`) and `GET /write` (scope `api/write`) to `upstream`.
fn issuer_config(upstream: &str, clients: &[&str]) -> String {
    format!(
        r#"{head}state: {{ path: state }}
issuer:
  url: http://issuer.test
  resource_servers:
    - {{ identifier: api, scopes: [read, write] }}
  clients:
{clients}
authorizers:
  local: {{ type: jwt, issuer: self }}
upstreams:
  app: {{ targets: [{upstream}] }}
defaults: {{ authorizer: local }}
routes:
  - {{ route: "GET /read", upstream: app, scopes: [api/read] }}
  - {{ route: "GET /write", upstream: app, scopes: [api/write] }}
"#,
        head = gateway::HEAD,
        clients = clients
            .iter()
            .map(|c| format!("    - {c}\n"))
            .collect::<String>(),
    )
}

const CLIENT_X: &str = "{ client_id: x, client_secret: x-secret, scopes: [api/read, api/write] }";
const CLIENT_Y: &str = "{ client_id: y, client_secret: y-secret, scopes: [api/read, api/write] }";
const CLIENT_Y_READ_ONLY: &str = "{ client_id: y, client_secret: y-secret, scopes: [api/read] }";

/// A token for `id` from the gateway's own token endpoint (HTTP Basic).
async fn issued_token(gw: &TestGateway, id: &str, secret: &str) -> String {
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    let a = gw
        .send(
            "POST",
            "/oauth2/token",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("authorization", &format!("Basic {basic}")),
            ],
            "grant_type=client_credentials",
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_client_removed_by_a_reload_loses_its_tokens_at_once() {
    let up = crate::support::upstream::start("app").await;
    let gw = gateway::start_raw(&issuer_config(&up.url(), &[CLIENT_X, CLIENT_Y]), &[]).await;
    let x = format!("Bearer {}", issued_token(&gw, "x", "x-secret").await);
    let y = format!("Bearer {}", issued_token(&gw, "y", "y-secret").await);
    // Three times each, so the tokens sit in the verified-token cache.
    for _ in 0..3 {
        for t in [&x, &y] {
            assert_eq!(gw.get("/read", &[("authorization", t)]).await.status, 200);
            assert_eq!(gw.get("/write", &[("authorization", t)]).await.status, 200);
        }
    }

    // x removed, y reduced to api/read.
    std::fs::write(&gw.config, issuer_config(&up.url(), &[CLIENT_Y_READ_ONLY])).unwrap();
    assert_eq!(gw.admin_post("/reload").await.status, 200);

    let a = gw.get("/read", &[("authorization", &x)]).await;
    assert_eq!(a.status, 401, "a removed client's token: {}", a.text());
    assert_eq!(
        a.header("www-authenticate"),
        Some(
            r#"Bearer error="invalid_token", error_description="the token's client is not allowed""#
        )
    );
    assert_eq!(gw.get("/write", &[("authorization", &x)]).await.status, 401);

    // y keeps what it still may have, and nothing more.
    let seen_before = up.seen().len();
    let a = gw.get("/read", &[("authorization", &y)]).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(up.last().headers["x-tollgate-scopes"], "api/read");
    let a = gw.get("/write", &[("authorization", &y)]).await;
    assert_eq!(a.status, 403, "a revoked scope: {}", a.text());
    assert_eq!(up.seen().len(), seen_before + 1);

    let m = gw.admin_get("/metrics").await.text();
    assert!(
        m.lines().any(|l| l.starts_with("tollgate_denied_total{")
            && l.contains(r#"reason="token_client_revoked""#)),
        "{m}"
    );
    // And the token endpoint agrees: x gets no new token.
    assert_eq!(
        gw.send(
            "POST",
            "/oauth2/token",
            &[("content-type", "application/x-www-form-urlencoded")],
            "grant_type=client_credentials&client_id=x&client_secret=x-secret",
        )
        .await
        .status,
        401
    );
    gw.stop().await;
}
