//! The API an export describes (product, stage, id, region, where the config serves it) and
//! what translating its paths produced.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use serde_norway::{Mapping, Value as Y};

use super::cx::{ImportError, Options, slug, stage_name};

/// The operation keys of a path item, and `x-amazon-apigateway-any-method` (`ANY`).
pub(crate) const METHODS: [&str; 8] = [
    "get",
    "put",
    "post",
    "delete",
    "options",
    "head",
    "patch",
    "x-amazon-apigateway-any-method",
];

/// Which product exported the definition: the two differ in `$default` routes, stages and
/// how CORS is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// `aws apigateway get-export` (REST APIs).
    Rest,
    /// `aws apigatewayv2 export-api` (HTTP APIs).
    Http,
}

/// The API and stage an export describes, and where the written config serves it.
#[derive(Debug)]
pub(crate) struct Api {
    /// The entry's name in `apis`; `None` when the routes are the top-level (default) API.
    pub(crate) entry: Option<String>,
    /// Host names of the entry (`--host`).
    pub(crate) hosts: Vec<String>,
    /// Base path of the entry (`/` for none).
    pub(crate) base_path: String,
    /// The stage, when the export names one.
    pub(crate) stage: Option<String>,
    /// The API id, from an execute-api server URL (matches usage plans' `apiStages`).
    pub(crate) api_id: Option<String>,
    /// The region, from an execute-api server URL (SigV4's credential scope).
    pub(crate) region: Option<String>,
    pub(crate) flavor: Flavor,
}

impl Api {
    /// Reads the API's identity from the document. Refuses one that is not OpenAPI 3 or
    /// Swagger 2.
    pub(crate) fn read(path: &Path, doc: &Value, opts: &Options) -> Result<Api, ImportError> {
        let oas3 = match (doc.get("openapi"), doc.get("swagger")) {
            (Some(Value::String(v)), _) if v.starts_with("3.") => true,
            (_, Some(Value::String(v))) if v == "2.0" => false,
            _ => {
                return Err(ImportError::NotAnApi(
                    path.into(),
                    "not an OpenAPI 3 (`openapi: 3.x`) or Swagger 2 (`swagger: \"2.0\"`) document"
                        .into(),
                ));
            }
        };
        if !doc.get("paths").is_some_and(Value::is_object) {
            return Err(ImportError::NotAnApi(
                path.into(),
                "the document has no `paths` object".into(),
            ));
        }
        let flavor = if is_http_api(doc) {
            Flavor::Http
        } else {
            Flavor::Rest
        };
        let (host, base) = server(doc, oas3);
        let stage = match base.trim_matches('/') {
            "" | "$default" => None,
            st => Some(st.to_string()),
        };
        let (api_id, region) = match host.as_deref().and_then(|h| h.split_once(".execute-api.")) {
            Some((id, rest)) => (
                Some(id.to_string()),
                rest.split('.').next().map(str::to_string),
            ),
            None => (None, None),
        };
        let base_path = match &opts.base_path {
            Some(b) => b.clone(),
            None => match &stage {
                Some(st) => format!("/{st}"),
                None => "/".to_string(),
            },
        };
        let title = doc
            .pointer("/info/title")
            .and_then(Value::as_str)
            .unwrap_or("imported");
        let name = opts.api.clone().unwrap_or_else(|| slug(title, "imported"));
        // An entry needs hosts or a base path; without both the routes are the default API.
        let entry = (!opts.hosts.is_empty() || base_path != "/").then_some(name);
        Ok(Api {
            entry,
            hosts: opts.hosts.clone(),
            base_path,
            stage: stage.map(|st| stage_name(&st)),
            api_id,
            region,
            flavor,
        })
    }

    /// How usage plans name this API stage in `usage_plans.*.apis`.
    pub(crate) fn plan_ref(&self) -> String {
        match (&self.entry, &self.stage) {
            (None, _) => "default".to_string(),
            (Some(e), Some(st)) => format!("{e}/{st}"),
            (Some(e), None) => e.clone(),
        }
    }
}

