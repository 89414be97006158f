//! Distributed traces against a real OTLP/gRPC receiver: a fake collector (the OTLP
//! `TraceService`, served by tonic in the test process on a free port) receives what the
//! `vod-signer` binary exports. The span of a call joins the caller's trace, carries the RPC
//! attributes and the refusal reason and never a key, token or signature; with the collector
//! gone or black-holed, calls answer as usual and the lost spans are counted.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use tonic::Request;
use vod_signer::proto::{ConsumeSignatureRequest, IssueSignatureRequest};
use vod_signer::reason::Reason;

/// One received span, with its resource's attributes.
#[derive(Clone, Debug)]
struct Received {
    span: Span,
    resource: HashMap<String, String>,
}

impl Received {
    fn attributes(&self) -> HashMap<String, String> {
        attributes(&self.span.attributes)
    }
}

fn attributes(
    list: &[opentelemetry_proto::tonic::common::v1::KeyValue],
) -> HashMap<String, String> {
    list.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

/// The fake collector: keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans
                .resource
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        span,
                        resource: resource.clone(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    /// Serves the collector on a free loopback port.
    async fn start() -> (Collector, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let collector = Collector::default();
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        (collector, addr)
    }

    /// Waits until a span satisfying `matches` arrives.
    async fn wait_for(&self, what: &str, matches: impl Fn(&Received) -> bool) -> Received {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(found) = self.spans.lock().unwrap().iter().find(|r| matches(r)) {
                return found.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no span {what}; received: {:#?}",
                self.spans
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|r| (&r.span.name, hex(&r.span.trace_id)))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A request with the caller's W3C trace context and a bearer token in its metadata.
fn traced<T>(message: T, trace_id: &str, parent_id: &str) -> Request<T> {
    let mut request = Request::new(message);
    let traceparent = format!("00-{trace_id}-{parent_id}-01");
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    request
        .metadata_mut()
        .insert("authorization", "Bearer app-token-91ce07".parse().unwrap());
    request.set_timeout(Duration::from_secs(2));
    request
}

/// A server exporting to `endpoint`, batches sent every 50 ms, with `env` on top.
fn traced_server(endpoint: &str, env: &[(&str, &str)]) -> (ServerProcess, tempfile::TempDir) {
    let keys = keys_dir();
    let mut cmd = serve_command();
    cmd.arg("--keys-dir")
        .arg(keys.path())
        .args(["--active-key", SECRET_ID, "--otlp-endpoint", endpoint])
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_SERVICE_NAME");
    for (name, value) in env {
        cmd.env(name, value);
    }
    (ServerProcess::spawn(cmd), keys)
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";
const OTHER_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const OTHER_PARENT_ID: &str = "b7ad6b7169203331";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_joins_the_callers_trace_with_its_attributes_and_no_secrets() {
    let (collector, addr) = Collector::start().await;
    let (server, _keys) = traced_server(
        &format!("http://{addr}"),
        &[("OTEL_SERVICE_NAME", "vod-signer-under-test")],
    );
    let mut client = connect(server.addr).await;

    let signature = client
        .issue_signature(traced(
            IssueSignatureRequest::default(),
            TRACE_ID,
            PARENT_ID,
        ))
        .await
        .unwrap()
        .into_inner()
        .signature;
    let consume = |s: &str| ConsumeSignatureRequest {
        signature: s.to_owned(),
        idempotency_key: "idem-key-1".into(),
        ..Default::default()
    };
    client
        .consume_signature(traced(consume(&signature), TRACE_ID, PARENT_ID))
        .await
        .unwrap();
    let second = ConsumeSignatureRequest {
        idempotency_key: "idem-key-2".into(),
        ..consume(&signature)
    };
    let refused = client
        .consume_signature(traced(second, OTHER_TRACE_ID, OTHER_PARENT_ID))
        .await;
    assert_eq!(
        reason_of(&refused.unwrap_err()),
        Reason::SignatureAlreadyUsed
    );

    // The issue: a server span in the caller's trace, child of the caller's span.
    let issue = collector
        .wait_for("IssueSignature", |r| {
            r.span.name == "vodsigner.v1.SignatureService/IssueSignature"
        })
        .await;
    assert_eq!(hex(&issue.span.trace_id), TRACE_ID);
    assert_eq!(hex(&issue.span.parent_span_id), PARENT_ID);
    assert_eq!(issue.span.kind, 2, "SPAN_KIND_SERVER");
    let attrs = issue.attributes();
    assert_eq!(attrs["rpc.system"], "grpc");
    assert_eq!(attrs["rpc.service"], "vodsigner.v1.SignatureService");
    assert_eq!(attrs["rpc.method"], "IssueSignature");
    assert_eq!(attrs["rpc.grpc.status_code"], "0");
    assert!(!attrs.contains_key("error.type"), "{attrs:?}");
    assert_eq!(issue.resource["service.name"], "vod-signer-under-test");

    // Its store call: a child span of the call's span.
    let store = collector
        .wait_for("store.issue", |r| {
            r.span.name == "store.issue" && r.span.parent_span_id == issue.span.span_id
        })
        .await;
    assert_eq!(store.span.trace_id, issue.span.trace_id);

    // The refused consume: in the other trace, with the status code and the reason; the span
    // status stays unset (a refusal is not a server fault).
    let refusal = collector
        .wait_for("refused ConsumeSignature", |r| {
            r.span.name == "vodsigner.v1.SignatureService/ConsumeSignature"
                && hex(&r.span.trace_id) == OTHER_TRACE_ID
        })
        .await;
    assert_eq!(hex(&refusal.span.parent_span_id), OTHER_PARENT_ID);
    let attrs = refusal.attributes();
    assert_eq!(
        attrs["rpc.grpc.status_code"],
        (tonic::Code::FailedPrecondition as i32).to_string()
    );
    assert_eq!(attrs["error.type"], "SIGNATURE_ALREADY_USED");
    assert_eq!(attrs["rpc.method"], "ConsumeSignature");
    assert_eq!(refusal.span.status.as_ref().map_or(0, |s| s.code), 0);
    collector
        .wait_for("store.consume under the refused call", |r| {
            r.span.name == "store.consume" && r.span.parent_span_id == refusal.span.span_id
        })
        .await;

    // Nothing exported holds the key, the token, the idempotency key or the signature (nor
    // a piece of it long enough to matter).
    let everything = format!("{:?}", collector.spans.lock().unwrap());
    for secret in TEST_SECRETS.iter().copied().chain([
        "idem-key-1",
        "idem-key-2",
        &signature[..24],
        &signature[signature.len() - 24..],
    ]) {
        assert!(
            !everything.contains(secret),
            "{secret:?} in an exported span"
        );
    }
}

/// Calls with the collector unreachable: each answers within its 2 s deadline, well under the
/// 5 s an export may take (so no call waited for one); the spans that could not be delivered
/// are counted.
async fn calls_answer_without_a_collector(endpoint: &str) {
    let (server, _keys) = traced_server(
        endpoint,
        &[
            ("OTEL_BSP_MAX_QUEUE_SIZE", "16"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "5000"),
        ],
    );
    let metrics = server.metrics_addr();
    let mut client = connect(server.addr).await;
    let mut times = Vec::new();
    for i in 0..200 {
        let started = Instant::now();
        let issued = client
            .issue_signature(traced(
                IssueSignatureRequest::default(),
                TRACE_ID,
                PARENT_ID,
            ))
            .await
            .unwrap_or_else(|e| panic!("call {i}: {e:?}"));
        drop(issued);
        times.push(started.elapsed());
    }
    // Each call had a 2 s deadline (`traced`), so each answered within it; say how fast.
    let slowest = times.iter().max().copied().unwrap_or_default();
    let at = times.iter().position(|t| *t == slowest).unwrap_or(0);
    times.sort();
    eprintln!(
        "200 calls to {endpoint}: median {:?}, slowest {slowest:?} (call {at})",
        times[100]
    );
    assert!(slowest < Duration::from_secs(2), "slowest call {slowest:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scrape = scrape(metrics).await;
        let dropped: f64 = ["queue_full", "export_failed"]
            .iter()
            .filter_map(|r| scrape.value("vodsigner_trace_spans_dropped_total", &[("reason", r)]))
            .sum();
        if dropped > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no dropped spans counted:\n{}",
            scrape.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_answer_when_nothing_listens_at_the_endpoint() {
    calls_answer_without_a_collector(&format!("http://127.0.0.1:{}", free_port())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_answer_when_the_collector_black_holes() {
    // Accepted by the kernel (the backlog), never read nor answered.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", hole.local_addr().unwrap());
    calls_answer_without_a_collector(&endpoint).await;
    drop(hole);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typed_client_sends_the_current_spans_trace_context() {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
        TracerProvider as _,
    };
    use tracing::Instrument as _;
    use tracing::instrument::WithSubscriber as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    let (collector, addr) = Collector::start().await;
    let (server, _keys) = traced_server(&format!("http://{addr}"), &[]);

    // An app server that traces with tracing-opentelemetry (its spans go nowhere here), in a
    // request that arrived with TRACE_ID.
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let app = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("app-server")));
    let client = vod_signer::client::Client::connect(vod_signer::client::ClientConfig::new(
        format!("http://{}", server.addr),
    ))
    .unwrap();
    let app_span_id = async move {
        let span = tracing::info_span!("handle upload request");
        let remote = SpanContext::new(
            TraceId::from_hex(TRACE_ID).unwrap(),
            SpanId::from_hex(PARENT_ID).unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote))
            .unwrap();
        let id = span.context().span().span_context().span_id();
        client
            .issue(IssueSignatureRequest::default())
            .instrument(span)
            .await
            .unwrap();
        id
    }
    .with_subscriber(app)
    .await;

    let issue = collector
        .wait_for("IssueSignature under the app's span", |r| {
            r.span.name == "vodsigner.v1.SignatureService/IssueSignature"
        })
        .await;
    assert_eq!(hex(&issue.span.trace_id), TRACE_ID);
    assert_eq!(hex(&issue.span.parent_span_id), app_span_id.to_string());
    assert_eq!(issue.resource["service.name"], "vod-signer");
}
