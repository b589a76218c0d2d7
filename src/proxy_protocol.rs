//! PROXY protocol v1/v2 headers read before HTTP on listeners behind network load balancers.
//! (Being written.)
