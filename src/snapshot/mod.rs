//! The runtime form of a config: an immutable [`Snapshot`] compiled once from a parsed
//! `gateway.yaml`, and the [`Registry`] of state that outlives snapshots (remote key sets and
//! verified-token caches). Compiling checks everything the schema cannot (references, route
//! keys, secrets, key files) and reports each problem at its line and column; a snapshot that
//! exists is one that can serve.

mod authorizers;
mod compile;
mod errors;
mod files;
mod issuer;
mod model;
mod plans;
mod registry;
mod routes;
mod telemetry;
mod upstreams;

pub use self::compile::compile;
pub use self::files::referenced_files;
pub use self::model::*;
pub use self::registry::Registry;
