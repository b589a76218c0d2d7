//! One test per mapping rule (docs/migrating.md), on small exports written here; the fixtures
//! under tests/fixtures/aws are imported whole by tests/it/import_aws.rs.

use std::path::PathBuf;

use serde_json::{Value, json};

use super::*;

fn rest(paths: Value) -> Value {
    json!({
        "openapi": "3.0.1",
        "info": {"title": "Pet Store", "version": "1"},
        "servers": [{"url": "https://a1b2c3d4e5.execute-api.eu-west-1.amazonaws.com/{basePath}",
                     "variables": {"basePath": {"default": "/prod"}}}],
        "paths": paths,
    })
}

fn proxy(uri: &str) -> Value {
    json!({"x-amazon-apigateway-integration": {"type": "http_proxy", "httpMethod": "ANY", "uri": uri}})
}

fn run_all(src: Sources, opts: Options) -> (Value, Import) {
    let done = import(&src, &opts).expect("the export is an API");
    (
        serde_json::to_value(&done.config).expect("YAML values are JSON"),
        done,
    )
}

fn run_opts(doc: Value, opts: Options) -> (Value, Import) {
    let src = Sources {
        export: (PathBuf::from("export.json"), doc),
        ..Sources::default()
    };
    run_all(src, opts)
}

fn run(doc: Value) -> (Value, Import) {
    run_opts(doc, Options::default())
}

/// The routes of the imported entry (`apis.pet-store`) or of the top level.
fn routes(cfg: &Value) -> Vec<Value> {
    let r = cfg
        .pointer("/apis/pet-store/routes")
        .or_else(|| cfg.get("routes"))
        .expect("routes");
    r.as_array().unwrap().clone()
}

fn route<'a>(rs: &'a [Value], key: &str) -> &'a Value {
    rs.iter()
        .find(|r| r["route"] == key)
        .unwrap_or_else(|| panic!("no route {key} in {rs:#?}"))
}

fn reported(done: &Import, needle: &str) -> bool {
    done.findings
        .iter()
        .any(|f| f.path.contains(needle) || f.what.contains(needle))
}

#[test]
fn paths_and_methods_become_route_keys_under_the_stage_base_path() {
    let (cfg, done) = run(rest(json!({
        "/pets": {"get": proxy("http://pets.internal/pets"), "post": proxy("http://pets.internal/pets")},
        "/pets/{petId}/": {"get": proxy("http://pets.internal/pets/{petId}")},
        "/{proxy+}": {"x-amazon-apigateway-any-method": proxy("http://pets.internal/{proxy}")},
        "/files/{name}.json": {"get": proxy("http://pets.internal/files")},
    })));
    let entry = &cfg["apis"]["pet-store"];
    assert_eq!(entry["base_path"], "/prod");
    assert_eq!(entry["stage"], "prod");
    let rs = routes(&cfg);
    let keys: Vec<&str> = rs.iter().map(|r| r["route"].as_str().unwrap()).collect();
    // `ANY /`: the greedy route takes at least one segment on the managed gateway.
    assert_eq!(
        keys,
        [
            "GET /pets",
            "POST /pets",
            "GET /pets/{petId}",
            "ANY /{proxy+}",
            "ANY /"
        ]
    );
    assert_eq!(route(&rs, "ANY /")["respond"]["status"], 403);
    assert!(
        reported(&done, "/files/{name}.json"),
        "{:#?}",
        done.findings
    );
}

#[test]
fn document_settings_without_a_counterpart_are_reported() {
    let mut d = rest(json!({"/pets": {"get": proxy("http://p/pets")}}));
    d["x-amazon-apigateway-gateway-responses"] = json!({"UNAUTHORIZED": {"statusCode": 401}});
    d["x-amazon-apigateway-binary-media-types"] = json!(["image/png"]);
    d["x-amazon-apigateway-endpoint-configuration"] = json!({"vpcEndpointIds": ["vpce-1"]});
    let (_, done) = run(d);
    assert!(reported(&done, "gateway-responses"), "{:#?}", done.findings);
    assert!(reported(&done, "endpoint-configuration"));
    assert!(!reported(&done, "binary-media-types"));
}

