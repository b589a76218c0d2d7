//! TLS on public listeners: loading certificates and keys (PEM), choosing a certificate by the
//! client's SNI name, TLS 1.2/1.3 with ALPN `h2` and `http/1.1`, and mTLS (client certificates
//! verified against `client_ca`, their subject and fingerprint passed upstream).
//!
//! Everything here is compiled into the snapshot at load time; a changed certificate file
//! reloads the config, and the listener's next connection uses the new [`TlsSettings`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use http::HeaderValue;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Header carrying the verified client certificate's subject to the upstream.
pub const CLIENT_CERT_SUBJECT: http::HeaderName =
    http::HeaderName::from_static("x-tollgate-client-cert-subject");
/// Header carrying the verified client certificate's SHA-256 fingerprint (hex) to the upstream.
pub const CLIENT_CERT_SHA256: http::HeaderName =
    http::HeaderName::from_static("x-tollgate-client-cert-sha256");

/// ALPN protocols offered, in preference order.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A listener's compiled TLS settings.
pub struct TlsSettings {
    /// Accepts connections with the certificates and client verification of this snapshot.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Whether client certificates are asked for (a `client_ca` is set).
    pub client_auth: bool,
    /// Each certificate file served (default first) with its leaf's expiry (Unix time).
    pub certificates: Vec<(String, i64)>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

/// A verified client certificate, as forwarded to the upstream.
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// Subject distinguished name (RFC 4514 style), for `x-tollgate-client-cert-subject`.
    pub subject: HeaderValue,
    /// Lower-case hex SHA-256 of the DER certificate, for `x-tollgate-client-cert-sha256`.
    pub sha256: HeaderValue,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Loads one certificate chain and its key. Refuses unreadable files, files without a
/// certificate or key, and a key that does not belong to the certificate.
pub fn load_certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, String> {
    let chain = load_certs(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("no private key read from {}: {e}", key.display()))?;
    CertifiedKey::from_der(chain, key_der, provider).map_err(|e| {
        format!(
            "the key {} does not fit the certificate {}: {e}",
            key.display(),
            cert.display()
        )
    })
}

/// Every certificate in a PEM file. Refuses an unreadable file or one without certificates.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

/// The DNS names a leaf certificate is valid for (subject alternative names), lower-case, and
/// when it expires (Unix time).
fn names_and_expiry(cert: &CertificateDer<'_>) -> Result<(Vec<String>, i64), String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let not_after = parsed.validity().not_after.timestamp();
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    Ok((names, not_after))
}

/// Chooses the certificate for a handshake: an exact SNI name, else a `*.` wildcard covering
/// one label, else the default.
#[derive(Debug)]
struct SniResolver {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl SniResolver {
    fn pick(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name else {
            return self.default.clone();
        };
        let name = name.to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return k.clone();
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(k) = self.wildcard.get(parent)
        {
            return k.clone();
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

/// What a listener's `tls:` names, resolved to paths.
pub struct TlsFiles<'a> {
    /// Default certificate and key.
    pub default: (&'a Path, &'a Path),
    /// SNI-selected certificates and keys.
    pub extra: Vec<(&'a Path, &'a Path)>,
    /// Client CA bundle.
    pub client_ca: Option<&'a Path>,
    /// Whether a client certificate is mandatory.
    pub require_client_cert: bool,
}

/// An error in one of the `tls:` settings: which field (for the location) and what.
#[derive(Debug)]
pub struct TlsError {
    /// Path below the listener's `tls`, e.g. `cert` or `certificates.1.key`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> TlsError {
    TlsError {
        field: field.into(),
        message: message.into(),
    }
}

/// Builds a listener's TLS settings: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`, certificates by
/// SNI, client verification when `client_ca` is set. Refuses unreadable or mismatched files,
/// SNI certificates without DNS names, two certificates claiming one name, and
/// `require_client_cert` without `client_ca`.
pub fn compile(files: &TlsFiles<'_>) -> Result<TlsSettings, TlsError> {
    let provider = provider();
    let default = load_certified_key(files.default.0, files.default.1, &provider)
        .map_err(|m| err("cert", m))?;
    let mut resolver = SniResolver {
        default: Arc::new(default),
        exact: HashMap::new(),
        wildcard: HashMap::new(),
    };
    let mut certificates = Vec::new();
    let mut add = |ck: &Arc<CertifiedKey>,
                   field: &str,
                   file: &Path,
                   required: bool|
     -> Result<(), TlsError> {
        let leaf = ck
            .end_entity_cert()
            .map_err(|e| err(field, e.to_string()))?;
        let (names, not_after) = names_and_expiry(leaf).map_err(|m| err(field, m))?;
        certificates.push((file.display().to_string(), not_after));
        if names.is_empty() && required {
            return Err(err(
                field,
                "the certificate names no DNS names (subjectAltName), so no SNI name can select it",
            ));
        }
        for n in names {
            let (map, key) = match n.strip_prefix("*.") {
                Some(parent) => (&mut resolver.wildcard, parent.to_string()),
                None => (&mut resolver.exact, n.clone()),
            };
            if map.insert(key, ck.clone()).is_some() && required {
                return Err(err(
                    field,
                    format!("{n} is already served by another certificate of this listener"),
                ));
            }
        }
        Ok(())
    };
    let default = resolver.default.clone();
    add(&default, "cert", files.default.0, false)?;
    for (i, (cert, key)) in files.extra.iter().enumerate() {
        let field = format!("certificates.{i}.cert");
        let ck = Arc::new(load_certified_key(cert, key, &provider).map_err(|m| err(&field, m))?);
        add(&ck, &field, cert, true)?;
    }

    let verifier: Option<Arc<dyn ClientCertVerifier>> = match files.client_ca {
        None if files.require_client_cert => {
            return Err(err(
                "require_client_cert",
                "`require_client_cert` needs `client_ca`, the CAs client certificates are checked against",
            ));
        }
        None => None,
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in load_certs(ca).map_err(|m| err("client_ca", m))? {
                roots
                    .add(c)
                    .map_err(|e| err("client_ca", format!("{}: {e}", ca.display())))?;
            }
            let b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let b = if files.require_client_cert {
                b
            } else {
                b.allow_unauthenticated()
            };
            Some(b.build().map_err(|e| err("client_ca", e.to_string()))?)
        }
    };
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| err("cert", e.to_string()))?;
    let client_auth = verifier.is_some();
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(TlsSettings {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        client_auth,
        certificates,
    })
}

/// The verified client certificate of a finished handshake, if the client sent one (rustls has
/// already checked it against `client_ca`).
pub fn client_cert(conn: &rustls::ServerConnection) -> Option<ClientCert> {
    let leaf = conn.peer_certificates()?.first()?;
    let sha256 = HeaderValue::from_str(&crate::util::sha256_hex(leaf.as_ref()))
        .expect("hex is a valid header value");
    let subject = match x509_parser::parse_x509_certificate(leaf.as_ref()) {
        Ok((_, c)) => header_safe(&c.subject().to_string()),
        Err(_) => HeaderValue::from_static(""),
    };
    Some(ClientCert { subject, sha256 })
}

/// `s` as a header value, every byte outside printable ASCII written as `\xHH`.
fn header_safe(s: &str) -> HeaderValue {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'\\' {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    HeaderValue::from_str(&out).expect("printable ASCII is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_safe_escapes_what_a_header_cannot_carry() {
        assert_eq!(header_safe("CN=a,O=b").to_str().unwrap(), "CN=a,O=b");
        assert_eq!(
            header_safe("CN=M\u{fc}ller\n\\").to_str().unwrap(),
            "CN=M\\xc3\\xbcller\\x0a\\x5c"
        );
    }
}
