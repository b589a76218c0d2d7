//! The seam between the transport and what it drives: what a request's connection is, and the
//! one method the transport calls. The transport ([`crate::transport`]) is generic over
//! [`Handler`]; the gateway's pipeline is one, a test's function can be another.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};

use crate::body::ClientBody;

/// What the transport knows about a client connection, handed with each of its requests.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client: the TCP peer, or the source a trusted PROXY header named.
    pub peer: SocketAddr,
    /// Whether the connection is TLS (for `x-forwarded-proto`).
    pub tls: bool,
    /// The client certificate the TLS handshake verified (mTLS), if any.
    pub client_cert: Option<crate::tls::ClientCert>,
    /// The TLS server name (SNI) the client asked for, lower-case, without a trailing dot.
    pub sni: Option<Box<str>>,
}

/// Errors a response body may end with, as hyper wants them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the transport drives: it gets every request of every connection, and must answer each
/// (a refusal is an answer; the handler never fails).
pub trait Handler: Clone + Send + Sync + 'static {
    /// The body of its responses.
    type Body: http_body::Body<Data = Bytes, Error = BoxError> + Send + 'static;

    /// Answers one request of the connection `conn`.
    fn handle(
        &self,
        conn: &Arc<ConnInfo>,
        req: Request<ClientBody>,
    ) -> impl Future<Output = Response<Self::Body>> + Send + use<Self>;
}
