//! `tollgate openapi`: one API of a loaded config written as an OpenAPI 3.1 document, so clients
//! can generate SDKs from what the gateway actually enforces. Routes come from the compiled
//! snapshot (defaults resolved); authorizer details (issuer URLs, headers) from the file.
//!
//! Mapping: each route key is an operation (`ANY` as every method, `{name+}` kept as the managed
//! gateway writes it); `$default` has no path and is listed in `x-tollgate-default-route`. JWT
//! authorizers become an `oauth2` client-credentials scheme when they trust the embedded issuer
//! (its token URL and scopes) and `openIdConnect` otherwise; SigV4 an `apiKey` on
//! `Authorization` with `x-amazon-apigateway-authtype: awsSigv4`; an `http` authorizer an
//! `apiKey` on its first header identity source; API keys an `apiKey` on their header. A route
//! that accepts any of several scopes has one security alternative per scope, each with the API
//! key when the route requires one.
//!
//! With `--aws-extensions` the document also carries the managed gateway's
//! `x-amazon-apigateway-*` fields (integrations, authorizers, CORS, resource policy, `ANY` as
//! `x-amazon-apigateway-any-method`, `$default`), so that `tollgate import aws` reads it back
//! into an equivalent config and a team can move back.

mod aws;

pub use aws::TOLLGATE_EXPORT;

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::config::schema::{AuthorizerCfg, FileConfig};
use crate::issuer::Endpoint;
use crate::routes::{MethodSel, RouteKey, Segment};
use crate::snapshot::{Api, Integration, RouteAuth, Snapshot};

/// The methods `ANY` stands for in the document (OpenAPI has no wildcard method).
const ANY_METHODS: [&str; 7] = ["get", "put", "post", "delete", "options", "head", "patch"];

/// Why no document could be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenApiError {
    /// `--api` names no entry of `apis` (nor `default`).
    UnknownApi(String),
    /// The config has several APIs and `--api` was not given.
    WhichApi(Vec<String>),
}

impl std::fmt::Display for OpenApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenApiError::UnknownApi(n) => write!(f, "no API {n:?} in this config"),
            OpenApiError::WhichApi(names) => write!(
                f,
                "this config has several APIs; choose one with --api: {}",
                names.join(", ")
            ),
        }
    }
}

/// The OpenAPI 3.1 document of the API entry `api` (its name in `apis`, or `default`), or of
/// the only API when `api` is `None`. Refuses an unknown name, and `None` when there are
/// several APIs.
pub fn document(
    snap: &Snapshot,
    file: &FileConfig,
    api: Option<&str>,
    aws: bool,
) -> Result<Value, OpenApiError> {
    let index = match api {
        Some(name) => snap
            .apis
            .iter()
            .position(|a| &*a.entry == name)
            .ok_or_else(|| OpenApiError::UnknownApi(name.to_string()))?,
        None if snap.apis.len() == 1 => 0,
        None => {
            return Err(OpenApiError::WhichApi(
                snap.apis.iter().map(|a| a.entry.to_string()).collect(),
            ));
        }
    };
    let api = &snap.apis[index];
    let key_header = snap.keys.as_ref().map(|k| k.header().as_str().to_string());
    let mut schemes: BTreeMap<String, Value> = BTreeMap::new();
    let mut paths: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
    let mut default_route = false;
    let mut policies: Vec<(String, String)> = Vec::new();
    for route in snap.routes.iter().filter(|r| r.api == index) {
        let Ok(RouteKey::Path { method, segments }) = RouteKey::parse(&route.key) else {
            default_route = true;
            if aws {
                let mut op = json!({"isDefaultRoute": true, "responses": responses(false, false)});
                aws::integration(&mut op, file, route, "");
                paths
                    .entry("/$default".into())
                    .or_default()
                    .insert(aws::ANY_METHOD.into(), op);
            }
            continue;
        };
        let (path, params) = template(&segments);
        if let Integration::Issuer(_, endpoint) = &route.integration {
            let (m, op) = issuer_operation(endpoint, &route.key);
            paths.entry(path).or_default().insert(m.into(), op);
            continue;
        }
        let auth = match &route.auth {
            RouteAuth::None => None,
            RouteAuth::Jwt {
                authorizer, scopes, ..
            } => Some((authorizer.name().to_string(), scopes.clone())),
            RouteAuth::SigV4 { name, scopes, .. } => {
                Some((name.to_str().unwrap_or("sigv4").to_string(), scopes.clone()))
            }
            RouteAuth::External { authorizer, .. } => {
                Some((authorizer.name().to_string(), Vec::new()))
            }
        };
        if let Some((name, _)) = &auth {
            schemes.entry(name.clone()).or_insert_with(|| {
                let mut sc = scheme(file, snap, name);
                if aws {
                    aws::authorizer(&mut sc, file, snap, name);
                }
                sc
            });
        }
        let key = key_header.as_ref().filter(|_| route.api_key_required);
        if let Some(header) = key {
            schemes.entry("api_key".into()).or_insert_with(|| {
                json!({"type": "apiKey", "in": "header", "name": header,
                       "description": "An API key of a usage plan that covers this API"})
            });
        }
        let security = security(auth.as_ref(), key.is_some());
        let operation = json!({
            "operationId": operation_id(&route.key),
            "summary": &*route.key,
            "parameters": params,
            "security": security,
            "responses": responses(!matches!(route.auth, RouteAuth::None), key.is_some()),
        });
        let mut operation = operation;
        let methods: Vec<String> = match &method {
            MethodSel::Any if aws => vec![aws::ANY_METHOD.to_string()],
            MethodSel::Any => ANY_METHODS.iter().map(|m| m.to_string()).collect(),
            MethodSel::One(m) => vec![m.as_str().to_ascii_lowercase()],
        };
        if aws {
            aws::integration(&mut operation, file, route, &path);
            if let Some(p) = aws::route_policy(file, api, route) {
                policies.push((p, aws::resource(api, &method, &path)));
            }
        }
        let entry = paths.entry(path).or_default();
        for m in methods {
            // A method route beats `ANY` on the same path, as in the route table.
            if matches!(method, MethodSel::Any) && entry.contains_key(&m) {
                continue;
            }
            let mut op = operation.clone();
            if matches!(method, MethodSel::Any) {
                op["operationId"] = json!(format!("{}_{m}", operation_id(&route.key)));
            }
            entry.insert(m, op);
        }
    }
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": title(api),
            "version": api.stage.as_deref().unwrap_or(&snap.hash[..12]),
            "description": format!(
                "Generated by tollgate {} from the config with hash {}.",
                env!("CARGO_PKG_VERSION"),
                snap.hash
            ),
        },
        "servers": servers(api),
        "paths": paths,
        "components": {
            "securitySchemes": schemes,
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["message"],
                    "properties": {"message": {"type": "string"}},
                },
                "OAuthError": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"},
                                   "error_description": {"type": "string"}},
                },
            },
        },
    });
    if default_route {
        doc["x-tollgate-default-route"] = json!(true);
    }
    if aws {
        aws::document(&mut doc, file, api, &policies);
    }
    Ok(doc)
}

