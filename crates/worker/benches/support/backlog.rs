//! The backlog scenario: more credentials than the shared session-server budget can
//! serve before they expire. Several worker processes share the budget, the stand-in
//! enforces it per IP, and each credential expires a fixed time after it is published.
//! The possible is min(backlog, budget × window); what counts is how many sessions bunq
//! opened before their credential's expiry (by the stand-in's own clock), that every
//! other provision was dead-lettered `credential_expired` (and how soon), and what the
//! broker carried per provision.

use super::worker::BenchWorker;
use bunq_session_worker::amqp::headers;
use bunq_session_worker::amqp::topology;
use fake_bunq::FakeConfig;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use test_support::{
    capture_queue, expiry_in, provision_body, random_token, ready_body_with, Cleanup, Leftovers, TestNames, WorkerEnv,
    CLIENT_KEY,
};

/// The partner's key in the reset scenario.
const PARTNER_KEY: &str = "bench-partner-0123456789abcdef0123456789abcdef";
/// The partner's PUT and GET budget in the reset scenario: not what is measured.
const RESET_CALLS: (u32, Duration) = (50, Duration::from_secs(1));

pub struct Scenario {
    pub budget: u32,
    pub workers: usize,
    pub window: Duration,
    pub backlog: usize,
    /// Provision ids from here on.
    pub first_id: u64,
    /// `CREDENTIAL_RESET=on`, the stand-in playing the partner: every provision should
    /// end with a session, those the budget cannot serve in time after a token reset.
    pub resets: bool,
}

impl Scenario {
    pub fn backlog(&self) -> usize {
        self.backlog
    }

    /// Sessions the budget could open before the credentials expire, at best.
    pub fn possible(&self) -> f64 {
        f64::from(self.budget) * self.window.as_secs_f64()
    }
}

#[derive(Debug)]
pub struct Outcome {
    pub backlog: usize,
    pub possible: f64,
    /// Sessions bunq opened before the credential expired.
    pub served_before_expiry: usize,
    pub sessions_announced: usize,
    pub dead_letters: HashMap<String, usize>,
    pub rejected_429: usize,
    /// Publish → dead letter of the ones the budget could not serve.
    pub dead_letter_p50: Duration,
    pub dead_letter_p99: Duration,
    /// Trips through the retry queue, over the backlog.
    pub retry_trips_per_provision: f64,
    /// Every message the broker carried (inputs, retry copies, events, dead letters),
    /// over the backlog.
    pub broker_messages_per_provision: f64,
    /// With resets: token resets bunq started, and the provisions whose own token opened
    /// their session (served in time, so never to be reset).
    pub resets: usize,
    pub served_with_own_token: usize,
}

impl Outcome {
    pub fn served_ratio(&self) -> f64 {
        self.served_before_expiry as f64 / (self.backlog as f64).min(self.possible)
    }

    /// With resets: provisions that got their session, over the backlog.
    pub fn served_after_reset_ratio(&self) -> f64 {
        self.sessions_announced as f64 / self.backlog as f64
    }

    /// With resets: resets over the backlog, and its limit: one per provision its own token
    /// could not serve.
    pub fn resets_per_provision(&self) -> (f64, f64) {
        let needed = self.backlog - self.served_with_own_token;
        (self.resets as f64 / self.backlog as f64, needed as f64 / self.backlog as f64)
    }
}

/// Runs `scenario` on queues and keys of its own (an earlier part's leftovers, a repeated
/// dead letter say, must not count here), removed afterwards.
pub async fn run(scenario: &Scenario, connection: &Connection, channel: &Channel) -> anyhow::Result<Outcome> {
    let run = &TestNames::new("bench-backlog");
    let names = &run.topology;
    let capture = &run.queue("capture");
    let leftovers = Leftovers::new(Cleanup::new(run).queue(capture));
    topology::declare(channel, names).await?;
    capture_queue(channel, names, capture, Some("#")).await?;
    let outcome = run_on(scenario, connection, channel, run, capture).await;
    leftovers.clean().await?;
    outcome
}

