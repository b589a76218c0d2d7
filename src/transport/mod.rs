//! Transport: accepted TCP connections turned into requests for a [`crate::service::Handler`],
//! and its answers
//! written back. It owns the PROXY header, TLS, the choice between HTTP/1.1 and HTTP/2 and the
//! bounds of a connection's life; it knows nothing of what the handler does with a request.
//!
//! Exactly two hyper configurations serve every connection (`Settings`): one HTTP/1.1 and
//! one HTTP/2. A plain connection whose first 24 bytes are the HTTP/2 preface (RFC 9113 3.4)
//! speaks HTTP/2 (prior knowledge); any other speaks HTTP/1.1, through `http1`, which
//! releases hyper's buffers while the connection is idle. A TLS connection speaks HTTP/2 when
//! ALPN chose `h2`, else HTTP/1.1 (RFC 9113 3.2: HTTP/2 over TLS needs ALPN).

mod conn;
mod http1;
mod prefixed;

pub(crate) use conn::{ConnLimits, Counters, Endpoint, Settings, serve};
pub use http1::IDLE_RELEASE_AFTER;
pub(crate) use http1::give_back_memory;
