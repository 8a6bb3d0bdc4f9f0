//! The consume loop's per-delivery work: run the handler, then settle the delivery as
//! its outcome says. The ack is the last step; nothing is acked before its outcome is safe.

use super::headers::{self, number, text, with_headers};
use super::publish::PublishChannel;
use crate::config::ConnectionArgs;
use crate::handler::{Handler, Incoming, Outcome};
use crate::metrics::Metrics;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::AMQPValue;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// What a delivery task needs, shared by all of them.
pub struct DeliveryContext {
    pub handler: Arc<Handler>,
    pub publish: PublishChannel,
    pub names: ConnectionArgs,
    pub metrics: Arc<Metrics>,
}

impl DeliveryContext {
    pub async fn process(&self, delivery: Delivery) {
        let started = Instant::now();
        let attempt = headers::attempts(&delivery.properties).saturating_add(1);
        let message_id = delivery.properties.message_id().as_ref().map(|s| s.as_str().to_owned());
        let correlation_id = delivery.properties.correlation_id().as_ref().map(|s| s.as_str().to_owned());
        let span = tracing::info_span!(
            "delivery",
            delivery_tag = delivery.delivery_tag,
            message_id = message_id.as_deref(),
            correlation_id = correlation_id.as_deref(),
            attempt,
            redelivered = delivery.redelivered,
            provision_id = tracing::field::Empty,
        );
        async {
            let incoming = Incoming { body: &delivery.data, attempt, correlation_id: correlation_id.as_deref() };
            let outcome = self.handler.handle(incoming).await;
            let (label, reason) = outcome.labels();
            log_outcome(&outcome);
            if let Err(e) = self.settle(&delivery, &outcome, attempt).await {
                self.metrics.settle_failed();
                // Not acked: RabbitMQ redelivers it, and the cached session makes that cheap.
                tracing::warn!(event = "settle_failed", outcome = label, error = %e);
            }
            self.metrics.observe_delivery(label, reason, started.elapsed());
        }
        .instrument(span)
        .await
    }

    async fn settle(&self, delivery: &Delivery, outcome: &Outcome, attempt: u32) -> Result<(), lapin::Error> {
        let copy = match outcome {
            Outcome::Announced { .. } | Outcome::Skipped(_) => None,
            Outcome::Retry { reason, detail, delay, counts_as_attempt } => {
                let attempts = if *counts_as_attempt { attempt } else { attempt - 1 };
                let mut set = original_route(delivery);
                set.extend([
                    (headers::ATTEMPTS, number(attempts)),
                    (headers::RETRY_REASON, text(reason.as_str())),
                    (headers::RETRY_DETAIL, text(detail)),
                ]);
                let properties =
                    with_headers(&delivery.properties, &set).with_expiration(delay.as_millis().to_string().into());
                Some((self.names.retry_queue.as_str(), properties))
            }
            Outcome::DeadLetter { reason, detail } => {
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                let mut set = original_route(delivery);
                set.extend([
                    (headers::DEAD_LETTER_REASON, text(reason.as_str())),
                    (headers::DEAD_LETTER_DETAIL, text(detail)),
                    (headers::ATTEMPTS, number(attempt)),
                    (headers::DEAD_LETTERED_AT, AMQPValue::LongLongInt(now)),
                ]);
                Some((self.names.dead_letter_queue.as_str(), with_headers(&delivery.properties, &set)))
            }
        };
        if let Some((queue, properties)) = copy {
            // The copy must be the broker's before the original goes: publish, confirm, then ack.
            if let Err(e) = self.publish.publish("", queue, &delivery.data, properties).await {
                tracing::warn!(event = "requeue", queue, error = %e, "could not move the delivery; returning it to the queue");
                delivery.nack(BasicNackOptions { multiple: false, requeue: true }).await?;
                return Ok(());
            }
        }
        delivery.ack(BasicAckOptions { multiple: false }).await?;
        Ok(())
    }
}

/// Where the message first arrived, recorded once: a message back from the retry queue
/// arrives through the default exchange and already carries it. Replays use it.
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
        Outcome::Retry { reason, detail, delay, .. } => {
            tracing::warn!(event = "retry_scheduled", reason = reason.as_str(), %detail, delay_ms = delay.as_millis() as u64)
        }
        Outcome::DeadLetter { reason, detail } => {
            tracing::warn!(event = "dead_lettered", reason = reason.as_str(), %detail)
        }
    }
}