#[test]
fn an_http_api_default_stage_is_the_default_api_with_its_default_route() {
    let doc = json!({
        "openapi": "3.0.1", "info": {"title": "orders", "version": "1"},
        "x-amazon-apigateway-importexport-version": "1.0",
        "servers": [{"url": "https://x9.execute-api.us-east-1.amazonaws.com/{basePath}",
                     "variables": {"basePath": {"default": ""}}}],
        "paths": {"/$default": {"x-amazon-apigateway-any-method": {
            "isDefaultRoute": true,
            "x-amazon-apigateway-integration": {"type": "http_proxy", "httpMethod": "ANY",
                "uri": "https://orders.internal", "payloadFormatVersion": "1.0"}}}},
    });
    let (cfg, _) = run(doc);
    assert!(cfg.get("apis").is_none(), "{cfg:#}");
    let rs = routes(&cfg);
    assert_eq!(route(&rs, "$default")["upstream"], "orders-internal");
    assert_eq!(
        cfg["upstreams"]["orders-internal"]["targets"][0],
        "https://orders.internal"
    );
}

#[test]
fn integration_uris_become_upstreams_by_origin_and_prefix_with_their_timeouts() {
    let mut slow = proxy("https://api.example.com/v2/pets/{id}");
    slow["x-amazon-apigateway-integration"]["timeoutInMillis"] = json!(5000);
    let (cfg, done) = run(rest(json!({
        "/pets": {"get": proxy("https://api.example.com/v2/pets")},
        "/pets/{petId}": {"get": slow},
        "/legacy": {"get": proxy("https://api.example.com/cgi/list.pl")},
    })));
    let rs = routes(&cfg);
    let ups = &cfg["upstreams"];
    let fast = route(&rs, "GET /pets")["upstream"].as_str().unwrap();
    assert_eq!(
        ups[fast],
        json!({"targets": ["https://api.example.com/v2"]})
    );
    let slow = route(&rs, "GET /pets/{petId}")["upstream"]
        .as_str()
        .unwrap();
    assert_eq!(ups[slow]["timeout"], "5000ms");
    assert_ne!(fast, slow);
    // A path the managed gateway rewrote is reported; the upstream gets the route's path.
    assert!(reported(&done, "cgi/list.pl"), "{:#?}", done.findings);
}

#[test]
fn upstream_and_lambda_rewrites_replace_targets() {
    let lambda = json!({"x-amazon-apigateway-integration": {"type": "aws_proxy", "httpMethod": "POST",
        "uri": "arn:aws:apigateway:us-east-1:lambda:path/2015-03-31/functions/arn:aws:lambda:us-east-1:123456789012:function:orders/invocations"}});
    let doc = rest(json!({
        "/pets": {"get": proxy("https://old.example.com/pets")},
        "/orders": {"post": lambda.clone()},
        "/stock": {"get": proxy("http://${stageVariables.stock}/stock")},
    }));
    let (cfg, done) = run(doc.clone());
    let rs = routes(&cfg);
    assert_eq!(route(&rs, "POST /orders")["respond"]["status"], 501);
    assert!(reported(&done, "function:orders"));
    assert!(reported(&done, "stage variable stock"));
    let stock = route(&rs, "GET /stock")["upstream"].as_str().unwrap();
    assert_eq!(
        cfg["upstreams"][stock]["targets"][0],
        "http://stage-stock.invalid"
    );
    let opts = Options {
        upstreams: vec![(
            "https://old.example.com".into(),
            "http://10.0.0.5:8080".into(),
        )],
        lambdas: vec![("orders".into(), "http://orders.svc:9000".into())],
        ..Options::default()
    };
    let (cfg, done) = run_opts(doc, opts);
    let rs = routes(&cfg);
    let pets = route(&rs, "GET /pets")["upstream"].as_str().unwrap();
    assert_eq!(cfg["upstreams"][pets]["targets"][0], "http://10.0.0.5:8080");
    let orders = route(&rs, "POST /orders")["upstream"].as_str().unwrap();
    assert_eq!(
        cfg["upstreams"][orders]["targets"][0],
        "http://orders.svc:9000"
    );
    assert!(!reported(&done, "--upstream"), "{:#?}", done.findings);
}

#[test]
fn mocks_become_fixed_answers_and_aws_integrations_501() {
    let mock = json!({"x-amazon-apigateway-integration": {
        "type": "mock",
        "requestTemplates": {"application/json": "{\"statusCode\": 202}"},
        "responses": {
            "default": {"statusCode": "200"},
            "2\\d{2}": {"statusCode": "202",
                "responseParameters": {"method.response.header.X-Mock": "'yes'",
                                       "method.response.header.X-Dyn": "integration.response.header.Y"},
                "responseTemplates": {"application/json": "{\"queued\": true}"}}}}});
    let sqs = json!({"x-amazon-apigateway-integration": {"type": "aws", "httpMethod": "POST",
        "uri": "arn:aws:apigateway:us-east-1:sqs:path/123/queue"}});
    let (cfg, done) = run(rest(json!({"/health": {"get": mock}, "/q": {"post": sqs}})));
    let rs = routes(&cfg);
    assert_eq!(
        route(&rs, "GET /health")["respond"],
        json!({"status": 202, "body": "{\"queued\": true}", "headers": {"x-mock": "yes"}})
    );
    assert!(reported(&done, "X-Dyn"));
    assert_eq!(route(&rs, "POST /q")["respond"]["status"], 501);
    assert!(reported(&done, "sqs"));
}

