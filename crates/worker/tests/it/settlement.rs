//! Moves the broker refuses: a RabbitMQ policy (`max-length` 0 on the retry queue, which
//! overflows by `reject-publish`) and one message parked there without a TTL make it nack
//! every copy, as a queue without a leader does. Once it has refused, RabbitMQ goes on
//! refusing that channel's copies for a while even after the queue would take them, much
//! as the cluster tests saw after a failover: the worker tries the move again holding its
//! delivery, then gives the channel up and connects afresh; the delivery is not lost and
//! spends no attempt.

use crate::helpers::*;
use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use std::time::{Duration, Instant};
use test_support::{rabbitmqctl, random_id, random_token, ready_body};

const WAIT: Duration = Duration::from_secs(30);

/// The retry queue refusing every copy while it lives; undone on drop, panics included.
struct Refusing {
    policy: String,
    queue: String,
}

impl Refusing {
    async fn retry_queue_of(app: &TestApp) -> Self {
        let queue = app.names.retry_queue.clone();
        let policy = format!("{queue}-refuse");
        let pattern = format!("^{}$", regex_escape(&queue));
        rabbitmqctl(&[
            "set_policy",
            "--apply-to",
            "queues",
            "--priority",
            "100",
            &policy,
            &pattern,
            r#"{"max-length":0}"#,
        ])
        .unwrap();
        let refusing = Self { policy, queue };
        // Over the limit from now on: a message that never expires.
        let confirm = app
            .channel()
            .basic_publish(
                "".into(),
                refusing.queue.as_str().into(),
                BasicPublishOptions::default(),
                b"blocker",
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack(), "the blocker was refused");
        refusing
    }
}

impl Drop for Refusing {
    fn drop(&mut self) {
        let _ = rabbitmqctl(&["clear_policy", &self.policy]);
        let _ = rabbitmqctl(&["purge_queue", &self.queue]);
    }
}

fn regex_escape(name: &str) -> String {
    name.chars().flat_map(|c| if c.is_ascii_alphanumeric() { vec![c] } else { vec!['\\', c] }).collect()
}

async fn metric(app: &TestApp, name: &str) -> f64 {
    let metrics = app.metrics().await;
    metrics.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).map_or(0.0, |v| v.parse().unwrap())
}

async fn wait_for(app: &TestApp, name: &str, at_least: f64) {
    let deadline = Instant::now() + WAIT;
    while metric(app, name).await < at_least {
        assert!(Instant::now() < deadline, "{name} never reached {at_least}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_move_the_broker_keeps_refusing_is_tried_again_then_the_worker_connects_afresh() {
    let app = spawn_app().await;
    // Another delivery holds the provision, so the worker moves its event to the retry
    // queue (`lock_busy`), which refuses.
    let (id, token) = (random_id(), random_token());
    assert!(app.store.try_lock(id, "elsewhere:1", Duration::from_secs(120)).await.unwrap().is_some());
    let refusing = Refusing::retry_queue_of(&app).await;
    let started = Instant::now();
    app.publish(&ready_body(id, &token)).await;

    // Tried four times, 2 + 4 + 8 s apart, holding the delivery; then the channel is given
    // up: the delivery goes back to the queue and the worker connects afresh.
    wait_for(&app, "bunq_session_worker_amqp_connections_total", 2.0).await;
    assert!(started.elapsed() >= Duration::from_secs(14), "gave the channel up after {:?}", started.elapsed());
    assert!(metric(&app, "bunq_session_worker_settle_failures_total").await >= 4.0);

    // The queue takes copies again and the provision is free: its session comes, once.
    drop(refusing);
    app.store.unlock(id, "elsewhere:1").await.unwrap();
    let (ready, _) = app.next_event(WAIT).await.expect("the provision's session");
    assert_eq!(ready.provision_id, id);
    assert!(app.next_dead_letter(Duration::from_millis(500)).await.is_none(), "dead-lettered");
    assert!(app.next_event(Duration::from_millis(500)).await.is_none(), "announced twice");
    assert_eq!(app.fake.sessions_created_for(&token), 1);
    let metrics = app.metrics().await;
    assert!(metrics.contains(r#"deliveries_total{outcome="announced",reason="new_session"} 1"#), "{metrics}");
    // The series exists from start-up at 0: it must not have counted.
    assert!(metrics.lines().filter(|l| l.contains("retries_exhausted")).all(|l| l.ends_with(" 0")), "{metrics}");
    app.teardown().await;
}
