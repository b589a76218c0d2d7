//! Request tracing (`telemetry.tracing`): the sampling decision, the W3C trace context a request
//! continues or starts ([`context`]), the spans of one request, and their export ([`export`]).
//!
//! The pipeline starts one [`RequestTrace`] per request. Only a sampled request records spans:
//! its server span when it is answered, and child spans ([`child`]) for the work that leaves the
//! process (JWKS fetch, external authorizer, Redis, the upstream), found through a task-local
//! while the pipeline runs. An unsampled request costs the ids and the headers for the upstream.

pub(crate) mod context;
pub(crate) mod export;

use std::borrow::Cow;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Instant, SystemTime};

use http::HeaderMap;
use http::header::HeaderValue;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SpanData, SpanEvents, SpanLinks};
use prometheus::IntCounter;

pub(crate) use export::{ExportSpec, Exporter};

/// Longest value a client's bytes give a span attribute (OpenTelemetry's attribute length
/// limit, so that a span stays small whatever the client sends: user agent, host, path).
pub(crate) const MAX_ATTRIBUTE_LEN: usize = 256;

/// `s` cut to [`MAX_ATTRIBUTE_LEN`] bytes at a character boundary.
pub(crate) fn bounded(s: &str) -> String {
    let mut end = s.len().min(MAX_ATTRIBUTE_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Whose `traceparent` a request continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TrustParent {
    /// Peers in `client_ip.trusted_proxies` only.
    TrustedProxies,
    /// Every client.
    Always,
    /// Nobody.
    Never,
}

/// The compiled `telemetry.tracing` of a snapshot.
pub(crate) struct Tracing {
    /// A new trace is sampled when its id's last 8 bytes, shifted right once, are below this
    /// (the OpenTelemetry `TraceIdRatioBased` rule, so every SDK agrees on one trace id).
    bound: u64,
    trust: TrustParent,
    xray: bool,
    exporter: Arc<Exporter>,
    sampled: IntCounter,
    unsampled: IntCounter,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing")
            .field("bound", &self.bound)
            .field("trust", &self.trust)
            .field("xray", &self.xray)
            .finish_non_exhaustive()
    }
}

impl Tracing {
    /// Settings for a snapshot: `ratio` of new traces sampled (clamped to 0..=1).
    pub(crate) fn new(
        ratio: f64,
        trust: TrustParent,
        xray: bool,
        exporter: Arc<Exporter>,
        metrics: &crate::metrics::Metrics,
    ) -> Tracing {
        let ratio = ratio.clamp(0.0, 1.0);
        let bound = if ratio >= 1.0 {
            u64::MAX
        } else {
            (ratio * (1u64 << 63) as f64) as u64
        };
        Tracing {
            bound,
            trust,
            xray,
            exporter,
            sampled: metrics.traces.with_label_values(&["true"]),
            unsampled: metrics.traces.with_label_values(&["false"]),
        }
    }

    /// Sends what the exporter holds now, waiting at most `timeout` (at shutdown).
    pub(crate) async fn flush(&self, timeout: std::time::Duration) {
        self.exporter.flush(timeout).await;
    }

    /// Whether `X-Amzn-Trace-Id` is read and written.
    pub(crate) fn xray(&self) -> bool {
        self.xray
    }

    /// The trace of a request with headers `h`: the parent's when the client may name one
    /// (`peer_trusted` says whether it is a trusted proxy) and named a valid one, else a new
    /// trace, sampled by the ratio unless the parent decided.
    pub(crate) fn start(
        &self,
        method: &http::Method,
        h: &HeaderMap,
        peer_trusted: impl FnOnce() -> bool,
    ) -> RequestTrace {
        let believed = match self.trust {
            TrustParent::Always => true,
            TrustParent::Never => false,
            TrustParent::TrustedProxies => peer_trusted(),
        };
        let parent = if believed {
            context::parent(h, self.xray)
        } else {
            None
        };
        let trace_id = match &parent {
            Some(p) => p.trace_id,
            None => self.new_trace_id(),
        };
        let sampled = match parent.and_then(|p| p.sampled) {
            Some(decided) => decided,
            None => {
                self.bound == u64::MAX
                    || (u64::from_be_bytes(trace_id[8..].try_into().expect("8 bytes")) >> 1)
                        < self.bound
            }
        };
        let span_id = RandomIdGenerator::default().new_span_id().to_bytes();
        let recorder = sampled.then(|| {
            self.sampled.inc();
            Arc::new(Recorder {
                trace_id,
                server_span: span_id,
                children: Mutex::new(Vec::new()),
                exporter: self.exporter.clone(),
                method: method.clone(),
                finished: AtomicBool::new(false),
            })
        });
        if !sampled {
            self.unsampled.inc();
        }
        let tracestate = parent.is_some().then(|| context::tracestate(h)).flatten();
        RequestTrace {
            hex: context::trace_hex(&trace_id),
            trace_id,
            span_id,
            parent: parent.map(|p| p.span_id),
            sampled,
            tracestate,
            recorder,
            started: sampled.then(SystemTime::now),
        }
    }

    /// A new trace id: random, but with the current Unix time in its first four bytes when
    /// X-Ray headers are written, since X-Ray refuses trace ids not made that way.
    fn new_trace_id(&self) -> [u8; 16] {
        let mut id = RandomIdGenerator::default().new_trace_id().to_bytes();
        if self.xray {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as u32);
            id[..4].copy_from_slice(&now.to_be_bytes());
        }
        id
    }
}

