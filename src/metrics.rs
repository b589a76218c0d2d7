//! Prometheus metrics: one registry, the contract's metric names, bounded labels. API labels
//! are API names from the config and route labels route keys (never raw paths) and method labels fold unknown methods into `OTHER`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Latency buckets in seconds: fine below 10 ms where a gateway's own cost lives, coarse above.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Every metric tollgate exports.
pub struct Metrics {
    registry: Registry,
    /// `tollgate_requests_total{api,stage,route,method,status}`
    pub requests: IntCounterVec,
    /// `tollgate_request_duration_seconds{api,stage,route}`
    pub request_duration: HistogramVec,
    /// `tollgate_upstream_duration_seconds{upstream}`
    pub upstream_duration: HistogramVec,
    /// `tollgate_denied_total{api,stage,route,reason}`
    pub denied: IntCounterVec,
    /// `tollgate_config_reloads_total{result}`
    pub config_reloads: IntCounterVec,
    /// `tollgate_config_generation`
    pub config_generation: IntGauge,
    /// `tollgate_jwks_refresh_total{authorizer,result}`
    pub jwks_refresh: IntCounterVec,
    /// `tollgate_connections_active`
    pub connections_active: IntGauge,
    /// `tollgate_connections_idle`: plain HTTP/1 connections waiting for their next request
    /// with hyper's buffers released (see `crate::transport`); also counted as active.
    pub connections_idle: IntGauge,
    /// `tollgate_upgraded_connections_active`: connections switched to another protocol
    /// (WebSocket) and spliced to an upstream.
    pub upgraded_connections_active: IntGauge,
    /// `tollgate_token_cache_total{authorizer,result}`: verified-token cache hits and misses.
    pub token_cache: IntCounterVec,
    /// `tollgate_tokens_issued_total{client_id}` (client ids come from config only).
    pub tokens_issued: IntCounterVec,
    /// `tollgate_token_errors_total{error}`: token endpoint failures by OAuth error code.
    pub token_errors: IntCounterVec,
    /// `tollgate_redis_errors_total{result}`: Redis commands that failed or timed out, by what the
    /// gateway did about it (`allowed`, `denied`).
    pub redis_errors: IntCounterVec,
    /// `tollgate_authorizer_cache_total{authorizer,result}`: external authorizer answer cache
    /// lookups (`hit`, `miss`).
    pub authorizer_cache: IntCounterVec,
    /// `tollgate_api_key_requests_total{plan,result}`: keyed requests by plan and outcome
    /// (`admitted`, `throttled`, `quota_exceeded`); per plan, not per key, to bound labels.
    pub plan_requests: IntCounterVec,
    /// `tollgate_tls_certificate_expiry_timestamp_seconds{listener,certificate}`: when each
    /// served certificate expires (Unix time), for expiry alerts.
    pub tls_certificate_expiry: IntGaugeVec,
    /// `tollgate_tls_handshake_failures_total`: TLS handshakes that failed or timed out
    /// (untrusted or missing client certificates, scanners, protocol mismatches).
    pub tls_handshake_failures: IntCounter,
    /// `tollgate_connections_refused_total{listener,reason}`: client connections accepted and
    /// closed at once, by listener (its bound address) and reason (`max_connections`).
    pub connections_refused: IntCounterVec,
    /// `tollgate_trace_spans_dropped_total{reason}`: finished spans not delivered to the
    /// collector (`queue_full`: the export queue was full; `export_failed`: the collector
    /// refused them or did not answer in time).
    pub trace_spans_dropped: IntCounterVec,
    /// `tollgate_trace_spans_exported_total`: spans the collector accepted.
    pub trace_spans_exported: IntCounter,
    /// `tollgate_traces_total{sampled}`: requests traced, by sampling decision.
    pub traces: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                labels,
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let tls_certificate_expiry = IntGaugeVec::new(
            Opts::new(
                "tollgate_tls_certificate_expiry_timestamp_seconds",
                "When each certificate a TLS listener serves expires (Unix time).",
            ),
            &["listener", "certificate"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(tls_certificate_expiry.clone()))
            .expect("unique metric");
        let tls_handshake_failures = IntCounter::new(
            "tollgate_tls_handshake_failures_total",
            "TLS handshakes on public listeners that failed or timed out.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(tls_handshake_failures.clone()))
            .expect("unique metric");
        let trace_spans_exported = IntCounter::new(
            "tollgate_trace_spans_exported_total",
            "Trace spans the collector accepted.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(trace_spans_exported.clone()))
            .expect("unique metric");
        Metrics {
            trace_spans_exported,
            trace_spans_dropped: counter(
                "tollgate_trace_spans_dropped_total",
                "Trace spans dropped instead of exported, by reason (queue_full, export_failed).",
                &["reason"],
            ),
            traces: counter(
                "tollgate_traces_total",
                "Requests traced while tracing is on, by sampling decision.",
                &["sampled"],
            ),
            tls_certificate_expiry,
            tls_handshake_failures,
            requests: counter(
                "tollgate_requests_total",
                "Requests answered, by API, stage, route key, method and status.",
                &["api", "stage", "route", "method", "status"],
            ),
            request_duration: histogram(
                "tollgate_request_duration_seconds",
                "Time from request head to response head, by API, stage and route key.",
                &["api", "stage", "route"],
            ),
            upstream_duration: histogram(
                "tollgate_upstream_duration_seconds",
                "Time the upstream took to answer with a response head.",
                &["upstream"],
            ),
            denied: counter(
                "tollgate_denied_total",
                "Requests the gateway refused, by API, stage, route key and reason.",
                &["api", "stage", "route", "reason"],
            ),
            config_reloads: counter(
                "tollgate_config_reloads_total",
                "Config loads, by result.",
                &["result"],
            ),
            config_generation: gauge(
                "tollgate_config_generation",
                "Generation of the config being served.",
            ),
            jwks_refresh: counter(
                "tollgate_jwks_refresh_total",
                "JWKS fetches, by authorizer and result.",
                &["authorizer", "result"],
            ),
            connections_active: gauge(
                "tollgate_connections_active",
                "Client connections open on the public listeners.",
            ),
            connections_idle: gauge(
                "tollgate_connections_idle",
                "Plain HTTP/1 client connections idle between requests, holding no buffers.",
            ),
            upgraded_connections_active: gauge(
                "tollgate_upgraded_connections_active",
                "Upgraded (WebSocket) connections spliced to an upstream.",
            ),
            token_cache: counter(
                "tollgate_token_cache_total",
                "Verified-token cache lookups, by authorizer and result (hit, miss).",
                &["authorizer", "result"],
            ),
            tokens_issued: counter(
                "tollgate_tokens_issued_total",
                "Access tokens issued by the embedded issuer, by client id.",
                &["client_id"],
            ),
            token_errors: counter(
                "tollgate_token_errors_total",
                "Token endpoint failures, by OAuth error code.",
                &["error"],
            ),
            redis_errors: counter(
                "tollgate_redis_errors_total",
                "Redis commands that failed or timed out, by what the gateway then did.",
                &["result"],
            ),
            authorizer_cache: counter(
                "tollgate_authorizer_cache_total",
                "External authorizer answer cache lookups, by authorizer and result.",
                &["authorizer", "result"],
            ),
            plan_requests: counter(
                "tollgate_api_key_requests_total",
                "Requests with a valid API key, by usage plan and outcome.",
                &["plan", "result"],
            ),
            connections_refused: counter(
                "tollgate_connections_refused_total",
                "Client connections closed as soon as accepted, by listener and reason.",
                &["listener", "reason"],
            ),
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The method label: standard methods by name, anything else `OTHER` (bounded cardinality).
pub fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}
