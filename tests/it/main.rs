//! One integration-test binary (one link step) for every suite.
#[path = "../support/mod.rs"]
mod support;

mod admin;
mod apis;
mod auth_e2e;
mod clientip;
mod config;
mod connlimits;
mod external;
mod gateway_throttle;
mod hardening;
mod import_aws;
mod issuer;
mod jwt;
mod keepalive;
mod openapi;
mod pipeline;
mod plans;
mod proxy;
mod redis;
mod redis_topologies;
mod reload;
mod routing;
mod sigv4;
mod tls;
mod upstream_tls;
mod websocket;