fn secured(schemes: Value, paths: Value) -> Value {
    let mut d = rest(paths);
    d["components"] = json!({"securitySchemes": schemes});
    d
}

#[test]
fn cognito_scopes_need_access_tokens_and_no_scopes_id_tokens() {
    let schemes = json!({
        "pool": {"type": "apiKey", "name": "Authorization", "in": "header",
                 "x-amazon-apigateway-authtype": "cognito_user_pools",
                 "x-amazon-apigateway-authorizer": {"type": "cognito_user_pools",
                     "providerARNs": ["arn:aws:cognito-idp:eu-west-1:123456789012:userpool/eu-west-1_Pool1"]}},
        "api_key": {"type": "apiKey", "name": "x-api-key", "in": "header"}});
    let mut read = proxy("http://p/pets");
    read["security"] = json!([{"api_key": []}, {"pool": ["pets/read", "pets/admin"]}]);
    let mut me = proxy("http://p/me");
    me["security"] = json!([{"pool": []}]);
    let (cfg, _) = run(secured(
        schemes,
        json!({"/pets": {"get": read}, "/me": {"get": me}}),
    ));
    let rs = routes(&cfg);
    let pets = route(&rs, "GET /pets");
    assert_eq!(pets["authorizer"], "pool");
    assert_eq!(pets["scopes"], json!(["pets/read", "pets/admin"]));
    assert_eq!(pets["api_key_required"], true);
    assert_eq!(
        cfg["authorizers"]["pool"],
        json!({"type": "jwt", "token_use": "access",
               "issuer": "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Pool1"})
    );
    assert_eq!(route(&rs, "GET /me")["authorizer"], "pool-id");
    assert_eq!(cfg["authorizers"]["pool-id"]["token_use"], "id");
    assert_eq!(cfg["api_keys"], json!({"keys": []}));
}

#[test]
fn http_api_jwt_lambda_and_iam_authorizers() {
    let schemes = json!({
        "jwt": {"type": "oauth2", "flows": {}, "x-amazon-apigateway-authorizer": {
            "type": "jwt", "identitySource": "$request.header.X-Token",
            "jwtConfiguration": {"issuer": "https://idp.example.com", "audience": ["aud1"]}}},
        "tenant": {"type": "apiKey", "name": "Unused", "in": "header",
            "x-amazon-apigateway-authtype": "custom",
            "x-amazon-apigateway-authorizer": {"type": "request",
                "identitySource": "$request.header.X-Tenant,$request.querystring.tenant,$stageVariables.x",
                "authorizerUri": "arn:aws:apigateway:us-east-1:lambda:path/2015-03-31/functions/arn:aws:lambda:us-east-1:1:function:tenant/invocations",
                "authorizerResultTtlInSeconds": 60}},
        "sigv4": {"type": "apiKey", "name": "Authorization", "in": "header",
                  "x-amazon-apigateway-authtype": "awsSigv4"}});
    let op = |sec: Value| {
        let mut o = proxy("http://p/x");
        o["security"] = sec;
        o
    };
    let (cfg, done) = run(secured(
        schemes,
        json!({
            "/a": {"get": op(json!([{"jwt": ["orders/read"]}]))},
            "/b": {"get": op(json!([{"tenant": []}]))},
            "/c": {"get": op(json!([{"sigv4": []}]))},
            "/d": {"get": op(json!([]))},
        }),
    ));
    let rs = routes(&cfg);
    assert_eq!(route(&rs, "GET /a")["scopes"], json!(["orders/read"]));
    assert_eq!(
        cfg["authorizers"]["jwt"],
        json!({"type": "jwt", "issuer": "https://idp.example.com", "audience": ["aud1"], "header": "X-Token"})
    );
    let tenant = &cfg["authorizers"]["tenant"];
    assert_eq!(tenant["type"], "http");
    assert_eq!(
        tenant["identity"],
        json!(["header:X-Tenant", "query:tenant"])
    );
    // Its cached answer was a policy checked per route: tollgate's cache would reuse it for
    // every route, so it is off.
    assert_eq!(tenant["cache_ttl"], "0s");
    assert!(reported(&done, "checked per route"));
    assert!(tenant["url"].as_str().unwrap().ends_with(".invalid/"));
    assert!(reported(&done, "$stageVariables.x"));
    assert!(reported(&done, "function:tenant"));
    let iam = &cfg["authorizers"]["sigv4"];
    assert_eq!(iam["region"], "eu-west-1");
    assert_eq!(
        iam["credentials"][0]["secret_access_key"],
        json!({"env": "TOLLGATE_SIGV4_SECRET_SIGV4"})
    );
    assert!(done.env.contains_key("TOLLGATE_SIGV4_SECRET_SIGV4"));
    assert_eq!(route(&rs, "GET /d")["authorizer"], "none");
}

