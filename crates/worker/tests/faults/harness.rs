//! Fault-test harness: a RabbitMQ vhost per test (so `close_all_connections --vhost`
//! touches no other test), the worker as a real process, fake-bunq in-process, a stream
//! of mixed events, and the ledger that accounts for every input.

use bunq_session_worker::amqp::headers;
use bunq_session_worker::amqp::topology;
use bunq_session_worker::dead_letter;
use bunq_session_worker::store::{Keys, Store};
use fake_bunq::{self, FakeConfig, FakeHandle};
use lapin::options::{BasicAckOptions, BasicGetOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use test_support::{
    amqp_vhost_url, capture_queue, connect_amqp, connect_redis, connect_redis_cluster, expiry_in, free_port,
    future_expiry, init_test_logging, ops, provision_body, publish_input, rabbitmqctl, random_token, ready_body,
    Cleanup, Leftovers, TestNames, WorkerEnv,
};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_bunq-session-worker");

/// What one input should end as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Exactly one cached session, announced with one event id.
    Session { provision_id: u64, token: String },
    /// Exactly one dead letter with this reason.
    DeadLetter(&'static str),
    /// Acked with no output.
    Skipped,
}

#[derive(Debug, Clone)]
pub struct Input {
    pub body: Vec<u8>,
    pub expect: Expect,
}

/// The Redis the workers of a test use.
#[derive(Debug, Clone)]
pub enum RedisAt {
    Url(String),
    /// Seed nodes of a Redis Cluster.
    Cluster(Vec<String>),
}

impl RedisAt {
    fn store(&self, names: &TestNames) -> Store {
        let conn = match self {
            RedisAt::Url(url) => connect_redis(url),
            RedisAt::Cluster(seeds) => connect_redis_cluster(seeds),
        };
        Store::new(conn.unwrap(), Keys::new(&names.key_prefix), None)
    }

    fn configure(&self, env: WorkerEnv) -> WorkerEnv {
        match self {
            RedisAt::Url(url) => env.set("REDIS_URL", url),
            RedisAt::Cluster(seeds) => env.on_redis_cluster(seeds),
        }
    }

    /// Where the test's keys are deleted; a cluster's go with its nodes.
    fn cleanup(&self, cleanup: Cleanup) -> Cleanup {
        match self {
            RedisAt::Url(url) => cleanup.redis_url(url),
            RedisAt::Cluster(_) => cleanup,
        }
    }
}

pub struct Env {
    pub names: TestNames,
    pub vhost: String,
    pub amqp_url: String,
    pub redis: RedisAt,
    pub capture: String,
    pub fake: FakeHandle,
    pub store: Store,
    pub connection: Connection,
    pub channel: Channel,
    pub logs: tempfile::TempDir,
    /// Worker settings beyond the harness's, as environment variables.
    pub worker_env: Vec<(String, String)>,
    /// Deletes the test's vhost and keys, also if it panics before its teardown.
    leftovers: Leftovers,
}

impl Env {
    pub async fn new(fake: FakeConfig, redis_url: &str) -> Env {
        Self::on_redis(fake, RedisAt::Url(redis_url.to_owned())).await
    }

    /// In a vhost of the test's own on this machine's RabbitMQ, with `redis`.
    pub async fn on_redis(fake: FakeConfig, redis: RedisAt) -> Env {
        init_test_logging();
        let names = TestNames::new("flt");
        let vhost = names.id.clone();
        rabbitmqctl(&["add_vhost", &vhost]).unwrap();
        let leftovers = Leftovers::new(redis.cleanup(Cleanup::new(&names).vhost(&vhost)));
        rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]).unwrap();
        let amqp_url = amqp_vhost_url(&vhost);
        let fake = fake_bunq::spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), fake).await.unwrap();
        let connection = connect_amqp(&amqp_url).await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        topology::declare(&channel, &names.topology).await.unwrap();
        channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        let capture = names.queue("capture");
        capture_queue(&channel, &names.topology, &capture, Some("#")).await.unwrap();
        let store = redis.store(&names);
        Env {
            leftovers,
            names,
            vhost,
            amqp_url,
            redis,
            capture,
            fake,
            store,
            connection,
            channel,
            logs: logs_dir(),
            worker_env: Vec::new(),
        }
    }

    /// On a cluster of the test's own: the topology declared through the first node (so
    /// the queues' leaders start there), the test's own connection on the last, and the
    /// workers given every node (`AMQP_URL` with comma-separated URLs).
    pub async fn on_cluster(fake: FakeConfig, redis_url: &str, urls: &[String]) -> Env {
        init_test_logging();
        let names = TestNames::new("flt");
        // The broker objects go with the cluster's nodes; the keys are the test's to remove.
        let leftovers = Leftovers::new(Cleanup::new(&names).redis_url(redis_url));
        let fake = fake_bunq::spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), fake).await.unwrap();
        let first = connect_amqp(&urls[0]).await.unwrap();
        let setup = first.create_channel().await.unwrap();
        topology::declare(&setup, &names.topology).await.unwrap();
        let _ = first.close(200, "declared".into()).await;
        let connection = connect_amqp(urls.last().unwrap()).await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        // The capture queue (classic, on the node it is declared on) lives on a node that stays.
        let capture = names.queue("capture");
        capture_queue(&channel, &names.topology, &capture, Some("#")).await.unwrap();
        channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        let redis = RedisAt::Url(redis_url.to_owned());
        let store = redis.store(&names);
        Env {
            leftovers,
            names,
            vhost: "/".to_owned(),
            amqp_url: urls.join(","),
            redis,
            capture,
            fake,
            store,
            connection,
            channel,
            logs: logs_dir(),
            worker_env: Vec::new(),
        }
    }

    /// Starts `bunq-session-worker run` as a process; its logs go to a file per start.
    pub fn start_worker(&self, name: &str) -> Worker {
        let ops_port = free_port();
        let log_path = self.logs.path().join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let env = self
            .redis
            .configure(WorkerEnv::fast(&self.fake.base_url(), &self.names))
            .set("AMQP_URL", &self.amqp_url)
            // Known in advance: the test reads the worker's metrics.
            .set("OPS_ADDR", format!("127.0.0.1:{ops_port}"))
            .set("POD_NAME", format!("{}-{name}", self.names.id))
            .set("LOG_FORMAT", "json")
            .set("RUST_LOG", "info,lapin=warn")
            // The fault tests' own tuning: a kill leaves at most two prefetches in flight;
            // a hang costs one short request timeout; a killed worker's locks expire soon;
            // a stream through many faults gets more attempts; SIGTERM drains within 10 s.
            .set("PREFETCH", "16")
            .set("BUNQ_REQUEST_TIMEOUT_MS", "1000")
            .set("LOCK_TTL_MS", "12000")
            .set("RETRY_MAX_INTERVAL_MS", "300")
            .set("MAX_ATTEMPTS", "30")
            .set("SHUTDOWN_TIMEOUT", "10s");
        let env = self.worker_env.iter().fold(env, |env, (variable, value)| env.set(variable, value));
        let mut command = Command::new(BIN);
        command.arg("run").env_clear().envs(env.vars()).stdout(Stdio::null()).stderr(log).kill_on_drop(true);
        Worker { child: command.spawn().unwrap(), ops_port, log_path }
    }

    pub async fn publish_all(&self, inputs: &[Input]) {
        for input in inputs {
            self.publish(&input.body).await;
        }
    }

    pub async fn publish(&self, body: &[u8]) {
        let properties = BasicProperties::default().with_message_id(uuid::Uuid::new_v4().to_string().as_str().into());
        let confirm = publish_input(&self.channel, &self.names.topology, body, properties).await.unwrap();
        assert!(confirm.is_ack());
    }

    /// Takes every event on the capture queue, as JSON.
    pub async fn take_events(&self) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        self.drain(&self.capture, &mut out).await;
        out.iter().map(|(body, _)| serde_json::from_slice(body).expect("events are JSON")).collect()
    }

    /// Drains `queue` into `out` (acking what it takes).
    async fn drain(&self, queue: &str, out: &mut Vec<(Vec<u8>, BasicProperties)>) {
        while let Some(message) = self.channel.basic_get(queue.into(), BasicGetOptions { no_ack: false }).await.unwrap()
        {
            message.ack(BasicAckOptions::default()).await.unwrap();
            out.push((message.delivery.data.clone(), message.delivery.properties.clone()));
        }
    }

    /// Collects outputs until every input is accounted for or `timeout` passes, then
    /// checks the ledger and returns its summary.
    pub async fn settle_and_check(&self, inputs: &[Input], timeout: Duration) -> Ledger {
        let deadline = Instant::now() + timeout;
        let mut events = Vec::new();
        let mut dead = Vec::new();
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
        self.check(inputs, &events, &dead).await
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

    async fn check(
        &self,
        inputs: &[Input],
        events: &[(Vec<u8>, BasicProperties)],
        dead: &[(Vec<u8>, BasicProperties)],
    ) -> Ledger {
        let mut ledger = Ledger { inputs: inputs.len(), events: events.len(), ..Default::default() };
        let mut event_ids: HashMap<u64, HashSet<String>> = HashMap::new();
        for (body, _) in events {
            let event: serde_json::Value = serde_json::from_slice(body).unwrap();
            event_ids
                .entry(event["provision_id"].as_u64().unwrap())
                .or_default()
                .insert(event["event_id"].as_str().unwrap().to_owned());
        }
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
        let mut dead_by_body: HashMap<&[u8], Vec<(String, Option<String>)>> = HashMap::new();
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
            dead_by_body.entry(body.as_slice()).or_default().push((reason, message_id));
        }
        let kept: HashMap<&[u8], Vec<u8>> = inputs
            .iter()
            .map(|i| (i.body.as_slice(), dead_letter::protect(i.body.clone(), None, None, 256 * 1024).0))
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
                    let ids = event_ids
                        .get(provision_id)
                        .unwrap_or_else(|| panic!("provision {provision_id}: never announced"));
                    assert_eq!(ids.len(), 1, "provision {provision_id}: announced with several event ids {ids:?}");
                    let session = self.store.session_of_provision(*provision_id).await.unwrap();
                    assert!(session.is_some(), "provision {provision_id}: no session recorded and cached");
                    let opened = self.fake.sessions_created_for(token);
                    assert!(opened >= 1, "provision {provision_id}: fake-bunq opened no session");
                    ledger.sessions += 1;
                    ledger.extra_sessions_at_bunq += opened - 1;
                    assert!(
                        !dead_by_body.contains_key(kept[input.body.as_slice()].as_slice()),
                        "provision {provision_id}: also dead-lettered"
                    );
                }
                Expect::DeadLetter(reason) => {
                    if !first {
                        continue;
                    }
                    let copies = dead_by_body
                        .get(kept[input.body.as_slice()].as_slice())
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

    pub async fn teardown(self) {
        let _ = self.connection.close(200, "teardown".into()).await;
        self.leftovers.clean().await.unwrap();
        self.fake.shutdown().await;
    }
}