/// One request's trace: its ids, and (when sampled) what records its spans.
pub(crate) struct RequestTrace {
    pub(crate) trace_id: [u8; 16],
    /// The gateway's server span.
    pub(crate) span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    pub(crate) sampled: bool,
    /// `trace_id` in hex, made once for the request id and the access log.
    hex: [u8; 32],
    tracestate: Option<String>,
    recorder: Option<Arc<Recorder>>,
    started: Option<SystemTime>,
}

/// Collects the child spans of a sampled request.
struct Recorder {
    trace_id: [u8; 16],
    server_span: [u8; 8],
    children: Mutex<Vec<SpanData>>,
    /// Where a request cancelled before its answer sends its spans ([`RequestTrace`]'s drop).
    exporter: Arc<Exporter>,
    method: http::Method,
    finished: AtomicBool,
}

tokio::task_local! {
    /// The sampled request whose pipeline runs in this task.
    static CURRENT: Arc<Recorder>;
}

/// What the server span says about a request once it is answered.
pub(crate) struct ServerSpan {
    /// The route key, or the method when no route matched.
    pub(crate) name: Cow<'static, str>,
    pub(crate) attributes: Vec<KeyValue>,
    /// Set for answers the gateway counts as its failures (5xx).
    pub(crate) error: Option<Cow<'static, str>>,
    /// How long the request took.
    pub(crate) elapsed: std::time::Duration,
}

impl RequestTrace {
    /// Runs `fut` (the pipeline) with this trace as the one [`child`] spans attach to.
    pub(crate) async fn scope<F: Future>(&self, fut: F) -> F::Output {
        match &self.recorder {
            Some(r) => CURRENT.scope(r.clone(), fut).await,
            None => fut.await,
        }
    }

    /// Whether the gateway started this trace (no believed parent): its id is then unique to
    /// the request and may serve as its request id.
    pub(crate) fn is_root(&self) -> bool {
        self.parent.is_none()
    }

    /// `traceparent` naming the gateway's server span.
    pub(crate) fn traceparent(&self) -> HeaderValue {
        context::traceparent(&self.trace_id, &self.span_id, self.sampled)
    }

    /// The trace id in lower-case hex.
    pub(crate) fn trace_id_hex(&self) -> &str {
        std::str::from_utf8(&self.hex).expect("hex is ascii")
    }

