//! `tollgate check` and config errors: every error class is reported as FILE:LINE:COL with a
//! clear message, all errors at once, exit code 1; a good config prints one line, exit code 0.

use std::process::Command;

fn check(yaml: &str) -> (i32, String) {
    check_in(tempfile::tempdir().unwrap().path(), yaml)
}

/// `tollgate check` on `yaml` written as `dir/gateway.yaml`; that path reads `F` in the output.
pub(crate) fn check_in(dir: &std::path::Path, yaml: &str) -> (i32, String) {
    let path = dir.join("gateway.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["--log-level", "off", "check", "-c"])
        .arg(&path)
        .env_remove("TOLLGATE_TEST_UNSET")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).replace(&path.display().to_string(), "F");
    (out.status.code().unwrap_or(-1), text)
}

const BASE: &str = "listeners:\n  - bind: 127.0.0.1:0\n";

#[test]
fn good_config_prints_a_summary() {
    let (code, out) = check(&format!(
        "{BASE}routes:\n  - {{ route: \"GET /a\", respond: {{ body: x }} }}\n"
    ));
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().count(), 1);
    assert!(out.contains("OK: 1 routes"), "{out}");
}

#[test]
fn the_shipped_gateway_yaml_is_valid() {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args([
            "--log-level",
            "off",
            "check",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.yaml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn each_error_class_is_located() {
    let cases: &[(&str, &str, &str)] = &[
        // (yaml after BASE, expected location, expected message part)
        (
            "routes: []\nupstream:\n  a: {}\n",
            "F:4:1:",
            "unknown field `upstream`",
        ),
        (
            "upstreams:\n  a: { targets: [\"http://127.0.0.1:1\"], timeout: 10 }\nroutes: []\n",
            "F:4:",
            "has no unit",
        ),
        (
            "upstreams:\n  a: { targets: [\"http://127.0.0.1:1\"], timeout: 1.5s }\nroutes: []\n",
            "F:4:",
            "invalid duration",
        ),
        (
            "routes:\n  - { route: \"get /a\", respond: {} }\n",
            "F:4:14:",
            "upper-case HTTP method",
        ),
        (
            "routes:\n  - { route: \"GET /a\", respond: {} }\n  - { route: \"GET /a\", respond: {} }\n",
            "F:5:14:",
            "duplicate route",
        ),
        (
            "routes:\n  - { route: \"GET /a\", upstream: nowhere }\n",
            "F:4:34:",
            "upstream \"nowhere\" is not defined",
        ),
        (
            "routes:\n  - { route: \"GET /a\", authorizer: ghost, respond: {} }\n",
            "F:4:36:",
            "authorizer \"ghost\" is not defined",
        ),
        (
            "authorizers:\n  p: { type: jwt, issuer: x, algorithms: [HS256], secret: { env: TOLLGATE_TEST_UNSET } }\nroutes: []\n",
            "F:4:",
            "environment variable TOLLGATE_TEST_UNSET is not set",
        ),
        (
            "authorizers:\n  p: { type: jwt, issuer: x, jwks_file: missing.json }\nroutes: []\n",
            "F:4:",
            "cannot read",
        ),
        (
            "authorizers:\n  p: { type: jwt, issuer: \"https://idp\", algorithms: [HS256] }\nroutes: []\n",
            "F:4:",
            "HS256 needs `secret`",
        ),
        (
            "authorizers:\n  p: { type: jwt, issuer: \"https://idp\", algorithms: [none] }\nroutes: []\n",
            "F:4:",
            "unknown algorithm \"none\"",
        ),
        (
            "authorizers:\n  p: { type: saml, issuer: x }\nroutes: []\n",
            "F:4:",
            "unknown variant `saml`",
        ),
        (
            "upstreams:\n  a: { targets: [\"http://127.0.0.1:1\"] }\nroutes:\n  - { route: \"GET /a\", upstream: a, respond: {} }\n",
            "F:6:",
            "either `upstream` or `respond`",
        ),
        (
            "routes:\n  - { route: \"GET /a\" }\n",
            "F:4:",
            "needs `upstream` or `respond`",
        ),
        (
            "routes:\n  - { route: \"GET /a\", respond: {}\n",
            "F:",
            "did not find expected",
        ),
        (
            "upstreams:\n  a: { targets: [\"ftp://x\"] }\nroutes: []\n",
            "F:4:",
            "only http:// and https:// targets are supported",
        ),
        (
            "issuer:\n  url: http://localhost:8080\n  clients:\n    - { client_id: a, client_secret: s, scopes: [api/read] }\nroutes: []\n",
            "F:6:50:",
            "scope \"api/read\" is not defined by any resource server",
        ),
        (
            "issuer: { url: \"http://localhost:8080\", token_ttl: 1m }\nroutes: []\n",
            "F:3:",
            "token_ttl must be between 5m and 1d",
        ),
        (
            "issuer: { url: localhost }\nroutes: []\n",
            "F:3:",
            "absolute http(s) URL",
        ),
        (
            "authorizers:\n  local: { type: jwt, issuer: self }\nroutes: []\n",
            "F:4:",
            "`issuer: self` needs an `issuer:` section",
        ),
        (
            "issuer: { url: \"http://localhost:8080\" }\nauthorizers:\n  local: { type: jwt, issuer: self, algorithms: [ES256] }\nroutes: []\n",
            "F:5:",
            "accepts [RS256]",
        ),
        (
            "issuer: { url: \"http://localhost:8080\" }\nroutes:\n  - { route: \"POST /oauth2/token\", respond: {} }\n",
            "F:5:",
            "belongs to the embedded issuer",
        ),
    ];
    for (yaml, loc, msg) in cases {
        let (code, out) = check(&format!("{BASE}{yaml}"));
        assert_eq!(code, 1, "should fail: {yaml}\n{out}");
        assert!(
            out.starts_with(loc),
            "location {loc} for {yaml:?}, got: {out}"
        );
        assert!(
            out.contains(msg),
            "message {msg:?} for {yaml:?}, got: {out}"
        );
        assert!(!out.contains("panicked"), "{out}");
    }
}

#[test]
fn bad_listener_address_is_located() {
    let (code, out) = check("listeners:\n  - bind: localhost\nroutes: []\n");
    assert_eq!(code, 1);
    assert!(out.starts_with("F:2:11:"), "{out}");
}

#[test]
fn all_errors_are_reported_at_once() {
    let (code, out) = check(&format!(
        "{BASE}routes:\n  - {{ route: \"GET /a\", upstream: x }}\n  - {{ route: \"BAD\", respond: {{}} }}\n"
    ));
    assert_eq!(code, 1);
    assert_eq!(out.lines().count(), 2, "{out}");
}

#[test]
fn unreadable_file_and_hash_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["check", "-c", "/nonexistent/gateway.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("cannot read config"));

    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["hash-key", "test"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    );
}

#[test]
fn duplicate_keys_extra_secret_keys_zero_timeouts_and_odd_urls_are_refused() {
    for (yaml, loc, msg) in [
        (
            "upstreams:\n  a: { targets: [\"http://127.0.0.1:1\"] }\n  a: { targets: [\"http://127.0.0.1:2\"] }\nroutes: []\n",
            "F:5:3:",
            "duplicate key `upstreams.a`",
        ),
        (
            "authorizers:\n  p: { type: jwt, issuer: x, algorithms: [HS256], secret: { env: HOME, extra: 1 } }\nroutes: []\n",
            "F:4:",
            "did not match any variant",
        ),
        (
            "upstreams:\n  a: { targets: [\"http://127.0.0.1:1\"], timeout: 0s }\nroutes: []\n",
            "F:4:",
            "must be greater than 0",
        ),
        (
            "authorizers:\n  p: { type: jwt, issuer: x, jwks_uri: \"ftp://idp/jwks\" }\nroutes: []\n",
            "F:4:",
            "absolute http(s) URL",
        ),
    ] {
        let (code, out) = check(&format!("{BASE}{yaml}"));
        assert_eq!(code, 1, "{yaml}\n{out}");
        assert!(
            out.starts_with(loc) && out.contains(msg),
            "{loc} {msg:?} for {yaml:?}, got: {out}"
        );
    }
    let (code, out) = check(&format!(
        "{BASE}routes:\n  - {{ route: \"GET /a\", respond: {{}} }}\n  - {{ route: \"GET /b\", upstream: nowhere }}\n  - {{ route: \"GET /a\", respond: {{}} }}\n"
    ));
    assert_eq!(code, 1);
    assert!(
        out.contains("F:6:14: duplicate route") && out.contains("(routes.0, line 4)"),
        "{out}"
    );
}

#[test]
fn config_flag_works_before_or_after_the_command_and_from_the_environment() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.yaml");
    for args in [vec!["-c", path, "check"], vec!["check", "-c", path]] {
        let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["--log-level", "off"])
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["--log-level", "off", "check"])
        .env("TOLLGATE_CONFIG", path)
        .current_dir("/")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn api_key_and_plan_errors_are_located() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("keys.csv"),
        "Name,Key,Enabled,UsagePlanIds\nok,k1,true,gold\nbad,k2,true,platinum\n",
    )
    .unwrap();
    let cases: &[(&str, &str, &str)] = &[
        (
            "usage_plans:\n  gold: {}\napi_keys:\n  keys:\n    - { id: a, key: k, plan: silver }\nroutes: []\n",
            "F:7:",
            "usage plan \"silver\" is not defined",
        ),
        (
            "usage_plans:\n  gold: { route_throttle: { \"GET /nope\": { rate: 1, burst: 1 } } }\nroutes: []\n",
            "F:4:",
            "no route \"GET /nope\" is defined",
        ),
        (
            "usage_plans:\n  gold: { throttle: { rate: 0, burst: 1 } }\nroutes: []\n",
            "F:4:",
            "rate must be above 0",
        ),
        (
            "usage_plans:\n  gold: { quota: { limit: 5, period: year } }\nroutes: []\n",
            "F:4:",
            "unknown variant `year`",
        ),
        (
            "routes:\n  - { route: \"GET /a\", respond: {}, api_key_required: true }\n",
            "F:4:",
            "no `api_keys:` section",
        ),
        (
            "usage_plans:\n  gold: {}\napi_keys:\n  keys:\n    - { id: a, key: k1 }\n    - { id: a, key: k2 }\nroutes: []\n",
            "F:8:",
            "key id \"a\" is used twice",
        ),
        (
            "api_keys:\n  keys:\n    - { id: a, key: \"sha256:xyz\" }\nroutes: []\n",
            "F:5:",
            "64 hex digits",
        ),
        (
            "state: { backend: redis }\nroutes: []\n",
            "F:3:",
            "needs `url",
        ),
        (
            "state: { backend: redis, url: \"http://x\" }\nroutes: []\n",
            "F:3:",
            "not a Redis URL",
        ),
    ];
    for (yaml, loc, msg) in cases {
        let (code, text) = check_in(dir.path(), &format!("{BASE}{yaml}"));
        assert_eq!(code, 1, "{yaml}\n{text}");
        assert!(
            text.starts_with(loc) && text.contains(msg),
            "{loc} {msg:?} for {yaml:?}, got: {text}"
        );
    }
    // A bad CSV row is reported at its own file and line.
    let (_, text) = check_in(
        dir.path(),
        &format!(
            "{BASE}usage_plans:\n  gold: {{}}\napi_keys: {{ import: keys.csv }}\nroutes: []\n"
        ),
    );
    let csv = dir.path().join("keys.csv");
    assert!(
        text.contains(&format!(
            "{}:3:1: key \"bad\": usage plan \"platinum\" is not defined",
            csv.display()
        )),
        "{text}"
    );
}