fn title(api: &Api) -> String {
    match &api.stage {
        Some(s) => format!("{} ({s})", api.name),
        None => api.name.to_string(),
    }
}

/// The path template and its path parameters.
fn template(segments: &[Segment]) -> (String, Vec<Value>) {
    let mut path = String::new();
    let mut params = Vec::new();
    for s in segments {
        path.push('/');
        match s {
            Segment::Literal(l) => path.push_str(l),
            Segment::Param(n) => {
                path.push_str(&format!("{{{n}}}"));
                params.push(json!({"name": n, "in": "path", "required": true,
                                   "schema": {"type": "string"}}));
            }
            Segment::Greedy(n) => {
                // The managed gateway's spelling: the parameter is named `n+`.
                path.push_str(&format!("{{{n}+}}"));
                params.push(
                    json!({"name": format!("{n}+"), "in": "path", "required": true,
                                   "description": "the rest of the path, `/` included",
                                   "schema": {"type": "string"}}),
                );
            }
        }
    }
    if path.is_empty() {
        path.push('/');
    }
    (path, params)
}

/// `GET /items/{id}` as `get_items_id`.
fn operation_id(key: &str) -> String {
    let mut out = String::new();
    for c in key.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_end_matches('_').to_string()
}

/// The security alternatives of a route: one per accepted scope (any of them will do), each
/// with the API key when it is required.
fn security(auth: Option<&(String, Vec<Box<str>>)>, key: bool) -> Value {
    let with_key = |mut m: serde_json::Map<String, Value>| {
        if key {
            m.insert("api_key".into(), json!([]));
        }
        Value::Object(m)
    };
    match auth {
        None if key => json!([with_key(serde_json::Map::new())]),
        None => json!([]),
        Some((name, scopes)) if scopes.is_empty() => {
            let mut m = serde_json::Map::new();
            m.insert(name.clone(), json!([]));
            json!([with_key(m)])
        }
        Some((name, scopes)) => Value::Array(
            scopes
                .iter()
                .map(|s| {
                    let mut m = serde_json::Map::new();
                    m.insert(name.clone(), json!([&**s]));
                    with_key(m)
                })
                .collect(),
        ),
    }
}

/// The answers an operation may get: the upstream's, and the gateway's own refusals that can
/// apply to it.
fn responses(authorized: bool, key: bool) -> Value {
    let err = |d: &str| {
        json!({"description": d, "content": {"application/json": {"schema":
            {"$ref": "#/components/schemas/Error"}}}})
    };
    let mut r = serde_json::Map::new();
    r.insert(
        "default".into(),
        json!({"description": "the upstream's answer"}),
    );
    r.insert(
        "400".into(),
        err("Bad Request: a path or header the gateway refuses"),
    );
    if authorized {
        r.insert(
            "401".into(),
            err("Unauthorized: no or an invalid credential"),
        );
    }
    if authorized || key {
        r.insert(
            "403".into(),
            err("Forbidden: a scope, API key, policy or authorizer refused"),
        );
    }
    r.insert("404".into(), err("Not Found"));
    r.insert("413".into(), err("Request Entity Too Large"));
    r.insert(
        "429".into(),
        err("Too Many Requests, or Limit Exceeded (quota)"),
    );
    r.insert("502".into(), err("Bad Gateway"));
    r.insert("504".into(), err("Endpoint request timed out"));
    Value::Object(r)
}