#[test]
fn resource_policy_ip_statements_become_route_policies() {
    let mut d = rest(json!({
        "/pets": {"get": proxy("http://p/pets")},
        "/pets/{id}": {"delete": proxy("http://p/pets/{id}"), "get": proxy("http://p/pets/{id}")},
        "/{proxy+}": {"x-amazon-apigateway-any-method": proxy("http://p/{proxy}")},
    }));
    d["x-amazon-apigateway-policy"] = json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": "*", "Action": "execute-api:Invoke",
         "Resource": "arn:aws:execute-api:eu-west-1:1:a1b2c3d4e5/*"},
        {"Effect": "Deny", "Principal": "*", "Action": "execute-api:Invoke",
         "Resource": "execute-api:/*",
         "Condition": {"NotIpAddress": {"aws:SourceIp": ["10.0.0.0/8", "192.0.2.7"]}}},
        {"Effect": "Deny", "Principal": "*", "Action": "execute-api:Invoke",
         "Resource": "execute-api:/*/DELETE/pets/*",
         "Condition": {"IpAddress": {"aws:SourceIp": "10.9.0.0/16"}}},
        {"Effect": "Deny", "Principal": "*", "Action": "execute-api:Invoke",
         "Resource": "execute-api:/*", "Condition": {"StringNotEquals": {"aws:SourceVpce": "vpce-1"}}},
    ]});
    let (cfg, done) = run(d);
    let entry = &cfg["apis"]["pet-store"];
    let common = entry["defaults"]["policy"].as_str().unwrap();
    assert_eq!(
        cfg["policies"][common],
        json!({"allow": ["10.0.0.0/8", "192.0.2.7/32"]})
    );
    let rs = routes(&cfg);
    let del = route(&rs, "DELETE /pets/{id}")["policy"].as_str().unwrap();
    assert_eq!(
        cfg["policies"][del],
        json!({"allow": ["10.0.0.0/8", "192.0.2.7/32"], "deny": ["10.9.0.0/16"]})
    );
    // The greedy route can serve DELETE /pets/x too: the deny applies to it.
    assert_eq!(route(&rs, "ANY /{proxy+}")["policy"], del);
    assert!(route(&rs, "GET /pets/{id}").get("policy").is_none());
    assert!(reported(&done, "aws:SourceVpce"), "{:#?}", done.findings);
}

#[test]
fn a_policy_without_an_allow_lets_nobody_in_and_cidr_sets_intersect() {
    let mut d = rest(json!({"/pets": {"get": proxy("http://p/pets")}}));
    d["x-amazon-apigateway-policy"] = json!({"Statement": [
        {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::1:root"}, "Action": "execute-api:Invoke",
         "Resource": "*"}]});
    let (cfg, done) = run(d);
    assert_eq!(cfg["policies"]["pet-store"], json!({"allow": []}));
    assert!(reported(&done, "Principal"));
    let nets = |v: &[&str]| -> Vec<ipnet::IpNet> { v.iter().map(|n| n.parse().unwrap()).collect() };
    assert_eq!(
        policy::intersect(
            &nets(&["10.0.0.0/8", "192.0.2.0/24"]),
            &nets(&["10.1.0.0/16", "198.51.100.0/24"])
        ),
        nets(&["10.1.0.0/16"])
    );
    assert!(policy::glob("*/GET/pets/*", "prod/GET/pets/{id}"));
    assert!(!policy::glob("*/GET/pets/*", "prod/GET/pets"));
}

