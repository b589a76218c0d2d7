//! The file schema: serde structs that mirror `gateway.yaml` one to one. Every struct refuses
//! unknown keys. Nothing here is used while serving requests: `crate::snapshot` compiles these
//! into runtime types once per load.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::units::{ByteSize, Dur};

/// The whole `gateway.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Public listeners; at least one.
    pub listeners: Vec<ListenerCfg>,
    /// The admin listener (metrics, health, config). Defaults to `127.0.0.1:9901`.
    #[serde(default)]
    pub admin: Option<AdminCfg>,
    /// Request size and timing limits.
    #[serde(default)]
    pub limits: LimitsCfg,
    /// Where state that outlives the process is kept.
    #[serde(default)]
    pub state: StateCfg,
    /// The embedded OAuth2 token issuer (client credentials), if any.
    #[serde(default)]
    pub issuer: Option<IssuerCfg>,
    /// Usage plans by name: throttles and quotas for API keys.
    #[serde(default)]
    pub usage_plans: BTreeMap<String, UsagePlanCfg>,
    /// API keys.
    #[serde(default)]
    pub api_keys: Option<ApiKeysCfg>,
    /// How the client's IP is determined behind proxies.
    #[serde(default)]
    pub client_ip: Option<ClientIpCfg>,
    /// Resource policies by name: allow and deny lists of CIDRs.
    #[serde(default)]
    pub policies: BTreeMap<String, PolicyCfg>,
    /// Named authorizers. `none` is reserved and means "no authorizer".
    #[serde(default)]
    pub authorizers: BTreeMap<String, AuthorizerCfg>,
    /// Named upstream pools.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamCfg>,
    /// Settings every route inherits unless it overrides them.
    #[serde(default)]
    pub defaults: DefaultsCfg,
    /// CORS for browser clients; preflights are answered by the gateway.
    #[serde(default)]
    pub cors: Option<CorsCfg>,
    /// The route table of the default API: the one serving every host no entry of `apis` claims.
    #[serde(default)]
    pub routes: Vec<RouteCfg>,
    /// More APIs by name, each selected by host and base path (docs/configuration.md, "APIs").
    #[serde(default)]
    pub apis: BTreeMap<String, ApiCfg>,
    /// What happens to client request headers before they are forwarded.
    #[serde(default)]
    pub headers: HeadersCfg,
    /// Settings for the gateway as a whole.
    #[serde(default)]
    pub gateway: GatewayCfg,
    /// What the gateway reports beyond metrics and logs: traces.
    #[serde(default)]
    pub telemetry: TelemetryCfg,
}

/// `telemetry:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryCfg {
    /// OpenTelemetry traces over OTLP; off when absent.
    pub tracing: Option<TracingCfg>,
}

/// `telemetry.tracing:` (docs/configuration.md, "Telemetry").
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingCfg {
    /// The collector: `http://host:4318` (spans go to `ENDPOINT/v1/traces`) or, for `grpc`,
    /// `http://host:4317`; `https://` for TLS.
    pub endpoint: String,
    /// `http` (OTLP HTTP/protobuf, the default) or `grpc`.
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Headers (gRPC metadata) sent with every export, e.g. a collector's API key.
    #[serde(default)]
    pub headers: BTreeMap<String, SecretCfg>,
    /// `service.name` of the spans (default `tollgate`).
    pub service_name: Option<String>,
    /// More resource attributes (`deployment.environment.name: prod`).
    #[serde(default)]
    pub resource: BTreeMap<String, String>,
    /// Share of new traces recorded, 0.0 to 1.0 (default 1.0); a trusted parent's decision is
    /// followed instead.
    pub sample_ratio: Option<f64>,
    /// Whose `traceparent` is continued: `trusted_proxies` (default), `always` or `never`.
    #[serde(default)]
    pub trust_parent: TrustParentCfg,
    /// Also read and write `X-Amzn-Trace-Id` (AWS X-Ray).
    #[serde(default)]
    pub xray: bool,
    /// Spans held for export at most; more are dropped and counted (default 2048).
    pub queue_size: Option<u32>,
    /// How long one export may take (default 10s).
    pub timeout: Option<Dur>,
}

/// `telemetry.tracing.protocol`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OtlpProtocol {
    /// OTLP over HTTP with protobuf bodies.
    #[default]
    Http,
    /// OTLP over gRPC.
    Grpc,
}

/// `telemetry.tracing.trust_parent`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrustParentCfg {
    /// Only from peers in `client_ip.trusted_proxies`.
    #[default]
    TrustedProxies,
    /// From every client.
    Always,
    /// From nobody: every request starts a trace.
    Never,
}

