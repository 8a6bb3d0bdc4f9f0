//! The consume loop's per-delivery work: run the handler, then settle the delivery as
//! its outcome says. The ack is the last step; nothing is acked before its outcome is safe.

use super::dead_letter;
use super::headers::{self, number, text, with_headers};
use super::settle::{Moved, SettleError, Settlement, Settler};
use super::topology::Names;
use super::trace_context;
use crate::failure::Reason;
use crate::metrics::Metrics;
use crate::provision::decode::Decoded;
use crate::provision::handler::{Handler, Incoming};
use crate::provision::outcome::Outcome;
use crate::seal::Sealer;
use crate::store::gate::RedisGate;
use futures_util::FutureExt as _;
use lapin::message::Delivery;
use lapin::types::AMQPValue;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use zeroize::{Zeroize as _, Zeroizing};

/// What a delivery task needs, shared by all of them.
pub(crate) struct DeliveryContext {
    handler: Handler,
    names: Names,
    metrics: Arc<Metrics>,
    dead_letters: DeadLetterPolicy,
    gate: Arc<RedisGate>,
}

/// Returns after which the worker dead-letters a message itself, before any handling:
/// half of RabbitMQ's own delivery limit, whose dead letters keep the body as it came, so
/// only the worker's (with the credential protected) are ever reached in practice.
const REDELIVERY_LIMIT: u64 = super::topology::DELIVERY_LIMIT as u64 / 2;

/// A move the broker refused (a queue electing a new leader nacks publishes) is tried
/// again on the same channels after this pause, doubling, [`MOVE_TRIES`] times in all,
/// holding the delivery: going back to the queue instead counts towards the delivery
/// limits on every return. Still refused after that, the channels are suspect (after a
/// cluster node died, RabbitMQ 3.10 went on refusing every copy on the channels that had
/// published to the old leader, minutes after the queues had a new one, while a fresh
/// connection's publishes went through): the consume channel is closed, which returns its
/// deliveries to the queue and makes the supervisor connect afresh.
const MOVE_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_secs(2);
const MOVE_TRIES: u32 = 4;

/// How dead letters keep their credential (see [`dead_letter`]).
#[derive(Debug, Clone)]
pub(crate) struct DeadLetterPolicy {
    /// Seals the credential when set; without it the credential is removed.
    pub(crate) sealer: Option<Arc<Sealer>>,
}

impl DeliveryContext {
    pub(crate) fn new(
        handler: Handler,
        names: Names,
        metrics: Arc<Metrics>,
        dead_letters: DeadLetterPolicy,
        gate: Arc<RedisGate>,
    ) -> Arc<Self> {
        Arc::new(Self { handler, names, metrics, dead_letters, gate })
    }

