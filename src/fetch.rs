//! Small outbound HTTP(S) GETs with a deadline and a size cap, for key sets and discovery
//! documents. Never used for proxying (that is `crate::proxy`'s client).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A pooled HTTP/HTTPS client for small documents.
#[derive(Clone)]
pub struct Fetcher {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl Default for Fetcher {
    fn default() -> Self {
        Self::new()
    }
}

impl Fetcher {
    /// Builds the client with the Mozilla root store (webpki-roots), HTTP/1.1 and HTTP/2.
    pub fn new() -> Fetcher {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        Fetcher {
            client: Client::builder(TokioExecutor::new()).build(https),
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
