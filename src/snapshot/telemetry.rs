//! `telemetry.tracing:` compiled: the sampling settings of a snapshot and its exporter, shared
//! with earlier snapshots whose export settings were the same.

use std::time::Duration;

use super::errors::{Errors, read_secret};
use super::registry::Registry;
use crate::config::Parsed;
use crate::config::schema::{OtlpProtocol, TracingCfg, TrustParentCfg};
use crate::telemetry::{ExportSpec, Tracing, TrustParent};

/// Spans held for export when `queue_size` is not set (the OpenTelemetry SDK's default).
const DEFAULT_QUEUE: u32 = 2048;
/// Largest `queue_size`: beyond this a stalled collector would hold hundreds of MiB of spans.
const MAX_QUEUE: u32 = 1 << 20;
/// One export may take this long when `timeout` is not set (OpenTelemetry's default).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The tracing of a snapshot, or `None` when it is off or has errors (reported in `errs`).
pub(super) fn compile_tracing(
    parsed: &Parsed,
    registry: &Registry,
    errs: &mut Errors,
) -> Option<Tracing> {
    let cfg: &TracingCfg = parsed.file.telemetry.tracing.as_ref()?;
    let at = "telemetry.tracing";
    let before = errs.list.len();
    let url = endpoint_url(&cfg.endpoint, cfg.protocol)
        .map_err(|e| errs.at(&format!("{at}.endpoint"), e))
        .ok();
    let ratio = cfg.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&ratio) {
        errs.at(
            &format!("{at}.sample_ratio"),
            format!("sample_ratio must be between 0.0 and 1.0, not {ratio}"),
        );
    }
    let queue_size = cfg.queue_size.unwrap_or(DEFAULT_QUEUE);
    if queue_size == 0 || queue_size > MAX_QUEUE {
        errs.at(
            &format!("{at}.queue_size"),
            format!("queue_size must be between 1 and {MAX_QUEUE}"),
        );
    }
    let timeout = cfg.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0);
    if timeout.is_zero() {
        errs.at(&format!("{at}.timeout"), "timeout must be longer than 0ms");
    }
    let mut headers = Vec::new();
    for (name, secret) in &cfg.headers {
        let path = format!("{at}.headers.{name}");
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            errs.at_key(
                &format!("{at}.headers"),
                name,
                format!("{name:?} is not a header name"),
            );
            continue;
        }
        if let Some(value) = read_secret(parsed, secret, &path, errs) {
            if http::HeaderValue::from_str(&value).is_err() {
                errs.at(&path, "the value cannot be sent in a header");
                continue;
            }
            headers.push((name.to_ascii_lowercase(), value));
        }
    }
    let service = cfg
        .service_name
        .clone()
        .unwrap_or_else(|| "tollgate".into());
    if service.is_empty() {
        errs.at(
            &format!("{at}.service_name"),
            "service_name must not be empty",
        );
    }
    let mut resource = vec![
        ("service.name".to_string(), service),
        (
            "service.version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
    ];
    for (k, v) in &cfg.resource {
        if k == "service.name" {
            errs.at_key(
                &format!("{at}.resource"),
                k,
                "set service.name with service_name",
            );
            continue;
        }
        resource.retain(|(have, _)| have != k);
        resource.push((k.clone(), v.clone()));
    }
    if errs.list.len() > before {
        return None;
    }
    let spec = ExportSpec {
        url: url?,
        protocol: cfg.protocol,
        headers,
        resource,
        queue_size: queue_size as usize,
        timeout,
    };
    let exporter = registry.exporter(spec);
    let trust = match cfg.trust_parent {
        TrustParentCfg::TrustedProxies => TrustParent::TrustedProxies,
        TrustParentCfg::Always => TrustParent::Always,
        TrustParentCfg::Never => TrustParent::Never,
    };
    Some(Tracing::new(
        ratio,
        trust,
        cfg.xray,
        exporter,
        registry.metrics(),
    ))
}

/// Where spans go: `ENDPOINT/v1/traces` for OTLP/HTTP, the endpoint itself for gRPC. Refuses
/// anything but an `http://` or `https://` URL with a host, and (for gRPC) a path.
fn endpoint_url(endpoint: &str, protocol: OtlpProtocol) -> Result<String, String> {
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| format!("endpoint {endpoint:?} is not a URL: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(format!(
            "endpoint {endpoint:?} must be an http:// or https:// URL, e.g. http://127.0.0.1:4318"
        ));
    }
    if uri.query().is_some() {
        return Err(format!("endpoint {endpoint:?} must not have a query"));
    }
    let base = endpoint.trim_end_matches('/');
    match protocol {
        OtlpProtocol::Http => Ok(format!("{base}/v1/traces")),
        OtlpProtocol::Grpc if uri.path() != "/" && !uri.path().is_empty() => Err(format!(
            "a gRPC endpoint is the collector's address without a path, e.g. http://127.0.0.1:4317, not {endpoint:?}"
        )),
        OtlpProtocol::Grpc => Ok(base.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            endpoint_url("http://c:4318", OtlpProtocol::Http).unwrap(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            endpoint_url("https://c/otlp/", OtlpProtocol::Http).unwrap(),
            "https://c/otlp/v1/traces"
        );
        assert_eq!(
            endpoint_url("http://c:4317", OtlpProtocol::Grpc).unwrap(),
            "http://c:4317"
        );
        for bad in ["c:4318", "ftp://c", "http://c/?x=1", "/v1/traces"] {
            assert!(endpoint_url(bad, OtlpProtocol::Http).is_err(), "{bad}");
        }
        assert!(endpoint_url("http://c:4317/v1/traces", OtlpProtocol::Grpc).is_err());
    }
}