    pub(crate) fn gate(&self) -> &Arc<RedisGate> {
        &self.gate
    }

    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Handles one delivery and settles it through `settler`, the one of the channel it
    /// arrived on.
    pub(crate) async fn process(&self, mut delivery: Delivery, settler: &Settler) {
        // Counted while in flight; a guard, so a panicking delivery still leaves the gauge.
        let _in_flight = InFlight::enter(&self.metrics);
        let started = Instant::now();
        // Before anything reads a header, and so no copy carries a forged one onward.
        let vouched = headers::vouched(
            &delivery.properties,
            delivery.exchange.as_str(),
            delivery.redelivered,
            &self.names.retry_queue,
        );
        delivery.properties = vouched.properties;
        let attempt = headers::attempts(&delivery.properties).saturating_add(1);
        let message_id = delivery.properties.message_id().as_ref().map(|s| s.as_str().to_owned());
        let correlation_id = delivery.properties.correlation_id().as_ref().map(|s| s.as_str().to_owned());
        // The consumer span (OpenTelemetry's messaging conventions), the publisher's
        // context its parent; its fields are also every log line's context.
        let span = tracing::info_span!(
            "delivery",
            otel.name = format!("process {}", self.names.input_queue),
            otel.kind = "consumer",
            otel.status_code = tracing::field::Empty,
            messaging.system = "rabbitmq",
            messaging.operation.type = "process",
            messaging.destination.name = delivery.exchange.as_str(),
            messaging.rabbitmq.destination.routing_key = delivery.routing_key.as_str(),
            messaging.message.id = message_id.as_deref(),
            messaging.message.conversation_id = correlation_id.as_deref(),
            delivery_tag = delivery.delivery_tag,
            message_id = message_id.as_deref(),
            correlation_id = correlation_id.as_deref(),
            attempt,
            redelivered = delivery.redelivered,
            provision_id = tracing::field::Empty,
            outcome = tracing::field::Empty,
            reason = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        if let Err(e) = span.set_parent(trace_context::extract(&delivery.properties)) {
            tracing::debug!(event = "trace_parent_not_set", error = %e);
        }
        crate::telemetry::trace::record_ids(&span);
        async {
            if !vouched.dropped.is_empty() {
                // Names only: a forged header's value is the publisher's text.
                tracing::warn!(event = "untrusted_headers_dropped", headers = ?vouched.dropped);
            }
            let routing_key = headers::get_str(&delivery.properties, headers::ORIGINAL_ROUTING_KEY)
                .unwrap_or_else(|| delivery.routing_key.as_str().to_owned());
            // The one reading of the body: the handler and the dead-letter copy use it.
            let decoded = self.handler.read(&delivery.data, &routing_key);
            // Present only on a redelivery (see `headers::vouched`).
            let returned = headers::delivery_count(&delivery.properties);
            let outcome = if returned >= REDELIVERY_LIMIT {
                Outcome::DeadLetter {
                    reason: Reason::RedeliveredTooOften,
                    detail: format!(
                        "returned to the queue unsettled {returned} times: handling it kills or disconnects the worker; see the worker's logs at those times"
                    ),
                }
            } else {
                let incoming = Incoming { attempt, correlation_id: correlation_id.as_deref() };
                let handled = AssertUnwindSafe(self.handle_holding_for_redis(&decoded, incoming)).catch_unwind().await;
                let Ok(handled) = handled else {
                    // A bug met this delivery: back to the queue now, not unacked until
                    // RabbitMQ's consumer timeout; returned too often, it is dead-lettered.
                    tracing::error!(event = "delivery_panicked");
                    self.settle(settler, delivery.delivery_tag, Settlement::Return, "returned").await;
                    self.metrics.observe_delivery("returned", "panicked", started.elapsed());
                    return;
                };
                let Some(outcome) = handled else {
                    // Shutdown while held: left unsettled, it returns to the queue with
                    // no attempt spent.
                    tracing::info!(event = "released_for_redis");
                    return;
                };
                outcome
            };
            let (label, reason) = outcome.labels();
            let span = tracing::Span::current();
            span.record("outcome", label).record("reason", reason);
            if let Outcome::DeadLetter { .. } = outcome {
                span.record("otel.status_code", "ERROR");
            }
            log_outcome(&outcome);
            let delivery_tag = delivery.delivery_tag;
            let settlement = self.settlement(delivery, &decoded, &outcome, attempt);
            self.settle(settler, delivery_tag, settlement, label).await;
            self.metrics.observe_delivery(label, reason, started.elapsed());
        }
        .instrument(span)
        .await;
    }

    /// Settles the delivery. A move the broker refuses leaves the delivery unacked on a
    /// live channel, where nothing would ever return it: the move is tried again after a
    /// pause, and if the broker keeps refusing, the consume channel is closed (see
    /// [`MOVE_TRIES`]). A settlement that failed for any other reason (the channel is gone)
    /// is the broker's to return.
    async fn settle(&self, settler: &Settler, delivery_tag: u64, settlement: Settlement, label: &str) {
        let mut pause = MOVE_RETRY_PAUSE;
        let mut settlement = settlement;
        for tried in 1.. {
            let again = settlement.try_clone();
            let Err(e) = settler.settle(delivery_tag, settlement).await else { return };
            self.metrics.settle_failed();
            let refused = matches!(e, SettleError::Nacked | SettleError::Unroutable(_));
            let Some(again) = again.filter(|_| refused) else {
                tracing::warn!(event = "settle_failed", outcome = label, error = %e);
                return;
            };
            if tried >= MOVE_TRIES {
                tracing::warn!(event = "settle_failed", outcome = label, error = %e, action = "reconnecting");
                settler.reconnect("the broker keeps refusing moves on this channel").await;
                return;
            }
            tracing::warn!(event = "settle_failed", outcome = label, error = %e, retry_in_ms = pause.as_millis() as u64);
            tokio::time::sleep(pause).await;
            settlement = again;
            pause *= 2;
        }
    }

    /// Handles the delivery; while Redis is away it is held and handled again once Redis
    /// answers, instead of going round the retry queue (see [`RedisGate`]). `None`:
    /// the worker shut down while it was held.
    async fn handle_holding_for_redis(&self, decoded: &Decoded, incoming: Incoming<'_>) -> Option<Outcome> {
        loop {
            let outcome = self.handler.handle(decoded, incoming).await.redacted();
            if !matches!(outcome, Outcome::Retry { reason: Reason::RedisUnavailable, .. }) {
                return Some(outcome);
            }
            tracing::warn!(event = "held_for_redis");
            self.gate.report_down();
            if !self.gate.wait_up().await {
                return None;
            }
        }
    }

    /// Takes the delivery: a moved copy carries its body rather than a copy of it.
    fn settlement(&self, mut delivery: Delivery, decoded: &Decoded, outcome: &Outcome, attempt: u32) -> Settlement {
        let mut body = None;
        let (queue, properties) = match outcome {
            Outcome::Announced { .. }
            | Outcome::Skipped(_)
            | Outcome::Closed { .. }
            | Outcome::Renewed { .. }
            | Outcome::RenewalScheduled { .. } => {
                // Done with: the body (it may hold the credential) is wiped, not just freed.
                delivery.data.zeroize();
                return Settlement::Ack;
            }
            Outcome::Retry { reason, detail, delay, counts_as_attempt } => {
                let attempts = if *counts_as_attempt { attempt } else { attempt - 1 };
                let mut set = original_route(&delivery);
                set.extend(trace_context::of(&tracing::Span::current()));
                set.extend([
                    (headers::ATTEMPTS, number(attempts)),
                    (headers::RETRY_REASON, text(reason.as_str())),
                    (headers::RETRY_DETAIL, text(detail)),
                ]);
                let properties =
                    with_headers(&delivery.properties, &set).with_expiration(delay.as_millis().to_string().into());
                (&self.names.retry_queue, properties)
            }
            Outcome::DeadLetter { reason, detail } => {
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                let message_id = delivery.properties.message_id().as_ref().map(|m| m.as_str().to_owned());
                let (kept, credential) = dead_letter::protect(
                    std::mem::take(&mut delivery.data),
                    decoded,
                    self.dead_letters.sealer.as_deref(),
                    message_id.as_deref(),
                );
                body = Some(kept);
                let mut set = original_route(&delivery);
                set.extend(trace_context::of(&tracing::Span::current()));
                set.extend([
                    (headers::CREDENTIAL, text(credential.as_str())),
                    (headers::DEAD_LETTER_REASON, text(reason.as_str())),
                    (headers::DEAD_LETTER_DETAIL, text(detail)),
                    (headers::ATTEMPTS, number(attempt)),
                    (headers::DEAD_LETTERED_AT, AMQPValue::LongLongInt(now)),
                ]);
                (&self.names.dead_letter_queue, with_headers(&delivery.properties, &set))
            }
        };
        let body = Zeroizing::new(body.unwrap_or(delivery.data));
        Settlement::Move(Box::new(Moved { queue: queue.clone(), body, properties }))
    }
}

/// Holds the in-flight gauge up for one delivery.
struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn enter(metrics: &'a Metrics) -> Self {
        metrics.in_flight().inc();
        Self(metrics)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight().dec();
    }
}

