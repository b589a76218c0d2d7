//! The runtime form of a config: an immutable [`Snapshot`] compiled once from a parsed
//! `gateway.yaml`, and the [`Registry`] of state that outlives snapshots (remote key sets and
//! verified-token caches). Compiling checks everything the schema cannot (references, route
//! keys, secrets, key files) and reports each problem at its line and column; a snapshot that
//! exists is one that can serve.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

use crate::apikeys::{ApiKey, KeyRecord, KeyTable};
use crate::auth::claims::ClaimRules;
use crate::auth::external::ExternalAuthorizer;
use crate::auth::jwks::{JwksSource, Loaded, RemoteJwks};
use crate::auth::keys::KeySet;
use crate::auth::sigv4::SigV4Verifier;
use crate::auth::{JwtAuthorizer, JwtSettings, KeySource, TokenCache};
use crate::clientip::{CidrSet, Policy};
use crate::config::schema::{AuthorizerCfg, JwtCfg, SecretCfg};
use crate::config::{ConfigError, Parsed};
use crate::fetch::Fetcher;
use crate::issuer::keys::KeyRing;
use crate::issuer::{Client, Endpoint, FailureCounter, Issuer};
use crate::limits::{BucketSpec, LimitState, QuotaSpec, Throttle};
use crate::metrics::Metrics;
use crate::proxy::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT, Upstream};
use crate::routes::{RouteKey, RouteTable};

/// Default largest request body (the managed gateway's 10 MB payload limit).
pub const DEFAULT_MAX_BODY: u64 = 10 * 1024 * 1024;
/// Default time a client gets to send its request head (cuts off slowloris clients).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default largest request head; generous for big cookies and tokens, small enough to bound memory.
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 64 * 1024;
/// Default most header fields in one request (header floods are refused beyond).
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Default longest pause while a client sends its body.
pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time in-flight requests get to finish at shutdown.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Default admin listener: loopback, so metrics and config are not public by accident.
pub const DEFAULT_ADMIN_BIND: &str = "127.0.0.1:9901";
/// Default JWT clock-skew tolerance.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Largest leeway accepted; more would make expiry meaningless.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// Request limits in force.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest body in bytes.
    pub max_body: u64,
    /// Time to send the request head.
    pub header_timeout: Duration,
    /// Largest request head.
    pub max_header_bytes: usize,
    /// Most header fields.
    pub max_headers: usize,
    /// Longest pause in a body.
    pub body_idle_timeout: Duration,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
    /// Time between readiness turning off and listeners closing.
    pub shutdown_delay: Duration,
}

/// CORS settings in their response-ready form.
#[derive(Debug, Clone)]
pub struct Cors {
    /// Allowed origins; `*` allows any.
    pub allow_origins: Vec<String>,
    /// `access-control-allow-headers` value, if any.
    pub allow_headers: Option<HeaderValue>,
    /// `access-control-allow-methods` value.
    pub allow_methods: HeaderValue,
    /// `access-control-expose-headers` value, if any.
    pub expose_headers: Option<HeaderValue>,
    /// `access-control-max-age` value, if any.
    pub max_age: Option<HeaderValue>,
    /// Whether credentials are allowed.
    pub allow_credentials: bool,
}

impl Cors {
    /// Whether `origin` may call.
    pub fn allows(&self, origin: &str) -> bool {
        self.allow_origins.iter().any(|o| o == "*" || o == origin)
    }
}

/// What a route does once a request is admitted.
#[derive(Debug)]
pub enum Integration {
    /// Forward to an upstream pool.
    Proxy(Arc<Upstream>),
    /// Answer with a fixed response.
    Respond(FixedResponse),
    /// An endpoint of the embedded issuer.
    Issuer(Arc<Issuer>, Endpoint),
}

/// A fixed (mock) response.
#[derive(Debug, Clone)]
pub struct FixedResponse {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Body.
    pub body: Bytes,
}

/// How a route authenticates callers.
#[derive(Debug)]
pub enum RouteAuth {
    /// Open route.
    None,
    /// AWS SigV4 signed requests, the key holding at least one of `scopes` (empty: any key).
    SigV4 {
        /// The verifier.
        verifier: Arc<SigV4Verifier>,
        /// Required scopes (any of).
        scopes: Vec<Box<str>>,
        /// The authorizer's name, ready for `x-tollgate-authorizer` and the log.
        name: HeaderValue,
    },
    /// An external HTTP authorizer decides (it grants no scopes).
    External {
        /// The authorizer.
        authorizer: Arc<ExternalAuthorizer>,
        /// Its name, ready for `x-tollgate-authorizer`.
        name: HeaderValue,
    },
    /// JWT with at least one of `scopes` (empty: any valid token).
    Jwt {
        /// The authorizer.
        authorizer: Arc<JwtAuthorizer>,
        /// Required scopes (any of).
        scopes: Vec<Box<str>>,
        /// Ready-made `www-authenticate` for a missing scope.
        insufficient_scope: HeaderValue,
    },
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    /// The route key as written; the `route` label.
    pub key: Arc<str>,
    /// Authentication.
    pub auth: RouteAuth,
    /// What it does.
    pub integration: Integration,
    /// Whether callers must present an API key.
    pub api_key_required: bool,
    /// The route's own bucket, shared by all its callers (`throttle` or `defaults.throttle`).
    pub throttle: Option<Throttle>,
    /// Position in [`Snapshot::routes`] (plans keep per-route throttles by it).
    pub index: usize,
    /// Resource policy on the client IP (`policy` or `defaults.policy`).
    pub policy: Option<Arc<Policy>>,
}

/// A compiled usage plan.
#[derive(Debug)]
pub struct Plan {
    /// Plan name.
    pub name: Arc<str>,
    /// Per-key bucket.
    pub throttle: Option<Throttle>,
    /// Per-key buckets for particular routes (by route index), replacing `throttle` there.
    pub route_throttles: HashMap<usize, Throttle>,
    /// Per-key quota.
    pub quota: Option<QuotaSpec>,
    /// `tollgate_api_key_requests_total{plan, result}` handles: admitted, throttled, quota.
    pub outcomes: [prometheus::IntCounter; 3],
}

