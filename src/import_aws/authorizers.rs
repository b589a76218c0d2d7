//! Security schemes: Cognito user pool and JWT authorizers as `jwt` authorizers, Lambda
//! authorizers as `http` authorizers, IAM (SigV4) as a `sigv4` authorizer, and the API key
//! scheme as `api_key_required`.

use std::collections::BTreeMap;

use serde_json::Value;
use serde_norway::{Mapping, Value as Y};

use super::api::{Api, Imported, lambda_function};
use super::cx::{Cx, Sources, env_part, jp, map, s, slug, str_list, strings, unique};

/// The scheme name operations with `x-amazon-apigateway-auth: {type: AWS_IAM}` use when the
/// document defines no SigV4 scheme of its own.
pub(crate) const IAM_SCHEME: &str = "sigv4";

/// The managed gateway's default authorizer result TTL, which is also tollgate's default
/// `cache_ttl`: none is written for it.
const DEFAULT_TTL_SECS: u64 = 300;

/// A security scheme of the definition, as far as tollgate can enforce it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scheme {
    /// The API key header.
    ApiKey {
        /// The header name.
        header: String,
    },
    /// A `cognito_user_pools` authorizer (REST APIs).
    Cognito {
        /// The pool's issuer URL.
        issuer: String,
        /// The pool id.
        pool: String,
        /// The header carrying the token.
        header: String,
    },
    /// A `jwt` authorizer (HTTP APIs) or an OpenID Connect scheme.
    Jwt {
        issuer: String,
        audience: Vec<String>,
        header: String,
    },
    /// A Lambda `token` or `request` authorizer.
    Lambda {
        uri: String,
        identity: Vec<String>,
        ttl: Option<u64>,
        /// Whether it answers yes or no (an HTTP API's simple responses) rather than with a
        /// policy the managed gateway checks against each request's method and path.
        simple: bool,
    },
    /// IAM authorization (SigV4).
    Sigv4 { region: String },
    /// A scheme tollgate cannot enforce (reported where it is defined).
    Unknown,
}

/// The definition's security schemes by name (`components.securitySchemes` or
/// `securityDefinitions`).
pub(crate) fn schemes(cx: &mut Cx, api: &Api, doc: &Value) -> BTreeMap<String, Scheme> {
    // Swagger's place is also found in OpenAPI 3 files written by hand for the managed gateway
    // (which accepts it there): both are read.
    let mut out = BTreeMap::new();
    for (ptr, base) in [
        (
            "/components/securitySchemes",
            "$.components.securitySchemes",
        ),
        ("/securityDefinitions", "$.securityDefinitions"),
    ] {
        for (name, def) in doc
            .pointer(ptr)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let at = jp(base, name);
            let sc = scheme(cx, api, def, &at);
            out.entry(name.clone()).or_insert(sc);
        }
    }
    // `x-amazon-apigateway-auth: {type: AWS_IAM}` on an operation names no scheme.
    out.entry(IAM_SCHEME.to_string()).or_insert(Scheme::Sigv4 {
        region: api.region.clone().unwrap_or_else(|| "us-east-1".into()),
    });
    out
}

