//! `tollgate import aws` as an operator runs it: every fixture under tests/fixtures/aws (AWS
//! developer-guide shapes and two public repositories' definitions) imports with exit 0, the
//! written config passes `tollgate check` once its placeholders' environment is set, no key
//! value or client secret is written, and unreadable input is the only failure. Serving the
//! result is tests/interop/test_import_aws.py.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/aws")
}

/// Runs `tollgate import aws` with `args` in the fixtures directory, writing into `out`;
/// (exit code, config text, report text, stderr).
fn import(args: &[&str], out: &Path) -> (i32, String, String, String) {
    let config = out.join("gateway.yaml");
    let report = out.join("report.txt");
    let o = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .current_dir(fixtures())
        .args(["import", "aws"])
        .args(args)
        .arg("-o")
        .arg(&config)
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        std::fs::read_to_string(&config).unwrap_or_default(),
        std::fs::read_to_string(&report).unwrap_or_default(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `tollgate check` on the written config with every variable the header comment names set.
fn check(dir: &Path, config: &str) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.args(["--log-level", "off", "check", "-c"])
        .arg(dir.join("gateway.yaml"));
    for line in config.lines().take_while(|l| l.starts_with('#')) {
        if let Some((name, _)) = line.trim_start_matches('#').trim().split_once(": ")
            && name.starts_with("TOLLGATE_")
        {
            cmd.env(name, "a-secret-set-by-the-operator");
        }
    }
    let o = cmd.output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

/// Every value in the fixtures that is a secret: API key values and client secrets.
fn secrets() -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for (i, _) in text.match_indices("\"value\": \"") {
            let rest = &text[i + 10..];
            out.push(rest[..rest.find('"').unwrap()].to_string());
        }
        for (i, _) in text.match_indices("\"ClientSecret\": \"") {
            let rest = &text[i + 17..];
            out.push(rest[..rest.find('"').unwrap()].to_string());
        }
    }
    assert!(
        out.len() >= 8,
        "the fixtures hold keys and secrets: {out:?}"
    );
    out
}

#[test]
fn every_fixture_imports_into_a_config_that_passes_check() {
    for export in [
        "rest-petstore-oas30.json",
        "rest-petstore-swagger.yaml",
        "http-api-oas30.json",
        "public-url-shortener.yaml",
        "public-fargate-rest-nlb.yaml",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (code, config, report, err) = import(&[export], dir.path());
        assert_eq!(code, 0, "{export}: {err}");
        assert!(
            report.starts_with("tollgate import aws: imported "),
            "{report}"
        );
        let (ok, out) = check(dir.path(), &config);
        assert!(
            ok,
            "{export}: `tollgate check` refuses the import:\n{out}\n{config}"
        );
    }
}

#[test]
fn the_whole_account_imports_without_writing_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let (code, config, report, err) = import(
        &[
            "rest-petstore-oas30.json",
            "--usage-plans",
            "usage-plans.json",
            "--api-keys",
            "api-keys.json",
            "--usage-plan-keys",
            "usage-plan-keys-9k2pq7.json",
            "--usage-plan-keys",
            "u3v4w5=usage-plan-keys-u3v4w5.json",
            "--usage-plan-keys",
            "usage-plan-keys-m8n7b6.json",
            "--usage-plan-keys",
            "usage-plan-keys-zz8yy7.json",
            "--resource-servers",
            "resource-servers.json",
            "--user-pool-client",
            "user-pool-client-inventory-sync.json",
            "--user-pool-client",
            "user-pool-client-partner-writer.json",
            "--user-pool-client",
            "user-pool-client-web-spa.json",
            "--issuer-url",
            "https://api.example.com",
        ],
        dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    for s in secrets() {
        assert!(!config.contains(&s), "secret {s} written:\n{config}");
        assert!(!report.contains(&s), "secret {s} reported:\n{report}");
    }
    let (ok, out) = check(dir.path(), &config);
    assert!(ok, "{out}\n{config}");
    let doc: serde_json::Value = serde_norway::from_str(&config).unwrap();
    // Plans of this API stage only; the other API's and the dev stage's are reported.
    let plans: Vec<&String> = doc["usage_plans"].as_object().unwrap().keys().collect();
    assert_eq!(
        plans,
        [
            "petstore-basic",
            "petstore-premium",
            "petstore-weekly-trial"
        ]
    );
    assert!(
        report.contains("\"Orders-Internal\" covers no stage of this API"),
        "{report}"
    );
    assert!(
        report.contains("\"PetStore-Dev\" covers no stage of this API"),
        "{report}"
    );
    let keys = doc["api_keys"]["keys"].as_array().unwrap();
    let ids: Vec<&str> = keys.iter().map(|k| k["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "initech-legacy",
            "acme-corp",
            "globex-partner",
            "trial-hooli"
        ]
    );
    assert!(
        keys.iter()
            .all(|k| k["key"].as_str().unwrap().starts_with("sha256:"))
    );
    assert_eq!(keys[0]["enabled"], false);
    assert!(report.contains("unused-sandbox"), "{report}");
    // The user pool: two client-credentials clients, the code-flow one reported.
    let clients = doc["issuer"]["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 2);
    assert!(
        report.contains("client petstore-web-spa uses code"),
        "{report}"
    );
    assert_eq!(doc["authorizers"]["petstorecognito"]["issuer"], "self");
    assert!(config.contains("TOLLGATE_CLIENT_SECRET_INVENTORY_SYNC"));
}

#[test]
fn unreadable_input_is_the_only_failure() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, _, err) = import(&["no-such-export.json"], dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("no-such-export.json: cannot read"), "{err}");
    let (code, _, _, err) = import(&["README.md"], dir.path());
    assert_eq!(code, 1, "a Markdown file is no API definition");
    assert!(err.contains("README.md"), "{err}");
    let (code, _, _, err) = import(
        &["http-api-oas30.json", "--upstream", "no-equals-sign"],
        dir.path(),
    );
    assert_eq!(code, 1);
    assert!(err.contains("--upstream takes NAME=VALUE"), "{err}");
    // Plans for another API are reported, not refused.
    let (code, _, report, err) = import(
        &[
            "http-api-oas30.json",
            "--usage-plans",
            "usage-plans-raw.json",
        ],
        dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(report.contains("covers no stage of this API"), "{report}");
}