/// `gateway:`: settings for all the traffic the gateway serves.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayCfg {
    /// One bucket for every request the gateway admits (the managed gateway's account-level
    /// limit), shared across the fleet with the Redis store; checked after the plan's and the
    /// route's throttles, before the quota counts.
    pub throttle: Option<ThrottleCfg>,
}

/// One API of an edge gateway: the hosts and base path that select it, its stage, and its own
/// defaults, CORS and routes (route keys relative to the base path).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiCfg {
    /// The API this entry is a stage of (default: the entry's name), so that two entries can
    /// be two stages of one API (`orders` at `prod` and at `partner`).
    pub api: Option<String>,
    /// Host names (`api.example.com`, `*.example.com`) matched against `Host` / `:authority`,
    /// case-insensitive, port ignored; empty: every host no other API claims.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The prefix (`/orders`) under which the API's routes live; default `/`.
    pub base_path: Option<String>,
    /// Whether the upstream receives the path without the base path (default true, as the
    /// managed gateway's base path mappings do) or the whole path (false).
    pub strip_base_path: Option<bool>,
    /// The stage name (`prod`): logged, a metric label, and sent as `x-tollgate-stage`.
    pub stage: Option<String>,
    /// Settings the API's routes inherit; unset fields fall back to the top-level `defaults`.
    #[serde(default)]
    pub defaults: DefaultsCfg,
    /// The API's CORS (the top-level `cors` is not inherited).
    #[serde(default)]
    pub cors: Option<CorsCfg>,
    /// The API's routes.
    #[serde(default)]
    pub routes: Vec<RouteCfg>,
}

/// Client request header hygiene (docs/security.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersCfg {
    /// Forward client headers whose names contain `_` (dropped by default: servers that fold
    /// `_` into `-`, such as CGI and WSGI, would read them as other headers).
    #[serde(default)]
    pub allow_underscores: bool,
}

/// One public listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerCfg {
    /// `IP:PORT`; port 0 picks a free port (tests).
    pub bind: String,
    /// Read a PROXY protocol v1/v2 header before HTTP (behind a network load balancer).
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Serve HTTPS on this listener.
    pub tls: Option<TlsCfg>,
}

/// TLS settings of a listener. Every file is watched; a change reloads the certificates.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsCfg {
    /// PEM certificate chain (leaf first) served when no other certificate matches the SNI name.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `cert`.
    pub key: PathBuf,
    /// More certificates, each chosen when the client's SNI name matches one of its DNS names.
    #[serde(default)]
    pub certificates: Vec<CertKeyCfg>,
    /// PEM bundle of CAs whose client certificates are accepted (mTLS).
    pub client_ca: Option<PathBuf>,
    /// Refuse the TLS handshake without a client certificate signed by `client_ca`.
    #[serde(default)]
    pub require_client_cert: bool,
}

/// A certificate and its key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertKeyCfg {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Client IP settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientIpCfg {
    /// Peers whose `X-Forwarded-For` is believed (CIDRs or single addresses).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

/// A resource policy on the client IP.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyCfg {
    /// When given, only these CIDRs may call.
    pub allow: Option<Vec<String>>,
    /// These CIDRs may never call (an explicit deny wins over allow).
    #[serde(default)]
    pub deny: Vec<String>,
}

/// The admin listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminCfg {
    /// `IP:PORT`, loopback by default.
    pub bind: String,
    /// When set, every admin request must carry `Authorization: Bearer <token>`.
    #[serde(default)]
    pub token: Option<SecretCfg>,
    /// Host names (or IP addresses), besides the bind address, that a token-less admin request
    /// may name in its `Host` header, e.g. the DNS name Prometheus scrapes (DNS-rebinding guard).
    #[serde(default)]
    pub hosts: Vec<crate::config::units::AdminHost>,
}

