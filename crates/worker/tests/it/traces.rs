//! Traces across the queue, received by an OTLP receiver of the test's own (OTLP/HTTP,
//! protobuf, decoded with `opentelemetry-proto`): the real binary exports them. Inputs
//! with and without `traceparent` and a malformed one; each trace must be one piece from
//! the input to the event (or the dead letter), and no secret may be in any export.

use crate::helpers::{observe_output, Binary};
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use bunq_session_worker::store::{Keys, Store};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use secrecy::ExposeSecret;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use test_support::{
    connect_redis, publish_input, random_id, random_token, ready_body, relaxed_fake, TestNames, WorkerEnv, REDIS_URL,
};

const BIN: &str = env!("CARGO_BIN_EXE_bunq-session-worker");

/// What the receiver got: every export request's bytes as they came, and their spans.
#[derive(Default)]
struct Received {
    raw: Vec<Vec<u8>>,
    spans: Vec<Span>,
    services: HashSet<String>,
}

impl Received {
    /// `raw`: the request's bytes as they came over the wire.
    fn take(&mut self, request: ExportTraceServiceRequest, raw: Vec<u8>) {
        self.raw.push(raw);
        for resource in request.resource_spans {
            for attribute in resource.resource.iter().flat_map(|r| &r.attributes) {
                if attribute.key == "service.name" {
                    if let Some(Value::StringValue(name)) = attribute.value.as_ref().and_then(|v| v.value.clone()) {
                        self.services.insert(name);
                    }
                }
            }
            self.spans.extend(resource.scope_spans.into_iter().flat_map(|s| s.spans));
        }
    }
}

type Shared = Arc<Mutex<Received>>;

/// OTLP/HTTP with protobuf: `POST /v1/traces`.
async fn export(State(received): State<Shared>, body: Bytes) -> impl axum::response::IntoResponse {
    let request = ExportTraceServiceRequest::decode(body.as_ref()).expect("OTLP protobuf");
    received.lock().unwrap().take(request, body.to_vec());
    ([("content-type", "application/x-protobuf")], ExportTraceServiceResponse::default().encode_to_vec())
}

/// OTLP/gRPC: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.
struct Grpc(Shared);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        // tonic hands over the decoded message; its encoding is what the worker sent.
        let request = request.into_inner();
        let raw = request.encode_to_vec();
        self.0.lock().unwrap().take(request, raw);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A receiver for `protocol`, its endpoint, and what it received.
async fn receiver(protocol: &str) -> (String, Shared, tokio::task::JoinHandle<()>) {
    let received = Shared::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let task = match protocol {
        "grpc" => {
            let service = TraceServiceServer::new(Grpc(received.clone()));
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            tokio::spawn(async move {
                tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await.unwrap();
            })
        }
        _ => {
            let app = axum::Router::new().route("/v1/traces", post(export)).with_state(received.clone());
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() })
        }
    };
    (endpoint, received, task)
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span.attributes.iter().find(|a| a.key == key)?.value.as_ref()?.value.as_ref()?;
    Some(match value {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    })
}

fn traceparent(trace_id: &str, span_id: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert("traceparent".into(), AMQPValue::LongString(format!("00-{trace_id}-{span_id}-01").into()));
    BasicProperties::default().with_headers(headers)
}

