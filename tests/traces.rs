//! Traces: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, a host exports each request's spans over
//! OTLP/HTTP. A receiver in the test decodes them with the OpenTelemetry protobuf types.

use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use plinth_tests::backend::Backend;
use plinth_tests::otlp::{Receiver, hex};
use plinth_tests::{PluginsDir, TestHost, json_body, request_id};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN_ID: &str = "00f067aa0ba902b7";
/// Span times are wall-clock times (nanoseconds since the epoch).
const CLOCK_SLACK_NS: u64 = 1_000_000;

fn traceparent() -> String {
    format!("00-{TRACE_ID}-{CLIENT_SPAN_ID}-01")
}

/// `GET path` sending `traceparent`.
async fn get_traced(host: &TestHost, path: &str, traceparent: &str) -> reqwest::Response {
    host.client
        .get(host.url(path))
        .header("traceparent", traceparent)
        .send()
        .await
        .unwrap_or_else(|err| panic!("GET {path}: {err}"))
}

fn traced_host(receiver: &Receiver) -> plinth_tests::HostBuilder {
    TestHost::builder()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url())
        // Export every 50 ms instead of every 5 s.
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map(|value| match value {
            AnyValue::StringValue(s) => s.clone(),
            AnyValue::IntValue(i) => i.to_string(),
            AnyValue::BoolValue(b) => b.to_string(),
            other => format!("{other:?}"),
        })
}

/// Asserts each `(key, value)` is an attribute of `span`, as text.
fn assert_attributes(span: &Span, expected: &[(&str, &str)]) {
    for (key, value) in expected {
        assert_eq!(
            attribute(span, key).as_deref(),
            Some(*value),
            "`{}` attribute {key}",
            span.name
        );
    }
}

fn children<'a>(spans: &'a [Span], parent: &Span) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|s| s.parent_span_id == parent.span_id)
        .collect()
}

fn named<'a>(spans: &[&'a Span], name: &str) -> &'a Span {
    spans
        .iter()
        .find(|s| s.name == name)
        .copied()
        .unwrap_or_else(|| {
            let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
            panic!("no span `{name}` among {names:?}")
        })
}

#[tokio::test]
async fn a_request_is_one_trace_under_the_incoming_traceparent() {
    let receiver = Receiver::start().await;
    let plugins = PluginsDir::with(&["auth", "users"]);
    let host = traced_host(&receiver)
        .backend(&Backend::sqlite())
        .with_root()
        .start(&plugins);
    let root = host.root_tokens().await;

    let response = host
        .client
        .get(host.url("/api/v1/users/me"))
        .bearer_auth(&root.access)
        .header("traceparent", traceparent())
        .send()
        .await
        .expect("GET /users/me");
    assert_eq!(response.status(), 200);
    let id = request_id(&response);

    // The server span ends last and may come in a later batch than its children.
    let spans = receiver
        .wait_for_trace(TRACE_ID, |spans| {
            spans.iter().any(|s| s.name.starts_with("sql.query"))
                && spans.iter().any(|s| s.name == "GET /api/v1/users/me")
        })
        .await;
    let server = named(&spans.iter().collect::<Vec<_>>(), "GET /api/v1/users/me");
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(
        hex(&server.parent_span_id),
        CLIENT_SPAN_ID,
        "child of the client's span"
    );
    assert_attributes(
        server,
        &[
            ("http.route", "/api/v1/users/me"),
            ("http.request.method", "GET"),
            ("http.response.status_code", "200"),
            ("plinth.plugin", "users"),
        ],
    );

    let steps = children(&spans, server);
    for step in [
        "route match",
        "authenticate",
        "admission wait",
        "instance slot wait",
        "instantiate",
        "guest call",
    ] {
        let span = named(&steps, step);
        // Wall-clock times: allow a millisecond for the clock being adjusted meanwhile.
        assert!(
            span.start_time_unix_nano + CLOCK_SLACK_NS >= server.start_time_unix_nano
                && span.end_time_unix_nano <= server.end_time_unix_nano + CLOCK_SLACK_NS,
            "`{step}` ({}..{}) lies within the request ({}..{})",
            span.start_time_unix_nano,
            span.end_time_unix_nano,
            server.start_time_unix_nano,
            server.end_time_unix_nano,
        );
    }
    let guest = named(&steps, "guest call");
    assert_eq!(attribute(guest, "plinth.plugin").as_deref(), Some("users"));
    let host_calls = children(&spans, guest);
    let query = host_calls
        .iter()
        .find(|s| s.name.starts_with("sql.query"))
        .unwrap_or_else(|| panic!("no SQL host call under the guest call: {host_calls:?}"));
    assert_eq!(
        Some(query.name.clone()),
        attribute(query, "plinth.host_call.function").map(|f| format!("sql.{f}")),
        "a host call's span is named by its interface and function"
    );
    assert_attributes(
        query,
        &[
            ("db.system.name", "sqlite"),
            ("db.operation.name", "SELECT"),
            ("db.collection.name", "users"),
            ("plinth.host_call.interface", "sql"),
        ],
    );
    assert!(
        spans.iter().all(|s| hex(&s.trace_id) == TRACE_ID),
        "one trace"
    );
    assert_eq!(
        receiver.resource_attribute("service.name").as_deref(),
        Some("plinth")
    );

    // Every line of the request names the trace, the access line included.
    let access = host.access_line(&id);
    assert_eq!(access["span"]["trace_id"], TRACE_ID, "{access}");
}