/// Limits on what clients may send.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsCfg {
    /// Largest request body forwarded (default 10MiB); larger gets 413.
    pub max_body: Option<ByteSize>,
    /// Longest a client may take to send its request head (default 10s).
    pub header_timeout: Option<Dur>,
    /// Largest request head in bytes (default 64KiB).
    pub max_header_bytes: Option<ByteSize>,
    /// Most header fields in one request (default 100).
    pub max_headers: Option<usize>,
    /// Longest a client may pause while sending a body (default 30s).
    pub body_idle_timeout: Option<Dur>,
    /// Longest a spliced (upgraded, e.g. WebSocket) connection may carry no byte either way
    /// before it is closed (default 10m, the managed gateway's WebSocket idle timeout).
    pub upgrade_idle_timeout: Option<Dur>,
    /// How long in-flight requests get to finish at shutdown (default 30s).
    pub shutdown_grace: Option<Dur>,
    /// How long listeners keep accepting after `/readyz` turns 503 at shutdown, so load
    /// balancers stop sending first (default 0s; e.g. 5s behind a load balancer or in Kubernetes).
    pub shutdown_delay: Option<Dur>,
    /// Longest an HTTP/2 connection may stay open with no request in flight before it gets a
    /// GOAWAY and is closed (default 60s). PINGs do not count as activity.
    pub h2_idle_timeout: Option<Dur>,
    /// Age after which a client connection takes no new request: HTTP/1 closes after the
    /// current response, HTTP/2 gets a GOAWAY and finishes its streams (default 1h).
    pub max_connection_age: Option<Dur>,
    /// Most open client connections per public listener; more are accepted and closed at once
    /// (default: half the process's descriptor limit, shared among the listeners).
    pub max_connections: Option<usize>,
}

/// State storage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateCfg {
    /// Where throttle and quota state lives: `memory` (this process, quota counters snapshotted
    /// under `path`) or `redis` (shared by every replica).
    #[serde(default)]
    pub backend: StateBackend,
    /// Directory for state files (issuer keys, quota snapshots), relative to the config file.
    /// Default `state`.
    #[serde(default = "default_state_path")]
    pub path: PathBuf,
    /// Redis URL (`redis://host:port/db`, or `rediss://` over TLS), for one server.
    pub url: Option<String>,
    /// Redis Cluster seed node URLs, instead of `url`.
    pub cluster: Option<Vec<String>>,
    /// Sentinel URLs, instead of `url`; with `master_name`.
    pub sentinels: Option<Vec<String>>,
    /// The primary's name in Sentinel.
    pub master_name: Option<String>,
    /// TLS material for `rediss://` beyond the system's root certificates.
    pub tls: Option<StateTlsCfg>,
    /// What to do while Redis is unreachable: `deny` (default) or `allow`.
    pub on_error: Option<OnError>,
    /// Prefix of every Redis key (default `tollgate:`), so gateways can share a Redis.
    pub key_prefix: Option<String>,
}

impl Default for StateCfg {
    fn default() -> Self {
        StateCfg {
            backend: StateBackend::Memory,
            path: default_state_path(),
            url: None,
            cluster: None,
            sentinels: None,
            master_name: None,
            tls: None,
            on_error: None,
            key_prefix: None,
        }
    }
}

/// `state.tls`: PEM files for TLS connections to Redis, relative to the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateTlsCfg {
    /// CA certificates the servers' certificates must chain to (default: the system's roots).
    pub ca: Option<PathBuf>,
    /// Client certificate chain, for servers that require one (with `key`).
    pub cert: Option<PathBuf>,
    /// The client certificate's private key.
    pub key: Option<PathBuf>,
}

/// Behaviour while the shared state store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Admit requests unchecked (availability first).
    Allow,
    /// Refuse requests that need the store (limits first).
    Deny,
}

fn default_state_path() -> PathBuf {
    PathBuf::from("state")
}

/// State backends.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateBackend {
    /// In-process, with files under `state.path`.
    #[default]
    Memory,
    /// A Redis server shared by gateway replicas.
    Redis,
}

/// A token bucket: `rate` requests per second on average, `burst` at once.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleCfg {
    /// Sustained requests per second (may be fractional, e.g. 0.5).
    pub rate: f64,
    /// Largest burst (requests admitted at once from a full bucket).
    pub burst: u32,
}

/// A usage plan.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsagePlanCfg {
    /// Per-key throttle.
    pub throttle: Option<ThrottleCfg>,
    /// Per-key quota.
    pub quota: Option<QuotaCfg>,
    /// Per-key throttles for particular routes (by route key), replacing `throttle` there.
    #[serde(default)]
    pub route_throttle: BTreeMap<String, ThrottleCfg>,
    /// The API stages whose routes the plan's keys may call: `NAME/STAGE` or `NAME` (the API
    /// whatever its stage), `default` for the top-level routes. Absent: every API.
    pub apis: Option<Vec<String>>,
}

/// A quota: `limit` requests per calendar `period` (UTC).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaCfg {
    /// Requests allowed per period.
    pub limit: u64,
    /// `day`, `week` (from Monday) or `month`.
    pub period: PeriodCfg,
}

/// Quota periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeriodCfg {
    /// UTC calendar day.
    Day,
    /// ISO week, Monday 00:00 UTC to Monday.
    Week,
    /// UTC calendar month.
    Month,
}

