//! A minimal OTLP/gRPC trace receiver that counts what it is sent and, with `--print`, shows
//! each span's trace id, parent and name: a collector to point `--otlp-endpoint` at when
//! measuring the cost of traces, or to watch one trace cross the upload flow.
//!
//! ```sh
//! cargo run --release --example otlp-sink -- --listen 127.0.0.1:4317 [--print]
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

#[derive(Clone)]
struct Sink {
    spans: Arc<AtomicU64>,
    print: bool,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    self.spans.fetch_add(1, Ordering::Relaxed);
                    if self.print {
                        println!(
                            "trace {} span {} parent {:16} {service} {}",
                            hex(&span.trace_id),
                            hex(&span.span_id),
                            hex(&span.parent_span_id),
                            span.name
                        );
                    }
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut listen: SocketAddr = "127.0.0.1:4317".parse().unwrap();
    let mut print = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                listen = args
                    .next()
                    .expect("--listen ADDR")
                    .parse()
                    .expect("an address")
            }
            "--print" => print = true,
            other => panic!("unknown argument {other:?} (--listen ADDR, --print)"),
        }
    }
    let sink = Sink {
        spans: Arc::new(AtomicU64::new(0)),
        print,
    };
    let spans = sink.spans.clone();
    tokio::spawn(async move {
        let mut last = 0;
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let now = spans.load(Ordering::Relaxed);
            if now != last {
                eprintln!("otlp-sink: {now} spans received");
                last = now;
            }
        }
    });
    eprintln!("otlp-sink: listening on {listen}");
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(sink))
        .serve(listen)
        .await
        .expect("serve");
}