#[test]
fn cors_from_the_http_api_setting_and_from_rest_preflight_mocks() {
    let preflight = json!({"x-amazon-apigateway-integration": {"type": "mock",
        "requestTemplates": {"application/json": "{\"statusCode\": 200}"},
        "responses": {"default": {"statusCode": "200", "responseParameters": {
            "method.response.header.Access-Control-Allow-Origin": "'https://app.example.com'",
            "method.response.header.Access-Control-Allow-Methods": "'GET,OPTIONS'",
            "method.response.header.Access-Control-Allow-Headers": "'Content-Type,Authorization'"}}}}});
    let (cfg, _) = run(rest(
        json!({"/pets": {"get": proxy("http://p/pets"), "options": preflight}}),
    ));
    let entry = &cfg["apis"]["pet-store"];
    assert_eq!(
        entry["cors"],
        json!({"allow_origins": ["https://app.example.com"],
               "allow_headers": ["Content-Type", "Authorization"], "allow_methods": ["GET", "OPTIONS"]})
    );
    assert_eq!(routes(&cfg).len(), 1, "the preflight mock is not a route");
    let mut d = rest(json!({"/pets": {"get": proxy("http://p/pets")}}));
    d["x-amazon-apigateway-cors"] = json!({"allowOrigins": ["*"], "allowCredentials": true,
        "maxAge": 600, "exposeHeaders": ["x-request-id"]});
    let (cfg, done) = run(d);
    assert_eq!(
        cfg["apis"]["pet-store"]["cors"],
        json!({"allow_origins": ["*"], "expose_headers": ["x-request-id"], "max_age": "600s"})
    );
    assert!(reported(&done, "credentials are allowed for origin `*`"));
}

fn plans_sources(doc: Value) -> Sources {
    let plans = json!({"items": [
        {"id": "p1", "name": "Gold Plan",
         "apiStages": [{"apiId": "a1b2c3d4e5", "stage": "prod",
                        "throttle": {"/pets/GET": {"rateLimit": 5.0, "burstLimit": 10},
                                     "/nope/GET": {"rateLimit": 1.0, "burstLimit": 1}}}],
         "throttle": {"rateLimit": 100.5, "burstLimit": 200},
         "quota": {"limit": 5000, "offset": 0, "period": "MONTH"}},
        {"id": "p2", "name": "Other", "apiStages": [{"apiId": "zzz", "stage": "prod"}],
         "throttle": {"rateLimit": 1, "burstLimit": 1}},
        {"id": "p3", "name": "Basic", "apiStages": [{"apiId": "a1b2c3d4e5", "stage": "prod"}]}]});
    let keys = json!({"items": [
        {"id": "k1", "name": "acme", "value": "acme-secret-value-0001", "enabled": true},
        {"id": "k2", "name": "old", "value": "old-secret-value-0002", "enabled": false},
        {"id": "k3", "name": "stray", "value": "stray-secret-value-0003", "enabled": true}]});
    Sources {
        export: (PathBuf::from("export.json"), doc),
        usage_plans: Some((PathBuf::from("plans.json"), plans)),
        api_keys: Some((PathBuf::from("keys.json"), keys)),
        usage_plan_keys: vec![
            (
                None,
                PathBuf::from("usage-plan-keys-p1.json"),
                json!({"items": [{"id": "k1", "type": "API_KEY"}, {"id": "k2", "type": "API_KEY"}]}),
            ),
            (
                Some("p3".into()),
                PathBuf::from("basic.json"),
                json!({"item": [{"id": "k4", "type": "API_KEY", "name": "late", "value": "late-secret-value-0004"}]}),
            ),
        ],
        ..Sources::default()
    }
}

