//! An OTLP/HTTP trace receiver: accepts `POST /v1/traces` (protobuf), decodes each
//! `ExportTraceServiceRequest` with the OpenTelemetry protobuf types and keeps the spans.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;

/// How long [`Receiver::wait_for`] waits for spans (they are exported in batches).
const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct Received {
    spans: Vec<Span>,
    /// Resource attributes of the last export, as text.
    resource: Vec<(String, String)>,
}

#[derive(Debug)]
pub struct Receiver {
    addr: SocketAddr,
    received: Arc<Mutex<Received>>,
}

impl Receiver {
    /// Listens on a free local port until the test's runtime ends.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the OTLP receiver");
        let addr = listener.local_addr().expect("receiver addr");
        let received = Arc::new(Mutex::new(Received::default()));
        let sink = received.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let sink = sink.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let sink = sink.clone();
                        async move { Ok::<_, Infallible>(receive(request, &sink).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, received }
    }

    /// The base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT` takes it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.received.lock().expect("receiver lock").spans.clone()
    }

    /// A resource attribute of what was exported (as text).
    pub fn resource_attribute(&self, key: &str) -> Option<String> {
        let received = self.received.lock().expect("receiver lock");
        received
            .resource
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    /// Waits until the spans received satisfy `done`; returns them all.
    pub async fn wait_for(&self, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let deadline = Instant::now() + WAIT;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "the spans wanted did not arrive; received: {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until the spans of trace `trace_id` (hex) satisfy `done`; returns those spans.
    pub async fn wait_for_trace(
        &self,
        trace_id: &str,
        done: impl Fn(&[Span]) -> bool,
    ) -> Vec<Span> {
        let of_trace = |spans: &[Span]| -> Vec<Span> {
            spans
                .iter()
                .filter(|s| hex(&s.trace_id) == trace_id)
                .cloned()
                .collect()
        };
        let all = self.wait_for(|spans| done(&of_trace(spans))).await;
        of_trace(&all)
    }
}

async fn receive(request: Request<Incoming>, sink: &Mutex<Received>) -> Response<Full<Bytes>> {
    let status = if request.uri().path() != "/v1/traces" {
        404
    } else {
        match request.into_body().collect().await {
            Ok(body) => match ExportTraceServiceRequest::decode(body.to_bytes()) {
                Ok(export) => {
                    keep(export, sink);
                    200
                }
                Err(_) => 400,
            },
            Err(_) => 400,
        }
    };
    Response::builder()
        .status(status)
        .header("content-type", "application/x-protobuf")
        .body(Full::new(Bytes::from(
            ExportTraceServiceResponse::default().encode_to_vec(),
        )))
        .expect("a response")
}

fn keep(export: ExportTraceServiceRequest, sink: &Mutex<Received>) {
    let mut received = sink.lock().expect("receiver lock");
    for resource_spans in export.resource_spans {
        if let Some(resource) = resource_spans.resource {
            received.resource = resource
                .attributes
                .iter()
                .map(|kv| {
                    let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                        Some(AnyValue::StringValue(s)) => s.clone(),
                        other => format!("{other:?}"),
                    };
                    (kv.key.clone(), value)
                })
                .collect();
        }
        for scope in resource_spans.scope_spans {
            received.spans.extend(scope.spans);
        }
    }
}

/// Lower-case hex, as trace and span ids are written in `traceparent` and log lines.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
