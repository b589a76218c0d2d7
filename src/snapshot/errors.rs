//! Located errors while compiling, and the small value checks every section uses.

use std::net::SocketAddr;

use crate::clientip::CidrSet;
use crate::config::schema::SecretCfg;
use crate::config::{ConfigError, Parsed};

/// Collects errors while compiling so that one run reports all of them.
pub(super) struct Errors<'a> {
    pub(super) parsed: &'a Parsed,
    pub(super) list: Vec<ConfigError>,
}

impl Errors<'_> {
    pub(super) fn at(&mut self, path: &str, msg: impl Into<String>) {
        self.list.push(self.parsed.error_at(path, msg));
    }

    /// An error located at the mapping key `key` under `parent` (a name, not its value).
    pub(super) fn at_key(&mut self, parent: &str, key: &str, msg: impl Into<String>) {
        self.list.push(self.parsed.error_at_key(parent, key, msg));
    }
}

pub(super) fn read_secret(
    p: &Parsed,
    s: &SecretCfg,
    path: &str,
    errs: &mut Errors,
) -> Option<String> {
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
pub(super) fn cidrs(items: &[String], path: &str, errs: &mut Errors) -> Option<CidrSet> {
    CidrSet::parse(items)
        .map_err(|(i, e)| errs.at(&format!("{path}.{i}"), e))
        .ok()
}

pub(super) fn bind_addr(s: &str, path: &str, errs: &mut Errors) -> Option<SocketAddr> {
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

/// Whether `s` is an absolute `http://` or `https://` URL with a host.
pub(super) fn is_http_url(s: &str) -> bool {
    s.parse::<http::Uri>().is_ok_and(|u| {
        matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some_and(|h| !h.is_empty())
    })
}
