//! The ledger that accounts for every input: outputs collected until the stream has
//! settled, then each input matched to exactly one outcome.

use super::{Env, Expect, Input};
use bunq_session_worker::amqp::headers;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use test_support::oracle;

/// What the workers published and dead-lettered, as the test collected it.
#[derive(Default)]
pub struct Outputs {
    events: Vec<(Vec<u8>, BasicProperties)>,
    dead: Vec<(Vec<u8>, BasicProperties)>,
}

impl Outputs {
    /// These outputs and `later`'s: a ledger over several rounds of the same inputs.
    pub fn and(mut self, later: Outputs) -> Outputs {
        self.events.extend(later.events);
        self.dead.extend(later.dead);
        self
    }
}

impl Env {
    /// Collects outputs until every input is accounted for or `timeout` passes, then
    /// checks the ledger and returns its summary.
    pub async fn settle_and_check(&self, inputs: &[Input], timeout: Duration) -> Ledger {
        let outputs = self.settle(inputs, timeout).await;
        self.check(inputs, &outputs).await
    }

    /// Collects outputs until every input is accounted for in them (each session announced,
    /// each dead letter taken) and nothing waits in the input or retry queue, or `timeout`
    /// passes (a panic).
    pub async fn settle(&self, inputs: &[Input], timeout: Duration) -> Outputs {
        let deadline = Instant::now() + timeout;
        let (mut events, mut dead) = (Vec::new(), Vec::new());
        let expected_sessions: HashSet<u64> = inputs
            .iter()
            .filter_map(|i| match &i.expect {
                Expect::Session { provision_id, .. } => Some(*provision_id),
                _ => None,
            })
            .collect();
        let expected_dead = inputs.iter().filter(|i| matches!(i.expect, Expect::DeadLetter(_))).count();
        loop {
            self.drain(&self.capture, &mut events).await;
            self.drain(&self.names.topology.dead_letter_queue.clone(), &mut dead).await;
            let announced: HashSet<u64> = events.iter().map(|(b, _)| event_field(b, "provision_id")).collect();
            let done = expected_sessions.is_subset(&announced) && dead.len() >= expected_dead;
            if done
                && self.queue_empty(&self.names.topology.input_queue).await
                && self.queue_empty(&self.names.topology.retry_queue).await
            {
                break;
            }
            if Instant::now() > deadline {
                let missing: Vec<_> = expected_sessions.difference(&announced).take(10).collect();
                panic!(
                    "not settled within {timeout:?}: {} of {} sessions announced (missing e.g. {missing:?}), {} of {} dead letters; logs in {}",
                    announced.len(),
                    expected_sessions.len(),
                    dead.len(),
                    expected_dead,
                    self.logs.path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Late duplicates (redeliveries) are part of the ledger too.
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.drain(&self.capture, &mut events).await;
        self.drain(&self.names.topology.dead_letter_queue.clone(), &mut dead).await;
        Outputs { events, dead }
    }

    /// Nothing ready in the input or the retry queue (deliveries a live connection holds
    /// unacked are not counted).
    pub async fn queues_idle(&self) -> bool {
        self.queue_empty(&self.names.topology.input_queue).await
            && self.queue_empty(&self.names.topology.retry_queue).await
    }

    async fn queue_empty(&self, queue: &str) -> bool {
        let declared = self
            .channel
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .unwrap();
        declared.message_count() == 0
    }

    /// Matches every input to its outcome in `outputs`, asserting the ledger holds.
    pub async fn check(&self, inputs: &[Input], outputs: &Outputs) -> Ledger {
        let Outputs { events, dead } = outputs;
        let mut ledger = Ledger { inputs: inputs.len(), events: events.len(), ..Default::default() };
        let mut event_ids: HashMap<u64, HashSet<String>> = HashMap::new();
        let mut session_ids: HashMap<u64, HashSet<u64>> = HashMap::new();
        for (body, _) in events {
            let event: serde_json::Value = serde_json::from_slice(body).unwrap();
            let provision_id = event["provision_id"].as_u64().unwrap();
            event_ids.entry(provision_id).or_default().insert(event["event_id"].as_str().unwrap().to_owned());
            session_ids.entry(provision_id).or_default().insert(event["session_id"].as_u64().unwrap());
        }
        ledger.two_session_ids = session_ids.values().filter(|ids| ids.len() > 1).count();
        // The worker runs without an encryption key: a dead letter keeps the body with its
        // credential removed (or masked), which is deterministic, so inputs are matched by
        // that form, and no dead letter may hold an input's token.
        let tokens: Vec<&str> = inputs
            .iter()
            .filter_map(|i| match &i.expect {
                Expect::Session { token, .. } => Some(token.as_str()),
                _ => None,
            })
            .collect();
        // A dead letter is at least once: a crash between the copy's confirm and the
        // original's ack leaves a second copy. Repeats must be that same copy (same
        // reason, same message id) and are counted, never taken for a second outcome.
        let mut dead_by_body: HashMap<Vec<u8>, Vec<(String, Option<String>)>> = HashMap::new();
        for (body, properties) in dead {
            let reason = headers::get_str(properties, headers::DEAD_LETTER_REASON).unwrap_or_else(|| "none".into());
            let message_id = properties.message_id().as_ref().map(|m| m.as_str().to_owned());
            let detail = headers::get_str(properties, headers::DEAD_LETTER_DETAIL);
            assert!(
                detail.is_some_and(|d| !d.is_empty()),
                "a dead letter without a detail: {:?}",
                properties.headers()
            );
            assert!(headers::get_str(properties, headers::CREDENTIAL).is_some(), "no x-credential header");
            let text = String::from_utf8_lossy(body);
            assert!(tokens.iter().all(|t| !text.contains(t)), "a dead letter keeps a live token");
            dead_by_body.entry(oracle::canonical(body)).or_default().push((reason, message_id));
        }
        let kept: HashMap<&[u8], Vec<u8>> = inputs
            .iter()
            .map(|i| {
                let decodes = !matches!(i.expect, Expect::DeadLetter("malformed"));
                (i.body.as_slice(), oracle::dead_letter_without_key(&i.body, decodes))
            })
            .collect();
        let mut seen_bodies = HashSet::new();
        for input in inputs {
            // A duplicate input shares its body and expectation with its original.
            let first = seen_bodies.insert(input.body.clone());
            match &input.expect {
                Expect::Session { provision_id, token } => {
                    if !first {
                        continue;
                    }
                    let announced = session_ids
                        .get(provision_id)
                        .unwrap_or_else(|| panic!("provision {provision_id}: never announced"));
                    // Checked first: a second session id is the failure, its event id follows from it.
                    assert_eq!(
                        announced.len(),
                        1,
                        "provision {provision_id}: announced with two session ids {announced:?} \
                         ({} of {} provisions announced with more than one)",
                        ledger.two_session_ids,
                        session_ids.len()
                    );
                    let ids = &event_ids[provision_id];
                    assert_eq!(ids.len(), 1, "provision {provision_id}: announced with several event ids {ids:?}");
                    let session = self.store.session_of_provision(*provision_id).await.unwrap();
                    let cached = session.map(|s| s.session_id);
                    assert!(cached.is_some(), "provision {provision_id}: no session recorded and cached");
                    assert!(
                        cached.is_some_and(|id| announced.contains(&id)),
                        "provision {provision_id}: the cache holds session {cached:?}, not the announced {announced:?}"
                    );
                    let opened = self.fake.sessions_created_for(token);
                    assert!(opened >= 1, "provision {provision_id}: fake-bunq opened no session");
                    ledger.sessions += 1;
                    ledger.extra_sessions_at_bunq += opened - 1;
                    assert!(
                        !dead_by_body.contains_key(&kept[input.body.as_slice()]),
                        "provision {provision_id}: also dead-lettered"
                    );
                }
                Expect::DeadLetter(reason) => {
                    if !first {
                        continue;
                    }
                    let copies = dead_by_body
                        .get(&kept[input.body.as_slice()])
                        .unwrap_or_else(|| panic!("expected a {reason} dead letter"));
                    let distinct: HashSet<&(String, Option<String>)> = copies.iter().collect();
                    assert_eq!(distinct.len(), 1, "dead letters for one input differ: {copies:?}");
                    assert_eq!(copies[0].0, *reason, "dead letter reason");
                    ledger.dead_letters += 1;
                    ledger.dead_letter_repeats += copies.len() - 1;
                    *ledger.dead_by_reason.entry(reason).or_default() += 1;
                }
                Expect::Skipped => ledger.skipped += 1,
            }
        }
        ledger.duplicate_announcements = events.len() - ledger.sessions;
        assert_eq!(dead.len(), ledger.dead_letters + ledger.dead_letter_repeats, "dead letters that match no input");
        ledger
    }
}

/// What a fault run produced.
#[derive(Debug, Default)]
pub struct Ledger {
    pub inputs: usize,
    pub sessions: usize,
    pub dead_letters: usize,
    /// Second copies of a dead letter (a crash between its confirm and the original's ack).
    pub dead_letter_repeats: usize,
    pub skipped: usize,
    pub events: usize,
    pub duplicate_announcements: usize,
    /// Provisions announced with more than one session id (the ledger fails on any).
    pub two_session_ids: usize,
    /// Sessions bunq opened beyond the one recorded per provision.
    pub extra_sessions_at_bunq: usize,
    pub dead_by_reason: HashMap<&'static str, usize>,
}

impl Ledger {
    pub fn print(&self, scenario: &str) {
        println!(
            "LEDGER {scenario}: {} inputs -> {} sessions, {} dead letters {:?} ({} repeated copies), {} skipped; {} session-ready events ({} repeats, same event id), {} provisions announced with two session ids; {} extra sessions at fake-bunq",
            self.inputs,
            self.sessions,
            self.dead_letters,
            self.dead_by_reason,
            self.dead_letter_repeats,
            self.skipped,
            self.events,
            self.duplicate_announcements,
            self.two_session_ids,
            self.extra_sessions_at_bunq
        );
    }
}

fn event_field(body: &[u8], field: &str) -> u64 {
    serde_json::from_slice::<serde_json::Value>(body).unwrap()[field].as_u64().unwrap()
}