#[tokio::test]
async fn no_secret_or_value_reaches_a_span() {
    let receiver = Receiver::start().await;
    let plugins = PluginsDir::with(&["auth", "users"]);
    let host = traced_host(&receiver)
        .backend(&Backend::sqlite())
        .start(&plugins);
    let (_, tokens) = host.user("tracy").await;
    let me = host.get_as("/api/v1/users/me", &tokens.access).await;
    me.expect(200, None);
    host.post_json(
        "/api/v1/auth/refresh",
        serde_json::json!({"refresh_token": tokens.refresh}),
    )
    .await
    .expect(200, None);

    // The login's trace has a password check among its host calls.
    receiver
        .wait_for(|spans| spans.iter().any(|s| s.name == "passwords.verify"))
        .await;
    let spans = receiver
        .wait_for(|spans| {
            spans
                .iter()
                .filter(|s| s.kind == SpanKind::Server as i32)
                .count()
                >= 4
        })
        .await;
    assert!(
        spans.iter().any(|s| s.name == "passwords.hash"),
        "registration hashes"
    );
    let secrets = [
        "password-tracy".to_owned(),
        "tracy@example.com".to_owned(),
        tokens.access.clone(),
        tokens.refresh.clone(),
    ];
    for span in &spans {
        for kv in &span.attributes {
            let value = format!("{:?}", kv.value);
            for secret in &secrets {
                assert!(
                    !value.contains(secret.as_str()),
                    "span `{}` attribute {} carries {secret:?}",
                    span.name,
                    kv.key
                );
            }
        }
    }
}

