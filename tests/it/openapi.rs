//! `tollgate openapi`: the document the real binary writes for a config, checked for what an SDK
//! generator relies on: one operation per route and method, path parameters, the security
//! schemes of each authorizer kind, scopes as alternatives, servers from hosts and base paths.

use std::process::Command;

use serde_json::Value;

const CONFIG: &str = include_str!("../fixtures/openapi-every-kind.yaml");

/// Runs `tollgate openapi` with `args` on [`CONFIG`]; (exit code, stdout, stderr).
fn openapi(args: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, CONFIG).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["--log-level", "off", "openapi", "-c"])
        .arg(&path)
        .args(args)
        .env("OPENAPI_SECRET", "s3cret-for-the-test")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn doc(args: &[&str]) -> Value {
    let (code, out, err) = openapi(args);
    assert_eq!(code, 0, "{out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn every_route_is_an_operation_with_its_security() {
    let d = doc(&["--api", "default"]);
    assert_eq!(d["openapi"], "3.1.0");
    assert_eq!(d["servers"], serde_json::json!([{"url": "/"}]));
    let paths = d["paths"].as_object().unwrap();
    // The issuer's built-in routes are the default API's too.
    assert!(paths.contains_key("/oauth2/token"));
    // Any of two scopes: two alternatives, each with the API key the route requires.
    assert_eq!(
        d["paths"]["/items"]["get"]["security"],
        serde_json::json!([{"local": ["shop/read"], "api_key": []}, {"local": ["shop/write"], "api_key": []}])
    );
    let item = &d["paths"]["/items/{id}"]["get"];
    assert_eq!(item["parameters"][0]["name"], "id");
    assert_eq!(item["parameters"][0]["in"], "path");
    assert!(item["responses"]["401"].is_object() && item["responses"]["403"].is_object());
    // ANY as every method; the POST route of the same path keeps its own operation.
    let files = d["paths"]["/files/{path+}"].as_object().unwrap();
    for m in ["get", "put", "delete", "patch", "head", "options"] {
        assert_eq!(
            files[m]["security"],
            serde_json::json!([{"partner": []}]),
            "{m}"
        );
    }
    assert_eq!(
        files["post"]["security"],
        serde_json::json!([{"signed": []}])
    );
    assert_eq!(files["get"]["parameters"][0]["name"], "path+");
    // Open routes: no security, no 401.
    let status = &d["paths"]["/status"]["get"];
    assert_eq!(status["security"], serde_json::json!([]));
    assert!(status["responses"].get("401").is_none());
    assert_eq!(d["x-tollgate-default-route"], true);

    let schemes = &d["components"]["securitySchemes"];
    assert_eq!(schemes["local"]["type"], "oauth2");
    let flow = &schemes["local"]["flows"]["clientCredentials"];
    assert_eq!(flow["tokenUrl"], "https://auth.example.test/oauth2/token");
    assert!(flow["scopes"]["shop/write"].is_string());
    assert_eq!(
        schemes["partner"],
        serde_json::json!({"type": "openIdConnect", "openIdConnectUrl": "https://idp.partner.test/pool/.well-known/openid-configuration"})
    );
    assert_eq!(
        schemes["signed"]["x-amazon-apigateway-authtype"],
        "awsSigv4"
    );
    assert_eq!(schemes["custom"]["name"], "x-token");
    assert_eq!(schemes["api_key"]["name"], "x-api-key");
    // No secret of the config is in the document.
    let text = d.to_string();
    assert!(!text.contains("s3cret-for-the-test") && !text.contains("9f86d081"));
}

#[test]
fn an_api_gets_its_hosts_and_base_path_as_servers() {
    let d = doc(&["--api", "orders"]);
    assert_eq!(d["info"]["title"], "orders (prod)");
    assert_eq!(d["info"]["version"], "prod");
    assert_eq!(
        d["servers"],
        serde_json::json!([
            {"url": "https://api.example.test/orders"},
            {"url": "https://{subdomain}.orders.example.test/orders", "variables": {"subdomain": {"default": "www"}}},
        ])
    );
    assert_eq!(d["paths"].as_object().unwrap().len(), 1);
    assert!(d["paths"]["/list"]["get"].is_object());
}

#[test]
fn several_apis_need_a_choice_and_yaml_is_the_same_document() {
    let (code, _, err) = openapi(&[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("choose one with --api: default, orders"),
        "{err}"
    );
    let (code, _, err) = openapi(&["--api", "nope"]);
    assert_eq!((code, err.trim()), (1, "no API \"nope\" in this config"));
    let (code, yaml, err) = openapi(&["--api", "orders", "--format", "yaml"]);
    assert_eq!(code, 0, "{err}");
    let from_yaml: Value = serde_norway::from_str(&yaml).unwrap();
    assert_eq!(from_yaml, doc(&["--api", "orders"]));
}
