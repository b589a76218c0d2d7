//! Compiling `upstreams`: target pools, timeouts, protocol, and the CA an https upstream
//! trusts.

use super::errors::*;
use super::registry::Registry;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::config::Parsed;
use crate::config::schema::UpstreamProtocol;
use crate::proxy::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT, Protocol, Trust, Upstream, UpstreamSettings,
};

/// Compiles every upstream pool, by name. A pool with errors is left out (its errors are in
/// `errs`), so routes naming it report nothing more.
pub(super) fn compile_upstreams<'a>(
    parsed: &'a Parsed,
    registry: &Registry,
    errs: &mut Errors,
) -> HashMap<&'a str, Arc<Upstream>> {
    let f = &parsed.file;
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
        let trust = match &u.tls {
            None => Trust::System,
            Some(tls) => {
                let any_https = u.targets.iter().any(|t| {
                    crate::proxy::parse_target(t)
                        .is_ok_and(|(scheme, ..)| scheme == http::uri::Scheme::HTTPS)
                });
                if !any_https {
                    errs.at(
                        &format!("{path}.tls"),
                        "`tls` is for https:// targets, and this upstream has none",
                    );
                }
                match load_ca(parsed, &tls.ca) {
                    Ok(roots) => Trust::Roots(Arc::new(roots)),
                    Err(e) => {
                        errs.at(&format!("{path}.tls.ca"), e);
                        continue;
                    }
                }
            }
        };
        let settings = UpstreamSettings {
            timeout: u.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0),
            connect_timeout: u.connect_timeout.map_or(DEFAULT_CONNECT_TIMEOUT, |d| d.0),
            protocol: match u.protocol {
                UpstreamProtocol::Http1 => Protocol::Http1,
                UpstreamProtocol::H2 => Protocol::H2,
                UpstreamProtocol::H2c => Protocol::H2c,
            },
            trust,
        };
        match Upstream::new(name, &u.targets, &settings, registry.metrics()) {
            Ok(up) => {
                upstreams.insert(name.as_str(), Arc::new(up));
            }
            Err(e) => errs.at(&format!("{path}.targets"), e),
        }
    }
    upstreams
}

/// Reads a PEM bundle of CA certificates (an upstream's `tls.ca`) into a root store. Refuses
/// an unreadable file, PEM that does not parse, a file without certificates, and certificates
/// that cannot serve as trust anchors.
fn load_ca(p: &Parsed, file: &Path) -> Result<rustls::RootCertStore, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let shown = file.display();
    let bytes =
        std::fs::read(p.resolve(file)).map_err(|e| format!("cannot read CA file {shown}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in CertificateDer::pem_slice_iter(&bytes).enumerate() {
        let cert = cert.map_err(|e| format!("CA file {shown} is not valid PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("CA file {shown}: certificate {} is unusable: {e}", i + 1))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "CA file {shown} holds no certificates (expected PEM `BEGIN CERTIFICATE` blocks)"
        ));
    }
    Ok(roots)
}