/// A public listener.
#[derive(Debug, Clone, Copy)]
pub struct ListenerSpec {
    /// Address to bind.
    pub addr: SocketAddr,
    /// Whether each connection starts with a PROXY protocol header.
    pub proxy_protocol: bool,
}

/// Settings of the admin listener.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// Address.
    pub bind: SocketAddr,
    /// Required bearer token, if any.
    pub token: Option<String>,
}

/// Everything a request needs, compiled and immutable.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases with every successful load.
    pub generation: u64,
    /// SHA-256 of the config text.
    pub hash: String,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    /// Public listeners.
    pub listeners: Vec<ListenerSpec>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: CidrSet,
    /// Admin listener.
    pub admin: AdminSettings,
    /// Limits.
    pub limits: Limits,
    /// CORS, if configured.
    pub cors: Option<Cors>,
    /// The route table; its indexes point into `routes`.
    pub table: RouteTable,
    /// Routes by index.
    pub routes: Vec<Route>,
    /// The embedded issuer, if configured.
    pub issuer: Option<Arc<Issuer>>,
    /// The config file and every file it names, watched for changes.
    pub files: Vec<PathBuf>,
    /// Usage plans; API keys refer to them by index.
    pub plans: Vec<Plan>,
    /// Accepted API keys, if `api_keys` is configured.
    pub keys: Option<KeyTable>,
}

/// State that outlives snapshots: remote key sets by source, token caches by authorizer
/// fingerprint (a changed authorizer gets a fresh cache), and the outbound fetch client.
pub struct Registry {
    metrics: Arc<Metrics>,
    limits: Arc<LimitState>,
    fetcher: Fetcher,
    /// Whether remote key sets are fetched (off for `tollgate check`).
    online: bool,
    jwks: Mutex<HashMap<JwksSource, Arc<RemoteJwks>>>,
    caches: Mutex<HashMap<String, TokenCache>>,
    rings: Mutex<HashMap<PathBuf, Arc<KeyRing>>>,
    failures: FailureCounter,
    /// What the compile in progress used; everything else is dropped by [`Registry::sweep`].
    touched: Mutex<Touched>,
}

#[derive(Default)]
struct Touched {
    jwks: std::collections::HashSet<JwksSource>,
    caches: std::collections::HashSet<String>,
    rings: std::collections::HashSet<PathBuf>,
}

impl Registry {
    /// A registry; `online: false` never starts network fetches.
    pub fn new(metrics: Arc<Metrics>, limits: Arc<LimitState>, online: bool) -> Registry {
        Registry {
            metrics,
            limits,
            fetcher: Fetcher::new(),
            online,
            jwks: Mutex::new(HashMap::new()),
            caches: Mutex::new(HashMap::new()),
            rings: Mutex::new(HashMap::new()),
            failures: FailureCounter::default(),
            touched: Mutex::new(Touched::default()),
        }
    }

    /// Ends a compile. When its snapshot went live (`kept`), state the snapshot does not use is
    /// dropped: remote key sets stop refreshing once the last old snapshot is gone, and caches
    /// of changed authorizers are freed. Either way the record of what was used is cleared.
    pub fn sweep(&self, kept: bool) {
        let touched = std::mem::take(&mut *self.touched.lock().expect("not poisoned"));
        self.limits.sweep(kept);
        if !kept {
            return;
        }
        self.jwks
            .lock()
            .expect("not poisoned")
            .retain(|k, _| touched.jwks.contains(k));
        self.caches
            .lock()
            .expect("not poisoned")
            .retain(|k, _| touched.caches.contains(k));
        self.rings
            .lock()
            .expect("not poisoned")
            .retain(|k, _| touched.rings.contains(k));
    }

    /// The issuer key ring for `path`, opened once and shared by later snapshots. When not
    /// online (`tollgate check`), an absent key is generated in memory and not written.
    fn key_ring(&self, path: &Path) -> Result<Arc<KeyRing>, String> {
        self.touched
            .lock()
            .expect("not poisoned")
            .rings
            .insert(path.to_path_buf());
        let mut rings = self.rings.lock().expect("not poisoned");
        if let Some(r) = rings.get(path) {
            return Ok(r.clone());
        }
        let ring = Arc::new(KeyRing::open(path, self.online)?);
        if self.online {
            rings.insert(path.to_path_buf(), ring.clone());
        }
        Ok(ring)
    }

    /// Throttle and quota state.
    pub fn limits(&self) -> &Arc<LimitState> {
        &self.limits
    }

    /// The metrics every snapshot reports into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn remote_jwks(&self, source: JwksSource, label: &str) -> Arc<RemoteJwks> {
        self.touched
            .lock()
            .expect("not poisoned")
            .jwks
            .insert(source.clone());
        self.jwks
            .lock()
            .expect("not poisoned")
            .entry(source.clone())
            .or_insert_with(|| {
                RemoteJwks::start(
                    source,
                    label,
                    self.fetcher.clone(),
                    self.metrics.clone(),
                    self.online,
                )
            })
            .clone()
    }

    fn token_cache(&self, fingerprint: String) -> TokenCache {
        self.touched
            .lock()
            .expect("not poisoned")
            .caches
            .insert(fingerprint.clone());
        self.caches
            .lock()
            .expect("not poisoned")
            .entry(fingerprint)
            .or_default()
            .clone()
    }
}

/// Collects errors while compiling so that one run reports all of them.
struct Errors<'a> {
    parsed: &'a Parsed,
    list: Vec<ConfigError>,
}

impl Errors<'_> {
    fn at(&mut self, path: &str, msg: impl Into<String>) {
        self.list.push(self.parsed.error_at(path, msg));
    }
}