/// API keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysCfg {
    /// Header carrying the key (default `x-api-key`).
    pub header: Option<String>,
    /// CSV file in the managed gateway's export format (`Name,Key,Description,Enabled,UsagePlanIds`).
    pub import: Option<PathBuf>,
    /// Keys written in the config.
    #[serde(default)]
    pub keys: Vec<ApiKeyCfg>,
}

/// One API key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyCfg {
    /// The key's id (log, `x-tollgate-api-key-id`, `/usage?key=`).
    pub id: String,
    /// `sha256:<hex>` of the key (a literal key is hashed at load, with a warning).
    pub key: String,
    /// The usage plan it belongs to.
    pub plan: Option<String>,
    /// Usage plans it belongs to, when several (they must cover different API stages).
    #[serde(default)]
    pub plans: Vec<String>,
    /// Disabled keys are refused (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
}

fn default_true() -> bool {
    true
}

/// The embedded token issuer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerCfg {
    /// The issuer URL: the `iss` claim, and the base of the discovery document's URLs.
    pub url: String,
    /// PEM file of the RS256 signing key; created (mode 0600) when absent. Default
    /// `<state.path>/issuer.pem`.
    pub signing_key: Option<PathBuf>,
    /// Lifetime of issued tokens, 5m to 1d (default 1h).
    pub token_ttl: Option<Dur>,
    /// Resource servers and the scopes they define.
    #[serde(default)]
    pub resource_servers: Vec<ResourceServerCfg>,
    /// App clients allowed to get tokens.
    #[serde(default)]
    pub clients: Vec<ClientCfg>,
}

/// A resource server (an API) and its custom scopes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceServerCfg {
    /// Identifier, the prefix of its scopes (`product-api` in `product-api/read_product`).
    pub identifier: String,
    /// Scope names without the prefix.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// An app client of the issuer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCfg {
    /// The client id (`sub` and `client_id` of its tokens).
    pub client_id: String,
    /// The client secret.
    pub client_secret: SecretCfg,
    /// Scopes it may ask for, written `<resource server>/<scope>`.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// A secret value: from the environment, from a file, or (warned about) written inline.
#[derive(Debug, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum SecretCfg {
    /// `{ env: NAME }`
    Env {
        /// Environment variable holding the secret.
        env: String,
    },
    /// `{ file: path }` (trailing newline trimmed)
    File {
        /// File holding the secret, relative to the config file.
        file: PathBuf,
    },
    /// A literal string in the config file.
    Literal(String),
}

/// An authorizer, by `type`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum AuthorizerCfg {
    /// Validates JWT access tokens.
    Jwt(JwtCfg),
    /// Verifies AWS Signature Version 4 signed requests.
    Sigv4(SigV4Cfg),
    /// Asks an external HTTP service (a "Lambda-style" custom authorizer).
    Http(HttpAuthorizerCfg),
}

/// A SigV4 authorizer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigV4Cfg {
    /// Region in the credential scope (`us-east-1`).
    pub region: String,
    /// Service in the credential scope (default `execute-api`).
    #[serde(default = "default_sigv4_service")]
    pub service: String,
    /// Accepted access keys.
    pub credentials: Vec<SigV4CredentialCfg>,
}

fn default_sigv4_service() -> String {
    "execute-api".to_string()
}

/// One SigV4 access key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigV4CredentialCfg {
    /// The access key id (the principal).
    pub access_key_id: String,
    /// Its secret.
    pub secret_access_key: SecretCfg,
    /// Scopes this key holds (checked like JWT scopes); empty: none.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// An external HTTP authorizer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpAuthorizerCfg {
    /// Where to POST the request description.
    pub url: String,
    /// Identity sources: `header:NAME`, `query:NAME`, `route` (the route key). Missing ones: 401.
    #[serde(default)]
    pub identity: Vec<String>,
    /// How long answers are cached by identity (default 300s, 0s = off, at most 3600s).
    pub cache_ttl: Option<Dur>,
    /// How long to wait for an answer (default 5s, at most 10s).
    pub timeout: Option<Dur>,
}

/// A JWT authorizer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtCfg {
    /// Expected `iss`; also the base URL for OIDC discovery.
    pub issuer: String,
    /// Accepted `aud` values (else `client_id`). Empty: not checked.
    #[serde(default)]
    pub audience: Vec<String>,
    /// Where the JWKS lives, instead of discovery.
    pub jwks_uri: Option<String>,
    /// A JWKS on disk, instead of discovery.
    pub jwks_file: Option<PathBuf>,
    /// Required `token_use` claim (`access` or `id`).
    pub token_use: Option<String>,
    /// Allowed `alg` values (default `[RS256]`, or `[HS256]` with `secret`).
    pub algorithms: Option<Vec<String>>,
    /// Clock skew tolerated for `exp`, `nbf`, `iat` (default 30s... capped at 5m).
    pub leeway: Option<Dur>,
    /// Header carrying the token (default `Authorization`).
    pub header: Option<String>,
    /// Shared secret for HS* tokens; excludes a JWKS.
    pub secret: Option<SecretCfg>,
}

