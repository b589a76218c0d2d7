//! Live reload from file changes: steady traffic while the config is rewritten 20 times
//! (routes added and removed, a key revoked, broken files in between) loses no request, and each
//! change is served within a second; a Kubernetes ConfigMap-style symlink swap is seen too.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::gateway::{self, TestGateway};

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
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        let url = gw.url("/stable");
        clients.push(tokio::spawn(async move {
            let client = gateway::client();
            while !stop.load(Ordering::Relaxed) {
                let req = http::Request::get(&url).body(Default::default()).unwrap();
                let ok = match client.request(req).await {
                    Ok(r) => {
                        r.status() == 200
                            && http_body_util::BodyExt::collect(r.into_body())
                                .await
                                .is_ok()
                    }
                    Err(_) => false,
                };
                sent.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

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
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
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
