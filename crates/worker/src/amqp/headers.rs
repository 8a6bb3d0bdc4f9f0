//! Reading and writing the headers the worker owns on retried and dead-lettered messages.

use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;

pub(crate) const ATTEMPTS: &str = "x-attempts";
pub const DEAD_LETTER_REASON: &str = "x-dead-letter-reason";
pub const DEAD_LETTER_DETAIL: &str = "x-dead-letter-detail";
pub const RETRY_REASON: &str = "x-retry-reason";
/// How a dead letter's credential was handled: `sealed`, `removed`, `sealed-body`,
/// `redacted` or `absent` (see `crate::dead_letter`).
pub const CREDENTIAL: &str = "x-credential";
pub(crate) const RETRY_DETAIL: &str = "x-retry-detail";
/// Set by quorum queues: how often the message was returned unsettled.
pub(crate) const DELIVERY_COUNT: &str = "x-delivery-count";
/// Where the message first arrived, so a replay can send it back the same way.
pub(crate) const ORIGINAL_EXCHANGE: &str = "x-original-exchange";
pub(crate) const ORIGINAL_ROUTING_KEY: &str = "x-original-routing-key";
/// Unix seconds when the worker dead-lettered the message.
pub(crate) const DEAD_LETTERED_AT: &str = "x-dead-lettered-at";
/// Times an operator replayed the message from the dead-letter queue. Informational: a
/// publisher can set it too, and nothing is decided by it.
pub(crate) const REPLAYS: &str = "x-replays";

/// The headers the worker writes on its copies and reads back when a copy returns. A
/// publisher can set any of them (its own attempt count, or `x-original-routing-key:
/// session.invalid` on a provision), so they are believed only on a copy back from the
/// retry queue ([`vouched`]).
pub(crate) const WORKER_OWNED: [&str; 9] = [
    ATTEMPTS,
    RETRY_REASON,
    RETRY_DETAIL,
    ORIGINAL_EXCHANGE,
    ORIGINAL_ROUTING_KEY,
    DEAD_LETTER_REASON,
    DEAD_LETTER_DETAIL,
    DEAD_LETTERED_AT,
    CREDENTIAL,
];

/// The headers RabbitMQ writes when it dead-letters or returns a message.
pub(crate) const BROKER_OWNED: [&str; 5] =
    ["x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason", DELIVERY_COUNT];

/// A delivery's properties with only the headers its route vouches for.
pub(crate) struct Vouched {
    pub(crate) properties: BasicProperties,
    /// Worker-owned headers that came from a publisher and were dropped (names only).
    pub(crate) dropped: Vec<&'static str>,
}

/// Keeps the worker's headers only on a copy the worker made: one the retry queue
/// dead-lettered back when its TTL ran out arrives through the default exchange with the
/// retry queue as its latest `x-death`. A publisher's message comes through the input
/// exchange, and whatever worker headers it carries are dropped, so its copies record its
/// real route and count attempts from 1. (A client allowed to write to the default
/// exchange, `amq.default`, could forge both; publishers must not be: docs/contracts.md
/// §1.1.) `x-delivery-count` is RabbitMQ's, written over on each redelivery; on a first
/// delivery it is whatever the publisher, or an earlier trip, left, so it is dropped.
pub(crate) fn vouched(properties: &BasicProperties, exchange: &str, redelivered: bool, retry_queue: &str) -> Vouched {
    let present = |name: &&str| properties.headers().as_ref().is_some_and(|h| h.inner().contains_key(*name));
    let from_retry_queue = exchange.is_empty()
        && latest_death(properties).is_some_and(|death| death.queue == retry_queue && death.reason == "expired");
    let dropped: Vec<&'static str> =
        if from_retry_queue { Vec::new() } else { WORKER_OWNED.into_iter().filter(present).collect() };
    let stale_count = (!redelivered && present(&DELIVERY_COUNT)).then_some(DELIVERY_COUNT);
    let remove: Vec<&str> = dropped.iter().copied().chain(stale_count).collect();
    let properties = if remove.is_empty() { properties.clone() } else { without_headers(properties, &remove) };
    Vouched { properties, dropped }
}

/// RabbitMQ's latest dead-lettering of the message: the first `x-death` entry.
pub(crate) struct Death {
    pub(crate) queue: String,
    pub(crate) reason: String,
}

pub(crate) fn latest_death(properties: &BasicProperties) -> Option<Death> {
    let AMQPValue::FieldArray(deaths) = properties.headers().as_ref()?.inner().get("x-death")? else { return None };
    let AMQPValue::FieldTable(latest) = deaths.as_slice().first()? else { return None };
    let field = |name: &str| match latest.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    };
    Some(Death { queue: field("queue")?, reason: field("reason")? })
}

/// Attempts already made, from our header; 0 for a first delivery. Any integer type
/// or a numeric string is accepted, since other tools may rewrite headers.
pub fn attempts(properties: &BasicProperties) -> u32 {
    properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(ATTEMPTS))
        .and_then(as_u64)
        .map_or(0, |n| n.min(u32::MAX as u64) as u32)
}

/// How often a quorum queue returned this message unsettled (`x-delivery-count`).
pub(crate) fn delivery_count(properties: &BasicProperties) -> u64 {
    properties.headers().as_ref().and_then(|h| h.inner().get(DELIVERY_COUNT)).and_then(as_u64).unwrap_or(0)
}