async fn run_on(
    scenario: &Scenario,
    connection: &Connection,
    channel: &Channel,
    run: &TestNames,
    capture: &str,
) -> anyhow::Result<Outcome> {
    let names = &run.topology;
    let mut limited = FakeConfig {
        rate_limit_scope: fake_bunq::RateLimitScope::Ip,
        session_server_limit: (scenario.budget, Duration::from_secs(1)),
        other_post_limit: (super::UNLIMITED, Duration::from_secs(1)),
        ..FakeConfig::default()
    };
    let keys = tempfile::tempdir()?;
    if scenario.resets {
        // New tokens live as long as the first ones; bunq's reset takes half a second.
        limited.partner_api_key = Some(PARTNER_KEY.to_owned());
        limited.token_reset_delay = Duration::from_millis(500);
        limited.credential_ttl = Some(scenario.window);
        (limited.put_limit, limited.get_limit) = (RESET_CALLS, RESET_CALLS);
    }
    let fake = fake_bunq::spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await?, limited).await?;
    let mut env = WorkerEnv::local(&fake.base_url(), CLIENT_KEY, run)
        .allowing(super::UNLIMITED)
        .set("RATE_LIMIT_SESSION_SERVER", format!("{}/1s", scenario.budget))
        .set("RATE_LIMIT_SCOPE", "global")
        // A budget of its own: an earlier part's rate-limit log or waiters must not share it.
        .set("REDIS_KEY_PREFIX", format!("{}{}:", run.key_prefix, scenario.first_id));
    if scenario.resets {
        let (partner, seal) = (keys.path().join("partner"), keys.path().join("seal"));
        std::fs::write(&partner, PARTNER_KEY)?;
        std::fs::write(&seal, hex::encode(rand::random::<[u8; 32]>()))?;
        let calls = format!("{}/{}ms", RESET_CALLS.0, RESET_CALLS.1.as_millis());
        env = env
            .set("CREDENTIAL_RESET", "on")
            .set("BUNQ_PARTNER_API_KEY_FILE", partner.to_str().unwrap_or_default())
            .set("SESSION_ENCRYPTION_KEY_FILE", seal.to_str().unwrap_or_default())
            .set("CREDENTIAL_LIFETIME", format!("{}s", scenario.window.as_secs()))
            .set("RATE_LIMIT_PUT", &calls)
            .set("RATE_LIMIT_GET", &calls);
    }
    let mut workers = Vec::new();
    for _ in 0..scenario.workers {
        workers.push(BenchWorker::start(&env, super::SHARED_PREFETCH).await?);
    }

    let outputs = connection.create_channel().await?;
    outputs.basic_qos(1000, BasicQosOptions::default()).await?;
    let mut events = outputs
        .basic_consume(capture.into(), "backlog-events".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    let mut dead = outputs
        .basic_consume(
            names.dead_letter_queue.as_str().into(),
            "backlog-dead".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;

    // Each credential expires `window` after its own publish.
    let backlog = scenario.backlog();
    let mut expiry_of = HashMap::with_capacity(backlog);
    let mut published = HashMap::with_capacity(backlog);
    let first_id = scenario.first_id;
    let first_publish = Instant::now();
    let mut tokens = Vec::with_capacity(backlog);
    for id in first_id..first_id + backlog as u64 {
        let token = random_token();
        let expiry = time::Duration::try_from(scenario.window)?;
        let body = if scenario.resets {
            let at = time::OffsetDateTime::now_utc() + expiry;
            let credential = fake.register_provision(id, &token, at).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            ready_body_with(id, credential, &token, &expiry_in(expiry))
        } else {
            provision_body(id, "CREATED", "PENDING_PROCESS_USER_ONBOARDING", Some(&token), &expiry_in(expiry), true)
        };
        tokens.push(token.clone());
        let now = Instant::now();
        expiry_of.insert(fake_bunq::secret::SecretDigest::of(&token).short(), now + scenario.window);
        published.insert(id, now);
        super::traffic::publish_input(channel, &names.input_exchange, &body).await?;
    }

    let (mut announced, mut dead_letters, mut dead_after) = (HashSet::new(), HashMap::new(), Vec::new());
    // With resets, the budget serves the whole backlog: that long, and the margin.
    let serving =
        Duration::from_secs_f64(backlog as f64 / f64::from(scenario.budget) * f64::from(u8::from(scenario.resets)));
    let deadline = Instant::now() + scenario.window + serving + Duration::from_secs(90);
    while announced.len() + dead_after.len() < backlog {
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::select! {
            event = events.next() => {
                let event = event.expect("consumer open")?;
                // Whatever the body, it is counted or skipped, never a reason to stop.
                let value: serde_json::Value = serde_json::from_slice(&event.data).unwrap_or_default();
                let id = value["provision_id"].as_u64().unwrap_or(0);
                if value["event_type"] == "bunq.session.ready" && published.contains_key(&id) {
                    announced.insert(id);
                }
                event.ack(BasicAckOptions::default()).await?;
            }
            letter = dead.next() => {
                let letter = letter.expect("consumer open")?;
                let reason = headers::get_str(&letter.properties, headers::DEAD_LETTER_REASON).unwrap_or_default();
                *dead_letters.entry(reason).or_insert(0) += 1;
                let value: serde_json::Value = serde_json::from_slice(&letter.data).unwrap_or_default();
                let id = value["NotificationUrl"]["object"]["PartnerUserProvision"]["id"].as_u64().unwrap_or(0);
                if let Some(at) = published.get(&id) { dead_after.push(at.elapsed()); }
                letter.ack(BasicAckOptions::default()).await?;
            }
            _ = tokio::time::sleep(left) => anyhow::bail!(
                "backlog not accounted for: {} sessions and {} dead letters of {backlog}", announced.len(), dead_after.len()
            ),
        }
    }
    outputs.close(200, "done".into()).await?;

    let calls: Vec<_> = fake.calls().into_iter().filter(|c| c.endpoint == fake_bunq::Endpoint::SessionServer).collect();
    let served_before_expiry = calls
        .iter()
        .filter(|c| c.status == Some(200))
        .filter(|c| c.secret_hash.as_ref().and_then(|h| expiry_of.get(h)).is_some_and(|expiry| c.received <= *expiry))
        .count();
    let rejected_429 = calls.iter().filter(|c| c.status == Some(429)).count();
    if std::env::var_os("BENCH_ONLY").is_some() {
        // Session-server answers per second since the first publish: where the budget went.
        let mut per_second = vec![0u32; 40];
        for call in calls.iter().filter(|c| c.status == Some(200)) {
            let second = call.received.saturating_duration_since(first_publish).as_secs() as usize;
            if let Some(slot) = per_second.get_mut(second) {
                *slot += 1;
            }
        }
        println!("session-server 200s per second: {per_second:?}");
    }
    let (mut handled, mut retried) = (0.0, 0.0);
    for worker in &workers {
        let metrics = test_support::ops::metrics(worker.ops_addr()).await?;
        for line in metrics.lines().filter(|l| l.starts_with("bunq_session_worker_deliveries_total{")) {
            let count: f64 = line.rsplit(' ').next().unwrap_or("0").parse().unwrap_or(0.0);
            handled += count;
            if line.contains(r#"outcome="retried""#) {
                retried += count;
            }
        }
    }
    for worker in workers {
        worker.stop().await?;
    }
    let resets = fake.stats().token_resets;
    let served_with_own_token = tokens.iter().filter(|t| fake.sessions_created_for(t) > 0).count();
    fake.shutdown().await;

    dead_after.sort();
    let at = |p: f64| dead_after.get(((dead_after.len() as f64 - 1.0) * p) as usize).copied().unwrap_or_default();
    let outputs_count = (announced.len() + dead_after.len()) as f64;
    Ok(Outcome {
        backlog,
        possible: scenario.possible(),
        served_before_expiry,
        sessions_announced: announced.len(),
        dead_letters,
        rejected_429,
        dead_letter_p50: at(0.5),
        dead_letter_p99: at(0.99),
        retry_trips_per_provision: retried / backlog as f64,
        // Each delivery handled was a message; each retry also a copy into the retry queue.
        broker_messages_per_provision: (handled + retried + outputs_count) / backlog as f64,
        resets,
        served_with_own_token,
    })
}