fn read_secret(p: &Parsed, s: &SecretCfg, path: &str, errs: &mut Errors) -> Option<String> {
    match s {
        SecretCfg::Env { env } => match std::env::var(env) {
            Ok(v) if !v.is_empty() => Some(v),
            _ => {
                errs.at(path, format!("environment variable {env} is not set"));
                None
            }
        },
        SecretCfg::File { file } => match std::fs::read_to_string(p.resolve(file)) {
            Ok(v) => Some(v.trim_end_matches(['\n', '\r']).to_string()),
            Err(e) => {
                errs.at(
                    path,
                    format!("cannot read secret file {}: {e}", file.display()),
                );
                None
            }
        },
        SecretCfg::Literal(v) => {
            tracing::warn!(at = %p.location(path), "secret written inline in the config; prefer {{env: ...}} or {{file: ...}}");
            Some(v.clone())
        }
    }
}

fn bind_addr(s: &str, path: &str, errs: &mut Errors) -> Option<SocketAddr> {
    match s.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            errs.at(
                path,
                format!("bind address {s:?} must be IP:PORT, e.g. 0.0.0.0:8080"),
            );
            None
        }
    }
}

fn header_list(items: &[String], path: &str, errs: &mut Errors) -> Option<HeaderValue> {
    if items.is_empty() {
        return None;
    }
    match HeaderValue::from_str(&items.join(", ")) {
        Ok(v) => Some(v),
        Err(_) => {
            errs.at(path, "values cannot be sent in a header");
            None
        }
    }
}