pub fn get_str(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

pub(crate) fn as_u64(value: &AMQPValue) -> Option<u64> {
    match value {
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.trim().parse().ok(),
        AMQPValue::ShortString(s) => s.as_str().trim().parse().ok(),
        _ => None,
    }
}

/// The original properties with our headers set. `expiration` is not carried over, so
/// a copy never expires from a queue it was not meant to expire from; nor is `user_id`,
/// which RabbitMQ checks against the publishing connection's user.
pub(crate) fn with_headers(properties: &BasicProperties, set: &[(&str, AMQPValue)]) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    for (name, value) in set {
        headers.insert((*name).into(), value.clone());
    }
    let mut copy = BasicProperties::default().with_headers(headers);
    macro_rules! carry {
        ($($getter:ident => $setter:ident),* $(,)?) => {
            $(if let Some(value) = properties.$getter() { copy = copy.$setter(value.clone()); })*
        };
    }
    carry!(
        content_type => with_content_type,
        content_encoding => with_content_encoding,
        delivery_mode => with_delivery_mode,
        priority => with_priority,
        correlation_id => with_correlation_id,
        reply_to => with_reply_to,
        message_id => with_message_id,
        timestamp => with_timestamp,
        kind => with_type,
        app_id => with_app_id,
        cluster_id => with_cluster_id,
    );
    copy
}

pub(crate) fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

pub(crate) fn number(value: u32) -> AMQPValue {
    AMQPValue::LongLongInt(i64::from(value))
}

pub(crate) fn get_u64(properties: &BasicProperties, name: &str) -> Option<u64> {
    properties.headers().as_ref()?.inner().get(name).and_then(as_u64)
}

/// The properties without the named headers.
pub(crate) fn without_headers(properties: &BasicProperties, names: &[&str]) -> BasicProperties {
    let mut copy = with_headers(properties, &[]);
    if let Some(headers) = properties.headers() {
        let mut kept = FieldTable::default();
        for (name, value) in headers.inner() {
            if !names.contains(&name.as_str()) {
                kept.insert(name.clone(), value.clone());
            }
        }
        copy = copy.with_headers(kept);
    }
    copy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_reads_any_integer_form_and_defaults_to_zero() {
        assert_eq!(attempts(&BasicProperties::default()), 0);
        for value in [AMQPValue::LongLongInt(3), AMQPValue::LongUInt(3), AMQPValue::ShortShortUInt(3), text("3")] {
            let props = with_headers(&BasicProperties::default(), &[(ATTEMPTS, value)]);
            assert_eq!(attempts(&props), 3);
        }
        let negative = with_headers(&BasicProperties::default(), &[(ATTEMPTS, AMQPValue::LongInt(-1))]);
        assert_eq!(attempts(&negative), 0);
    }

    fn death(queue: &str, reason: &str) -> AMQPValue {
        let mut entry = FieldTable::default();
        entry.insert("queue".into(), text(queue));
        entry.insert("reason".into(), text(reason));
        AMQPValue::FieldArray(vec![AMQPValue::FieldTable(entry)].into())
    }

    fn names(properties: &BasicProperties) -> Vec<String> {
        let mut names: Vec<String> =
            properties.headers().as_ref().map_or(Vec::new(), |h| h.inner().keys().map(|k| k.to_string()).collect());
        names.sort();
        names
    }

    #[test]
    fn worker_headers_are_believed_only_on_a_copy_back_from_the_retry_queue() {
        let forged = [
            (ATTEMPTS, number(999)),
            (ORIGINAL_ROUTING_KEY, text("session.invalid")),
            (DELIVERY_COUNT, number(12)),
            ("x-death", death("retry", "expired")),
            ("x-partner", text("kept")),
        ];
        let props = with_headers(&BasicProperties::default(), &forged);
        // Through the input exchange: every worker header goes, whatever x-death says.
        let from_publisher = vouched(&props, "provisioning", false, "retry");
        assert_eq!(from_publisher.dropped, vec![ATTEMPTS, ORIGINAL_ROUTING_KEY]);
        assert_eq!(names(&from_publisher.properties), ["x-death", "x-partner"]);
        assert_eq!(attempts(&from_publisher.properties), 0);
        // Back from the retry queue: kept, but a first delivery's count is not RabbitMQ's.
        let from_retry = vouched(&props, "", false, "retry");
        assert!(from_retry.dropped.is_empty());
        assert_eq!(attempts(&from_retry.properties), 999);
        assert_eq!(delivery_count(&from_retry.properties), 0);
        // Redelivered: the count is RabbitMQ's own.
        assert_eq!(delivery_count(&vouched(&props, "", true, "retry").properties), 12);
        assert_eq!(delivery_count(&vouched(&props, "provisioning", true, "retry").properties), 12);
        // The default exchange alone is not enough: the retry queue must have expired it.
        for (queue, reason) in [("other", "expired"), ("retry", "rejected")] {
            let props = with_headers(&props, &[("x-death", death(queue, reason))]);
            assert_eq!(vouched(&props, "", false, "retry").dropped, vec![ATTEMPTS, ORIGINAL_ROUTING_KEY]);
        }
        let no_death = without_headers(&props, &["x-death"]);
        assert_eq!(vouched(&no_death, "", false, "retry").dropped.len(), 2);
    }

    #[test]
    fn copies_keep_properties_but_drop_expiration() {
        let original = BasicProperties::default().with_message_id("m-1".into()).with_expiration("5000".into());
        let copy = with_headers(&original, &[(DEAD_LETTER_REASON, text("malformed"))]);
        assert_eq!(copy.message_id().as_ref().map(|s| s.as_str()), Some("m-1"));
        assert_eq!(copy.expiration(), &None);
        assert_eq!(get_str(&copy, DEAD_LETTER_REASON).as_deref(), Some("malformed"));
    }
}