    /// Replaces the request's trace headers with the ones its upstream continues from:
    /// `traceparent` naming `parent` (the upstream span when sampled, else the server span),
    /// the trusted caller's `tracestate`, and with X-Ray also `X-Amzn-Trace-Id`. What the
    /// client sent of these never reaches the upstream (`X-Amzn-Trace-Id` only with X-Ray on).
    pub(crate) fn propagate(&self, h: &mut HeaderMap, parent: Option<[u8; 8]>, xray: bool) {
        let span = parent.unwrap_or(self.span_id);
        h.remove(context::TRACESTATE);
        h.insert(
            context::TRACEPARENT,
            context::traceparent(&self.trace_id, &span, self.sampled),
        );
        if let Some(state) = &self.tracestate
            && let Ok(v) = HeaderValue::from_str(state)
        {
            h.insert(context::TRACESTATE, v);
        }
        // Without `xray` the header is not the gateway's business (a load balancer in front may
        // have set it) and passes as it came.
        if xray {
            h.insert(
                context::XRAY,
                context::xray(&self.trace_id, &span, self.sampled),
            );
        }
    }

    /// Ends the trace: a sampled request's server span and its children go to the exporter.
    pub(crate) fn finish(&self, tracing: &Tracing, server: ServerSpan) {
        self.send(&tracing.exporter, server);
    }

    fn send(&self, exporter: &Exporter, server: ServerSpan) {
        let (Some(recorder), Some(start)) = (&self.recorder, self.started) else {
            return;
        };
        if recorder.finished.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut spans = std::mem::take(&mut *recorder.children.lock().expect("not poisoned"));
        let trace_state = self
            .tracestate
            .as_deref()
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        spans.push(SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(self.trace_id),
                SpanId::from_bytes(self.span_id),
                TraceFlags::SAMPLED,
                false,
                trace_state,
            ),
            parent_span_id: self.parent.map_or(SpanId::INVALID, SpanId::from_bytes),
            parent_span_is_remote: self.parent.is_some(),
            span_kind: SpanKind::Server,
            name: server.name,
            start_time: start,
            end_time: start + server.elapsed,
            attributes: server.attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: match server.error {
                Some(description) => Status::Error { description },
                None => Status::Unset,
            },
            instrumentation_scope: SCOPE.clone(),
        });
        exporter.push(spans);
    }
}

impl Drop for RequestTrace {
    /// A sampled request dropped before it was answered (its client went away, so hyper
    /// dropped the pipeline) still sends its server span, marked `tollgate.cancelled`, and the
    /// child spans that ended.
    fn drop(&mut self) {
        let Some(recorder) = &self.recorder else {
            return;
        };
        if recorder.finished.load(Ordering::Acquire) {
            return;
        }
        let elapsed = self
            .started
            .and_then(|s| s.elapsed().ok())
            .unwrap_or_default();
        let method = bounded(recorder.method.as_str());
        let exporter = recorder.exporter.clone();
        let span = ServerSpan {
            name: Cow::Owned(method.clone()),
            attributes: vec![
                KeyValue::new("http.request.method", method),
                KeyValue::new("tollgate.cancelled", true),
            ],
            error: None,
            elapsed,
        };
        self.send(&exporter, span);
    }
}

static SCOPE: LazyLock<InstrumentationScope> = LazyLock::new(|| {
    InstrumentationScope::builder("tollgate")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
});

/// A child span of the sampled request running in this task, ended (and recorded) when
/// dropped. `None` outside a sampled request: callers then do the work untraced, and `name`
/// is never called (it may allocate).
pub(crate) fn child<N: Into<Cow<'static, str>>>(
    kind: SpanKind,
    name: impl FnOnce() -> N,
) -> Option<ChildSpan> {
    let recorder = CURRENT.try_with(Arc::clone).ok()?;
    Some(ChildSpan {
        recorder,
        name: name().into(),
        kind,
        id: RandomIdGenerator::default().new_span_id().to_bytes(),
        start: SystemTime::now(),
        began: Instant::now(),
        attributes: Vec::new(),
        status: Status::Unset,
    })
}

