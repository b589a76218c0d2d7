//! The files a config names, for the file watcher.

use std::path::PathBuf;

use crate::config::Parsed;
use crate::config::schema::{AuthorizerCfg, SecretCfg};

/// The config file (first) and every file it names (key imports, key sets, secret files,
/// upstream CA bundles), resolved.
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
    for t in f.listeners.iter().filter_map(|l| l.tls.as_ref()) {
        out.push(p.resolve(&t.cert));
        out.push(p.resolve(&t.key));
        for c in &t.certificates {
            out.push(p.resolve(&c.cert));
            out.push(p.resolve(&c.key));
        }
        if let Some(ca) = &t.client_ca {
            out.push(p.resolve(ca));
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
    for u in f.upstreams.values() {
        if let Some(tls) = &u.tls {
            out.push(p.resolve(&tls.ca));
        }
    }
    out.sort();
    out.dedup();
    out.retain(|f| *f != p.path);
    out.insert(0, p.path.clone());
    out
}