/// Compiles a parsed config into a snapshot with generation `generation`. Refuses (with every
/// problem found, each located): bad addresses, references to undefined upstreams or
/// authorizers, unparsable or duplicate route keys, routes with neither or both of `upstream` and
/// `respond`, scopes on an open route, unreadable secrets and key files, bad algorithms.
pub fn compile(
    parsed: &Parsed,
    registry: &Registry,
    generation: u64,
) -> Result<Snapshot, Vec<ConfigError>> {
    let f = &parsed.file;
    let mut errs = Errors {
        parsed,
        list: Vec::new(),
    };

    if f.listeners.is_empty() {
        errs.at("listeners", "at least one listener is required");
    }
    let listeners: Vec<ListenerSpec> = f
        .listeners
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            bind_addr(&l.bind, &format!("listeners.{i}.bind"), &mut errs).map(|addr| ListenerSpec {
                addr,
                proxy_protocol: l.proxy_protocol,
            })
        })
        .collect();
    let admin = match &f.admin {
        Some(a) => AdminSettings {
            bind: bind_addr(&a.bind, "admin.bind", &mut errs)
                .unwrap_or_else(|| DEFAULT_ADMIN_BIND.parse().expect("valid")),
            token: a
                .token
                .as_ref()
                .and_then(|t| read_secret(parsed, t, "admin.token", &mut errs)),
        },
        None => AdminSettings {
            bind: DEFAULT_ADMIN_BIND.parse().expect("valid"),
            token: None,
        },
    };
    let l = &f.limits;
    let limits = Limits {
        max_body: l.max_body.map_or(DEFAULT_MAX_BODY, |b| b.0),
        header_timeout: l.header_timeout.map_or(DEFAULT_HEADER_TIMEOUT, |d| d.0),
        max_header_bytes: l.max_header_bytes.map_or(DEFAULT_MAX_HEADER_BYTES, |b| b.0) as usize,
        max_headers: l.max_headers.unwrap_or(DEFAULT_MAX_HEADERS),
        body_idle_timeout: l
            .body_idle_timeout
            .map_or(DEFAULT_BODY_IDLE_TIMEOUT, |d| d.0),
        shutdown_grace: l.shutdown_grace.map_or(DEFAULT_SHUTDOWN_GRACE, |d| d.0),
        shutdown_delay: l.shutdown_delay.map_or(Duration::ZERO, |d| d.0),
    };
    for (value, path) in [
        (limits.header_timeout, "limits.header_timeout"),
        (limits.body_idle_timeout, "limits.body_idle_timeout"),
    ] {
        if value.is_zero() {
            errs.at(path, "must be greater than 0");
        }
    }
    if limits.max_header_bytes < 8192 {
        errs.at("limits.max_header_bytes", "must be at least 8KiB");
    }

    // Upstreams.
    let mut upstreams: HashMap<&str, Arc<Upstream>> = HashMap::new();
    for (name, u) in &f.upstreams {
        let path = format!("upstreams.{name}");
        for (value, key) in [
            (u.timeout, "timeout"),
            (u.connect_timeout, "connect_timeout"),
        ] {
            if value.is_some_and(|d| d.0.is_zero()) {
                errs.at(&format!("{path}.{key}"), "must be greater than 0");
            }
        }
        match Upstream::new(
            name,
            &u.targets,
            u.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0),
            u.connect_timeout.map_or(DEFAULT_CONNECT_TIMEOUT, |d| d.0),
            registry.metrics(),
        ) {
            Ok(up) => {
                upstreams.insert(name.as_str(), Arc::new(up));
            }
            Err(e) => errs.at(&format!("{path}.targets"), e),
        }
    }

    // Client IP: trusted proxies, and resource policies by name.
    let trusted_proxies = match f
        .client_ip
        .as_ref()
        .map(|c| CidrSet::parse(&c.trusted_proxies))
    {
        None => CidrSet::default(),
        Some(Ok(set)) => set,
        Some(Err((i, e))) => {
            errs.at(&format!("client_ip.trusted_proxies.{i}"), e);
            CidrSet::default()
        }
    };
    let mut policies: HashMap<&str, Arc<Policy>> = HashMap::new();
    for (name, p) in &f.policies {
        let path = format!("policies.{name}");
        if name == "none" {
            errs.list.push(parsed.error_at_key(
                "policies",
                name,
                "`none` is reserved for routes without a policy",
            ));
            continue;
        }
        let allow = match p.allow.as_ref().map(|a| CidrSet::parse(a)) {
            None => None,
            Some(Ok(set)) => Some(set),
            Some(Err((i, e))) => {
                errs.at(&format!("{path}.allow.{i}"), e);
                continue;
            }
        };
        let deny = match CidrSet::parse(&p.deny) {
            Ok(set) => set,
            Err((i, e)) => {
                errs.at(&format!("{path}.deny.{i}"), e);
                continue;
            }
        };
        policies.insert(name.as_str(), Arc::new(Policy::new(allow, deny)));
    }
    if let Some(p) = &f.defaults.policy
        && p != "none"
        && !f.policies.contains_key(p)
    {
        errs.at("defaults.policy", format!("policy {p:?} is not defined"));
    }

    let issuer = f
        .issuer
        .as_ref()
        .and_then(|cfg| compile_issuer(parsed, registry, cfg, &mut errs));

    // Authorizers.
    let mut authorizers: HashMap<&str, Arc<JwtAuthorizer>> = HashMap::new();
    let mut externals: HashMap<&str, Arc<ExternalAuthorizer>> = HashMap::new();
    let mut sigv4s: HashMap<&str, Arc<SigV4Verifier>> = HashMap::new();
    for (name, a) in &f.authorizers {
        let path = format!("authorizers.{name}");
        if name == "none" {
            errs.list.push(parsed.error_at_key(
                "authorizers",
                name,
                "`none` is reserved for open routes",
            ));
            continue;
        }
        match a {
            AuthorizerCfg::Jwt(j) => {
                if let Some(az) =
                    jwt_authorizer(parsed, registry, name, j, &path, issuer.as_ref(), &mut errs)
                {
                    authorizers.insert(name.as_str(), Arc::new(az));
                }
            }
            AuthorizerCfg::Http(h) => {
                use crate::auth::external::{DEFAULT_CACHE_TTL, DEFAULT_TIMEOUT};
                match ExternalAuthorizer::new(
                    name,
                    &h.url,
                    &h.identity,
                    h.cache_ttl.map_or(DEFAULT_CACHE_TTL, |d| d.0),
                    h.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0),
                    registry.metrics(),
                ) {
                    Ok(a) => {
                        externals.insert(name.as_str(), Arc::new(a));
                    }
                    Err(e) => errs.at(&path, e),
                }
            }
            AuthorizerCfg::Sigv4(c) => {
                let mut creds = Vec::new();
                let mut ids = std::collections::HashSet::new();
                for (k, cred) in c.credentials.iter().enumerate() {
                    let at = format!("{path}.credentials.{k}");
                    if !ids.insert(cred.access_key_id.as_str()) {
                        errs.at(
                            &format!("{at}.access_key_id"),
                            "this access key id appears twice",
                        );
                        continue;
                    }
                    if let Some(secret) = read_secret(
                        parsed,
                        &cred.secret_access_key,
                        &format!("{at}.secret_access_key"),
                        &mut errs,
                    ) {
                        creds.push((cred.access_key_id.clone(), secret, cred.scopes.clone()));
                    }
                }
                if c.credentials.is_empty() {
                    errs.at(
                        &format!("{path}.credentials"),
                        "at least one credential is required",
                    );
                }
                if c.region.is_empty() || c.service.is_empty() {
                    errs.at(&path, "region and service must not be empty");
                }
                sigv4s.insert(
                    name.as_str(),
                    Arc::new(SigV4Verifier::new(
                        c.region.clone(),
                        c.service.clone(),
                        creds,
                    )),
                );
            }
        }
    }

    // Defaults and routes.
    let default_auth = f.defaults.authorizer.as_deref();
    if let Some(a) = default_auth
        && a != "none"
        && !authorizers.contains_key(a)
        && !f.authorizers.contains_key(a)
    {
        errs.at(
            "defaults.authorizer",
            format!("authorizer {a:?} is not defined"),
        );
    }
    let default_scopes = f.defaults.scopes.clone().unwrap_or_default();
    // Built-in issuer routes come first, so a user route that collides is the one reported.
    let mut keys: Vec<(Option<usize>, RouteKey)> = Vec::new();
    let mut routes = Vec::new();
    if let Some(iss) = &issuer {
        for (key, endpoint) in crate::issuer::ROUTES {
            keys.push((
                None,
                RouteKey::parse(key).expect("built-in route keys parse"),
            ));
            routes.push(Route {
                key: key.into(),
                auth: RouteAuth::None,
                integration: Integration::Issuer(iss.clone(), endpoint),
                api_key_required: false,
                throttle: None,
                index: routes.len(),
                policy: None,
            });
        }
    }
    for (i, r) in f.routes.iter().enumerate() {
        let path = format!("routes.{i}");
        let key = match RouteKey::parse(&r.route) {
            Ok(k) => k,
            Err(e) => {
                errs.at(&format!("{path}.route"), e);
                continue;
            }
        };
        if issuer.is_some() && reserved_for_issuer(&key) {
            errs.at(
                &format!("{path}.route"),
                "this path belongs to the embedded issuer; choose another path",
            );
            continue;
        }
        let integration = match (&r.upstream, &r.respond) {
            (Some(u), None) => match upstreams.get(u.as_str()) {
                Some(up) => Integration::Proxy(up.clone()),
                None => {
                    if !f.upstreams.contains_key(u) {
                        errs.at(
                            &format!("{path}.upstream"),
                            format!("upstream {u:?} is not defined"),
                        );
                    }
                    continue;
                }
            },
            (None, Some(resp)) => match fixed_response(resp) {
                Ok(fr) => Integration::Respond(fr),
                Err(e) => {
                    errs.at(&format!("{path}.respond"), e);
                    continue;
                }
            },
            (Some(_), Some(_)) => {
                errs.at(
                    &path,
                    "a route has either `upstream` or `respond`, not both",
                );
                continue;
            }
            (None, None) => {
                errs.at(&path, "a route needs `upstream` or `respond`");
                continue;
            }
        };
        let auth_name = r.authorizer.as_deref().or(default_auth).unwrap_or("none");
        let explicit_scopes = r.scopes.is_some();
        let scopes: Vec<Box<str>> = r
            .scopes
            .clone()
            .unwrap_or_else(|| default_scopes.clone())
            .into_iter()
            .map(Into::into)
            .collect();
        let auth = if auth_name == "none" {
            if explicit_scopes && !scopes.is_empty() {
                errs.at(
                    &format!("{path}.scopes"),
                    "scopes need an authorizer; this route has none",
                );
                continue;
            }
            RouteAuth::None
        } else if let Some(v) = sigv4s.get(auth_name) {
            RouteAuth::SigV4 {
                verifier: v.clone(),
                scopes,
                name: HeaderValue::from_str(auth_name).unwrap_or(HeaderValue::from_static("sigv4")),
            }
        } else if let Some(ext) = externals.get(auth_name) {
            // An external authorizer grants no scopes: explicit ones are an error, inherited
            // `defaults.scopes` do not apply.
            if explicit_scopes && !scopes.is_empty() {
                errs.at(
                    &format!("{path}.scopes"),
                    "an http authorizer grants no scopes; remove `scopes` from this route",
                );
                continue;
            }
            RouteAuth::External {
                authorizer: ext.clone(),
                name: HeaderValue::from_str(auth_name).unwrap_or(HeaderValue::from_static("http")),
            }
        } else {
            match authorizers.get(auth_name) {
                Some(a) => match crate::error::insufficient_scope_header(&scopes) {
                    Ok(h) => RouteAuth::Jwt {
                        authorizer: a.clone(),
                        scopes,
                        insufficient_scope: h,
                    },
                    Err(e) => {
                        errs.at(&format!("{path}.scopes"), e);
                        continue;
                    }
                },
                None => {
                    if r.authorizer.is_some() && !f.authorizers.contains_key(auth_name) {
                        errs.at(
                            &format!("{path}.authorizer"),
                            format!("authorizer {auth_name:?} is not defined"),
                        );
                    }
                    continue;
                }
            }
        };
        let throttle = match r.throttle.as_ref().or(f.defaults.throttle.as_ref()) {
            Some(t) => match BucketSpec::new(t.rate, t.burst) {
                Ok(spec) => Some(
                    registry
                        .limits()
                        .throttle(&format!("route:{}", r.route), spec),
                ),
                Err(e) => {
                    let at = if r.throttle.is_some() {
                        format!("{path}.throttle")
                    } else {
                        "defaults.throttle".into()
                    };
                    errs.at(&at, e);
                    continue;
                }
            },
            None => None,
        };
        let policy = match r.policy.as_deref().or(f.defaults.policy.as_deref()) {
            None | Some("none") => None,
            Some(name) => match policies.get(name) {
                Some(p) => Some(p.clone()),
                None => {
                    if r.policy.is_some() && !f.policies.contains_key(name) {
                        errs.at(
                            &format!("{path}.policy"),
                            format!("policy {name:?} is not defined"),
                        );
                    }
                    continue;
                }
            },
        };
        if r.api_key_required && f.api_keys.is_none() {
            errs.at(
                &format!("{path}.api_key_required"),
                "API keys are required here but no `api_keys:` section is configured",
            );
        }
        keys.push((Some(i), key));
        routes.push(Route {
            key: r.route.as_str().into(),
            auth,
            integration,
            api_key_required: r.api_key_required,
            throttle,
            index: routes.len(),
            policy,
        });
    }
    let plans = compile_plans(parsed, registry, &routes, &mut errs);
    let key_table = f
        .api_keys
        .as_ref()
        .and_then(|k| compile_keys(parsed, k, &plans, &mut errs));
    let table = match RouteTable::build(&keys.iter().map(|(_, k)| k.clone()).collect::<Vec<_>>()) {
        Ok(t) => Some(t),
        Err(c) => {
            // Name the earlier route by its line, since indexes skip routes that failed to compile.
            let earlier = match c.first.and_then(|f| keys[f].0) {
                Some(src) => format!(
                    " (routes.{src}, line {})",
                    parsed.map.locate(&format!("routes.{src}.route")).line
                ),
                None if c.first.is_some() => " (a built-in issuer route)".to_string(),
                None => String::new(),
            };
            match keys[c.index].0 {
                Some(src) => errs.at(
                    &format!("routes.{src}.route"),
                    format!("{}{earlier}", c.message),
                ),
                None => errs.at("issuer", c.message),
            }
            None
        }
    };

    let cors = f.cors.as_ref().map(|c| {
        let methods = if c.allow_methods.is_empty() {
            vec!["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
                .into_iter()
                .map(String::from)
                .collect()
        } else {
            c.allow_methods.clone()
        };
        if c.allow_credentials && c.allow_origins.iter().any(|o| o == "*") {
            errs.at(
                "cors.allow_credentials",
                "credentials cannot be allowed for origin `*`",
            );
        }
        Cors {
            allow_origins: c.allow_origins.clone(),
            allow_headers: header_list(&c.allow_headers, "cors.allow_headers", &mut errs),
            allow_methods: header_list(&methods, "cors.allow_methods", &mut errs)
                .unwrap_or_else(|| HeaderValue::from_static("GET")),
            expose_headers: header_list(&c.expose_headers, "cors.expose_headers", &mut errs),
            max_age: c.max_age.map(|d| HeaderValue::from(d.0.as_secs())),
            allow_credentials: c.allow_credentials,
        }
    });

    match (errs.list.is_empty(), table) {
        (true, Some(table)) => Ok(Snapshot {
            generation,
            hash: parsed.hash.clone(),
            loaded_at: SystemTime::now(),
            listeners,
            trusted_proxies,
            admin,
            limits,
            cors,
            table,
            routes,
            issuer,
            plans,
            keys: key_table,
            files: referenced_files(parsed),
        }),
        _ => Err(errs.list),
    }
}

