//! Compiling the `issuer:` section and reserving its paths.

use super::errors::*;
use super::registry::Registry;
use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Parsed;
use crate::issuer::{Client, Issuer};
use crate::routes::RouteKey;

/// Whether a route key uses one of the embedded issuer's paths (whatever its method), which
/// would let a user route take over the token endpoint.
pub(super) fn reserved_for_issuer(key: &RouteKey) -> bool {
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
pub(super) fn compile_issuer(
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
