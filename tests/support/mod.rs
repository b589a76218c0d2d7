#![allow(dead_code)]
pub mod gateway;
pub mod jwks_server;
pub mod keys;
pub mod pki;
pub mod redis_cluster;
pub mod redis_server;
pub mod test_ca;
pub mod traffic;
pub mod upstream;
pub mod ws_upstream;