/// The embedded issuer's built-in routes as what they are (RFC 6749 section 4.4, RFC 8414),
/// not as upstream routes: the token endpoint takes POST only and answers OAuth errors, the
/// discovery documents and key set are the gateway's own JSON.
fn issuer_operation(endpoint: &Endpoint, key: &str) -> (&'static str, Value) {
    let oauth_err = |d: &str| {
        json!({"description": d, "content": {"application/json": {"schema":
            {"$ref": "#/components/schemas/OAuthError"}}}})
    };
    match endpoint {
        Endpoint::Token => (
            "post",
            json!({
                "operationId": "issuer_token",
                "summary": "client-credentials token (client authenticated by HTTP Basic or in the form)",
                "security": [],
                "requestBody": {"required": true, "content": {"application/x-www-form-urlencoded": {
                    "schema": {"type": "object", "required": ["grant_type"], "properties": {
                        "grant_type": {"type": "string", "enum": ["client_credentials"]},
                        "scope": {"type": "string"},
                        "client_id": {"type": "string"},
                        "client_secret": {"type": "string"}}}}}},
                "responses": {
                    "200": {"description": "the access token", "content": {"application/json": {
                        "schema": {"type": "object",
                                   "required": ["access_token", "token_type", "expires_in"],
                                   "properties": {"access_token": {"type": "string"},
                                                  "token_type": {"type": "string"},
                                                  "expires_in": {"type": "integer"}}}}}},
                    "400": oauth_err("invalid_request, invalid_scope, unsupported_grant_type"),
                    "401": oauth_err("invalid_client"),
                    "413": oauth_err("the form is larger than the endpoint reads"),
                    "429": {"description": "too many failed client authentications from this address"},
                },
            }),
        ),
        Endpoint::Discovery | Endpoint::Jwks => (
            "get",
            json!({
                "operationId": operation_id(key),
                "summary": key,
                "security": [],
                "responses": {"200": {"description": "the issuer's document", "content": {
                    "application/json": {"schema": {"type": "object"}}}}},
            }),
        ),
    }
}

/// The security scheme of the authorizer `name`.
fn scheme(file: &FileConfig, snap: &Snapshot, name: &str) -> Value {
    match file.authorizers.get(name) {
        Some(AuthorizerCfg::Jwt(j)) => {
            let own =
                j.issuer == "self" || snap.issuer.as_ref().is_some_and(|i| i.url() == j.issuer);
            match (&snap.issuer, own) {
                (Some(issuer), true) => {
                    let mut scopes = serde_json::Map::new();
                    if let Some(cfg) = &file.issuer {
                        for rs in &cfg.resource_servers {
                            for s in &rs.scopes {
                                scopes.insert(
                                    format!("{}/{s}", rs.identifier),
                                    json!(format!("{s} on {}", rs.identifier)),
                                );
                            }
                        }
                    }
                    json!({"type": "oauth2", "flows": {"clientCredentials": {
                        "tokenUrl": format!("{}/oauth2/token", issuer.url().trim_end_matches('/')),
                        "scopes": scopes,
                    }}})
                }
                _ => json!({"type": "openIdConnect", "openIdConnectUrl": format!(
                    "{}/.well-known/openid-configuration", j.issuer.trim_end_matches('/'))}),
            }
        }
        Some(AuthorizerCfg::Sigv4(_)) => json!({
            "type": "apiKey", "in": "header", "name": "Authorization",
            "x-amazon-apigateway-authtype": "awsSigv4",
        }),
        Some(AuthorizerCfg::Http(h)) => {
            let header = h
                .identity
                .iter()
                .find_map(|s| s.strip_prefix("header:"))
                .unwrap_or("Authorization");
            json!({"type": "apiKey", "in": "header", "name": header,
                   "description": "checked by an external authorizer",
                   "x-amazon-apigateway-authtype": "custom"})
        }
        None => json!({"type": "http", "scheme": "bearer"}),
    }
}

/// `servers`: one per host of the API with its base path (a wildcard as a `{subdomain}`
/// variable); the default API, which serves any host, as the base path alone.
fn servers(api: &Api) -> Value {
    let base = if api.base_path.is_empty() {
        "/"
    } else {
        &api.base_path
    };
    if api.hosts.is_empty() {
        return json!([{"url": base}]);
    }
    Value::Array(
        api.hosts
            .iter()
            .map(|h| match h {
                crate::apis::HostPattern::Exact(n) => {
                    json!({"url": format!("https://{n}{}", api.base_path)})
                }
                crate::apis::HostPattern::Wildcard(suffix) => json!({
                    "url": format!("https://{{subdomain}}{suffix}{}", api.base_path),
                    "variables": {"subdomain": {"default": "www"}},
                }),
            })
            .collect(),
    )
}
