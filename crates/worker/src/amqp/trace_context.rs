//! W3C trace context (`traceparent`, `tracestate`) in AMQP headers: read from a delivery,
//! written on what the worker publishes, following OpenTelemetry's messaging conventions.
//! With traces off the current span has no context, so nothing is written and a copy
//! keeps the headers it came with.

use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// The two headers of W3C trace context.
pub(crate) const TRACEPARENT: &str = "traceparent";
pub(crate) const TRACESTATE: &str = "tracestate";

struct Headers<'a>(Option<&'a FieldTable>);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = self.0?.inner().iter().find(|(name, _)| name.as_str().eq_ignore_ascii_case(key))?.1;
        match value {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0.map(|t| t.inner().keys().map(|k| k.as_str()).collect()).unwrap_or_default()
    }
}

/// The publisher's context, to parent the consumer span on (empty without one, or with
/// a malformed `traceparent`, which the propagator refuses).
pub(crate) fn extract(properties: &BasicProperties) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&Headers(properties.headers().as_ref()))
}

#[derive(Default)]
struct Collected(Vec<(&'static str, String)>);

impl Injector for Collected {
    fn set(&mut self, key: &str, value: String) {
        let name = match key {
            TRACEPARENT => TRACEPARENT,
            TRACESTATE => TRACESTATE,
            _ => return,
        };
        self.0.push((name, value));
    }
}

/// The headers that carry `span`'s context onward: empty when traces are off.
pub(crate) fn of(span: &tracing::Span) -> Vec<(&'static str, AMQPValue)> {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let mut collected = Collected::default();
    TraceContextPropagator::new().inject_context(&span.context(), &mut collected);
    collected.0.into_iter().map(|(name, value)| (name, AMQPValue::LongString(LongString::from(value)))).collect()
}

/// `properties` with `span`'s context written over any the message came with.
pub(crate) fn inject(properties: BasicProperties, span: &tracing::Span) -> BasicProperties {
    let set = of(span);
    if set.is_empty() {
        return properties;
    }
    let mut headers = properties.headers().clone().unwrap_or_default();
    for (name, value) in set {
        headers.insert(name.into(), value);
    }
    properties.with_headers(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt as _;

    fn with_header(name: &str, value: AMQPValue) -> BasicProperties {
        let mut table = FieldTable::default();
        table.insert(name.into(), value);
        BasicProperties::default().with_headers(table)
    }

    #[test]
    fn reads_a_traceparent_as_publishers_write_it() {
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        for value in [AMQPValue::LongString(traceparent.into()), AMQPValue::ShortString(traceparent.into())] {
            let context = extract(&with_header("traceparent", value));
            let span = context.span();
            let ids = span.span_context();
            assert!(ids.is_remote());
            assert_eq!(ids.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(ids.span_id().to_string(), "00f067aa0ba902b7");
        }
    }

    #[test]
    fn a_malformed_or_missing_traceparent_gives_no_parent() {
        for properties in [
            BasicProperties::default(),
            with_header("traceparent", AMQPValue::LongString("00-zz-00f067aa0ba902b7-01".into())),
            with_header("traceparent", AMQPValue::LongLongInt(7)),
        ] {
            assert!(!extract(&properties).span().span_context().is_valid());
        }
    }

    #[test]
    fn with_traces_off_nothing_is_written() {
        let span = tracing::info_span!("no subscriber");
        let properties = with_header("traceparent", AMQPValue::LongString("kept".into()));
        assert!(of(&span).is_empty());
        assert_eq!(inject(properties.clone(), &span), properties, "a copy keeps what it came with");
    }
}
