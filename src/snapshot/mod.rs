//! The runtime form of a config: an immutable [`Snapshot`] compiled once from a parsed
//! `gateway.yaml`, and the [`Registry`] of state that outlives snapshots (remote key sets and
//! verified-token caches). Compiling checks everything the schema cannot (references, route
//! keys, secrets, key files) and reports each problem at its line and column; a snapshot that
//! exists is one that can serve.

mod authorizers;
mod files;
mod issuer;
mod plans;
mod routes;
mod upstreams;

use self::authorizers::{Authorizers, compile_authorizers};
pub use self::files::referenced_files;
use self::issuer::{compile_issuer, reserved_for_issuer};
use self::plans::{compile_keys, compile_plans, spec_at};
use self::routes::{compile_routes, route_table};
use self::upstreams::compile_upstreams;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
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
use crate::config::schema::{AuthorizerCfg, JwtCfg, SecretCfg, UpstreamProtocol};
use crate::config::{ConfigError, Parsed};
use crate::cors::Cors;
use crate::fetch::Fetcher;
use crate::issuer::keys::KeyRing;
use crate::issuer::{Client, Endpoint, FailureCounter, Issuer};
use crate::limits::{BucketSpec, LimitState, QuotaSpec, Throttle};
use crate::metrics::Metrics;
use crate::proxy::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT, Protocol, Trust, Upstream, UpstreamSettings,
};
use crate::routes::{RouteKey, RouteTable};
use crate::util::CarriedMap;

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
    /// Longest a spliced (upgraded) connection may carry no byte either way.
    pub upgrade_idle_timeout: Duration,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
    /// Time between readiness turning off and listeners closing.
    pub shutdown_delay: Duration,
    /// Longest an HTTP/2 connection may have no request in flight before its GOAWAY.
    pub h2_idle_timeout: Duration,
    /// Age after which a client connection takes no new request.
    pub max_connection_age: Duration,
    /// Most open connections per public listener; `None`: derived from the descriptor limit
    /// when the listeners start ([`crate::server`]).
    pub max_connections: Option<usize>,
}

/// The `tollgate_api_key_requests_total{plan, result}` series of one plan.
#[derive(Debug, Clone)]
pub struct PlanOutcomes {
    /// `result="admitted"`: passed the plan's throttle and quota.
    pub admitted: prometheus::IntCounter,
    /// `result="throttled"`: refused by the plan's throttle.
    pub throttled: prometheus::IntCounter,
    /// `result="quota_exceeded"`: refused by the plan's quota.
    pub quota_exceeded: prometheus::IntCounter,
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
    /// Only connections with a verified TLS client certificate may call it.
    pub require_client_cert: bool,
    /// Path spellings refused by default that this route accepts (`allow_in_path`).
    pub allow_in_path: crate::canonical::Exceptions,
    /// `Upgrade` protocols passed on to the upstream, lower-case (`upgrades`).
    pub upgrades: Box<[Box<str>]>,
    /// Its `tollgate_request_duration_seconds` series, resolved at its first request (so a
    /// route never called exports no series, as before) and then kept.
    pub duration: std::sync::OnceLock<prometheus::Histogram>,
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
    /// `tollgate_api_key_requests_total{plan, result}`, one handle per result.
    pub outcomes: PlanOutcomes,
}

/// A public listener.
#[derive(Debug, Clone)]
pub struct ListenerSpec {
    /// Address to bind.
    pub addr: SocketAddr,
    /// Whether each connection starts with a PROXY protocol header.
    pub proxy_protocol: bool,
    /// TLS (certificates, client verification), or plain HTTP.
    pub tls: Option<Arc<crate::tls::TlsSettings>>,
}

/// Settings of the admin listener.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// Address.
    pub bind: SocketAddr,
    /// Required bearer token, if any.
    pub token: Option<String>,
    /// Names a token-less request's `Host` may carry besides the bind address (`admin.hosts`).
    pub hosts: Vec<crate::admin::AdminHost>,
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
    /// Whether client headers with `_` in their names are forwarded (`headers.allow_underscores`).
    pub allow_underscores: bool,
    /// Headers that carry a credential (`authorization`, every JWT authorizer's header, the
    /// API-key header): a request with two of one is refused.
    pub credential_headers: Box<[HeaderName]>,
}