/// Where the workers' logs go: removed with the test, kept with `KEEP_TEST_LOGS=1` to
/// read after a failure.
fn logs_dir() -> tempfile::TempDir {
    let keep = std::env::var_os("KEEP_TEST_LOGS").is_some_and(|v| v == "1");
    tempfile::Builder::new().prefix("bsw-logs-").disable_cleanup(keep).tempdir().unwrap()
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
    /// Sessions bunq opened beyond the one recorded per provision.
    pub extra_sessions_at_bunq: usize,
    pub dead_by_reason: HashMap<&'static str, usize>,
}

impl Ledger {
    pub fn print(&self, scenario: &str) {
        println!(
            "LEDGER {scenario}: {} inputs -> {} sessions, {} dead letters {:?} ({} repeated copies), {} skipped; {} session-ready events ({} repeats, same event id); {} extra sessions at fake-bunq",
            self.inputs,
            self.sessions,
            self.dead_letters,
            self.dead_by_reason,
            self.dead_letter_repeats,
            self.skipped,
            self.events,
            self.duplicate_announcements,
            self.extra_sessions_at_bunq
        );
    }
}

fn event_field(body: &[u8], field: &str) -> u64 {
    serde_json::from_slice::<serde_json::Value>(body).unwrap()[field].as_u64().unwrap()
}

