//! Fault-test harness: a RabbitMQ vhost per test (so `close_all_connections --vhost`
//! touches no other test), the worker as a real process, fake-bunq in-process, a stream
//! of mixed events, and the ledger that accounts for every input.

use bunq_session_worker::amqp::headers;
use bunq_session_worker::amqp::topology;
use bunq_session_worker::config::ConnectionArgs;
use bunq_protocol::timestamp as bunq_time;
use fake_bunq::{self, FakeConfig, FakeHandle};
use bunq_session_worker::store::{Keys, Store};
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_bunq-session-worker");
const CLIENT_KEY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/client_key.pem");
pub const ROUTING_KEY: &str = "partner_user_provision.updated";

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

pub fn rabbitmqctl(args: &[&str]) {
    let output = std::process::Command::new("rabbitmqctl").args(args).output().expect("rabbitmqctl runs");
    assert!(output.status.success(), "rabbitmqctl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct Env {
    pub id: String,
    pub vhost: String,
    pub amqp_url: String,
    pub redis_url: String,
    pub names: ConnectionArgs,
    pub prefix: String,
    pub capture: String,
    pub fake: FakeHandle,
    pub store: Store,
    pub connection: Connection,
    pub channel: Channel,
    pub logs: tempfile::TempDir,
    /// Worker settings beyond the defaults, as environment variables.
    pub worker_env: Vec<(String, String)>,
    leftovers: Leftovers,
}

/// Deletes the test's vhost and keys if it panics before its teardown.
struct Leftovers {
    vhost: String,
    prefix: String,
    redis_url: String,
    armed: bool,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let _ = std::process::Command::new("rabbitmqctl").args(["delete_vhost", &self.vhost]).output();
        if let Ok(mut redis) = redis::Client::open(self.redis_url.as_str()).and_then(|c| c.get_connection()) {
            let keys: Vec<String> =
                redis::cmd("KEYS").arg(format!("{}*", self.prefix)).query(&mut redis).unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<(), _> = redis::cmd("DEL").arg(&keys).query(&mut redis);
            }
        }
    }
}

impl Env {
    pub async fn new(fake: FakeConfig, redis_url: &str) -> Env {
        let id = format!("flt-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let vhost = id.clone();
        rabbitmqctl(&["add_vhost", &vhost]);
        rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
        let amqp_url = format!("amqp://guest:guest@127.0.0.1:5672/{vhost}");
        let names = ConnectionArgs {
            amqp_url: amqp_url.clone().into(),
            input_exchange: "provisioning".into(),
            input_queue: "bunq-session-worker.provision-status".into(),
            input_binding_key: "partner_user_provision.#".into(),
            output_exchange: "bunq.sessions".into(),
            output_routing_key: "session.ready".into(),
            dead_letter_queue: "bunq-session-worker.dead-letter".into(),
            retry_queue: "bunq-session-worker.retry".into(),
        };
        let fake = fake_bunq::spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), fake).await.unwrap();
        let connection = Connection::connect(&amqp_url, ConnectionProperties::default()).await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        topology::declare(&channel, &names).await.unwrap();
        channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        let capture = "downstream.capture".to_owned();
        channel.queue_declare(capture.as_str().into(), Default::default(), FieldTable::default()).await.unwrap();
        channel
            .queue_bind(
                capture.as_str().into(),
                "bunq.sessions".into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let prefix = format!("{id}:");
        let redis = bunq_session_worker::startup::redis_connection(&redis_url.to_owned().into()).unwrap();
        let store = Store::new(redis, Keys::new(&prefix), None);
        let leftovers =
            Leftovers { vhost: vhost.clone(), prefix: prefix.clone(), redis_url: redis_url.to_owned(), armed: true };
        Env {
            leftovers,
            id,
            vhost,
            amqp_url,
            redis_url: redis_url.to_owned(),
            names,
            prefix,
            capture,
            fake,
            store,
            connection,
            channel,
            logs: tempfile::tempdir().unwrap(),
            worker_env: Vec::new(),
        }
    }