/// The config file (first) and every file it names (key imports, key sets, secret files),
/// resolved.
pub fn referenced_files(p: &Parsed) -> Vec<PathBuf> {
    let f = &p.file;
    let mut out = Vec::new();
    let secret = |s: &SecretCfg, out: &mut Vec<PathBuf>| {
        if let SecretCfg::File { file } = s {
            out.push(p.resolve(file));
        }
    };
    if let Some(t) = f.admin.as_ref().and_then(|a| a.token.as_ref()) {
        secret(t, &mut out);
    }
    for a in f.authorizers.values() {
        match a {
            AuthorizerCfg::Jwt(j) => {
                if let Some(file) = &j.jwks_file {
                    out.push(p.resolve(file));
                }
                if let Some(s) = &j.secret {
                    secret(s, &mut out);
                }
            }
            AuthorizerCfg::Sigv4(c) => {
                for cred in &c.credentials {
                    secret(&cred.secret_access_key, &mut out);
                }
            }
            AuthorizerCfg::Http(_) => {}
        }
    }
    if let Some(i) = &f.issuer {
        for c in &i.clients {
            secret(&c.client_secret, &mut out);
        }
    }
    if let Some(import) = f.api_keys.as_ref().and_then(|k| k.import.as_ref()) {
        out.push(p.resolve(import));
    }
    out.sort();
    out.dedup();
    out.retain(|f| *f != p.path);
    out.insert(0, p.path.clone());
    out
}

