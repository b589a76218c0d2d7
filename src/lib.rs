//! tollgate: a standalone reverse-proxy API gateway.
//!
//! Start at [`server::start`] (listeners and lifecycle) and [`pipeline`] (what happens to each
//! request). Config flows `config` (file schema) → `snapshot` (runtime form) → `gateway` (the
//! atomic swap). Refusals are all variants of `error::Refusal`.

#![warn(missing_docs)]

pub(crate) mod admin;
pub(crate) mod answer;
pub mod apikeys;
pub mod apis;
pub mod auth;
pub mod body;
pub(crate) mod canonical;
pub mod cli;
pub mod clientip;
pub mod config;
pub(crate) mod config_watch;
pub(crate) mod cors;
pub(crate) mod drain;
pub(crate) mod error;
pub mod fetch;
pub(crate) mod forwarding;
/// Entry points for the fuzz targets in `fuzz/` (docs/fuzzing.md); not part of the API.
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub(crate) mod headers;
pub mod import_aws;
pub(crate) mod issuer;
pub mod limits;
pub(crate) mod logs;
pub mod metrics;
pub(crate) mod openapi;
pub(crate) mod outbound;
pub mod pipeline;
pub(crate) mod proxy;
pub(crate) mod proxy_protocol;
pub mod routes;
pub mod server;
pub mod service;
pub(crate) mod snapshot;
pub(crate) mod telemetry;
pub(crate) mod tls;
pub mod transport;
pub(crate) mod upgrade;
pub mod util;