/// Whether the export came from an HTTP API: the HTTP API export's own markers.
fn is_http_api(doc: &Value) -> bool {
    if doc
        .get("x-amazon-apigateway-importexport-version")
        .is_some()
        || doc.get("x-amazon-apigateway-cors").is_some()
    {
        return true;
    }
    let paths = doc.get("paths").and_then(Value::as_object);
    paths.is_some_and(|p| {
        p.values().any(|item| {
            METHODS.iter().any(|m| {
                item.get(m)
                    .and_then(|op| op.get("x-amazon-apigateway-integration"))
                    .is_some_and(|i| i.get("payloadFormatVersion").is_some())
            })
        })
    })
}

/// The server's host and base path: OpenAPI 3's first `servers` URL (its `basePath`
/// variable's default substituted), or Swagger's `host` and `basePath`.
fn server(doc: &Value, oas3: bool) -> (Option<String>, String) {
    if !oas3 {
        return (
            doc.get("host").and_then(Value::as_str).map(str::to_string),
            doc.get("basePath")
                .and_then(Value::as_str)
                .unwrap_or("/")
                .to_string(),
        );
    }
    let Some(srv) = doc.pointer("/servers/0") else {
        return (None, "/".into());
    };
    let mut url = srv
        .get("url")
        .and_then(Value::as_str)
        .unwrap_or("/")
        .to_string();
    if let Some(vars) = srv.get("variables").and_then(Value::as_object) {
        for (k, v) in vars {
            let d = v.get("default").and_then(Value::as_str).unwrap_or("");
            url = url.replace(&format!("{{{k}}}"), d);
        }
    }
    match url.split_once("://") {
        Some((_, rest)) => {
            let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            (Some(host.to_string()), path.to_string())
        }
        None => (None, url),
    }
}

/// What the definition's paths became.
#[derive(Debug, Default)]
pub(crate) struct Imported {
    /// Route entries, in path order.
    pub(crate) routes: Vec<Y>,
    /// The route keys written (for usage plans' per-method throttles).
    pub(crate) route_keys: Vec<String>,
    /// Authorizers by name.
    pub(crate) authorizers: BTreeMap<String, Y>,
    /// Resource policies by name.
    pub(crate) policies: BTreeMap<String, Y>,
    /// The entry's `defaults`.
    pub(crate) defaults: Mapping,
    /// The entry's `cors`.
    pub(crate) cors: Option<Y>,
    /// The API key header when it is not `x-api-key`.
    pub(crate) key_header: Option<String>,
    /// Security scheme names that stand for the Cognito user pool (for `trust_embedded_issuer`):
    /// authorizer name → pool id.
    pub(crate) pools: BTreeMap<String, String>,
    /// The authorizer name given to each security scheme, so that two schemes whose names
    /// make the same slug still get two authorizers.
    pub(crate) scheme_names: BTreeMap<String, String>,
}

/// The function ARN in a Lambda integration or authorizer URI
/// (`arn:aws:apigateway:R:lambda:path/2015-03-31/functions/ARN/invocations`), or the URI
/// itself when it is a function ARN.
pub(crate) fn lambda_function(uri: &str) -> Option<String> {
    if uri.starts_with("arn:aws:lambda:") {
        return Some(uri.to_string());
    }
    let rest = uri.split_once("/functions/")?.1;
    Some(
        rest.strip_suffix("/invocations")
            .unwrap_or(rest)
            .to_string(),
    )
}

/// One operation on its way to a route.
pub(crate) struct Op<'d> {
    pub(crate) key: String,
    pub(crate) method: &'static str,
    /// The route's path (`/pets/{id}`), or `None` for `$default`.
    pub(crate) path: Option<String>,
    /// Its JSON path.
    pub(crate) at: String,
    pub(crate) op: &'d Value,
}