/// A config using what the managed gateway can also say: a JWT authorizer with scopes and an
/// API key, an external authorizer, a policy, a greedy `ANY`, a mock, `$default`, CORS.
const ROUND_TRIP: &str = r#"listeners: [{ bind: "127.0.0.1:0" }]
upstreams:
  shop: { targets: ["http://127.0.0.1:9/api"], timeout: 5s }
authorizers:
  idp: { type: jwt, issuer: "https://idp.example.com", audience: [shop-app] }
  ext: { type: http, url: "http://127.0.0.1:9/authorize", identity: ["header:X-Tenant", "query:tenant"], cache_ttl: 60s }
policies:
  office: { allow: [203.0.113.0/24], deny: [203.0.113.7/32] }
api_keys: { keys: [] }
cors: { allow_origins: ["https://app.example.com"], allow_headers: [content-type], max_age: 600s }
routes:
  - { route: "GET /items", upstream: shop, authorizer: idp, scopes: [shop/read, shop/admin], api_key_required: true }
  - { route: "POST /items/{id}", upstream: shop, authorizer: ext, policy: office }
  - { route: "ANY /files/{path+}", upstream: shop, authorizer: none }
  - { route: "GET /ping", respond: { status: 203, body: pong, headers: { content-type: text/plain, x-mock: "1" } }, authorizer: none }
  - { route: "$default", upstream: shop, authorizer: none }
"#;

/// What a route does, independent of the names an import gives upstreams and policies.
fn behaviour(doc: &serde_json::Value) -> Vec<serde_json::Value> {
    let mut out: Vec<serde_json::Value> = doc["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let up = r["upstream"].as_str().map(|u| &doc["upstreams"][u]);
            let timeout = up.and_then(|u| u["timeout"].as_str()).map(|t| {
                tollgate::config::units::parse_duration(t)
                    .unwrap()
                    .as_millis() as u64
            });
            let policy = r["policy"].as_str().map(|p| &doc["policies"][p]);
            let auth = r["authorizer"].as_str().unwrap_or("none");
            let mut a = doc["authorizers"].get(auth).cloned().unwrap_or_default();
            if let Some(m) = a.as_object_mut() {
                // Durations are written in other units; compare their length.
                if let Some(t) = m.get("cache_ttl").and_then(|t| t.as_str()) {
                    let secs = tollgate::config::units::parse_duration(t)
                        .unwrap()
                        .as_secs();
                    m.insert("cache_ttl".into(), secs.into());
                }
            }
            serde_json::json!({
                "route": r["route"],
                "targets": up.map(|u| u["targets"].clone()),
                "timeout_ms": timeout,
                "respond": r["respond"],
                "authorizer": a,
                "scopes": r["scopes"],
                "api_key_required": r["api_key_required"].as_bool().unwrap_or(false),
                "policy": policy,
            })
        })
        .collect();
    out.sort_by_key(|r| r["route"].to_string());
    out
}

#[test]
fn the_aws_extensions_export_imports_back_into_an_equivalent_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    std::fs::write(&config, ROUND_TRIP).unwrap();
    let export = dir.path().join("export.yaml");
    let o = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["--log-level", "off", "openapi", "-c"])
        .arg(&config)
        .args(["--format", "yaml", "--aws-extensions", "-o"])
        .arg(&export)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let back = dir.path().join("back");
    std::fs::create_dir(&back).unwrap();
    let (code, text, report, err) = import(&[export.to_str().unwrap()], &back);
    assert_eq!(code, 0, "{err}");
    let (ok, out) = check(&back, &text);
    assert!(ok, "{out}\n{text}");
    let before: serde_json::Value = serde_norway::from_str(ROUND_TRIP).unwrap();
    let after: serde_json::Value = serde_norway::from_str(&text).unwrap();
    assert_eq!(
        serde_json::to_string_pretty(&behaviour(&after)).unwrap(),
        serde_json::to_string_pretty(&behaviour(&before)).unwrap(),
        "report:\n{report}\nconfig:\n{text}"
    );
    assert_eq!(after["cors"], before["cors"], "{text}");
}
