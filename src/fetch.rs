//! Small outbound HTTP(S) GETs with a deadline and a size cap, for key sets and discovery
//! documents. Never used for proxying (that is `crate::proxy`'s client).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;

use crate::outbound::{ClientSpec, Connector, Trust, Versions};

/// Connecting to an issuer may take at most this: the contract's whole JWKS fetch budget.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);
/// Idle connections to issuers are closed after this (key sets are refreshed every few minutes).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per issuer host.
const POOL_MAX_IDLE_PER_HOST: usize = 2;

/// A pooled HTTP/HTTPS client for small documents.
#[derive(Clone)]
pub struct Fetcher {
    client: Client<Connector, Empty<Bytes>>,
}

impl Default for Fetcher {
    fn default() -> Self {
        Self::new()
    }
}

impl Fetcher {
    /// Builds the client (`crate::outbound`: the system's roots, HTTP/1.1 or HTTP/2 by ALPN).
    pub fn new() -> Fetcher {
        Fetcher {
            client: crate::outbound::client(&ClientSpec {
                trust: Trust::System,
                connect_timeout: CONNECT_TIMEOUT,
                versions: Versions::Any,
                tls: true,
                pool_idle_timeout: POOL_IDLE_TIMEOUT,
                pool_max_idle_per_host: POOL_MAX_IDLE_PER_HOST,
            }),
        }
    }

    /// GETs `url`; refuses a non-200 answer, an answer larger than `cap` bytes, and anything
    /// not finished within `deadline` (connect, head and body together).
    pub async fn get(&self, url: &str, deadline: Duration, cap: usize) -> Result<Bytes, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
        let req = http::Request::get(uri)
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("tollgate/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let work = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("request failed: {e}"))?;
            if resp.status() != http::StatusCode::OK {
                return Err(format!("answered {}", resp.status()));
            }
            let body = Limited::new(resp.into_body(), cap)
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?;
            Ok(body.to_bytes())
        };
        tokio::time::timeout(deadline, work)
            .await
            .map_err(|_| format!("no complete answer within {deadline:?}"))?
    }
}
