//! Compiling a parsed config into a snapshot, section by section.

use super::authorizers::{Authorizers, compile_authorizers};
use super::errors::*;
use super::files::referenced_files;
use super::issuer::compile_issuer;
use super::model::*;
use super::plans::{compile_keys, compile_plans};
use super::registry::Registry;
use super::routes::{CompiledApis, RouteCx, compile_apis};
use super::upstreams::compile_upstreams;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::clientip::Policy;
use crate::config::{ConfigError, Parsed};

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

    let listeners = compile_listeners(parsed, &mut errs);
    let admin = compile_admin(parsed, &mut errs);
    let limits = compile_bounds(parsed, &mut errs);

    let upstreams = compile_upstreams(parsed, registry, &mut errs);

    // Client IP: trusted proxies, and resource policies by name.
    let trusted_proxies = f
        .client_ip
        .as_ref()
        .and_then(|c| cidrs(&c.trusted_proxies, "client_ip.trusted_proxies", &mut errs))
        .unwrap_or_default();
    let policies = compile_policies(parsed, &mut errs);

    let issuer = f
        .issuer
        .as_ref()
        .and_then(|cfg| compile_issuer(parsed, registry, cfg, &mut errs));

    let authorizers = compile_authorizers(parsed, registry, issuer.as_ref(), &mut errs);

    let cx = RouteCx {
        parsed,
        registry,
        upstreams: &upstreams,
        policies: &policies,
        auth: &authorizers,
        issuer: issuer.as_ref(),
    };
    let CompiledApis {
        apis,
        routes,
        selector,
    } = compile_apis(&cx, &mut errs);
    let plans = compile_plans(parsed, registry, &apis, &routes, &mut errs);
    let key_table = f
        .api_keys
        .as_ref()
        .and_then(|k| compile_keys(parsed, k, &plans, &apis, &mut errs));
    let credential_headers = credential_headers(&authorizers, key_table.as_ref());
    let gateway_throttle = f
        .gateway
        .throttle
        .as_ref()
        .and_then(|t| super::plans::spec_at(t, "gateway.throttle", &mut errs))
        .map(|spec| registry.limits().throttle("gateway", spec));
    let tracing = super::telemetry::compile_tracing(parsed, registry, &mut errs);

    match (errs.list.is_empty(), selector) {
        (true, Some(selector)) => Ok(Snapshot {
            generation,
            hash: parsed.hash.clone(),
            loaded_at: SystemTime::now(),
            listeners,
            trusted_proxies,
            admin,
            limits,
            apis,
            selector,
            routes,
            issuer,
            plans,
            keys: key_table,
            files: referenced_files(parsed),
            allow_underscores: f.headers.allow_underscores,
            credential_headers,
            gateway_throttle,
            tracing,
        }),
        _ => Err(errs.list),
    }
}

/// `listeners:`: addresses (at least one, none twice) and their TLS settings.
fn compile_listeners(parsed: &Parsed, errs: &mut Errors) -> Vec<ListenerSpec> {
    let f = &parsed.file;
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
        if let Some(addr) = bind_addr(&l.bind, &format!("listeners.{i}.bind"), errs) {
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
    listeners
}

/// `admin:`: the admin listener's address, token and allowed `Host` names.
fn compile_admin(parsed: &Parsed, errs: &mut Errors) -> AdminSettings {
    let f = &parsed.file;
    match &f.admin {
        Some(a) => AdminSettings {
            bind: bind_addr(&a.bind, "admin.bind", errs)
                .unwrap_or_else(|| DEFAULT_ADMIN_BIND.parse().expect("valid")),
            token: a
                .token
                .as_ref()
                .and_then(|t| read_secret(parsed, t, "admin.token", errs)),
            hosts: a.hosts.clone(),
        },
        None => AdminSettings {
            bind: DEFAULT_ADMIN_BIND.parse().expect("valid"),
            token: None,
            hosts: Vec::new(),
        },
    }
}

/// `limits:`: sizes and timeouts, defaults filled in; zero timeouts are refused.
fn compile_bounds(parsed: &Parsed, errs: &mut Errors) -> Bounds {
    let f = &parsed.file;
    let l = &f.limits;
    let limits = Bounds {
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
        h2_idle_timeout: l.h2_idle_timeout.map_or(DEFAULT_H2_IDLE_TIMEOUT, |d| d.0),
        max_connection_age: l
            .max_connection_age
            .map_or(DEFAULT_MAX_CONNECTION_AGE, |d| d.0),
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
    limits
}

/// `policies:` by name, and that `defaults.policy` names one.
fn compile_policies<'p>(parsed: &'p Parsed, errs: &mut Errors) -> HashMap<&'p str, Arc<Policy>> {
    let f = &parsed.file;
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
            Some(a) => match cidrs(a, &format!("{path}.allow"), errs) {
                Some(set) => Some(set),
                None => continue,
            },
        };
        let Some(deny) = cidrs(&p.deny, &format!("{path}.deny"), errs) else {
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
    policies
}

/// Headers that carry a credential: `authorization`, every JWT authorizer's header and the
/// API-key header, each once.
fn credential_headers(
    authorizers: &Authorizers<'_>,
    keys: Option<&crate::apikeys::KeyTable>,
) -> Box<[http::HeaderName]> {
    let mut credential_headers = vec![http::header::AUTHORIZATION];
    credential_headers.extend(authorizers.jwt.values().map(|a| a.header().clone()));
    credential_headers.extend(keys.map(|k| k.header().clone()));
    credential_headers.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    credential_headers.dedup();

    credential_headers.into_boxed_slice()
}