/// An upstream pool.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamCfg {
    /// Base URLs (`http://host:port[/prefix]` or `https://...`), used round robin.
    pub targets: Vec<String>,
    /// Time allowed until the upstream's response head arrives (default 29s).
    pub timeout: Option<Dur>,
    /// Time allowed to connect (default 2s).
    pub connect_timeout: Option<Dur>,
    /// The HTTP version spoken to the targets (default `http1`).
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// How `https://` targets are verified (default: the system's root certificates).
    pub tls: Option<UpstreamTlsCfg>,
}

/// The HTTP version an upstream is spoken to in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 over `http://` or `https://` targets.
    #[default]
    Http1,
    /// HTTP/2 negotiated by ALPN over `https://` targets.
    H2,
    /// HTTP/2 with prior knowledge over `http://` targets (no TLS).
    H2c,
}

/// TLS settings for an upstream's `https://` targets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsCfg {
    /// PEM file of the CA certificates the targets' certificates must chain to; replaces the
    /// system's root certificates for this upstream. Relative to the config file's directory.
    pub ca: PathBuf,
}

/// Settings inherited by routes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultsCfg {
    /// Authorizer name for routes that name none (`none` = open).
    pub authorizer: Option<String>,
    /// Scopes for routes that list none.
    pub scopes: Option<Vec<String>>,
    /// Throttle of each route that sets none (one bucket per route, shared by all callers).
    pub throttle: Option<ThrottleCfg>,
    /// Resource policy for routes that name none.
    pub policy: Option<String>,
    /// Path spellings refused by default that routes accept unless they set their own list:
    /// `encoded_slash`, `empty_segments`, `semicolon`.
    pub allow_in_path: Option<Vec<String>>,
    /// Upgrade protocols routes pass on unless they set their own list (default `[websocket]`).
    pub upgrades: Option<Vec<String>>,
}

/// CORS settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsCfg {
    /// Allowed origins (`*` for any).
    pub allow_origins: Vec<String>,
    /// Allowed request headers in preflights.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Allowed methods (default: GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS).
    #[serde(default)]
    pub allow_methods: Vec<String>,
    /// Response headers the browser may read.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// How long a browser may cache a preflight answer.
    pub max_age: Option<Dur>,
    /// Whether credentials (cookies, Authorization) may be sent.
    #[serde(default)]
    pub allow_credentials: bool,
}

/// One route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCfg {
    /// `METHOD /path`, `ANY /path` or `$default`.
    pub route: String,
    /// Upstream pool name (or use `respond`).
    pub upstream: Option<String>,
    /// Authorizer name, `none` for an open route; default from `defaults`.
    pub authorizer: Option<String>,
    /// Scopes of which the token must hold at least one; default from `defaults`.
    pub scopes: Option<Vec<String>>,
    /// A fixed answer instead of an upstream (mock integration).
    pub respond: Option<RespondCfg>,
    /// Whether callers must present an API key.
    #[serde(default)]
    pub api_key_required: bool,
    /// This route's throttle (one bucket shared by all callers), instead of `defaults.throttle`.
    pub throttle: Option<ThrottleCfg>,
    /// Resource policy (`none` for no policy), instead of `defaults.policy`.
    pub policy: Option<String>,
    /// Only clients that presented a verified TLS client certificate (mTLS) may call it.
    #[serde(default)]
    pub require_client_cert: bool,
    /// Path spellings refused by default that this route accepts (instead of
    /// `defaults.allow_in_path`): `encoded_slash`, `empty_segments`, `semicolon`.
    pub allow_in_path: Option<Vec<String>>,
    /// `Upgrade` protocols passed on to the upstream (instead of `defaults.upgrades`; default
    /// `[websocket]`, `[]` for none). `h2c` is never allowed.
    pub upgrades: Option<Vec<String>>,
}

/// A fixed response.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RespondCfg {
    /// Status code (default 200).
    #[serde(default = "default_status")]
    pub status: u16,
    /// Body text.
    #[serde(default)]
    pub body: String,
    /// Extra headers (`content-type` defaults to `application/json`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_status() -> u16 {
    200
}
