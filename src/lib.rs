//! tollgate: a standalone reverse-proxy API gateway.
//!
//! Start at [`server::start`] (listeners and lifecycle) and [`pipeline`] (what happens to each
//! request). Config flows `config` (file schema) → `snapshot` (runtime form) → `gateway` (the
//! atomic swap). Refusals are all variants of [`error::Refusal`].

#![warn(missing_docs)]

pub mod admin;
pub(crate) mod answer;
pub mod apikeys;
pub mod auth;
pub mod body;
pub mod canonical;
pub mod cli;
pub mod clientip;
pub mod config;
pub(crate) mod cors;
pub mod drain;
pub mod error;
pub mod fetch;
pub(crate) mod forwarding;
/// Entry points for the fuzz targets in `fuzz/` (docs/fuzzing.md); not part of the API.
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod headers;
pub mod issuer;
pub mod limits;
pub mod logs;
pub mod metrics;
pub mod pipeline;
pub mod proxy;
pub mod proxy_protocol;
pub mod routes;
pub mod server;
pub mod service;
pub mod snapshot;
pub mod tls;
pub mod transport;
pub mod upgrade;
pub mod util;
pub mod watch;