/// `(trace id, parent span id)` of a message's `traceparent` header.
fn parent_of(properties: &BasicProperties) -> Option<(String, String)> {
    let value = properties.headers().as_ref()?.inner().get("traceparent")?.clone();
    let AMQPValue::LongString(value) = value else { return None };
    let text = String::from_utf8(value.as_bytes().to_vec()).ok()?;
    let parts: Vec<&str> = text.split('-').collect();
    (parts.len() == 4 && parts[0] == "00").then(|| (parts[1].to_owned(), parts[2].to_owned()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The spans of one trace, by span id, each checked to hang from `root_parent` (the
/// publisher's span, or none) through spans of the same trace: one piece.
fn one_piece<'a>(spans: &'a [Span], trace_id: &str, root_parent: Option<&str>) -> HashMap<String, &'a Span> {
    let of_trace: HashMap<String, &Span> =
        spans.iter().filter(|s| hex(&s.trace_id) == trace_id).map(|s| (hex(&s.span_id), s)).collect();
    assert!(!of_trace.is_empty(), "no span of trace {trace_id}");
    for (id, span) in &of_trace {
        let parent = hex(&span.parent_span_id);
        let hangs = of_trace.contains_key(&parent) || Some(parent.as_str()) == root_parent.or(Some(""));
        assert!(hangs, "span {id} ({}) hangs from {parent:?}, outside trace {trace_id}", span.name);
    }
    of_trace
}

/// One run of the real worker exporting with `protocol`: three inputs (traced, untraced,
/// malformed and traced), their events and dead letter, and what the receiver got.
struct Run {
    names: TestNames,
    received: Received,
    logs: String,
    /// By provision id: the event and its properties.
    events: HashMap<u64, (serde_json::Value, BasicProperties)>,
    dead_letter: BasicProperties,
    /// Every token the run put in or bunq gave out.
    secrets: Vec<String>,
    traced: (u64, String, String),
    untraced_id: u64,
    malformed: (String, String),
}

async fn run(protocol: &str) -> Run {
    let (endpoint, received, receiver) = receiver(protocol).await;
    let fake =
        fake_bunq::spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), relaxed_fake()).await.unwrap();
    let names = TestNames::new("it");
    let env = WorkerEnv::fast(&fake.base_url(), &names);
    let mut worker = Binary::run(env.vars().chain([
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        ("OTEL_SERVICE_NAME", "bsw-trace-test"),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ]));
    let (_connection, channel, capture, leftovers) = observe_output(&names).await;

    // The publisher's spans, chosen here.
    let (traced_trace, traced_parent) = (hex(&rand::random::<[u8; 16]>()), hex(&rand::random::<[u8; 8]>()));
    let (bad_trace, bad_parent) = (hex(&rand::random::<[u8; 16]>()), hex(&rand::random::<[u8; 8]>()));
    let (traced_id, untraced_id) = (random_id(), random_id());
    let tokens = [random_token(), random_token(), random_token()];
    let traced = traceparent(&traced_trace, &traced_parent);
    publish_input(&channel, &names.topology, &ready_body(traced_id, &tokens[0]), traced).await.unwrap();
    publish_input(&channel, &names.topology, &ready_body(untraced_id, &tokens[1]), BasicProperties::default())
        .await
        .unwrap();
    // Malformed (the id a string) and holding a credential.
    let malformed = format!(
        r#"{{"PartnerUserProvision":{{"id":"seven","status":"CREATED","credential":{{"token_value":"{}"}}}}}}"#,
        tokens[2]
    );
    let bad = traceparent(&bad_trace, &bad_parent);
    publish_input(&channel, &names.topology, malformed.as_bytes(), bad).await.unwrap();

    // Two events and one dead letter, each with the context it was published in.
    let mut events = HashMap::new();
    let mut dead_letter = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while events.len() < 2 || dead_letter.is_none() {
        let waited = (events.len(), dead_letter.is_some());
        assert!(tokio::time::Instant::now() < deadline, "(events, dead letter) so far: {waited:?}");
        worker.assert_running();
        if let Some(m) = channel.basic_get(capture.as_str().into(), Default::default()).await.unwrap() {
            m.ack(Default::default()).await.unwrap();
            let event: serde_json::Value = serde_json::from_slice(&m.delivery.data).unwrap();
            events.insert(event["provision_id"].as_u64().unwrap(), (event, m.delivery.properties.clone()));
            continue;
        }
        let queue = names.topology.dead_letter_queue.as_str();
        if let Some(m) = channel.basic_get(queue.into(), Default::default()).await.unwrap() {
            m.ack(Default::default()).await.unwrap();
            dead_letter = Some(m.delivery.properties.clone());
            continue;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let store = Store::new(connect_redis(REDIS_URL).unwrap(), Keys::new(&names.key_prefix), None);
    let mut secrets: Vec<String> = tokens.to_vec();
    for (event, _) in events.values() {
        let session = store.read_session(event["user_id"].as_u64().unwrap()).await.unwrap().expect("cached session");
        secrets.push(session.session_token.expose_secret().to_owned());
        secrets.push(session.installation_token.expose_secret().to_owned());
    }

    // SIGTERM: the worker exports what it still holds before it exits.
    let logs = worker.terminate().await;
    let received = std::mem::take(&mut *received.lock().unwrap());
    receiver.abort();
    leftovers.clean().await.unwrap();
    fake.shutdown().await;
    Run {
        names,
        received,
        logs,
        events,
        dead_letter: dead_letter.unwrap(),
        secrets,
        traced: (traced_id, traced_trace, traced_parent),
        untraced_id,
        malformed: (bad_trace, bad_parent),
    }
}

/// The traced input: consumer span parented on the publisher's, the three handshake
/// calls below it, the event carrying the producer span's context; one piece.
fn check_traced_input(run: &Run) {
    let spans = &run.received.spans;
    let (traced_id, traced_trace, traced_parent) = &run.traced;
    assert!(run.received.services.contains("bsw-trace-test"), "OTEL_SERVICE_NAME: {:?}", run.received.services);
    let (event, properties) = &run.events[traced_id];
    let (trace, producer) = parent_of(properties).expect("the event carries traceparent");
    assert_eq!(&trace, traced_trace, "the event is not in the input's trace");
    let trace_spans = one_piece(spans, traced_trace, Some(traced_parent));
    let consumer: Vec<_> = trace_spans.values().filter(|s| s.kind == SpanKind::Consumer as i32).collect();
    assert_eq!(consumer.len(), 1, "one consumer span for one delivery");
    assert_eq!(&hex(&consumer[0].parent_span_id), traced_parent);
    assert_eq!(consumer[0].name, format!("process {}", run.names.topology.input_queue));
    assert_eq!(attribute(consumer[0], "messaging.system").as_deref(), Some("rabbitmq"));
    assert_eq!(attribute(consumer[0], "outcome").as_deref(), Some("announced"));
    let calls: Vec<_> = trace_spans.values().filter(|s| s.kind == SpanKind::Client as i32).collect();
    let names_of_calls: HashSet<_> = calls.iter().map(|s| s.name.as_str()).collect();
    for call in ["POST /installation", "POST /device-server", "POST /session-server"] {
        assert!(names_of_calls.contains(call), "no client span {call}: {names_of_calls:?}");
    }
    for call in &calls {
        assert_eq!(attribute(call, "http.response.status_code").as_deref(), Some("200"), "{}", call.name);
        assert_eq!(attribute(call, "server.address").as_deref(), Some("127.0.0.1"));
        assert!(attribute(call, "bunq.response_id").is_some_and(|id| id != "none"), "{}", call.name);
    }
    let producer_span = trace_spans.get(&producer).expect("the event's parent is an exported span");
    assert_eq!(producer_span.kind, SpanKind::Producer as i32);
    assert_eq!(attribute(producer_span, "messaging.message.id").as_deref(), event["event_id"].as_str());
}

/// The span tree under `parent` as text, with each span's kind and duration (printed with
/// `--nocapture`; the README's example trace is one).
fn render(spans: &HashMap<String, &Span>, parent: &str, depth: usize, out: &mut String) {
    let mut children: Vec<_> = spans.values().filter(|s| hex(&s.parent_span_id) == parent).collect();
    children.sort_by_key(|s| s.start_time_unix_nano);
    for span in children {
        let kind = SpanKind::try_from(span.kind).map_or("?".into(), |k| k.as_str_name().to_lowercase());
        let ms = span.end_time_unix_nano.saturating_sub(span.start_time_unix_nano) as f64 / 1e6;
        out.push_str(&format!(
            "{:indent$}{} [{}] {ms:.1} ms\n",
            "",
            span.name,
            kind.trim_start_matches("span_kind_"),
            indent = depth * 2
        ));
        render(spans, &hex(&span.span_id), depth + 1, out);
    }
}

#[tokio::test]
async fn a_trace_is_one_piece_from_input_to_event_and_to_dead_letter_without_a_secret() {
    let run = run("http/protobuf").await;
    let spans = &run.received.spans;
    check_traced_input(&run);
    let mut tree = String::new();
    render(&one_piece(spans, &run.traced.1, Some(&run.traced.2)), &run.traced.2, 0, &mut tree);
    eprintln!("the traced input's trace:\n{tree}");
    let traced_trace = &run.traced.1;
    assert!(
        run.logs
            .lines()
            .any(|l| l.contains(&format!(r#""trace_id":"{traced_trace}""#)) && l.contains("session_announced")),
        "no JSON log line of the delivery carries its trace_id"
    );

    // Untraced input: a trace of its own, rooted at the consumer span.
    let (trace, producer) = parent_of(&run.events[&run.untraced_id].1).expect("the event carries traceparent");
    assert_ne!(&trace, traced_trace);
    let trace_spans = one_piece(spans, &trace, None);
    let roots: Vec<_> = trace_spans.values().filter(|s| s.parent_span_id.is_empty()).collect();
    assert_eq!(roots.len(), 1, "one root");
    assert_eq!(roots[0].kind, SpanKind::Consumer as i32);
    assert!(trace_spans.contains_key(&producer));

    // Malformed input: its dead letter continues its trace from the consumer span.
    let (bad_trace, bad_parent) = &run.malformed;
    let (trace, parent) = parent_of(&run.dead_letter).expect("the dead letter carries traceparent");
    assert_eq!(&trace, bad_trace);
    let trace_spans = one_piece(spans, bad_trace, Some(bad_parent));
    let consumer = trace_spans.get(&parent).expect("the dead letter's parent is the consumer span");
    assert_eq!(consumer.kind, SpanKind::Consumer as i32);
    assert_eq!(attribute(consumer, "outcome").as_deref(), Some("dead_lettered"));
    assert_eq!(attribute(consumer, "reason").as_deref(), Some("malformed"));
    assert_eq!(consumer.status.as_ref().map(|s| s.code), Some(2), "a dead letter is an error");

    // No secret in any export as it went over the wire (names, attributes, span events),
    // nor in the logs.
    for (i, secret) in run.secrets.iter().enumerate() {
        let exported = run.received.raw.iter().any(|raw| raw.windows(secret.len()).any(|w| w == secret.as_bytes()));
        assert!(!exported, "secret {i} (tokens first, then session and installation tokens) exported");
        assert!(!run.logs.contains(secret.as_str()), "secret {i} logged");
    }
}

#[tokio::test]
async fn grpc_exports_the_same_trace() {
    let run = run("grpc").await;
    check_traced_input(&run);
    for secret in &run.secrets {
        assert!(!run.received.raw.iter().any(|raw| raw.windows(secret.len()).any(|w| w == secret.as_bytes())));
    }
}

#[tokio::test]
async fn a_tracing_setting_it_cannot_use_stops_start_up_naming_it() {
    for (variable, value) in [("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"), ("OTEL_TRACES_SAMPLER", "sometimes")] {
        let output = tokio::process::Command::new(BIN)
            .arg("check")
            .env_clear()
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
            .env(variable, value)
            .output()
            .await
            .unwrap();
        assert!(!output.status.success(), "{variable}={value}: started anyway");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(variable), "{variable} not named in: {stderr}");
    }
}