/// A bucket spec from config, or an error at `at`.
fn spec_at(
    t: &crate::config::schema::ThrottleCfg,
    at: &str,
    errs: &mut Errors,
) -> Option<BucketSpec> {
    BucketSpec::new(t.rate, t.burst)
        .map_err(|e| errs.at(at, e))
        .ok()
}

/// Compiles `usage_plans`: throttles (per key), per-route throttles (by route index), quotas.
fn compile_plans(
    parsed: &Parsed,
    registry: &Registry,
    routes: &[Route],
    errs: &mut Errors,
) -> Vec<Plan> {
    let mut plans = Vec::new();
    for (name, p) in &parsed.file.usage_plans {
        let path = format!("usage_plans.{name}");
        let throttle = p
            .throttle
            .as_ref()
            .and_then(|t| spec_at(t, &format!("{path}.throttle"), errs))
            .map(|spec| registry.limits().throttle(&format!("plan:{name}"), spec));
        let mut route_throttles = HashMap::new();
        for (key, t) in &p.route_throttle {
            let at = format!("{path}.route_throttle.{key}");
            let Some(spec) = spec_at(t, &at, errs) else {
                continue;
            };
            match routes.iter().find(|r| &*r.key == key.as_str()) {
                Some(r) => {
                    route_throttles.insert(
                        r.index,
                        registry
                            .limits()
                            .throttle(&format!("plan:{name}:route:{key}"), spec),
                    );
                }
                None => errs.list.push(parsed.error_at_key(
                    &format!("{path}.route_throttle"),
                    key,
                    format!("no route {key:?} is defined"),
                )),
            }
        }
        let quota = p.quota.map(|q| QuotaSpec {
            limit: q.limit,
            period: q.period.into(),
        });
        if quota.is_some_and(|q| q.limit == 0) {
            errs.at(
                &format!("{path}.quota.limit"),
                "a quota limit must be at least 1",
            );
        }
        let m = &registry.metrics().plan_requests;
        plans.push(Plan {
            name: name.as_str().into(),
            throttle,
            route_throttles,
            quota,
            outcomes: [
                m.with_label_values(&[name.as_str(), "admitted"]),
                m.with_label_values(&[name.as_str(), "throttled"]),
                m.with_label_values(&[name.as_str(), "quota_exceeded"]),
            ],
        });
    }
    plans
}

/// Compiles `api_keys`: the keys in the config and the CSV import, with their plans resolved.
/// Refuses unknown plans, duplicate ids and duplicate keys, each at its line.
fn compile_keys(
    parsed: &Parsed,
    cfg: &crate::config::schema::ApiKeysCfg,
    plans: &[Plan],
    errs: &mut Errors,
) -> Option<KeyTable> {
    let header = match HeaderName::from_str(cfg.header.as_deref().unwrap_or("x-api-key")) {
        Ok(h) => h,
        Err(_) => {
            errs.at("api_keys.header", "not a valid header name");
            return None;
        }
    };
    let mut records: Vec<(KeyRecord, Option<String>)> = Vec::new();
    let mut literal = 0;
    for (i, k) in cfg.keys.iter().enumerate() {
        let path = format!("api_keys.keys.{i}");
        match crate::apikeys::parse_key(&k.key) {
            Ok((hash, was_literal)) => {
                if was_literal {
                    literal += 1;
                }
                records.push((
                    KeyRecord {
                        id: k.id.clone(),
                        hash,
                        plan: k.plan.clone(),
                        enabled: k.enabled,
                        line: None,
                    },
                    Some(path),
                ));
            }
            Err(e) => errs.at(&format!("{path}.key"), e),
        }
    }
    if literal > 0 {
        tracing::warn!(keys = literal, at = %parsed.location("api_keys.keys"), "API keys written in plain text are hashed at load; write them as sha256:<hex> (tollgate hash-key)");
    }
    let csv_path = cfg.import.as_ref().map(|p| parsed.resolve(p));
    if let Some(p) = &csv_path {
        match crate::apikeys::read_csv(p) {
            Ok((recs, literal)) => {
                if literal > 0 {
                    tracing::info!(keys = literal, file = %p.display(), "imported API keys hashed at load");
                }
                records.extend(recs.into_iter().map(|r| (r, None)));
            }
            Err(mut e) => errs.list.append(&mut e),
        }
    }
    let mut by_hash = HashMap::with_capacity(records.len());
    let mut ids = std::collections::HashSet::with_capacity(records.len());
    for (rec, path) in records {
        let at = |errs: &mut Errors, field: &str, msg: String| match (&path, rec.line, &csv_path) {
            (Some(p), _, _) => errs.at(&format!("{p}.{field}"), msg),
            (None, Some(line), Some(csv)) => errs.list.push(ConfigError {
                file: csv.clone(),
                line,
                col: 1,
                message: msg,
            }),
            _ => errs.at("api_keys", msg),
        };
        let plan = match &rec.plan {
            Some(name) => match plans.iter().position(|p| &*p.name == name.as_str()) {
                Some(i) => Some(i),
                None => {
                    at(
                        errs,
                        "plan",
                        format!("key {:?}: usage plan {name:?} is not defined", rec.id),
                    );
                    continue;
                }
            },
            None => None,
        };
        if rec.id.is_empty() {
            at(errs, "id", "a key id cannot be empty".to_string());
            continue;
        }
        let Ok(id_header) = HeaderValue::from_str(&rec.id) else {
            at(
                errs,
                "id",
                format!("key id {:?} cannot be sent in a header", rec.id),
            );
            continue;
        };
        if !ids.insert(rec.id.clone()) {
            at(errs, "id", format!("key id {:?} is used twice", rec.id));
            continue;
        }
        let key = ApiKey {
            id: rec.id.as_str().into(),
            id_header,
            plan,
            enabled: rec.enabled,
        };
        if by_hash.insert(rec.hash, key).is_some() {
            at(
                errs,
                "key",
                format!("key {:?} has the same key as another", rec.id),
            );
        }
    }
    Some(KeyTable::new(header, by_hash))
}

