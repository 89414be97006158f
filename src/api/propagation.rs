//! W3C trace context (`traceparent`, `tracestate`) across gRPC metadata, both ways: the
//! server takes the caller's as the parent of its span, the typed client sends the current
//! span's. Only the W3C propagator is used (SPEC section 6), whatever the process-wide one.

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::codegen::http::HeaderMap;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct Metadata<'a>(&'a mut MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// The caller's trace context from the request headers (an empty context when there is none
/// or it is malformed: the span then starts a trace of its own).
pub fn extract(headers: &HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&Headers(headers))
}

/// The W3C `traceparent` value of `cx`, when it holds a span: for handing the trace on
/// through something that is not gRPC (an HTTP response, a page).
pub fn traceparent(cx: &Context) -> Option<String> {
    let mut fields = std::collections::HashMap::new();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(cx, &mut fields);
    }
    fields.remove("traceparent")
}

/// Adds `traceparent` (and `tracestate`) of `cx` to outgoing metadata, when `cx` holds a span.
pub fn inject(cx: &Context, metadata: &mut MetadataMap) {
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(cx, &mut Metadata(metadata));
    }
}