pub struct Worker {
    pub child: Child,
    pub ops_port: u16,
    pub log_path: PathBuf,
}

impl Worker {
    pub fn ops_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ops_port))
    }

    pub async fn wait_ready(&self) {
        if !ops::wait_ready(self.ops_addr(), Duration::from_secs(20)).await {
            panic!("worker not ready; log: {}", std::fs::read_to_string(&self.log_path).unwrap_or_default());
        }
    }

    pub async fn metric(&self, name: &str) -> f64 {
        ops::metric_sum(&ops::metrics(self.ops_addr()).await.unwrap(), name)
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running").to_string();
        assert!(std::process::Command::new("kill").args([signal, &pid]).status().unwrap().success());
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

/// Waits until `count` session-ready events have been published (read from metrics);
/// returns how many there were, so a test can show its fault landed mid-stream.
pub async fn wait_for_announcements(worker: &Worker, count: f64, timeout: Duration) -> f64 {
    let deadline = Instant::now() + timeout;
    loop {
        let announced = worker.metric("bunq_session_worker_deliveries_total{outcome=\"announced\"").await;
        if announced >= count {
            return announced;
        }
        assert!(Instant::now() < deadline, "fewer than {count} announcements");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A stream of `ready` onboarding-ready provisions, with malformed, expired, not-ready,
/// token-less and duplicate events mixed in.
pub fn mixed_stream(ready: usize) -> Vec<Input> {
    let base = u64::from(rand::random::<u32>()) * 1000;
    let future = future_expiry();
    let past = expiry_in(time::Duration::minutes(-5));
    let mut inputs = Vec::new();
    for i in 0..ready as u64 {
        let id = base + i;
        let token = random_token();
        let body = ready_body(id, &token);
        inputs.push(Input { body, expect: Expect::Session { provision_id: id, token } });
        match i % 8 {
            0 => inputs
                .push(Input { body: format!("garbage {i}").into_bytes(), expect: Expect::DeadLetter("malformed") }),
            1 => inputs.push(Input {
                body: provision_body(
                    base + 100_000 + i,
                    "CREATED",
                    "PENDING_PROCESS_USER_ONBOARDING",
                    Some("expired-token"),
                    &past,
                    true,
                ),
                expect: Expect::DeadLetter("credential_expired"),
            }),
            2 => inputs.push(Input {
                body: provision_body(
                    base + 200_000 + i,
                    "CREATED",
                    "PENDING_PROCESS_OAUTH_REQUEST",
                    Some("t"),
                    &future,
                    true,
                ),
                expect: Expect::Skipped,
            }),
            3 => inputs.push(Input {
                body: provision_body(
                    base + 300_000 + i,
                    "CREATED",
                    "PENDING_PROCESS_USER_ONBOARDING",
                    None,
                    &future,
                    true,
                ),
                expect: Expect::Skipped,
            }),
            4 => {
                // The same event again: a duplicate from upstream.
                let original = inputs[inputs.len() - 1].clone();
                inputs.push(original);
            }
            _ => {}
        }
    }
    inputs
}

impl Env {
    /// A new AMQP connection for the test itself, after the broker closed the old one.
    pub async fn reconnect(mut self) -> Env {
        self.connection = connect_amqp(&self.amqp_url).await.unwrap();
        self.channel = self.connection.create_channel().await.unwrap();
        self.channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        self
    }
}

/// A Redis of the test's own, so restarting it disturbs no other test. It keeps an
/// append-only file, as a production Redis holding sessions would.
pub struct OwnRedis {
    port: u16,
    dir: tempfile::TempDir,
    /// `None` while stopped.
    child: Option<std::process::Child>,
}

impl OwnRedis {
    pub async fn start() -> OwnRedis {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut redis = OwnRedis { port, dir, child: None };
        redis.resume().await;
        redis
    }

    fn spawn(port: u16, dir: &tempfile::TempDir) -> std::process::Child {
        std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", "always", "--dir", dir.path().to_str().unwrap()])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed")
    }

    async fn wait_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Shuts Redis down, leaves it down for `down`, starts it again on the same port and data.
    pub async fn restart(mut self, down: Duration) -> OwnRedis {
        self.stop();
        tokio::time::sleep(down).await;
        self.resume().await;
        self
    }

    /// Shuts Redis down; its data stays on disk (append-only file, fsync always).
    pub fn stop(&mut self) {
        let _ = std::process::Command::new("redis-cli").args(["-p", &self.port.to_string(), "shutdown"]).output();
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// Starts it (again) on the same port and data.
    pub async fn resume(&mut self) {
        self.child = Some(Self::spawn(self.port, &self.dir));
        self.wait_up().await;
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
