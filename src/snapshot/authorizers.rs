//! Compiling `authorizers`: `type: jwt` (algorithms, claim rules and key sources), `http` and
//! `sigv4`.

use super::errors::*;
use super::model::*;
use super::registry::Registry;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use http::HeaderName;

use crate::auth::claims::ClaimRules;
use crate::auth::external::ExternalAuthorizer;
use crate::auth::jwks::{JwksSource, Loaded};
use crate::auth::keys::KeySet;
use crate::auth::sigv4::SigV4Verifier;
use crate::auth::{JwtAuthorizer, JwtSettings, KeySource};
use crate::config::Parsed;
use crate::config::schema::{AuthorizerCfg, JwtCfg};
use crate::issuer::Issuer;

pub(super) fn jwt_authorizer(
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
        // The issuer's clients as this config defines them: a token of a client a reload
        // removed is refused, and one whose scopes were reduced keeps only those it still has.
        Ok(a) if own => Some(a.only_current_clients(current_clients(parsed))),
        Ok(a) => Some(a),
        Err(e) => {
            errs.at(path, e);
            None
        }
    }
}

/// The embedded issuer's clients and the scopes each may hold, from the `issuer:` section
/// (empty without one; `issuer: self` then failed to compile anyway).
fn current_clients(parsed: &Parsed) -> crate::auth::CurrentClients {
    crate::auth::CurrentClients::new(
        parsed
            .file
            .issuer
            .iter()
            .flat_map(|i| &i.clients)
            .map(|c| (c.client_id.clone(), c.scopes.clone())),
    )
}

/// The compiled authorizers by name, one map per kind.
pub(super) struct Authorizers<'a> {
    pub(super) jwt: HashMap<&'a str, Arc<JwtAuthorizer>>,
    pub(super) external: HashMap<&'a str, Arc<ExternalAuthorizer>>,
    pub(super) sigv4: HashMap<&'a str, Arc<SigV4Verifier>>,
}

/// Compiles every authorizer of every kind. `none` is reserved; an authorizer with errors is
/// left out (its errors are in `errs`).
pub(super) fn compile_authorizers<'a>(
    parsed: &'a Parsed,
    registry: &Registry,
    issuer: Option<&Arc<Issuer>>,
    errs: &mut Errors,
) -> Authorizers<'a> {
    let f = &parsed.file;
    let mut out = Authorizers {
        jwt: HashMap::new(),
        external: HashMap::new(),
        sigv4: HashMap::new(),
    };
    for (name, a) in &f.authorizers {
        let path = format!("authorizers.{name}");
        if name == "none" {
            errs.at_key("authorizers", name, "`none` is reserved for open routes");
            continue;
        }
        match a {
            AuthorizerCfg::Jwt(j) => {
                if let Some(az) = jwt_authorizer(parsed, registry, name, j, &path, issuer, errs) {
                    out.jwt.insert(name.as_str(), Arc::new(az));
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
                        out.external.insert(name.as_str(), Arc::new(a));
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
                        errs,
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
                out.sigv4.insert(
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
    out
}
