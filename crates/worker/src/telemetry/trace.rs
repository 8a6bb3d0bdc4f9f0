//! Traces: OpenTelemetry spans exported with OTLP when the standard variables ask for it,
//! and nothing at all otherwise (no layer, no exporter, no thread).
//!
//! On when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set,
//! unless `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`. The SDK reads the rest
//! itself: the protocol (`OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`, `http/protobuf` or
//! `grpc`), headers, timeout, `OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_BSP_*`,
//! `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`. What it would ignore with a warning
//! (an unknown sampler, `http/json`, which this build does not carry) stops start-up
//! here instead, naming the variable.
//!
//! Spans carry only what their names and the OpenTelemetry conventions say (ids, routes,
//! statuses); log lines inside them become span events, and logs never hold a secret.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

/// What `run --help` says of traces: the SDK's variables are not flags.
pub const HELP: &str = "Traces (OpenTelemetry, off unless an endpoint is set; read by the SDK, no flags):
  OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT  where to export (OTLP)
  OTEL_EXPORTER_OTLP_PROTOCOL   http/protobuf (default) or grpc
  OTEL_SERVICE_NAME             default bunq-session-worker
  OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG, OTEL_RESOURCE_ATTRIBUTES, OTEL_BSP_*,
  OTEL_EXPORTER_OTLP_HEADERS, OTEL_EXPORTER_OTLP_TIMEOUT, OTEL_SDK_DISABLED";

/// A tracing setting the worker cannot use.
#[derive(Debug, thiserror::Error)]
pub enum TraceSettingError {
    #[error("{name}={value:?} is not supported: use {supported}")]
    Unsupported { name: &'static str, value: String, supported: &'static str },
    #[error("cannot build the OTLP exporter (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL): {0}")]
    Exporter(String),
}

const PROTOCOLS: [&str; 2] = ["http/protobuf", "grpc"];
const SAMPLERS: [&str; 6] = [
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
];

/// Whether the environment asks for traces, after checking what it asks is possible.
/// `var` reads one variable (the process environment in production).
pub(crate) fn wanted(var: impl Fn(&str) -> Option<String>) -> Result<bool, TraceSettingError> {
    let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(false);
    }
    match set("OTEL_TRACES_EXPORTER").map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("otlp") => {}
        Some("none") => return Ok(false),
        Some(other) => {
            return Err(TraceSettingError::Unsupported {
                name: "OTEL_TRACES_EXPORTER",
                value: other.to_owned(),
                supported: "otlp or none",
            })
        }
    }
    for name in ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"] {
        if let Some(value) = set(name).filter(|v| !PROTOCOLS.contains(&v.trim().to_ascii_lowercase().as_str())) {
            return Err(TraceSettingError::Unsupported { name, value, supported: "http/protobuf or grpc" });
        }
    }
    if let Some(value) = set("OTEL_TRACES_SAMPLER").filter(|v| !SAMPLERS.contains(&v.trim())) {
        return Err(TraceSettingError::Unsupported {
            name: "OTEL_TRACES_SAMPLER",
            value,
            supported: "always_on, always_off, traceidratio or one of them parentbased_",
        });
    }
    Ok(set("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some())
}

/// The exporting half of tracing: flushed and stopped by [`Tracing::shutdown`].
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// Builds the exporter and the provider; must run inside the Tokio runtime (the gRPC
    /// transport spawns its connection there).
    pub(crate) fn start() -> Result<Self, TraceSettingError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .build()
            .map_err(|e| TraceSettingError::Exporter(e.to_string()))?;
        let mut resource = Resource::builder()
            .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
        // OTEL_SERVICE_NAME (read by the default detectors) wins over the worker's name.
        if std::env::var_os("OTEL_SERVICE_NAME").is_none_or(|v| v.is_empty()) {
            resource = resource.with_service_name("bunq-session-worker");
        }
        let provider =
            SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build();
        Ok(Self { provider })
    }

    pub(crate) fn tracer(&self) -> opentelemetry_sdk::trace::SdkTracer {
        self.provider.tracer("bunq-session-worker")
    }

    /// Exports what is still buffered and stops the exporter's thread.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(event = "trace_export_shutdown_failed", error = %e);
        }
    }
}

/// Writes the span's `trace_id` and `span_id` fields (declared empty where the span is
/// made), so JSON log lines inside it carry them. Nothing when traces are off.
pub(crate) fn record_ids(span: &tracing::Span) {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let context = span.context();
    let ids = context.span().span_context().clone();
    if ids.is_valid() {
        span.record("trace_id", tracing::field::display(ids.trace_id()));
        span.record("span_id", tracing::field::display(ids.span_id()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn on_only_with_an_endpoint_and_not_disabled() {
        assert!(!wanted(env(&[])).unwrap(), "off and free without an endpoint");
        assert!(wanted(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")])).unwrap());
        assert!(wanted(env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/v1/traces")])).unwrap());
        assert!(
            !wanted(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_SDK_DISABLED", "TRUE")])).unwrap()
        );
        assert!(!wanted(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_TRACES_EXPORTER", "none")]))
            .unwrap());
    }

    #[test]
    fn what_the_sdk_would_ignore_stops_start_up_naming_the_variable() {
        for (name, value) in [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "thrift"),
            ("OTEL_TRACES_SAMPLER", "jaeger_remote"),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
        ] {
            let e = wanted(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), (name, value)])).unwrap_err();
            assert!(e.to_string().starts_with(&format!("{name}=")), "{e}");
        }
        assert!(
            wanted(env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"), ("OTEL_TRACES_SAMPLER", "traceidratio")])).is_ok()
        );
    }
}
