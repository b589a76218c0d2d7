//! Getting finished spans to the collector: a bounded queue and one task per exporter that
//! sends them in batches with `opentelemetry-otlp` (HTTP/protobuf through tollgate's outbound
//! client, or gRPC). Nothing here waits on a request's behalf: a full queue drops the span and
//! counts it, and a slow or dead collector only fills the queue.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use prometheus::IntCounter;
use tokio::sync::Notify;

use crate::config::schema::OtlpProtocol;
use crate::metrics::Metrics;
use crate::outbound::{ClientSpec, Connector, Trust, Versions};

/// Spans sent in one export request at most (the OpenTelemetry SDK's default batch size).
const MAX_BATCH: usize = 512;
/// How long finished spans wait to be batched with others (OpenTelemetry's default is 5 s;
/// shorter keeps a trace view close to live at the price of a few more small requests).
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// Added to the export timeout for the outer deadline around an export, so that the
/// exporter's own timeout, not ours, normally ends a stalled export.
const EXPORT_SLACK: Duration = Duration::from_secs(1);
/// A failing collector is logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// A collector's answer is read up to this size (it is a status, never data).
const MAX_RESPONSE: usize = 64 * 1024;
/// Connecting to the collector may take at most this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where and how spans are exported; equal settings share one exporter across reloads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ExportSpec {
    /// The URL spans are sent to (`…/v1/traces` for HTTP, the collector for gRPC).
    pub(crate) url: String,
    pub(crate) protocol: OtlpProtocol,
    /// Export request headers (gRPC metadata), secrets resolved.
    pub(crate) headers: Vec<(String, String)>,
    /// Resource attributes, `service.name` first.
    pub(crate) resource: Vec<(String, String)>,
    pub(crate) queue_size: usize,
    pub(crate) timeout: Duration,
}

/// One collector's exporter: what requests push finished spans into.
pub(crate) struct Exporter {
    shared: Arc<Shared>,
    spec: ExportSpec,
    started: AtomicBool,
}

struct Shared {
    queue: Mutex<Vec<SpanData>>,
    capacity: usize,
    wake: Notify,
    /// Set when the last snapshot using the exporter is gone: the task sends what is left, then ends.
    closed: AtomicBool,
    /// Spans taken from the queue and not yet sent: they count against the capacity too.
    in_flight: std::sync::atomic::AtomicUsize,
    /// Woken each time the task has sent everything it took from the queue.
    drained: Notify,
    dropped_queue_full: IntCounter,
    dropped_export_failed: IntCounter,
    exported: IntCounter,
}

impl Exporter {
    /// An exporter that holds spans until [`Exporter::activate`] starts sending them.
    pub(crate) fn new(spec: ExportSpec, metrics: &Metrics) -> Exporter {
        let dropped = |reason| metrics.trace_spans_dropped.with_label_values(&[reason]);
        Exporter {
            shared: Arc::new(Shared {
                queue: Mutex::new(Vec::new()),
                capacity: spec.queue_size,
                wake: Notify::new(),
                drained: Notify::new(),
                in_flight: std::sync::atomic::AtomicUsize::new(0),
                closed: AtomicBool::new(false),
                dropped_queue_full: dropped("queue_full"),
                dropped_export_failed: dropped("export_failed"),
                exported: metrics.trace_spans_exported.clone(),
            }),
            spec,
            started: AtomicBool::new(false),
        }
    }

    /// Builds the OTLP exporter and starts the task that sends batches (once; later calls do
    /// nothing). Runs when a snapshot using it is about to serve, never for `tollgate check`.
    /// Refuses settings the OTLP exporter rejects.
    pub(crate) fn activate(&self) -> Result<(), String> {
        if self.started.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let exporter =
            build(&self.spec).inspect_err(|_| self.started.store(false, Ordering::Release))?;
        tokio::spawn(run(self.shared.clone(), exporter, self.spec.timeout));
        Ok(())
    }