/// Where the message first arrived, recorded once: a message back from the retry queue
/// arrives through the default exchange and already carries it (a publisher's own is
/// dropped on arrival, `headers::vouched`). Replays use it.
fn original_route(delivery: &Delivery) -> Vec<(&'static str, AMQPValue)> {
    if headers::get_str(&delivery.properties, headers::ORIGINAL_EXCHANGE).is_some() {
        return Vec::new();
    }
    vec![
        (headers::ORIGINAL_EXCHANGE, text(delivery.exchange.as_str())),
        (headers::ORIGINAL_ROUTING_KEY, text(delivery.routing_key.as_str())),
    ]
}

fn log_outcome(outcome: &Outcome) {
    match outcome {
        Outcome::Announced { event, reused } => tracing::info!(
            event = "session_announced",
            event_id = %event.event_id,
            user_id = event.user_id,
            session_id = event.session_id,
            reused,
        ),
        Outcome::Skipped(reason) => tracing::info!(event = "skipped", reason = reason.as_str()),
        Outcome::Renewed { event } => tracing::info!(
            event = "session_renewed",
            event_id = %event.event_id,
            user_id = event.user_id,
            session_id = event.session_id,
        ),
        Outcome::RenewalScheduled { reason } => {
            tracing::warn!(event = "renewal_scheduled", reason = reason.as_str());
        }
        Outcome::Closed { event: Some(event), .. } => tracing::info!(
            event = "session_closed",
            event_id = %event.event_id,
            user_id = event.user_id,
            session_id = event.session_id,
            reason = event.reason.as_str(),
        ),
        Outcome::Closed { event: None, reason } => {
            tracing::info!(event = "closed_without_session", reason = reason.as_str());
        }
        Outcome::Retry { reason, detail, delay, .. } => {
            tracing::warn!(event = "retry_scheduled", reason = reason.as_str(), %detail, delay_ms = delay.as_millis() as u64);
        }
        Outcome::DeadLetter { reason, detail } => {
            tracing::warn!(event = "dead_lettered", reason = reason.as_str(), %detail);
        }
    }
}