#[tokio::test]
async fn a_plugin_is_given_the_servers_traceparent_and_the_callers_sampling_is_followed() {
    let receiver = Receiver::start().await;
    let plugins = PluginsDir::with(&["nosy"]);
    let host = traced_host(&receiver).start(&plugins);

    // Under a client's trace: the plugin sees the same trace, with the host's span as parent.
    let response = get_traced(&host, "/nosy/headers", &traceparent()).await;
    let seen = json_body(response).await;
    let given = seen["traceparent"]
        .as_str()
        .expect("a traceparent for the plugin");
    let spans = receiver
        .wait_for_trace(TRACE_ID, |spans| {
            spans.iter().any(|s| s.name == "GET /nosy/headers")
        })
        .await;
    let server = named(&spans.iter().collect::<Vec<_>>(), "GET /nosy/headers");
    assert_eq!(given, format!("00-{TRACE_ID}-{}-01", hex(&server.span_id)));

    // Without one: a new trace, named in the access line.
    let response = host.get("/nosy/headers").await;
    let id = request_id(&response);
    let seen = json_body(response).await;
    let given = seen["traceparent"]
        .as_str()
        .expect("a traceparent for the plugin");
    let access = host.access_line(&id);
    let trace_id = access["span"]["trace_id"]
        .as_str()
        .expect("a trace id")
        .to_owned();
    assert_ne!(trace_id, TRACE_ID);
    assert!(given.contains(&trace_id), "{given} names {trace_id}");
    let spans = receiver
        .wait_for_trace(&trace_id, |spans| {
            spans.iter().any(|s| s.name == "GET /nosy/headers")
        })
        .await;
    let server = named(&spans.iter().collect::<Vec<_>>(), "GET /nosy/headers");
    assert!(server.parent_span_id.is_empty(), "a root span");

    // A caller that does not sample: its decision is followed and passed on, nothing of
    // its trace is exported, and its lines still name the trace.
    const UNSAMPLED: &str = "0af7651916cd43dd8448eb211c80319c";
    let response = get_traced(
        &host,
        "/nosy/headers",
        &format!("00-{UNSAMPLED}-b7ad6b7169203331-00"),
    )
    .await;
    let id = request_id(&response);
    let seen = json_body(response).await;
    let given = seen["traceparent"]
        .as_str()
        .expect("a traceparent for the plugin");
    assert!(
        given.starts_with(&format!("00-{UNSAMPLED}-")) && given.ends_with("-00"),
        "{given}"
    );
    let access = host.access_line(&id);
    assert_eq!(access["span"]["trace_id"], UNSAMPLED);
    // A sampled request after it is exported; by then the unsampled one would have been.
    let response = host.get("/nosy/headers").await;
    let id = request_id(&response);
    let access = host.access_line(&id);
    let last = access["span"]["trace_id"]
        .as_str()
        .expect("a trace id")
        .to_owned();
    receiver
        .wait_for_trace(&last, |spans| !spans.is_empty())
        .await;
    assert!(
        receiver
            .spans()
            .iter()
            .all(|s| hex(&s.trace_id) != UNSAMPLED),
        "an unsampled trace was exported"
    );
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_traced_and_traceparent_passes_through() {
    let plugins = PluginsDir::with(&["nosy"]);
    let host = TestHost::start(&plugins);
    let response = get_traced(&host, "/nosy/headers", &traceparent()).await;
    let id = request_id(&response);
    let seen = json_body(response).await;
    assert_eq!(seen["traceparent"], traceparent().as_str());
    let access = host.access_line(&id);
    assert!(access["span"].get("trace_id").is_none(), "{access}");
}

#[tokio::test]
async fn an_unreachable_collector_is_reported_and_lines_still_name_request_and_trace() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let plugins = PluginsDir::with(&["hello"]);
    let host = TestHost::builder()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{closed}"))
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        // `hello` logs its greeting at debug level.
        .env("RUST_LOG", "info,plinth::guest=debug")
        .start(&plugins);
    for _ in 0..3 {
        assert_eq!(host.get("/hello/otel").await.status(), 200);
    }
    // A line the plugin logs while its call (and the trace's spans) run still names the
    // `request` span, its id and its trace.
    let response = host.get("/hello/lines").await;
    let id = request_id(&response);
    let line = host
        .wait_for_log(|l| l["target"] == "plinth::guest" && l["span"]["request_id"] == id.as_str());
    assert_eq!(line["span"]["name"], "request", "{line}");
    let trace_id = line["span"]["trace_id"].as_str().unwrap_or_default();
    assert!(
        trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{line}"
    );
    let line = host.wait_for_log(|l| {
        l["target"] == "opentelemetry_sdk" && l["name"] == "BatchSpanProcessor.ExportError"
    });
    assert_eq!(line["level"], "ERROR", "{line}");
}

#[test]
fn a_configuration_this_build_cannot_export_is_refused_at_start() {
    let plugins = PluginsDir::with(&["hello"]);
    let (status, output) = TestHost::builder()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .start_expecting_failure(&plugins);
    assert_eq!(status.code(), Some(2), "{output}");
    assert!(output.contains("http/protobuf"), "{output}");
}
