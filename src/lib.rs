//! tollgate
pub mod auth;
pub mod config;
pub mod fetch;
pub mod metrics;
pub mod routes;
pub mod util;
