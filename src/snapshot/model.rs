//! The snapshot's types: what a compiled config is made of, and the defaults it fills in.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

use crate::apikeys::KeyTable;
use crate::auth::JwtAuthorizer;
use crate::auth::external::ExternalAuthorizer;
use crate::auth::sigv4::SigV4Verifier;
use crate::clientip::{CidrSet, Policy};
use crate::cors::Cors;
use crate::issuer::{Endpoint, Issuer};
use crate::limits::{QuotaSpec, Throttle};
use crate::proxy::Upstream;
use crate::routes::RouteTable;

/// Default `limits.h2_idle_timeout`: an HTTP/2 client with nothing to ask for a minute gives
/// its descriptor back; a minute covers the gaps of a client that polls (nginx waits 75 s,
/// `keepalive_timeout`), and the GOAWAY lets the client reconnect without losing a request.
pub const DEFAULT_H2_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `limits.max_connection_age`: nginx's `keepalive_time` (1 h). Long enough that
/// reconnecting costs nothing measurable, short enough that clients move to new replicas and
/// certificates within the hour.
pub const DEFAULT_MAX_CONNECTION_AGE: Duration = Duration::from_secs(3600);
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
pub struct Bounds {
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
    /// when the listeners start (`tollgate::server`).
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

/// A compiled API: what selects it, what it tells the upstream, and its route table.
#[derive(Debug)]
pub struct Api {
    /// The API it is a stage of (`api`, else its entry's name; `default` for the top-level
    /// routes): the `api` label.
    pub name: Arc<str>,
    /// Its entry's name in `apis`.
    pub entry: Arc<str>,
    /// Its stage, if named.
    pub stage: Option<Arc<str>>,
    /// `x-tollgate-stage` for the upstream, when the API has a stage.
    pub stage_header: Option<HeaderValue>,
    /// Host names that select it (empty: every host no API claims).
    pub hosts: Vec<crate::apis::HostPattern>,
    /// Its base path without a trailing `/` (empty: the root).
    pub base_path: Box<str>,
    /// Whether the upstream receives the path without the base path.
    pub strip_base_path: bool,
    /// `x-forwarded-prefix` for the upstream: the base path, when it is stripped.
    pub prefix_header: Option<HeaderValue>,
    /// CORS, if the API configures it.
    pub cors: Option<Cors>,
    /// Its route table; the indexes point into [`Snapshot::routes`].
    pub table: RouteTable,
}

/// Why a reference to API stages (`NAME` or `NAME/STAGE`) names none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRefError {
    /// No entry is API `NAME`.
    NoApi,
    /// API `NAME` exists, but not at that stage; these are its stages.
    NoStage(Vec<Arc<str>>),
}

/// The indexes of the entries a reference names, as `usage_plans.*.apis` and `/usage?api=`
/// write them: `NAME/STAGE` the entry of API `NAME` at that stage, `NAME` every entry of it.
pub fn api_entries(apis: &[Api], item: &str) -> Result<Vec<usize>, ApiRefError> {
    let (name, stage) = match item.split_once('/') {
        Some((n, s)) => (n, Some(s)),
        None => (item, None),
    };
    let of_api: Vec<usize> = (0..apis.len())
        .filter(|&i| &*apis[i].name == name)
        .collect();
    if of_api.is_empty() {
        return Err(ApiRefError::NoApi);
    }
    let Some(stage) = stage else {
        return Ok(of_api);
    };
    let found: Vec<usize> = of_api
        .iter()
        .copied()
        .filter(|&i| apis[i].stage.as_deref() == Some(stage))
        .collect();
    if found.is_empty() {
        return Err(ApiRefError::NoStage(
            of_api
                .iter()
                .filter_map(|&i| apis[i].stage.clone())
                .collect(),
        ));
    }
    Ok(found)
}

/// The name of the API made of the top-level `routes`, `defaults` and `cors`.
pub const DEFAULT_API: &str = "default";

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    /// The route key as written; the `route` label.
    pub key: Arc<str>,
    /// Index of its API in [`Snapshot::apis`].
    pub api: usize,
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
    /// Indexes of the APIs its keys may call (`usage_plans.*.apis`); `None`: every API.
    pub apis: Option<Box<[usize]>>,
}

impl Plan {
    /// Whether the plan's keys may call the API at index `api`.
    pub fn covers(&self, api: usize) -> bool {
        self.apis.as_ref().is_none_or(|a| a.contains(&api))
    }
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
    pub hosts: Vec<crate::config::units::AdminHost>,
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
    /// `limits:`: sizes and timeouts of what clients may send (throttles and quotas are `crate::limits`).
    pub limits: Bounds,
    /// The APIs; index 0 is the default API (the top-level routes).
    pub apis: Vec<Api>,
    /// Which API a request's host and path select.
    pub selector: crate::apis::Selector,
    /// Routes of every API, by index.
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
    /// `gateway.throttle`: one bucket for every admitted request.
    pub gateway_throttle: Option<crate::limits::Throttle>,
    /// `telemetry.tracing`, when on.
    pub(crate) tracing: Option<crate::telemetry::Tracing>,
}