#[test]
fn usage_plans_are_bound_to_the_stage_and_keys_written_as_hashes_only() {
    let doc = rest(json!({"/pets": {"get": proxy("http://p/pets")}}));
    let (cfg, done) = run_all(plans_sources(doc), Options::default());
    let plans = &cfg["usage_plans"];
    assert_eq!(
        plans["gold-plan"],
        json!({"throttle": {"rate": 100.5, "burst": 200},
               "quota": {"limit": 5000, "period": "month"},
               "route_throttle": {"GET /pets": {"rate": 5, "burst": 10}},
               "apis": ["pet-store/prod"]})
    );
    assert_eq!(plans["basic"], json!({"apis": ["pet-store/prod"]}));
    assert!(plans.get("other").is_none());
    assert!(reported(&done, "/nope/GET"), "{:#?}", done.findings);
    let keys = cfg["api_keys"]["keys"].as_array().unwrap();
    let ids: Vec<&str> = keys.iter().map(|k| k["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["acme", "old", "late"]);
    assert_eq!(
        keys[0]["key"],
        format!(
            "sha256:{}",
            crate::util::sha256_hex(b"acme-secret-value-0001")
        )
    );
    assert_eq!(keys[1]["enabled"], false);
    assert_eq!(keys[2]["plan"], "basic");
    // Only in a usage plan's key list: whether it is enabled is unknown, so it is not.
    assert_eq!(keys[2]["enabled"], false);
    assert!(reported(&done, "whether it is enabled is not in the input"));
    assert!(
        reported(&done, "stray"),
        "a key of no plan is reported, not imported"
    );
    let text = done.config_text(std::path::Path::new("export.json"));
    for secret in ["acme-secret", "old-secret", "stray-secret", "late-secret"] {
        assert!(!text.contains(secret), "{secret} leaked into the config");
    }
}

#[test]
fn the_user_pool_becomes_the_embedded_issuer_with_secrets_from_the_environment() {
    let schemes = json!({"pool": {"type": "apiKey", "name": "Authorization", "in": "header",
        "x-amazon-apigateway-authorizer": {"type": "cognito_user_pools",
            "providerARNs": ["arn:aws:cognito-idp:eu-west-1:1:userpool/eu-west-1_Pool1"]}}});
    let mut op = proxy("http://p/pets");
    op["security"] = json!([{"pool": ["pets/read"]}]);
    let doc = secured(schemes, json!({"/pets": {"get": op}}));
    let client = |name: &str, flows: Value| {
        json!({"UserPoolClient": {"UserPoolId": "eu-west-1_Pool1", "ClientName": name,
            "ClientId": format!("{name}-id"), "ClientSecret": "cognito-client-secret-value",
            "AllowedOAuthFlows": flows, "AllowedOAuthScopes": ["pets/read", "openid"],
            "AccessTokenValidity": 2, "TokenValidityUnits": {"AccessToken": "hours"}}})
    };
    let src = Sources {
        export: (PathBuf::from("export.json"), doc),
        resource_servers: Some((
            PathBuf::from("rs.json"),
            json!({"ResourceServers": [
            {"UserPoolId": "eu-west-1_Pool1", "Identifier": "pets",
             "Scopes": [{"ScopeName": "read"}, {"ScopeName": "write"}]}]}),
        )),
        user_pool_clients: vec![
            (
                PathBuf::from("c1.json"),
                client("sync", json!(["client_credentials"])),
            ),
            (PathBuf::from("c2.json"), client("spa", json!(["code"]))),
        ],
        ..Sources::default()
    };
    let opts = Options {
        issuer_url: Some("https://api.example.com".into()),
        ..Options::default()
    };
    let (cfg, done) = run_all(src, opts);
    assert_eq!(
        cfg["issuer"],
        json!({"url": "https://api.example.com", "token_ttl": "7200s",
               "resource_servers": [{"identifier": "pets", "scopes": ["read", "write"]}],
               "clients": [{"client_id": "sync-id",
                            "client_secret": {"env": "TOLLGATE_CLIENT_SECRET_SYNC"},
                            "scopes": ["pets/read"]}]})
    );
    assert_eq!(
        cfg["authorizers"]["pool"],
        json!({"type": "jwt", "issuer": "self"})
    );
    assert!(reported(&done, "client spa"));
    assert!(reported(&done, "openid"));
    let text = done.config_text(std::path::Path::new("export.json"));
    assert!(!text.contains("cognito-client-secret-value"));
    assert!(text.contains("TOLLGATE_CLIENT_SECRET_SYNC"));
}

#[test]
fn only_unreadable_input_is_refused() {
    let src = Sources {
        export: (PathBuf::from("x.json"), json!({"hello": "world"})),
        ..Sources::default()
    };
    assert!(matches!(
        import(&src, &Options::default()),
        Err(ImportError::NotAnApi(..))
    ));
    let dir = std::env::temp_dir().join(format!("tollgate-import-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{ not: [json").unwrap();
    assert!(matches!(
        read_document(&bad),
        Err(ImportError::Unreadable(..))
    ));
    std::fs::write(&bad, "openapi: 3.0.1\npaths: {}\n").unwrap();
    assert_eq!(read_document(&bad).unwrap()["openapi"], "3.0.1");
    assert!(matches!(
        read_document(&dir.join("missing.json")),
        Err(ImportError::Unreadable(..))
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn names_from_the_input_cannot_break_out_of_the_header_comment() {
    let schemes = json!({"pool": {"type": "apiKey", "name": "Authorization", "in": "header",
        "x-amazon-apigateway-authorizer": {"type": "cognito_user_pools",
            "providerARNs": ["arn:aws:cognito-idp:eu-west-1:1:userpool/eu-west-1_Pool1"]}}});
    let doc = secured(schemes, json!({"/pets": {"get": proxy("http://p/pets")}}));
    let evil = json!({"UserPoolClient": {"UserPoolId": "eu-west-1_Pool1",
        "ClientName": "x\nadmin:\n  bind: 0.0.0.0:9901\n#", "ClientId": "c1",
        "AllowedOAuthFlows": ["client_credentials"]}});
    let src = Sources {
        export: (PathBuf::from("export.json"), doc),
        user_pool_clients: vec![(PathBuf::from("c.json"), evil)],
        ..Sources::default()
    };
    let (_, done) = run_all(src, Options::default());
    let text = done.config_text(std::path::Path::new("export\n.json"));
    let parsed: Value = serde_norway::from_str(&text).unwrap();
    assert!(parsed.get("admin").is_none(), "{text}");
    for l in text.lines().take_while(|l| !l.starts_with("listeners")) {
        assert!(l.starts_with('#'), "{l:?} in\n{text}");
    }
}

#[test]
fn stage_case_is_kept_and_quoted_cors_names_unquoted() {
    let preflight = json!({"x-amazon-apigateway-integration": {"type": "mock",
        "responses": {"default": {"statusCode": "200", "responseParameters": {
            "method.response.header.Access-Control-Allow-Origin": "'*'",
            "method.response.header.Access-Control-Allow-Headers": "'Content-Type', 'Authorization'"}}}}});
    let mut d = rest(json!({"/pets": {"get": proxy("http://p/pets"), "options": preflight}}));
    d["servers"][0]["variables"]["basePath"]["default"] = json!("/Prod");
    let (cfg, _) = run(d);
    let entry = &cfg["apis"]["pet-store"];
    assert_eq!(entry["stage"], "Prod");
    assert_eq!(entry["base_path"], "/Prod");
    assert_eq!(
        entry["cors"]["allow_headers"],
        json!(["Content-Type", "Authorization"])
    );
}

/// The attacker's review of the import (each case once opened a route AWS kept closed).
#[test]
fn an_iam_operation_without_a_scheme_and_unknown_schemes_stay_closed() {
    let mut iam = proxy("http://p/orders");
    iam["x-amazon-apigateway-auth"] = json!({"type": "AWS_IAM"});
    let mut odd = proxy("http://p/odd");
    odd["security"] = json!([{"bearer": []}]);
    let mut missing = proxy("http://p/missing");
    missing["security"] = json!([{"nowhere": []}]);
    let schemes = json!({"bearer": {"type": "http", "scheme": "bearer"},
                         "Cognito Users": {"type": "apiKey", "name": "Authorization", "in": "header",
                            "x-amazon-apigateway-authorizer": {"type": "cognito_user_pools",
                                "providerARNs": ["arn:aws:cognito-idp:eu-west-1:1:userpool/eu-west-1_A"]}},
                         "cognito-users": {"type": "apiKey", "name": "Authorization", "in": "header",
                            "x-amazon-apigateway-authorizer": {"type": "cognito_user_pools",
                                "providerARNs": ["arn:aws:cognito-idp:eu-west-1:1:userpool/eu-west-1_B"]}}});
    let mut a = proxy("http://p/a");
    a["security"] = json!([{"Cognito Users": ["x/read"]}]);
    let mut b = proxy("http://p/b");
    b["security"] = json!([{"cognito-users": ["x/read"]}]);
    let (cfg, _) = run(secured(
        schemes,
        json!({"/orders": {"post": iam}, "/odd": {"get": odd}, "/missing": {"get": missing},
               "/a": {"get": a}, "/b": {"get": b}}),
    ));
    let rs = routes(&cfg);
    let auth = |k: &str| route(&rs, k)["authorizer"].as_str().unwrap().to_string();
    assert_eq!(cfg["authorizers"][auth("POST /orders")]["type"], "sigv4");
    for k in ["GET /odd", "GET /missing"] {
        let a = &cfg["authorizers"][auth(k)];
        assert_eq!(a["type"], "http", "{k}: {a}");
        assert!(
            a["url"].as_str().unwrap().ends_with(".invalid/"),
            "{k}: {a}"
        );
    }
    // Two schemes whose names make one slug are two authorizers (two pools).
    assert_ne!(auth("GET /a"), auth("GET /b"));
    assert_ne!(
        cfg["authorizers"][auth("GET /a")]["issuer"],
        cfg["authorizers"][auth("GET /b")]["issuer"]
    );
}

#[test]
fn policy_patterns_match_like_iam_and_never_open_more() {
    let d = |statements: Value| {
        let mut d = rest(json!({
            "/": {"get": proxy("http://p/")},
            "/orders": {"get": proxy("http://p/orders")},
            "/users/{id}": {"get": proxy("http://p/users/{id}")},
            "/admin1": {"get": proxy("http://p/admin1")},
        }));
        d["x-amazon-apigateway-policy"] = json!({"Statement": statements});
        d
    };
    let allow_all = json!({"Effect": "Allow", "Principal": "*", "Action": "execute-api:Invoke",
                           "Resource": "execute-api:/*"});
    let policy_of = |cfg: &Value, rs: &[Value], key: &str| -> Value {
        let entry = &cfg["apis"]["pet-store"];
        let name = route(rs, key)
            .get("policy")
            .cloned()
            .unwrap_or_else(|| entry["defaults"]["policy"].clone());
        cfg["policies"]
            .get(name.as_str().unwrap())
            .cloned()
            .unwrap_or(Value::Null)
    };
    // `prod/*` spans the method and the path: only the office may call anything.
    let (cfg, _) = run(d(
        json!([allow_all.clone(), {"Effect": "Deny", "Principal": "*",
        "Action": "execute-api:Invoke",
        "Resource": "arn:aws:execute-api:eu-west-1:111:a1b2c3d4e5/prod/*",
        "Condition": {"NotIpAddress": {"aws:SourceIp": "203.0.113.0/24"}}}]),
    ));
    let rs = routes(&cfg);
    for k in ["GET /", "GET /orders", "GET /users/{id}"] {
        assert_eq!(
            policy_of(&cfg, &rs, k),
            json!({"allow": ["203.0.113.0/24"]}),
            "{k}"
        );
    }
    // An Allow naming `{id}` literally covers no real path: the route stays closed; `?` is one
    // character in a Deny; a Deny of another API id is not this API's.
    let (cfg, done) = run(d(json!([
        {"Effect": "Allow", "Principal": "*", "Action": "execute-api:Invoke",
         "Resource": ["execute-api:/prod/GET/users/{id}", "execute-api:/prod/GET/orders",
                      "execute-api:/prod/GET/admin?", "execute-api:/prod/GET/"]},
        {"Effect": "Allow", "Principal": "*", "Action": "execute-api:Invoke",
         "Resource": "arn:aws:execute-api:eu-west-1:111:OTHERAPI/*"},
        {"Effect": "Deny", "Principal": "*", "Action": "execute-api:Invoke",
         "Resource": ["execute-api:/*/GET/admin?", "execute-api:/*/GET/users/root"],
         "Condition": {"IpAddress": {"aws:SourceIp": "198.51.100.0/24"}}}])));
    let rs = routes(&cfg);
    assert_eq!(policy_of(&cfg, &rs, "GET /users/{id}")["allow"], json!([]));
    assert_eq!(
        policy_of(&cfg, &rs, "GET /orders"),
        Value::Null,
        "allowed to everyone"
    );
    assert_eq!(
        policy_of(&cfg, &rs, "GET /admin1"),
        json!({"deny": ["198.51.100.0/24"]})
    );
    // The Deny of one user's path applies to the route that serves it.
    assert_eq!(
        policy_of(&cfg, &rs, "GET /users/{id}")["deny"],
        json!(["198.51.100.0/24"])
    );
    assert!(
        !reported(&done, "users/root covers no imported route"),
        "{:#?}",
        done.findings
    );
    assert!(policy::overlap("*/GET/users/root", "prod/GET/users/\u{2}"));
    assert!(!policy::overlap("*/DELETE/pets/*", "prod/GET/pets/\u{2}"));
}

#[test]
fn plans_need_the_api_id_and_a_secured_options_method_stays_a_route() {
    let mut doc = rest(json!({"/pets": {"get": proxy("http://p/pets")}}));
    doc["servers"] = json!([{"url": "https://api.example.com/prod"}]);
    let (cfg, done) = run_all(plans_sources(doc), Options::default());
    assert!(cfg.get("usage_plans").is_none(), "{cfg:#}");
    assert!(reported(&done, "no plan can be told to belong to this API"));
    let preflight = json!({"security": [{"api_key": []}],
        "x-amazon-apigateway-integration": {"type": "mock",
            "responses": {"default": {"statusCode": "200", "responseParameters": {
                "method.response.header.Access-Control-Allow-Origin": "'*'"}}}}});
    let mut d = rest(json!({"/reports": {"options": preflight}}));
    d["components"] = json!({"securitySchemes": {
        "api_key": {"type": "apiKey", "name": "x-api-key", "in": "header"}}});
    let (cfg, _) = run(d);
    let rs = routes(&cfg);
    assert_eq!(route(&rs, "OPTIONS /reports")["api_key_required"], true);
    assert!(cfg["apis"]["pet-store"]["cors"].is_object());
}