#[test]
fn a_missing_referenced_file_is_reported_at_the_key_that_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = check_in(
        dir.path(),
        &format!(
            "{BASE}api_keys:\n  import: partners.csv\nauthorizers:\n  a: {{ type: jwt, issuer: x, jwks_file: keys.json }}\nroutes:\n  - {{ route: \"GET /x\", authorizer: a, respond: {{ body: ok }} }}\n"
        ),
    );
    assert_eq!(code, 1);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("F:4:11: ") && l.contains("partners.csv")),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("F:6:41: ") && l.contains("keys.json")),
        "{out}"
    );
}

#[test]
fn api_errors_are_located() {
    let api = "apis:\n  orders: { hosts: [a.test], stage: prod, routes: [] }\n";
    let cases: [(String, &str, &str); 15] = [
        (
            "defaults: { authorizer: nope }\nroutes:\n  - { route: \"GET /a\", respond: {} }\n".into(),
            "F:3:25:",
            "authorizer \"nope\" is not defined",
        ),
        (
            "apis:\n  a: { hosts: [x.test], defaults: { authorizer: nope }, routes: [] }\n".into(),
            "F:4:",
            "authorizer \"nope\" is not defined",
        ),
        (
            "apis:\n  a: { hosts: [x.test], stage: prod, routes: [] }\n  b: { api: a, hosts: [y.test], stage: prod, routes: [] }\n".into(),
            "F:5:",
            "entry \"a\" is already API \"a\" with stage \"prod\"",
        ),
        (
            format!("usage_plans:\n  gold: {{ apis: [orders/prod, nope] }}\n{api}"),
            "F:4:31:",
            "API \"nope\" is not defined",
        ),
        (
            format!("usage_plans:\n  gold: {{ apis: [orders/beta] }}\n{api}"),
            "F:4:18:",
            "API \"orders\" has stage \"prod\", not \"beta\"",
        ),
        (
            "apis:\n  orders:\n    hosts: [a.test]\n    routes:\n      - { route: \"GET /a/{x}\", respond: {} }\n      - { route: \"GET /a/{y}\", respond: {} }\n".into(),
            "F:8:",
            "duplicate route: same method and path shape as an earlier route (apis.orders.routes.0, line 7)",
        ),
        (
            "apis:\n  a: { hosts: [x.test], base_path: /v1, routes: [] }\n  b: { hosts: [X.test], base_path: /v1/, routes: [] }\n".into(),
            "F:5:3:",
            "APIs \"a\" and \"b\" both claim host \"x.test\" with base path \"/v1\"",
        ),
        (
            "apis:\n  a: { base_path: /v1, routes: [] }\n  b: { base_path: /v1, routes: [] }\n".into(),
            "F:5:3:",
            "both serve every unclaimed host under base path \"/v1\"",
        ),
        (
            "apis:\n  a: { hosts: [ok.test, \"api.*.test\"], routes: [] }\n".into(),
            "F:4:",
            "a wildcard is one leading `*.`",
        ),
        (
            "apis:\n  a: { routes: [] }\n".into(),
            "F:4:",
            "give it `hosts` or a `base_path`",
        ),
        (
            "apis:\n  default: { hosts: [x.test] }\n".into(),
            "F:4:3:",
            "`default` names the API of the top-level routes",
        ),
        (
            "usage_plans:\n  p1: { apis: [a] }\n  p2: {}\napi_keys:\n  keys:\n    - { id: k, key: kk, plans: [p1, p2] }\napis:\n  a: { hosts: [x.test], routes: [] }\n".into(),
            "F:8:",
            "usage plans \"p1\" and \"p2\" both cover API \"a\"",
        ),
        (
            "apis:\n  a: { hosts: [x.test], base_path: \"/a%2Fb\", routes: [] }\n".into(),
            "F:4:",
            "segments are letters, digits",
        ),
        (
            "usage_plans:\n  p1: {}\napi_keys:\n  keys:\n    - { id: k, key: kk, plan: p1, plans: [p1] }\n".into(),
            "F:7:",
            "either `plan` or `plans`",
        ),
        (
            format!(
                "usage_plans:\n  gold: {{ apis: [default], route_throttle: {{ \"GET /o\": {{ rate: 1, burst: 1 }} }} }}\n{api}routes: []\n"
            )
            .replace("routes: [] }", "routes: [{ route: \"GET /o\", respond: {} }] }"),
            "F:4:",
            "no route \"GET /o\" is defined in the APIs this plan covers",
        ),
    ];
    let mut wrong = Vec::new();
    for (yaml, loc, msg) in cases {
        let (code, text) = check(&format!("{BASE}{yaml}"));
        if code != 1 || !text.starts_with(loc) || !text.contains(msg) {
            wrong.push(format!("{loc} {msg:?} for\n{yaml}got ({code}): {text}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The same route key in two APIs, and one host under two base paths, are fine.
    let (code, text) = check(&format!(
        "{BASE}apis:\n  a: {{ hosts: [x.test], base_path: /a, routes: [{{ route: \"GET /o\", respond: {{}} }}] }}\n  b: {{ hosts: [x.test], base_path: /b, routes: [{{ route: \"GET /o\", respond: {{}} }}] }}\nroutes:\n  - {{ route: \"GET /o\", respond: {{}} }}\n"
    ));
    assert_eq!(code, 0, "{text}");
}

/// The two-domain example of docs/configuration.md ("A complete edge config") is a config
/// `tollgate check` accepts, so the documentation cannot drift from what the gateway reads.
#[test]
fn the_documented_edge_config_is_valid() {
    let doc = include_str!("../../docs/configuration.md");
    let section = doc
        .split("### A complete edge config")
        .nth(1)
        .expect("docs/configuration.md has the edge example");
    let yaml = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the section has a yaml block");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    let yaml = yaml.replace("0.0.0.0:8080", "127.0.0.1:0");
    std::fs::write(
        &path,
        format!("{yaml}admin: {{ bind: 127.0.0.1:0 }}\nstate: {{ path: state }}\n"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["--log-level", "off", "check", "-c"])
        .arg(&path)
        .env("STOREFRONT_SECRET", "documented-secret")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("3 APIs"), "{text}");
}

#[test]
fn a_csv_key_in_two_plans_for_one_api_is_located_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("keys.csv"),
        "Name,Key,UsagePlanIds\nok,k1,\"a;b\"\nclash,k2,\"a,c\"\n",
    )
    .unwrap();
    let (code, text) = check_in(
        dir.path(),
        &format!(
            "{BASE}usage_plans:\n  a: {{ apis: [x] }}\n  b: {{ apis: [y] }}\n  c: {{ apis: [x] }}\napi_keys:\n  import: keys.csv\napis:\n  x: {{ hosts: [x.test], routes: [] }}\n  y: {{ hosts: [y.test], routes: [] }}\n"
        ),
    );
    assert_eq!(code, 1, "{text}");
    let csv = dir.path().join("keys.csv").display().to_string();
    assert!(
        text.starts_with(&format!(
            "{csv}:3:1: key \"clash\": usage plans \"a\" and \"c\" both cover API \"x\""
        )),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1, "{text}");
}