    /// Sends what is queued now and waits until it is sent (or dropped), at most `timeout`.
    /// Returns at once when the exporter was never started.
    pub(crate) async fn flush(&self, timeout: Duration) {
        if !self.started.load(Ordering::Acquire) {
            return;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        // The first pass the task finishes may be one it took before this call.
        for _ in 0..2 {
            let drained = self.shared.drained.notified();
            self.shared.wake.notify_one();
            if tokio::time::timeout_at(deadline, drained).await.is_err()
                || self.shared.queue.lock().expect("not poisoned").is_empty()
            {
                return;
            }
        }
    }

    /// The spans waiting to be sent (tests).
    #[cfg(test)]
    pub(crate) fn queued(&self) -> Vec<SpanData> {
        self.shared.queue.lock().expect("not poisoned").clone()
    }

    /// Queues the spans of one finished trace; those that do not fit are dropped and counted.
    pub(crate) fn push(&self, spans: Vec<SpanData>) {
        let n = spans.len();
        let (kept, full) = {
            let mut q = self.shared.queue.lock().expect("not poisoned");
            let held = q.len() + self.shared.in_flight.load(Ordering::Acquire);
            let room = self.shared.capacity.saturating_sub(held);
            let kept = n.min(room);
            q.extend(spans.into_iter().take(kept));
            (kept, q.len() >= MAX_BATCH)
        };
        if kept < n {
            self.shared.dropped_queue_full.inc_by((n - kept) as u64);
        }
        if full {
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

/// Sends what the queue holds every [`BATCH_DELAY`] (sooner when a batch is full), one export
/// at a time; while an export is stalled the queue fills and further spans are dropped.
async fn run(shared: Arc<Shared>, exporter: opentelemetry_otlp::SpanExporter, timeout: Duration) {
    let mut warned: Option<Instant> = None;
    loop {
        let closing = shared.closed.load(Ordering::Acquire);
        if !closing {
            tokio::select! {
                () = shared.wake.notified() => {}
                () = tokio::time::sleep(BATCH_DELAY) => {}
            }
        }
        let mut pending = {
            let mut q = shared.queue.lock().expect("not poisoned");
            shared.in_flight.store(q.len(), Ordering::Release);
            std::mem::take(&mut *q)
        };
        while !pending.is_empty() {
            let rest = pending.split_off(pending.len().min(MAX_BATCH));
            let n = pending.len() as u64;
            let result =
                tokio::time::timeout(timeout + EXPORT_SLACK, exporter.export(pending)).await;
            let failure = match result {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("no answer within {timeout:?}")),
            };
            match failure {
                None => shared.exported.inc_by(n),
                Some(error) => {
                    shared.dropped_export_failed.inc_by(n);
                    if warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                        warned = Some(Instant::now());
                        tracing::warn!(%error, spans = n, "trace export failed; the spans are dropped");
                    }
                }
            }
            shared.in_flight.fetch_sub(n as usize, Ordering::AcqRel);
            pending = rest;
        }
        shared.drained.notify_waiters();
        if closing {
            break;
        }
    }
    let _ = exporter.shutdown();
}

/// The OTLP exporter for `spec`, with its resource.
fn build(spec: &ExportSpec) -> Result<opentelemetry_otlp::SpanExporter, String> {
    use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig};
    let built = match spec.protocol {
        OtlpProtocol::Http => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(OtlpHttp::new(spec.timeout))
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(spec.url.clone())
            .with_timeout(spec.timeout)
            .with_headers(spec.headers.iter().cloned().collect())
            .build(),
        OtlpProtocol::Grpc => {
            let mut headers = http::HeaderMap::new();
            for (k, v) in &spec.headers {
                let name = http::HeaderName::from_bytes(k.as_bytes())
                    .map_err(|e| format!("header {k:?}: {e}"))?;
                let value =
                    http::HeaderValue::from_str(v).map_err(|e| format!("header {k:?}: {e}"))?;
                headers.append(name, value);
            }
            let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if spec.url.starts_with("https://") {
                // tonic's TLS config starts with no roots at all: add Mozilla's (webpki-roots).
                builder = builder.with_tls_config(
                    opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new()
                        .with_enabled_roots(),
                );
            }
            builder
                .with_endpoint(spec.url.clone())
                .with_timeout(spec.timeout)
                .with_metadata(
                    opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(headers),
                )
                .build()
        }
    };
    let mut exporter = built.map_err(|e| e.to_string())?;
    let mut resource = Resource::builder_empty();
    for (k, v) in &spec.resource {
        resource = resource.with_attribute(opentelemetry::KeyValue::new(k.clone(), v.clone()));
    }
    exporter.set_resource(&resource.build());
    Ok(exporter)
}

/// OTLP/HTTP through tollgate's outbound client (system roots, HTTP/1.1 or HTTP/2 by ALPN),
/// every request bounded by the export timeout.
struct OtlpHttp {
    client: hyper_util::client::legacy::Client<Connector, Full<Bytes>>,
    timeout: Duration,
}

impl OtlpHttp {
    fn new(timeout: Duration) -> OtlpHttp {
        OtlpHttp {
            client: crate::outbound::client(&ClientSpec {
                trust: Trust::System,
                connect_timeout: CONNECT_TIMEOUT,
                versions: Versions::Any,
                tls: true,
                pool_idle_timeout: Duration::from_secs(90),
                pool_max_idle_per_host: 2,
            }),
            timeout,
        }
    }
}

impl std::fmt::Debug for OtlpHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpHttp")
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpHttp {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let work = async {
            let resp = self.client.request(request.map(Full::new)).await?;
            let (head, body) = resp.into_parts();
            let bytes = Limited::new(body, MAX_RESPONSE).collect().await?.to_bytes();
            Ok::<_, opentelemetry_http::HttpError>(http::Response::from_parts(head, bytes))
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
    }
}