/// Whether `s` is an absolute `http://` or `https://` URL with a host.
fn is_http_url(s: &str) -> bool {
    s.parse::<http::Uri>().is_ok_and(|u| {
        matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some_and(|h| !h.is_empty())
    })
}

/// Whether a route key uses one of the embedded issuer's paths (whatever its method), which
/// would let a user route take over the token endpoint.
fn reserved_for_issuer(key: &RouteKey) -> bool {
    let RouteKey::Path { segments, .. } = key else {
        return false;
    };
    crate::issuer::ROUTES
        .iter()
        .any(|(builtin, _)| match RouteKey::parse(builtin) {
            Ok(RouteKey::Path { segments: b, .. }) => b == *segments,
            _ => false,
        })
}

/// Compiles the `issuer:` section: token lifetime, scopes, clients and their secrets, the
/// state directory and signing key.
fn compile_issuer(
    parsed: &Parsed,
    registry: &Registry,
    cfg: &crate::config::schema::IssuerCfg,
    errs: &mut Errors,
) -> Option<Arc<Issuer>> {
    let before = errs.list.len();
    if !is_http_url(&cfg.url) {
        errs.at(
            "issuer.url",
            "the issuer url must be an absolute http(s) URL, e.g. http://localhost:8080",
        );
    }
    let ttl = cfg
        .token_ttl
        .map_or(crate::issuer::DEFAULT_TOKEN_TTL, |d| d.0);
    if !(crate::issuer::MIN_TOKEN_TTL..=crate::issuer::MAX_TOKEN_TTL).contains(&ttl) {
        errs.at("issuer.token_ttl", "token_ttl must be between 5m and 1d");
    }
    let mut supported: Vec<String> = Vec::new();
    for (i, rs) in cfg.resource_servers.iter().enumerate() {
        let p = format!("issuer.resource_servers.{i}");
        if rs.identifier.is_empty() || rs.identifier.contains(char::is_whitespace) {
            errs.at(
                &format!("{p}.identifier"),
                "a resource server identifier is one word",
            );
        }
        for (k, sc) in rs.scopes.iter().enumerate() {
            if sc.is_empty() || sc.contains(|c: char| c.is_whitespace() || c == '/' || c == '"') {
                errs.at(
                    &format!("{p}.scopes.{k}"),
                    format!("scope name {sc:?} must be one word without / or quotes"),
                );
            }
            let full = format!("{}/{sc}", rs.identifier);
            if supported.contains(&full) {
                errs.at(
                    &format!("{p}.scopes.{k}"),
                    format!("scope {full} is defined twice"),
                );
            }
            supported.push(full);
        }
    }
    let mut clients = HashMap::new();
    for (i, c) in cfg.clients.iter().enumerate() {
        let p = format!("issuer.clients.{i}");
        if c.client_id.is_empty()
            || c.client_id
                .contains(|ch: char| ch.is_control() || ch == ':')
        {
            errs.at(
                &format!("{p}.client_id"),
                "client_id must be non-empty, without ':' or control characters",
            );
        }
        for (k, sc) in c.scopes.iter().enumerate() {
            if !supported.contains(sc) {
                errs.at(
                    &format!("{p}.scopes.{k}"),
                    format!("scope {sc:?} is not defined by any resource server (write <resource server>/<scope>)"),
                );
            }
        }
        let Some(secret) = read_secret(
            parsed,
            &c.client_secret,
            &format!("{p}.client_secret"),
            errs,
        ) else {
            continue;
        };
        let client = Client {
            secret_digest: crate::util::sha256(secret.as_bytes()),
            scopes: c.scopes.clone(),
        };
        if clients.insert(c.client_id.clone(), client).is_some() {
            errs.at(
                &format!("{p}.client_id"),
                format!("client {:?} is defined twice", c.client_id),
            );
        }
    }
    let key_path = match &cfg.signing_key {
        Some(p) => parsed.resolve(p),
        None => parsed.resolve(&parsed.file.state.path).join("issuer.pem"),
    };
    let ring = match registry.key_ring(&key_path) {
        Ok(r) => r,
        Err(e) => {
            errs.at(
                if cfg.signing_key.is_some() {
                    "issuer.signing_key"
                } else {
                    "issuer"
                },
                e,
            );
            return None;
        }
    };
    if errs.list.len() > before {
        return None;
    }
    Some(Arc::new(Issuer::new(
        cfg.url.clone(),
        ttl,
        clients,
        supported,
        ring,
        registry.failures.clone(),
        registry.metrics(),
    )))
}

fn fixed_response(r: &crate::config::schema::RespondCfg) -> Result<FixedResponse, String> {
    let status = StatusCode::from_u16(r.status).map_err(|_| format!("bad status {}", r.status))?;
    let mut headers = Vec::new();
    let mut has_ct = false;
    for (k, v) in &r.headers {
        let name = HeaderName::from_str(k).map_err(|_| format!("bad header name {k:?}"))?;
        if name == http::header::CONTENT_TYPE {
            has_ct = true;
        }
        let value = HeaderValue::from_str(v).map_err(|_| format!("bad value for header {k:?}"))?;
        headers.push((name, value));
    }
    if !has_ct {
        headers.push((
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ));
    }
    Ok(FixedResponse {
        status,
        headers,
        body: Bytes::from(r.body.clone()),
    })
}