    /// Starts `bunq-session-worker run` as a process; its logs go to a file per start.
    pub fn start_worker(&self, name: &str) -> Worker {
        let ops_port = free_port();
        let log_path = self.logs.path().join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = Command::new(BIN);
        command
            .arg("run")
            .env_clear()
            .env("AMQP_URL", &self.amqp_url)
            .env("REDIS_URL", &self.redis_url)
            .env("BUNQ_BASE_URL", self.fake.base_url())
            .env("BUNQ_CLIENT_PRIVATE_KEY_FILE", CLIENT_KEY)
            .env("REDIS_KEY_PREFIX", &self.prefix)
            .env("OPS_ADDR", format!("127.0.0.1:{ops_port}"))
            .env("POD_NAME", format!("{}-{name}", self.id))
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info,lapin=warn")
            .env("PREFETCH", "16")
            .env("RATE_LIMIT_SCOPE", "credential")
            .env("RATE_LIMIT_SESSION_SERVER", "1000/1s")
            .env("RATE_LIMIT_OTHER_POST", "1000/1s")
            .env("RETRY_INITIAL_INTERVAL_MS", "20")
            .env("RETRY_MAX_INTERVAL_MS", "300")
            .env("RETRY_BUDGET_MS", "5000")
            .env("RETRY_QUEUE_DELAY_MS", "200")
            .env("RETRY_QUEUE_MAX_DELAY_MS", "1000")
            .env("MAX_ATTEMPTS", "30")
            .env("LOCK_TTL_MS", "12000")
            .env("BUNQ_REQUEST_TIMEOUT_MS", "1000")
            .env("SHUTDOWN_TIMEOUT", "10s")
            .envs(self.worker_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        Worker { child: command.spawn().unwrap(), ops_port, log_path }
    }

    pub async fn publish_all(&self, inputs: &[Input]) {
        for input in inputs {
            self.publish(&input.body).await;
        }
    }

    pub async fn publish(&self, body: &[u8]) {
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(uuid::Uuid::new_v4().to_string().as_str().into());
        let confirm = self
            .channel
            .basic_publish("provisioning".into(), ROUTING_KEY.into(), BasicPublishOptions::default(), body, properties)
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
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
            self.drain(&self.names.dead_letter_queue.clone(), &mut dead).await;
            let announced: HashSet<u64> = events.iter().map(|(b, _)| event_field(b, "provision_id")).collect();
            let done = expected_sessions.is_subset(&announced) && dead.len() >= expected_dead;
            if done
                && self.queue_empty(&self.names.input_queue).await
                && self.queue_empty(&self.names.retry_queue).await
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
        self.drain(&self.names.dead_letter_queue.clone(), &mut dead).await;
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
        let mut dead_by_body: HashMap<&[u8], Vec<String>> = HashMap::new();
        for (body, properties) in dead {
            let reason = headers::get_str(properties, headers::DEAD_LETTER_REASON).unwrap_or_else(|| "none".into());
            assert!(headers::get_str(properties, headers::DEAD_LETTER_DETAIL).is_some_and(|d| !d.is_empty()));
            dead_by_body.entry(body.as_slice()).or_default().push(reason);
        }
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
                    let handshake = self.store.load_handshake(*provision_id).await.unwrap();
                    let session =
                        handshake.session.unwrap_or_else(|| panic!("provision {provision_id}: no session recorded"));
                    assert!(
                        self.store.read_session(session.user_id).await.unwrap().is_some(),
                        "provision {provision_id}: not cached"
                    );
                    let opened = self.fake.sessions_created_for(token);
                    assert!(opened >= 1, "provision {provision_id}: fake-bunq opened no session");
                    ledger.sessions += 1;
                    ledger.extra_sessions_at_bunq += opened - 1;
                    assert!(
                        !dead_by_body.contains_key(input.body.as_slice()),
                        "provision {provision_id}: also dead-lettered"
                    );
                }
                Expect::DeadLetter(reason) => {
                    let reasons = dead_by_body
                        .get(input.body.as_slice())
                        .unwrap_or_else(|| panic!("expected a {reason} dead letter"));
                    assert_eq!(reasons, &vec![reason.to_string()], "dead letters for one input");
                    ledger.dead_letters += 1;
                    *ledger.dead_by_reason.entry(reason).or_default() += 1;
                }
                Expect::Skipped => ledger.skipped += 1,
            }
        }
        ledger.duplicate_announcements = events.len() - ledger.sessions;
        assert_eq!(dead.len(), ledger.dead_letters, "dead letters that match no input");
        ledger
    }

    pub async fn teardown(mut self) {
        self.leftovers.armed = false;
        let _ = self.connection.close(200, "teardown".into()).await;
        rabbitmqctl(&["delete_vhost", &self.vhost]);
        let mut redis = bunq_session_worker::startup::redis_connection(&self.redis_url.clone().into()).unwrap();
        if let Ok(keys) =
            redis::cmd("KEYS").arg(format!("{}*", self.prefix)).query_async::<Vec<String>>(&mut redis).await
        {
            if !keys.is_empty() {
                let _: Result<(), _> = redis::cmd("DEL").arg(&keys).query_async(&mut redis).await;
            }
        }
        self.fake.shutdown().await;
    }
}

