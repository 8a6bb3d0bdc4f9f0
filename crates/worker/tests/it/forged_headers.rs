//! Headers only the worker writes, set by a publisher: believed only on the worker's own
//! copies back from the retry queue, so a publisher can neither spend a message's attempts,
//! nor turn a provision into a `session.invalid`, nor have it dead-lettered as returned too
//! often, nor choose where a replay sends it.

use crate::helpers::*;
use fake_bunq::{EndpointMatch, FaultAction, FaultRule, Faults, Trigger};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use std::time::Duration;
use test_support::{random_id, random_token, ready_body, ROUTING_KEY};

const WAIT: Duration = Duration::from_secs(15);

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// Publishes `body` to the input exchange as upstream does, with `headers` of its own.
async fn publish_with(app: &TestApp, body: &[u8], headers: &[(&str, AMQPValue)]) {
    let mut table = FieldTable::default();
    for (name, value) in headers {
        table.insert((*name).into(), value.clone());
    }
    let message_id = uuid::Uuid::new_v4().to_string();
    let properties = BasicProperties::default().with_message_id(message_id.as_str().into()).with_headers(table);
    let confirm = app.publish_with(body, properties).await;
    assert!(confirm.is_ack() && confirm.take_message().is_none(), "input must be routable");
}

/// Publishes a ready provision with `headers`; returns its id.
async fn publish_ready(app: &TestApp, headers: &[(&str, AMQPValue)]) -> u64 {
    let id = random_id();
    publish_with(app, &ready_body(id, &random_token()), headers).await;
    id
}

/// The provision's session is announced, and nothing is dead-lettered.
async fn expect_session(app: &TestApp, id: u64) {
    let (event, _) = app.next_event(WAIT).await.expect("handled as the provision it is");
    assert_eq!(event.provision_id, id);
    app.wait_idle(WAIT).await;
    assert_eq!(app.ready_count(&app.names.dead_letter_queue.clone()).await, 0, "nothing dead-lettered");
}

#[tokio::test]
async fn a_publishers_attempt_count_is_not_believed() {
    // One attempt's bunq budget is short, so a failing bunq ends the attempt quickly.
    let app = spawn_app_with(AppOptions { flags: vec!["--retry-budget=200ms".into()], ..Default::default() }).await;
    let failing = FaultRule {
        endpoint: EndpointMatch::Installation,
        action: FaultAction::Http503,
        trigger: Trigger::Probability(1.0),
    };
    app.fake.set_faults(Faults { rules: vec![failing], ..Default::default() });
    // Believed, 999 spent attempts would dead-letter the first failure `retries_exhausted`.
    let id = publish_ready(&app, &[("x-attempts", AMQPValue::LongLongInt(999))]).await;
    app.metrics_with(r#"outcome="retried",reason="bunq_unavailable""#, WAIT).await;
    app.fake.set_faults(Faults::default());
    expect_session(&app, id).await;
    app.teardown().await;
}

#[tokio::test]
async fn a_provision_claiming_to_be_a_session_invalid_is_handled_as_a_provision() {
    let app = spawn_app().await;
    // Believed, the body would be read as a `session.invalid` and dead-lettered `malformed`.
    let id = publish_ready(&app, &[("x-original-routing-key", text("session.invalid"))]).await;
    expect_session(&app, id).await;
    app.teardown().await;
}

#[tokio::test]
async fn a_delivery_count_on_a_first_delivery_is_not_rabbitmqs() {
    let app = spawn_app().await;
    // RabbitMQ writes its count over the header only on a redelivery: on the first one,
    // this is the publisher's. Believed, it would be dead-lettered `redelivered_too_often`.
    let id = publish_ready(&app, &[("x-delivery-count", AMQPValue::LongLongInt(12))]).await;
    expect_session(&app, id).await;
    app.teardown().await;
}

#[tokio::test]
async fn a_dead_letter_records_the_route_it_came_by_and_only_the_workers_own_headers() {
    let app = spawn_app().await;
    let forged = [
        ("x-original-exchange", text("elsewhere")),
        ("x-original-routing-key", text("elsewhere.key")),
        ("x-attempts", AMQPValue::LongLongInt(7)),
        ("x-retry-reason", text("forged")),
        ("x-credential", text("sealed")),
        ("x-partner", text("kept")),
    ];
    publish_with(&app, b"not an event", &forged).await;

    let (body, properties) = app.next_dead_letter(WAIT).await.expect("dead-lettered");
    assert_eq!(body, b"not an event");
    assert_eq!(header_str(&properties, "x-dead-letter-reason").as_deref(), Some("malformed"));
    // Where a replay would send it: where it really came from, not where the publisher said.
    assert_eq!(header_str(&properties, "x-original-exchange"), Some(app.names.input_exchange.clone()));
    assert_eq!(header_str(&properties, "x-original-routing-key").as_deref(), Some(ROUTING_KEY));
    assert_eq!(bunq_session_worker::amqp::headers::attempts(&properties), 1);
    assert_eq!(header_str(&properties, "x-retry-reason"), None);
    assert_eq!(header_str(&properties, "x-credential").as_deref(), Some("absent"));
    // Headers that are not the worker's travel with the message.
    assert_eq!(header_str(&properties, "x-partner").as_deref(), Some("kept"));
    app.teardown().await;
}