/// A span for work a request waits on: see [`child`].
pub(crate) struct ChildSpan {
    recorder: Arc<Recorder>,
    name: Cow<'static, str>,
    kind: SpanKind,
    id: [u8; 8],
    start: SystemTime,
    began: Instant,
    attributes: Vec<KeyValue>,
    status: Status,
}

impl ChildSpan {
    /// The span's id, for a `traceparent` of the work it covers.
    pub(crate) fn id(&self) -> [u8; 8] {
        self.id
    }

    /// The `traceparent` that makes this span the parent of the remote work it covers.
    pub(crate) fn traceparent(&self) -> HeaderValue {
        context::traceparent(&self.recorder.trace_id, &self.id, true)
    }

    /// Adds an attribute.
    pub(crate) fn attr(&mut self, key: &'static str, value: impl Into<Value>) {
        self.attributes.push(KeyValue::new(key, value));
    }

    /// Marks the work as failed, saying why.
    pub(crate) fn fail(&mut self, why: impl Into<Cow<'static, str>>) {
        self.status = Status::Error {
            description: why.into(),
        };
    }
}

impl Drop for ChildSpan {
    fn drop(&mut self) {
        let span = SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(self.recorder.trace_id),
                SpanId::from_bytes(self.id),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::from_bytes(self.recorder.server_span),
            parent_span_is_remote: false,
            span_kind: self.kind.clone(),
            name: std::mem::take(&mut self.name),
            start_time: self.start,
            end_time: self.start + self.began.elapsed(),
            attributes: std::mem::take(&mut self.attributes),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: std::mem::replace(&mut self.status, Status::Unset),
            instrumentation_scope: SCOPE.clone(),
        };
        self.recorder
            .children
            .lock()
            .expect("not poisoned")
            .push(span);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::OtlpProtocol;

    fn tracing(ratio: f64, trust: TrustParent, metrics: &crate::metrics::Metrics) -> Tracing {
        let spec = ExportSpec {
            url: "http://127.0.0.1:1/v1/traces".into(),
            protocol: OtlpProtocol::Http,
            headers: Vec::new(),
            resource: Vec::new(),
            queue_size: 4,
            timeout: std::time::Duration::from_secs(1),
        };
        Tracing::new(
            ratio,
            trust,
            false,
            Arc::new(Exporter::new(spec, metrics)),
            metrics,
        )
    }

    /// A server span named `name`, with nothing else to say.
    fn server(name: &'static str) -> ServerSpan {
        ServerSpan {
            name: name.into(),
            attributes: Vec::new(),
            error: None,
            elapsed: std::time::Duration::ZERO,
        }
    }