fn scheme(cx: &mut Cx, api: &Api, def: &Value, at: &str) -> Scheme {
    let ext = def.get("x-amazon-apigateway-authorizer");
    let authtype = def
        .get("x-amazon-apigateway-authtype")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_ascii_lowercase();
    let ty = ext
        .and_then(|e| e.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_ascii_lowercase();
    let header = def
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("Authorization")
        .to_string();
    let ext_at = jp(at, "x-amazon-apigateway-authorizer");
    if authtype == "awssigv4" || ty == "aws_iam" {
        return Scheme::Sigv4 {
            region: api.region.clone().unwrap_or_else(|| "us-east-1".into()),
        };
    }
    if ty == "cognito_user_pools" || authtype == "cognito_user_pools" {
        let arns: Vec<&str> = ext
            .and_then(|e| e.get("providerARNs"))
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let pools: Vec<(String, String)> = arns.iter().filter_map(|a| pool_issuer(a)).collect();
        let Some((issuer, pool)) = pools.first().cloned() else {
            cx.report(
                &ext_at,
                "a Cognito authorizer without a user pool ARN",
                "its routes refuse every request until you give them a jwt authorizer",
            );
            return Scheme::Unknown;
        };
        if pools.len() > 1 {
            cx.report(
                &jp(&ext_at, "providerARNs"),
                format!("the authorizer trusts {} user pools", pools.len()),
                format!("only {pool} is trusted: add a jwt authorizer per other pool by hand"),
            );
        }
        let header = identity_header(ext).unwrap_or(header);
        return Scheme::Cognito {
            issuer,
            pool,
            header,
        };
    }
    if ty == "jwt" {
        let cfg = ext.and_then(|e| e.get("jwtConfiguration"));
        let Some(issuer) = cfg.and_then(|c| c.get("issuer")).and_then(Value::as_str) else {
            cx.report(
                &ext_at,
                "a JWT authorizer without an issuer",
                "its routes refuse every request until you give them a jwt authorizer",
            );
            return Scheme::Unknown;
        };
        let audience = str_list(cfg.and_then(|c| c.get("audience")));
        return Scheme::Jwt {
            issuer: issuer.to_string(),
            audience,
            header: identity_header(ext).unwrap_or(header),
        };
    }
    if ty == "token" || ty == "request" {
        let e = ext.expect("type comes from the extension");
        let uri = e
            .get("authorizerUri")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let mut identity = Vec::new();
        for src in identity_sources(e) {
            match identity_source(&src) {
                Some(i) => identity.push(i),
                None => cx.report(
                    &jp(&ext_at, "identitySource"),
                    format!("identity source {src}"),
                    "tollgate's identity sources are headers, query parameters and the route: \
                     the authorizer does not receive this one",
                ),
            }
        }
        if identity.is_empty() && ty == "token" {
            identity.push(format!("header:{header}"));
        }
        if e.get("identityValidationExpression").is_some() {
            cx.report(
                &jp(&ext_at, "identityValidationExpression"),
                "the token is matched against a regular expression before the authorizer runs",
                "the authorizer receives every token: check the pattern there",
            );
        }
        let ttl = e
            .get("authorizerResultTtlInSeconds")
            .and_then(Value::as_u64);
        // Tollgate's own export (an http(s) URI) is tollgate's yes-or-no protocol already.
        let simple = e.get("enableSimpleResponses").and_then(Value::as_bool) == Some(true)
            || uri.starts_with("http://")
            || uri.starts_with("https://");
        return Scheme::Lambda {
            uri,
            identity,
            ttl,
            simple,
        };
    }
    let kind = def.get("type").and_then(Value::as_str).unwrap_or("");
    if kind == "apiKey" && ext.is_none() {
        if def.get("in").and_then(Value::as_str) != Some("header") {
            cx.report(
                at,
                "the API key is read from the query string",
                "tollgate reads API keys from a header: have clients send it in one",
            );
        }
        return Scheme::ApiKey { header };
    }
    if kind == "openIdConnect"
        && let Some(url) = def.get("openIdConnectUrl").and_then(Value::as_str)
    {
        let issuer = url
            .strip_suffix("/.well-known/openid-configuration")
            .unwrap_or(url);
        return Scheme::Jwt {
            issuer: issuer.to_string(),
            audience: Vec::new(),
            header: "Authorization".into(),
        };
    }
    cx.report(
        at,
        format!("security scheme of type {kind:?} ({ty})"),
        "its routes refuse every request until you give them an authorizer",
    );
    Scheme::Unknown
}

/// `arn:aws:cognito-idp:REGION:ACCOUNT:userpool/POOL` as (issuer URL, pool id).
pub(crate) fn pool_issuer(arn: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = arn.split(':').collect();
    if parts.len() != 6 || parts[2] != "cognito-idp" {
        return None;
    }
    let pool = parts[5].strip_prefix("userpool/")?;
    Some((
        format!("https://cognito-idp.{}.amazonaws.com/{pool}", parts[3]),
        pool.to_string(),
    ))
}

/// The identity sources of an authorizer: a comma-separated string or a list.
fn identity_sources(e: &Value) -> Vec<String> {
    match e.get("identitySource") {
        Some(Value::String(s)) => s
            .split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// The header of the first header identity source.
fn identity_header(ext: Option<&Value>) -> Option<String> {
    identity_sources(ext?).iter().find_map(|s| {
        identity_source(s)?
            .strip_prefix("header:")
            .map(str::to_string)
    })
}

/// A managed identity source as tollgate's: `method.request.header.X` and
/// `$request.header.X` as `header:X`, `...querystring.Y` as `query:Y`, `$context.routeKey` as
/// `route`. `None` for what tollgate cannot read (stage variables, other context).
pub(crate) fn identity_source(src: &str) -> Option<String> {
    let src = src.trim();
    for (prefix, kind) in [
        ("method.request.header.", "header"),
        ("$request.header.", "header"),
        ("method.request.querystring.", "query"),
        ("$request.querystring.", "query"),
    ] {
        if let Some(name) = src.strip_prefix(prefix) {
            return Some(format!("{kind}:{name}"));
        }
    }
    (src == "$context.routeKey").then(|| "route".to_string())
}

/// The authorizer and scopes of a route secured by scheme `name` with `scopes`; writes the
/// authorizer into `out` when it is the first route to use it.
pub(crate) fn for_route(
    cx: &mut Cx,
    name: &str,
    schemes: &BTreeMap<String, Scheme>,
    scopes: Vec<String>,
    out: &mut Imported,
) -> (String, Vec<String>) {
    let base = match out.scheme_names.get(name) {
        Some(b) => b.clone(),
        None => {
            let b = unique(&slug(name, "authorizer"), |n| {
                n == "none"
                    || out
                        .scheme_names
                        .values()
                        .any(|v| v == n || *v == format!("{n}-id"))
            });
            out.scheme_names.insert(name.to_string(), b.clone());
            b
        }
    };
    let sc = schemes.get(name).cloned().unwrap_or(Scheme::Unknown);
    match sc {
        Scheme::Cognito {
            issuer,
            pool,
            header,
        } => {
            // An empty scope list on a Cognito authorizer means ID tokens.
            let id = scopes.is_empty();
            let name = if id { format!("{base}-id") } else { base };
            out.authorizers.entry(name.clone()).or_insert_with(|| {
                let mut a = vec![
                    ("type", s("jwt")),
                    ("issuer", s(&issuer)),
                    ("token_use", s(if id { "id" } else { "access" })),
                ];
                if !header.eq_ignore_ascii_case("authorization") {
                    a.push(("header", s(&header)));
                }
                map(a)
            });
            out.pools.insert(name.clone(), pool);
            (name, scopes)
        }
        Scheme::Jwt {
            issuer,
            audience,
            header,
        } => {
            out.authorizers.entry(base.clone()).or_insert_with(|| {
                let mut a = vec![("type", s("jwt")), ("issuer", s(&issuer))];
                if !audience.is_empty() {
                    a.push(("audience", strings(&audience)));
                }
                if !header.eq_ignore_ascii_case("authorization") {
                    a.push(("header", s(&header)));
                }
                map(a)
            });
            // An HTTP API's JWT authorizer on a user pool is that pool's too.
            if let Some(pool) = issuer
                .strip_prefix("https://cognito-idp.")
                .and_then(|rest| rest.split_once(".amazonaws.com/"))
                .map(|(_, pool)| pool.to_string())
            {
                out.pools.insert(base.clone(), pool);
            }
            (base, scopes)
        }
        Scheme::Lambda {
            uri,
            identity,
            ttl,
            simple,
        } => {
            if !out.authorizers.contains_key(&base) {
                let url = lambda_authorizer_url(cx, name, &base, &uri);
                let mut a = vec![("type", s("http")), ("url", s(&url))];
                if !identity.is_empty() {
                    a.push(("identity", strings(&identity)));
                }
                match ttl {
                    // A cached policy answer is checked per request's method and path by the
                    // managed gateway; tollgate caches yes or no for every route, so a cached
                    // allow for one route would admit another: no caching.
                    Some(t) if t > 0 && !simple => {
                        a.push(("cache_ttl", s("0s")));
                        cx.report(
                            &format!("$ security scheme {name}"),
                            format!("authorizer results are cached {t}s and checked per route"),
                            "written with cache_ttl: 0s (tollgate caches one answer for every \
                             route); once the service answers per route, add `route` to its \
                             identity and a cache_ttl",
                        );
                    }
                    Some(t) if t != DEFAULT_TTL_SECS => a.push(("cache_ttl", s(&format!("{t}s")))),
                    None if !simple => a.push(("cache_ttl", s("0s"))),
                    _ => {}
                }
                out.authorizers.insert(base.clone(), map(a));
            }
            (base, Vec::new())
        }
        Scheme::Sigv4 { region } => {
            if !out.authorizers.contains_key(&base) {
                let var = format!("TOLLGATE_SIGV4_SECRET_{}", env_part(&base));
                let secret = cx.env(&var, format!("the secret access key of authorizer {base}"));
                let cred = map([
                    ("access_key_id", s("REPLACE_WITH_ACCESS_KEY_ID")),
                    ("secret_access_key", secret),
                ]);
                out.authorizers.insert(
                    base.clone(),
                    map([
                        ("type", s("sigv4")),
                        ("region", s(&region)),
                        ("credentials", Y::Sequence(vec![cred])),
                    ]),
                );
                cx.report(
                    &format!("$ security scheme {name}"),
                    "IAM authorization: any IAM principal with execute-api:Invoke could call",
                    format!(
                        "tollgate checks SigV4 against the access keys listed in authorizer \
                         {base}: replace the placeholder key id and set {var}"
                    ),
                );
            }
            (base, Vec::new())
        }
        Scheme::ApiKey { .. } => ("none".to_string(), Vec::new()),
        Scheme::Unknown => {
            // Never open: an authorizer nobody answers for refuses every request until the
            // operator writes the real one (reported where the scheme is).
            out.authorizers.entry(base.clone()).or_insert_with(|| {
                map([
                    ("type", s("http")),
                    ("url", s(&format!("http://{base}.authorizer.invalid/"))),
                    ("cache_ttl", s("0s")),
                ])
            });
            (base, Vec::new())
        }
    }
}

/// Where a Lambda authorizer is now asked: `--lambda`, an `http(s)` URI as it is (tollgate's
/// own export), else a placeholder that the report names.
fn lambda_authorizer_url(cx: &mut Cx, scheme: &str, name: &str, uri: &str) -> String {
    if uri.starts_with("http://") || uri.starts_with("https://") {
        return uri.to_string();
    }
    let function = lambda_function(uri);
    let at = format!("$ security scheme {scheme}");
    match cx.lambda_url(uri, function.as_deref()) {
        Some(url) => {
            cx.report(
                &at,
                format!(
                    "Lambda authorizer {} now asked at {url}",
                    function.as_deref().unwrap_or(uri)
                ),
                "the service there answers tollgate's authorizer requests (docs/configuration.md, \
                 \"http authorizers\"), not Lambda authorizer events",
            );
            url
        }
        None => {
            cx.report(
                &at,
                format!("Lambda authorizer {}", function.as_deref().unwrap_or(uri)),
                "serve it over HTTP answering tollgate's authorizer requests and import again \
                 with --lambda ARN=URL; until then its routes answer 503",
            );
            format!("http://{name}.authorizer.invalid/")
        }
    }
}

/// When the user pool is imported too, the access-token authorizers of that pool trust the
/// embedded issuer instead (`issuer: self`); ID-token ones keep the pool, which the issuer
/// cannot replace (it issues client-credentials access tokens only).
pub(crate) fn trust_embedded_issuer(cx: &mut Cx, out: &mut Imported, src: &Sources) {
    let mut pools: Vec<String> = Vec::new();
    for (_, c) in &src.user_pool_clients {
        if let Some(p) = c
            .pointer("/UserPoolClient/UserPoolId")
            .and_then(Value::as_str)
        {
            pools.push(p.to_string());
        }
    }
    if let Some((_, rs)) = &src.resource_servers
        && let Some(list) = rs.get("ResourceServers").and_then(Value::as_array)
    {
        for r in list {
            if let Some(p) = r.get("UserPoolId").and_then(Value::as_str) {
                pools.push(p.to_string());
            }
        }
    }
    for (name, pool) in &out.pools {
        if !pools.is_empty() && !pools.contains(pool) {
            continue;
        }
        let Some(Y::Mapping(a)) = out.authorizers.get_mut(name) else {
            continue;
        };
        if a.get("token_use") == Some(&s("id")) {
            cx.report(
                &format!("$ authorizer {name}"),
                format!("routes accept ID tokens of user pool {pool}"),
                "the embedded issuer issues access tokens only: keep the pool for these routes \
                 or give them scopes",
            );
            continue;
        }
        let mut m = Mapping::new();
        m.insert(s("type"), s("jwt"));
        m.insert(s("issuer"), s("self"));
        for k in ["audience", "header"] {
            if let Some(v) = a.get(k) {
                m.insert(s(k), v.clone());
            }
        }
        *a = m;
    }
}
