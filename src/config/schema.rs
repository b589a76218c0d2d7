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
    /// The route table.
    #[serde(default)]
    pub routes: Vec<RouteCfg>,
}

/// One public listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerCfg {
    /// `IP:PORT`; port 0 picks a free port (tests).
    pub bind: String,
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
    /// How long in-flight requests get to finish at shutdown (default 30s).
    pub shutdown_grace: Option<Dur>,
}

/// State storage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateCfg {
    /// Storage backend; only `memory` (with files under `path`) today.
    #[serde(default)]
    pub backend: StateBackend,
    /// Directory for state files (issuer keys), relative to the config file. Default `state`.
    #[serde(default = "default_state_path")]
    pub path: PathBuf,
}

impl Default for StateCfg {
    fn default() -> Self {
        StateCfg {
            backend: StateBackend::Memory,
            path: default_state_path(),
        }
    }
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
    /// Base URLs (`http://host:port[/prefix]`), used round robin.
    pub targets: Vec<String>,
    /// Time allowed until the upstream's response head arrives (default 29s).
    pub timeout: Option<Dur>,
    /// Time allowed to connect (default 2s).
    pub connect_timeout: Option<Dur>,
}

/// Settings inherited by routes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultsCfg {
    /// Authorizer name for routes that name none (`none` = open).
    pub authorizer: Option<String>,
    /// Scopes for routes that list none.
    pub scopes: Option<Vec<String>>,
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
