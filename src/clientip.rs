//! The client's IP: CIDR sets, trusted proxies and `X-Forwarded-For`, and resource policies.
//! (Being written.)
