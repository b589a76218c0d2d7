//! Certificates made at test time (rcgen) and a TLS client that reports what the handshake
//! negotiated: the server's certificate, ALPN, the HTTP version used.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

/// A certificate authority that signs leaves.
pub struct Ca {
    /// The CA certificate, PEM.
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf certificate and its key.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, cn: &str, names: &[&str]) -> Leaf {
        self.leaf(cn, names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate with subject `CN=<cn>, O=<org>`.
    pub fn client(&self, cn: &str) -> Leaf {
        self.leaf(cn, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(&self, cn: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Tollgate Tests");
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

/// How a test client connects.
pub struct TlsClient<'a> {
    /// SNI / verified name: a DNS name, or an IP address (no SNI is sent then).
    pub server_name: &'a str,
    /// CA the server's certificate must chain to.
    pub ca_pem: &'a str,
    /// Client certificate to present.
    pub client_cert: Option<&'a Leaf>,
    /// ALPN protocols to offer.
    pub alpn: &'a [&'a [u8]],
    /// Restrict to one TLS version.
    pub version: Option<&'static rustls::SupportedProtocolVersion>,
}

/// What came back over TLS.
#[derive(Debug)]
pub struct TlsAnswer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: Version,
    pub alpn: Option<Vec<u8>>,
    pub tls_version: rustls::ProtocolVersion,
    pub server_cert: CertificateDer<'static>,
}

impl TlsAnswer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A connected HTTP/1.1 or HTTP/2 sender over TLS, for several requests on one connection.
pub enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

/// An open TLS connection.
pub struct TlsConn {
    pub sender: Sender,
    pub alpn: Option<Vec<u8>>,
    pub tls_version: rustls::ProtocolVersion,
    pub server_cert: CertificateDer<'static>,
    host: String,
}

impl TlsClient<'_> {
    fn config(&self) -> rustls::ClientConfig {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let versions: Vec<&'static rustls::SupportedProtocolVersion> = match self.version {
            Some(v) => vec![v],
            None => vec![&rustls::version::TLS13, &rustls::version::TLS12],
        };
        let b = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)
            .unwrap()
            .with_root_certificates(roots);
        let mut cfg = match self.client_cert {
            Some(leaf) => b
                .with_client_auth_cert(
                    vec![leaf.der.clone()],
                    PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => b.with_no_client_auth(),
        };
        cfg.alpn_protocols = self.alpn.iter().map(|p| p.to_vec()).collect();
        cfg
    }

    /// Connects and handshakes TLS, then HTTP/2 if ALPN chose `h2`, else HTTP/1.1.
    pub async fn connect(&self, addr: SocketAddr) -> Result<TlsConn, String> {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(self.config()));
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from(self.server_name.to_string()).unwrap();
        let tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
            .await
            .map_err(|_| "handshake timed out".to_string())?
            .map_err(|e| format!("handshake: {e}"))?;
        let (_, session) = tls.get_ref();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let tls_version = session.protocol_version().unwrap();
        let server_cert = session.peer_certificates().unwrap()[0].clone();
        let io = TokioIo::new(tls);
        let sender = if alpn.as_deref() == Some(b"h2") {
            let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            Sender::H2(s)
        } else {
            let (s, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            Sender::H1(s)
        };
        Ok(TlsConn {
            sender,
            alpn,
            tls_version,
            server_cert,
            host: self.server_name.to_string(),
        })
    }

    /// One GET on a new connection.
    pub async fn get(
        &self,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<TlsAnswer, String> {
        let mut conn = self.connect(addr).await?;
        conn.get(path, headers).await
    }
}

impl TlsConn {
    /// A GET on this connection.
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<TlsAnswer, String> {
        // A `host` in `headers` replaces the SNI name as the request's host (`:authority` over
        // HTTP/2), so a test can name another host than the connection's.
        let host = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("host"))
            .map_or(self.host.as_str(), |(_, v)| *v);
        let mut b = Request::builder().method("GET");
        b = match &self.sender {
            Sender::H2(_) => b.uri(format!("https://{host}{path}")),
            Sender::H1(_) => b.uri(path).header("host", host),
        };
        for (k, v) in headers
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("host"))
        {
            b = b.header(*k, *v);
        }
        let req = b.body(Empty::<Bytes>::new()).unwrap();
        let fut = async {
            match &mut self.sender {
                Sender::H1(s) => s.send_request(req).await,
                Sender::H2(s) => s.send_request(req).await,
            }
        };
        let resp = tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .map_err(|_| "no answer in time".to_string())?
            .map_err(|e| format!("request: {e}"))?;
        let (parts, body) = resp.into_parts();
        Ok(TlsAnswer {
            status: parts.status,
            headers: parts.headers,
            version: parts.version,
            body: body
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes(),
            alpn: self.alpn.clone(),
            tls_version: self.tls_version,
            server_cert: self.server_cert.clone(),
        })
    }
}