    fn with_parent(sampled: bool) -> HeaderMap {
        let mut h = HeaderMap::new();
        let flags = if sampled { "01" } else { "00" };
        h.insert(
            context::TRACEPARENT,
            HeaderValue::from_str(&format!(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}"
            ))
            .unwrap(),
        );
        h
    }

    #[test]
    fn new_traces_are_sampled_at_the_ratio() {
        let m = crate::metrics::Metrics::new();
        let t = tracing(0.1, TrustParent::Always, &m);
        let n = 20_000;
        let sampled = (0..n)
            .filter(|_| {
                t.start(&http::Method::GET, &HeaderMap::new(), || true)
                    .sampled
            })
            .count() as f64;
        let (mean, sd) = (n as f64 * 0.1, (n as f64 * 0.1 * 0.9).sqrt());
        assert!((sampled - mean).abs() < 5.0 * sd, "{sampled} of {n}");
        assert!(
            tracing(1.0, TrustParent::Always, &m)
                .start(&http::Method::GET, &HeaderMap::new(), || true)
                .sampled
        );
        assert!(
            !tracing(0.0, TrustParent::Always, &m)
                .start(&http::Method::GET, &HeaderMap::new(), || true)
                .sampled
        );
        assert_eq!(
            m.traces.with_label_values(&["true"]).get() as f64,
            sampled + 1.0
        );
    }

    #[test]
    fn a_believed_parent_decides_and_an_unbelieved_one_is_ignored() {
        let m = crate::metrics::Metrics::new();
        // Ratio 0, but the trusted caller sampled: the trace is continued and recorded.
        let trusted = tracing(0.0, TrustParent::TrustedProxies, &m);
        let t = trusted.start(&http::Method::GET, &with_parent(true), || true);
        assert!(t.sampled);
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent, Some(0x00f067aa0ba902b7u64.to_be_bytes()));
        // Ratio 1, but the caller did not sample: neither do we.
        assert!(
            !tracing(1.0, TrustParent::Always, &m)
                .start(&http::Method::GET, &with_parent(false), || false)
                .sampled
        );
        // The same parent from a peer that is not a trusted proxy, or with `never`: a new trace.
        for (trust, peer) in [
            (TrustParent::TrustedProxies, false),
            (TrustParent::Never, true),
        ] {
            let t = tracing(0.0, trust, &m).start(&http::Method::GET, &with_parent(true), || peer);
            assert!(!t.sampled);
            assert_ne!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(t.parent, None);
        }
    }

    #[test]
    fn propagation_replaces_what_the_client_sent() {
        let m = crate::metrics::Metrics::new();
        let mut h = with_parent(true);
        h.insert(context::TRACESTATE, HeaderValue::from_static("forged=1"));
        h.insert(
            context::XRAY,
            HeaderValue::from_static(
                "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
            ),
        );
        let t = tracing(1.0, TrustParent::Never, &m).start(&http::Method::GET, &h, || true);
        t.propagate(&mut h, None, false);
        let sent = context::parse_traceparent(h[context::TRACEPARENT].as_bytes()).unwrap();
        assert_eq!(sent.trace_id, t.trace_id);
        assert_eq!(sent.span_id, t.span_id);
        assert!(h.get(context::TRACESTATE).is_none());
        // Without `xray` the X-Ray header is left as it came; with it, it is the gateway's.
        assert!(
            h.get(context::XRAY)
                .is_some_and(|v| v.as_bytes().starts_with(b"Root=1-5759e988"))
        );
        t.propagate(&mut h, None, true);
        let xray = context::parse_xray(h[context::XRAY].as_bytes()).unwrap();
        assert_eq!((xray.trace_id, xray.span_id), (t.trace_id, t.span_id));
    }

    #[test]
    fn a_request_dropped_before_its_answer_still_sends_its_span() {
        let m = crate::metrics::Metrics::new();
        let t = tracing(1.0, TrustParent::Always, &m);
        let trace = t.start(&http::Method::POST, &HeaderMap::new(), || true);
        drop(trace);
        let queued = t.exporter.queued();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].name, "POST");
        assert!(
            queued[0]
                .attributes
                .contains(&KeyValue::new("tollgate.cancelled", true))
        );
        // A finished request sends its span once, not again when dropped.
        let trace = t.start(&http::Method::GET, &HeaderMap::new(), || true);
        trace.finish(&t, server("GET /x"));
        drop(trace);
        assert_eq!(t.exporter.queued().len(), 2);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let m = crate::metrics::Metrics::new();
        let t = tracing(1.0, TrustParent::Always, &m);
        for _ in 0..3 {
            let trace = t.start(&http::Method::GET, &HeaderMap::new(), || true);
            let span = server("GET /x");
            trace.finish(&t, span);
        }
        // Capacity 4, nothing exporting (never activated): 3 spans kept so far, then 1 of 3.
        assert_eq!(
            m.trace_spans_dropped
                .with_label_values(&["queue_full"])
                .get(),
            0
        );
        for _ in 0..3 {
            t.start(&http::Method::GET, &HeaderMap::new(), || true)
                .finish(&t, server("GET /x"));
        }
        assert_eq!(
            m.trace_spans_dropped
                .with_label_values(&["queue_full"])
                .get(),
            2
        );
    }
}