/// What a fault run produced.
#[derive(Debug, Default)]
pub struct Ledger {
    pub inputs: usize,
    pub sessions: usize,
    pub dead_letters: usize,
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
            "LEDGER {scenario}: {} inputs -> {} sessions, {} dead letters {:?}, {} skipped; {} session-ready events ({} repeats, same event id); {} extra sessions at fake-bunq",
            self.inputs,
            self.sessions,
            self.dead_letters,
            self.dead_by_reason,
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
    pub async fn wait_ready(&self) {
        let url = format!("http://127.0.0.1:{}/readyz", self.ops_port);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if reqwest::get(&url).await.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("worker not ready; log: {}", std::fs::read_to_string(&self.log_path).unwrap_or_default());
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let text =
            reqwest::get(format!("http://127.0.0.1:{}/metrics", self.ops_port)).await.unwrap().text().await.unwrap();
        text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
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
    let future = bunq_time::format(OffsetDateTime::now_utc() + time::Duration::hours(1));
    let past = bunq_time::format(OffsetDateTime::now_utc() - time::Duration::minutes(5));
    let mut inputs = Vec::new();
    for i in 0..ready as u64 {
        let id = base + i;
        let token = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        let body = provision(id, "CREATED", "PENDING_PROCESS_USER_ONBOARDING", Some((&token, &future)));
        inputs.push(Input { body, expect: Expect::Session { provision_id: id, token } });
        match i % 8 {
            0 => inputs
                .push(Input { body: format!("garbage {i}").into_bytes(), expect: Expect::DeadLetter("malformed") }),
            1 => inputs.push(Input {
                body: provision(
                    base + 100_000 + i,
                    "CREATED",
                    "PENDING_PROCESS_USER_ONBOARDING",
                    Some(("expired-token", &past)),
                ),
                expect: Expect::DeadLetter("credential_expired"),
            }),
            2 => inputs.push(Input {
                body: provision(base + 200_000 + i, "CREATED", "PENDING_PROCESS_OAUTH_REQUEST", Some(("t", &future))),
                expect: Expect::Skipped,
            }),
            3 => inputs.push(Input {
                body: provision(base + 300_000 + i, "CREATED", "PENDING_PROCESS_USER_ONBOARDING", None),
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

pub fn provision(id: u64, status: &str, sub_status: &str, credential: Option<(&str, &str)>) -> Vec<u8> {
    let credential = credential.map(|(token, expiry)| {
        serde_json::json!({"id": id + 7, "status": "PENDING_FIRST_USE", "expiry_time": expiry, "token_value": token})
    });
    serde_json::to_vec(&serde_json::json!({"NotificationUrl": {"category": "PARTNER_USER_PROVISION",
        "event_type": "PARTNER_USER_PROVISION_PROCESS_UPDATED",
        "object": {"PartnerUserProvision": {"id": id, "external_uuid": format!("ext-{id}"), "status": status,
            "sub_status": sub_status, "credential": credential}}}}))
    .unwrap()
}

impl Env {
    /// A new AMQP connection for the test itself, after the broker closed the old one.
    pub async fn reconnect(mut self) -> Env {
        self.connection = Connection::connect(&self.amqp_url, ConnectionProperties::default()).await.unwrap();
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
    child: std::process::Child,
}

impl OwnRedis {
    pub async fn start() -> OwnRedis {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Self::spawn(port, &dir);
        let redis = OwnRedis { port, dir, child };
        redis.wait_up().await;
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
        let _ = std::process::Command::new("redis-cli").args(["-p", &self.port.to_string(), "shutdown"]).output();
        let _ = self.child.wait();
        tokio::time::sleep(down).await;
        self.child = Self::spawn(self.port, &self.dir);
        self.wait_up().await;
        self
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