/// State that outlives snapshots: remote key sets by source, token caches by authorizer
/// fingerprint (a changed authorizer gets a fresh cache), and the outbound fetch client.
pub struct Registry {
    metrics: Arc<Metrics>,
    limits: Arc<LimitState>,
    fetcher: Fetcher,
    /// Whether remote key sets are fetched (off for `tollgate check`).
    online: bool,
    jwks: CarriedMap<JwksSource, Arc<RemoteJwks>>,
    caches: CarriedMap<String, TokenCache>,
    rings: CarriedMap<PathBuf, Arc<KeyRing>>,
    failures: FailureCounter,
}

impl Registry {
    /// A registry; `online: false` never starts network fetches.
    pub fn new(metrics: Arc<Metrics>, limits: Arc<LimitState>, online: bool) -> Registry {
        Registry {
            metrics,
            limits,
            fetcher: Fetcher::new(),
            online,
            jwks: CarriedMap::default(),
            caches: CarriedMap::default(),
            rings: CarriedMap::default(),
            failures: FailureCounter::default(),
        }
    }

    /// Ends a compile. When its snapshot went live (`kept`), state the snapshot does not use is
    /// dropped: remote key sets stop refreshing once the last old snapshot is gone, and caches
    /// of changed authorizers are freed. Either way the record of what was used is cleared.
    pub fn sweep(&self, kept: bool) {
        self.limits.sweep(kept);
        self.jwks.sweep(kept);
        self.caches.sweep(kept);
        self.rings.sweep(kept);
    }

    /// The issuer key ring for `path`, opened once and shared by later snapshots. When not
    /// online (`tollgate check`), an absent key is generated in memory and not written.
    fn key_ring(&self, path: &Path) -> Result<Arc<KeyRing>, String> {
        if !self.online {
            return KeyRing::open(path, false).map(Arc::new);
        }
        self.rings.get_or_try_insert_with(path.to_path_buf(), || {
            KeyRing::open(path, true).map(Arc::new)
        })
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
        self.jwks.get_or_insert_with(source.clone(), || {
            RemoteJwks::start(
                source,
                label,
                self.fetcher.clone(),
                self.metrics.clone(),
                self.online,
            )
        })
    }