fn jwt_authorizer(
    parsed: &Parsed,
    registry: &Registry,
    name: &str,
    j: &JwtCfg,
    path: &str,
    issuer: Option<&Arc<Issuer>>,
    errs: &mut Errors,
) -> Option<JwtAuthorizer> {
    let before = errs.list.len();
    let has_secret = j.secret.is_some();
    let alg_names = j
        .algorithms
        .clone()
        .unwrap_or_else(|| vec![if has_secret { "HS256" } else { "RS256" }.to_string()]);
    let mut algorithms = Vec::new();
    for (i, a) in alg_names.iter().enumerate() {
        match jsonwebtoken::Algorithm::from_str(a) {
            Ok(alg) => {
                let hmac = alg.family() == jsonwebtoken::AlgorithmFamily::Hmac;
                if hmac != has_secret {
                    errs.at(
                        &format!("{path}.algorithms.{i}"),
                        if hmac {
                            format!("{a} needs `secret` (HMAC keys never come from a JWKS)")
                        } else {
                            format!("{a} cannot be used with `secret`: a shared-secret authorizer accepts only HS256/HS384/HS512")
                        },
                    );
                }
                algorithms.push(alg);
            }
            Err(_) => errs.at(
                &format!("{path}.algorithms.{i}"),
                format!("unknown algorithm {a:?} (RS256/384/512, PS256/384/512, ES256/384, EdDSA, HS256/384/512)"),
            ),
        }
    }
    if algorithms.is_empty() {
        errs.at(
            &format!("{path}.algorithms"),
            "at least one algorithm is required",
        );
    }
    let leeway = j.leeway.map_or(DEFAULT_LEEWAY, |d| d.0);
    if leeway > MAX_LEEWAY {
        errs.at(&format!("{path}.leeway"), "leeway is at most 5m");
    }
    let own = j.issuer == "self";
    if own && issuer.is_none() && parsed.file.issuer.is_none() {
        errs.at(
            &format!("{path}.issuer"),
            "`issuer: self` needs an `issuer:` section",
        );
    }
    if own
        && algorithms
            .iter()
            .any(|a| *a != jsonwebtoken::Algorithm::RS256)
    {
        errs.at(
            &format!("{path}.algorithms"),
            "the embedded issuer signs with RS256 only; `issuer: self` accepts [RS256]",
        );
    }
    if own && (j.jwks_uri.is_some() || j.jwks_file.is_some() || has_secret) {
        errs.at(
            path,
            "`issuer: self` uses the embedded issuer's keys; remove jwks_uri, jwks_file and secret",
        );
    }
    let expected_issuer = match (own, issuer) {
        (true, Some(i)) => i.url().to_string(),
        _ => j.issuer.clone(),
    };
    let header = match HeaderName::from_str(j.header.as_deref().unwrap_or("authorization")) {
        Ok(h) => h,
        Err(_) => {
            errs.at(&format!("{path}.header"), "not a valid header name");
            return None;
        }
    };
    if let Some(tu) = &j.token_use
        && tu != "access"
        && tu != "id"
    {
        errs.at(
            &format!("{path}.token_use"),
            "token_use is `access` or `id`",
        );
    }
    let sources = usize::from(j.jwks_uri.is_some())
        + usize::from(j.jwks_file.is_some())
        + usize::from(has_secret);
    if sources > 1 {
        errs.at(path, "use one of `jwks_uri`, `jwks_file` or `secret`");
    }
    let keys = if own {
        match issuer {
            Some(i) => KeySource::Local(i.keys().verify_keys()),
            None => return None,
        }
    } else if let Some(secret) = &j.secret {
        let s = read_secret(parsed, secret, &format!("{path}.secret"), errs)?;
        if s.len() < 32 {
            errs.at(
                &format!("{path}.secret"),
                "an HMAC secret must be at least 32 bytes",
            );
        }
        KeySource::Static(Arc::new(Loaded::fixed(
            KeySet::from_secret(s.as_bytes()),
            s.as_bytes(),
        )))
    } else if let Some(file) = &j.jwks_file {
        let p = parsed.resolve(file);
        match std::fs::read(&p)
            .map_err(|e| format!("cannot read {}: {e}", p.display()))
            .and_then(|b| {
                KeySet::from_jwks(&b)
                    .map(|keys| Loaded::fixed(keys, &b))
                    .map_err(|e| format!("{}: {e}", p.display()))
            }) {
            Ok(loaded) => KeySource::Static(Arc::new(loaded)),
            Err(e) => {
                errs.at(&format!("{path}.jwks_file"), e);
                return None;
            }
        }
    } else {
        let source = match &j.jwks_uri {
            Some(u) => {
                if !is_http_url(u) {
                    errs.at(
                        &format!("{path}.jwks_uri"),
                        "jwks_uri must be an absolute http(s) URL",
                    );
                }
                JwksSource::Uri(u.clone())
            }
            None => {
                if !(j.issuer.starts_with("https://") || j.issuer.starts_with("http://")) {
                    errs.at(
                        &format!("{path}.issuer"),
                        "without jwks_uri, jwks_file or secret the issuer must be an http(s) URL for OIDC discovery",
                    );
                }
                JwksSource::Discovery {
                    issuer: j.issuer.clone(),
                }
            }
        };
        if errs.list.len() > before {
            return None;
        }
        KeySource::Remote(registry.remote_jwks(source, name))
    };
    if errs.list.len() > before {
        return None;
    }
    let fingerprint = crate::util::sha256_hex(format!("{name}|{j:?}").as_bytes());
    let settings = JwtSettings {
        name: name.to_string(),
        header,
        algorithms,
        rules: ClaimRules {
            issuer: expected_issuer,
            audience: j.audience.clone(),
            token_use: j.token_use.clone(),
            leeway: leeway.as_secs(),
        },
    };
    match JwtAuthorizer::new(
        settings,
        keys,
        registry.token_cache(fingerprint),
        registry.metrics(),
    ) {
        Ok(a) => Some(a),
        Err(e) => {
            errs.at(path, e);
            None
        }
    }
}