    fn token_cache(&self, fingerprint: String) -> TokenCache {
        self.caches
            .get_or_insert_with(fingerprint, TokenCache::default)
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

    /// An error located at the mapping key `key` under `parent` (a name, not its value).
    fn at_key(&mut self, parent: &str, key: &str, msg: impl Into<String>) {
        self.list.push(self.parsed.error_at_key(parent, key, msg));
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

/// A CIDR list as a set, or the first bad entry reported at `path.INDEX`.
fn cidrs(items: &[String], path: &str, errs: &mut Errors) -> Option<CidrSet> {
    CidrSet::parse(items)
        .map_err(|(i, e)| errs.at(&format!("{path}.{i}"), e))
        .ok()
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
    let mut listeners: Vec<ListenerSpec> = Vec::new();
    for (i, l) in f.listeners.iter().enumerate() {
        let tls = l.tls.as_ref().and_then(|t| {
            let (cert, key) = (parsed.resolve(&t.cert), parsed.resolve(&t.key));
            let extra: Vec<_> = t
                .certificates
                .iter()
                .map(|c| (parsed.resolve(&c.cert), parsed.resolve(&c.key)))
                .collect();
            let ca = t.client_ca.as_ref().map(|c| parsed.resolve(c));
            let files = crate::tls::TlsFiles {
                default: (&cert, &key),
                extra: extra
                    .iter()
                    .map(|(c, k)| (c.as_path(), k.as_path()))
                    .collect(),
                client_ca: ca.as_deref(),
                require_client_cert: t.require_client_cert,
            };
            match crate::tls::compile(&files) {
                Ok(s) => Some(Arc::new(s)),
                Err(e) => {
                    errs.at(&format!("listeners.{i}.tls.{}", e.field), e.message);
                    None
                }
            }
        });
        if let Some(addr) = bind_addr(&l.bind, &format!("listeners.{i}.bind"), &mut errs) {
            if addr.port() != 0 && listeners.iter().any(|o| o.addr == addr) {
                errs.at(
                    &format!("listeners.{i}.bind"),
                    format!("{addr} is already used by another listener"),
                );
            }
            listeners.push(ListenerSpec {
                addr,
                proxy_protocol: l.proxy_protocol,
                tls,
            });
        }
    }
    let admin = match &f.admin {
        Some(a) => AdminSettings {
            bind: bind_addr(&a.bind, "admin.bind", &mut errs)
                .unwrap_or_else(|| DEFAULT_ADMIN_BIND.parse().expect("valid")),
            token: a
                .token
                .as_ref()
                .and_then(|t| read_secret(parsed, t, "admin.token", &mut errs)),
            hosts: a.hosts.clone(),
        },
        None => AdminSettings {
            bind: DEFAULT_ADMIN_BIND.parse().expect("valid"),
            token: None,
            hosts: Vec::new(),
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
        upgrade_idle_timeout: l
            .upgrade_idle_timeout
            .map_or(crate::upgrade::DEFAULT_IDLE_TIMEOUT, |d| d.0),
        shutdown_grace: l.shutdown_grace.map_or(DEFAULT_SHUTDOWN_GRACE, |d| d.0),
        shutdown_delay: l.shutdown_delay.map_or(Duration::ZERO, |d| d.0),
        h2_idle_timeout: l
            .h2_idle_timeout
            .map_or(crate::server::DEFAULT_H2_IDLE_TIMEOUT, |d| d.0),
        max_connection_age: l
            .max_connection_age
            .map_or(crate::server::DEFAULT_MAX_CONNECTION_AGE, |d| d.0),
        max_connections: l.max_connections,
    };
    for (value, path) in [
        (limits.header_timeout, "limits.header_timeout"),
        (limits.body_idle_timeout, "limits.body_idle_timeout"),
        (limits.upgrade_idle_timeout, "limits.upgrade_idle_timeout"),
        (limits.h2_idle_timeout, "limits.h2_idle_timeout"),
        (limits.max_connection_age, "limits.max_connection_age"),
    ] {
        if value.is_zero() {
            errs.at(path, "must be greater than 0");
        }
    }
    if limits.max_connections == Some(0) {
        errs.at("limits.max_connections", "must be at least 1");
    }
    if limits.max_header_bytes < 8192 {
        errs.at("limits.max_header_bytes", "must be at least 8KiB");
    }

    let upstreams = compile_upstreams(parsed, registry, &mut errs);

    // Client IP: trusted proxies, and resource policies by name.
    let trusted_proxies = f
        .client_ip
        .as_ref()
        .and_then(|c| cidrs(&c.trusted_proxies, "client_ip.trusted_proxies", &mut errs))
        .unwrap_or_default();
    let mut policies: HashMap<&str, Arc<Policy>> = HashMap::new();
    for (name, p) in &f.policies {
        let path = format!("policies.{name}");
        if name == "none" {
            errs.at_key(
                "policies",
                name,
                "`none` is reserved for routes without a policy",
            );
            continue;
        }
        let allow = match &p.allow {
            None => None,
            Some(a) => match cidrs(a, &format!("{path}.allow"), &mut errs) {
                Some(set) => Some(set),
                None => continue,
            },
        };
        let Some(deny) = cidrs(&p.deny, &format!("{path}.deny"), &mut errs) else {
            continue;
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

    let authorizers = compile_authorizers(parsed, registry, issuer.as_ref(), &mut errs);

    let (routes, keys) = compile_routes(
        parsed,
        registry,
        &upstreams,
        &policies,
        &authorizers,
        issuer.as_ref(),
        &mut errs,
    );
    let plans = compile_plans(parsed, registry, &routes, &mut errs);
    let key_table = f
        .api_keys
        .as_ref()
        .and_then(|k| compile_keys(parsed, k, &plans, &mut errs));
    let table = route_table(parsed, &keys, &mut errs);
    let mut credential_headers = vec![http::header::AUTHORIZATION];
    credential_headers.extend(authorizers.jwt.values().map(|a| a.header().clone()));
    credential_headers.extend(key_table.as_ref().map(|k| k.header().clone()));
    credential_headers.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    credential_headers.dedup();
    let credential_headers = credential_headers.into_boxed_slice();

    let cors = f.cors.as_ref().and_then(|c| {
        Cors::compile(c)
            .map_err(|list| {
                for (path, msg) in list {
                    errs.at(path, msg);
                }
            })
            .ok()
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
            allow_underscores: f.headers.allow_underscores,
            credential_headers,
        }),
        _ => Err(errs.list),
    }
}

/// Whether `s` is an absolute `http://` or `https://` URL with a host.
fn is_http_url(s: &str) -> bool {
    s.parse::<http::Uri>().is_ok_and(|u| {
        matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some_and(|h| !h.is_empty())
    })
}
