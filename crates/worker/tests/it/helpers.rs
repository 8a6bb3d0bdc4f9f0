//! `spawn_app()`: a real worker in-process against the machine's RabbitMQ and Redis and
//! an in-process fake bunq, with names unique to the test so tests run in parallel.
//! What the fault tests, the bench and the demo share too lives in `test_support`.

use bunq_session_worker::amqp::topology::{self, Names};
use bunq_session_worker::event::SessionReady;
use bunq_session_worker::startup::Worker;
use bunq_session_worker::store::Redis;
use bunq_session_worker::store::Store;
use fake_bunq::{self, FakeConfig, FakeHandle};
use lapin::options::{BasicAckOptions, BasicGetOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use test_support::{
    capture_queue, connect_amqp, connect_redis, init_test_logging, ops, publish_input, relaxed_fake, Cleanup,
    Leftovers, TestNames, WorkerEnv, AMQP_URL, REDIS_URL,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct AppOptions {
    /// Bind a capture queue to the output exchange (false: session-ready is unroutable).
    pub bind_output: bool,
    pub fake: FakeConfig,
    /// Worker flags beyond the fast test settings, replacing those of the same name,
    /// e.g. `["--max-attempts=1"]`.
    pub flags: Vec<String>,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self { bind_output: true, fake: relaxed_fake(), flags: Vec::new() }
    }
}

pub struct TestApp {
    pub names: Names,
    pub prefix: String,
    pub capture_queue: String,
    pub fake: FakeHandle,
    pub store: Store,
    pub redis: Redis,
    pub ops_addr: SocketAddr,
    connection: Connection,
    channel: Channel,
    shutdown: CancellationToken,
    worker: Option<JoinHandle<anyhow::Result<()>>>,
    /// The first worker's settings: [`TestApp::spawn_replica`] starts more from them.
    env: WorkerEnv,
    replicas: Vec<(CancellationToken, JoinHandle<anyhow::Result<()>>)>,
    leftovers: Leftovers,
    /// Messages this test published to the input exchange: [`TestApp::wait_idle`] waits
    /// for a final outcome of each.
    published: AtomicU64,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppOptions::default()).await
}

pub async fn spawn_app_with(options: AppOptions) -> TestApp {
    init_test_logging();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake = fake_bunq::spawn(listener, options.fake).await.unwrap();
    let test_names = TestNames::new("it");
    let env = WorkerEnv::fast(&fake.base_url(), &test_names);
    let env = options.flags.iter().fold(env, |env, flag| env.set_flag(flag));
    let settings = env.settings();
    let names = settings.amqp.names.clone();
    let prefix = settings.redis.key_prefix.clone();

    let connection = connect_amqp(AMQP_URL).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let capture_queue_name = test_names.queue("capture");
    let leftovers = Leftovers::new(Cleanup::new(&test_names).queue(&capture_queue_name));
    topology::declare(&channel, &names).await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let binding_key = options.bind_output.then_some("#");
    capture_queue(&channel, &names, &capture_queue_name, binding_key).await.unwrap();

    let redis = connect_redis(REDIS_URL).unwrap();
    let store = settings.redis.store(redis.clone());
    let worker = Worker::build(settings).await.unwrap();
    let ops_addr = worker.ops_addr();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(worker.run_until_stopped(shutdown.clone()));
    let app = TestApp {
        env,
        replicas: Vec::new(),
        leftovers,
        names,
        prefix,
        capture_queue: capture_queue_name,
        fake,
        store,
        redis,
        ops_addr,
        connection,
        channel,
        shutdown,
        worker: Some(handle),
        published: AtomicU64::new(0),
    };
    app.wait_ready().await;
    app
}

impl TestApp {
    pub async fn wait_ready(&self) {
        assert!(ops::wait_ready(self.ops_addr, Duration::from_secs(15)).await, "worker never became ready");
    }

    /// The test's own channel (publisher confirms on).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes a body to the input exchange as an upstream would; returns its message id.
    pub async fn publish(&self, body: &[u8]) -> String {
        let message_id = uuid::Uuid::new_v4().to_string();
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id(message_id.as_str().into())
            .with_correlation_id(format!("corr-{message_id}").as_str().into());
        let confirm = self.publish_with(body, properties).await;
        assert!(confirm.is_ack() && confirm.take_message().is_none(), "input must be routable");
        message_id
    }

    /// Publishes to the input exchange with the test's own properties (forged headers).
    pub async fn publish_with(&self, body: &[u8], properties: BasicProperties) -> Confirmation {
        let confirm = publish_input(&self.channel, &self.names, body, properties).await.unwrap();
        self.published.fetch_add(1, Ordering::SeqCst);
        confirm
    }

    /// Takes one message from `queue`, waiting up to `timeout`.
    pub async fn take(&self, queue: &str, timeout: Duration) -> Option<(Vec<u8>, BasicProperties)> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.channel.basic_get(queue.into(), BasicGetOptions { no_ack: false }).await.unwrap();
            if let Some(message) = got {
                message.ack(BasicAckOptions::default()).await.unwrap();
                return Some((message.delivery.data.clone(), message.delivery.properties.clone()));
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The next event on the capture queue (any type), as JSON.
    pub async fn next_json(&self, timeout: Duration) -> Option<serde_json::Value> {
        let (body, _) = self.take(&self.capture_queue, timeout).await?;
        Some(serde_json::from_slice(&body).expect("events are JSON"))
    }

    pub async fn next_event(&self, timeout: Duration) -> Option<(SessionReady, BasicProperties)> {
        let (body, properties) = self.take(&self.capture_queue, timeout).await?;
        Some((serde_json::from_slice(&body).expect("session-ready events are valid JSON"), properties))
    }

    pub async fn next_dead_letter(&self, timeout: Duration) -> Option<(Vec<u8>, BasicProperties)> {
        self.take(&self.names.dead_letter_queue.clone(), timeout).await
    }

    pub async fn delete_queue(&self, queue: &str) {
        self.channel.queue_delete(queue.into(), QueueDeleteOptions::default()).await.unwrap();
    }

    /// Messages ready in `queue` (not counting unacked deliveries).
    pub async fn ready_count(&self, queue: &str) -> u32 {
        let channel = self.connection.create_channel().await.unwrap();
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let _ = channel.close(200, "ok".into()).await;
        declared.message_count()
    }

    /// Waits until every message this test published has had its final outcome and
    /// nothing is ready or in flight on the input and retry queues. The queues and the
    /// gauge alone do not say it: a delivery on its way to the worker's consumer is
    /// neither ready nor yet in flight.
    pub async fn wait_idle(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let published = self.published.load(Ordering::SeqCst);
        loop {
            let input = self.ready_count(&self.names.input_queue.clone()).await;
            let retry = self.ready_count(&self.names.retry_queue.clone()).await;
            let metrics = self.metrics().await;
            let in_flight =
                metrics.lines().any(|l| l.starts_with("bunq_session_worker_in_flight ") && !l.ends_with(" 0"));
            let settled = final_outcomes(&metrics);
            if input == 0 && retry == 0 && !in_flight && settled >= published {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not idle: input {input}, retry {retry}, in flight {in_flight}, {settled} of {published} settled"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        ops::metrics(self.ops_addr).await.unwrap()
    }

    /// The metrics once they contain `line`: a counter moves after the work it counts
    /// (an event is published before its close is purged and counted), so a test that
    /// saw the event waits for the count instead of racing it.
    pub async fn metrics_with(&self, line: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let metrics = self.metrics().await;
            if metrics.contains(line) || Instant::now() >= deadline {
                return metrics;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts another worker on the same queues, Redis prefix and fake bunq (a second
    /// replica; its own consumer tag); stopped at teardown. Returns its ops address.
    pub async fn spawn_replica(&mut self) -> SocketAddr {
        self.spawn_replica_with(&[]).await
    }

    /// The same, with `flags` on top of the first worker's settings (a replica of a
    /// rollout's new configuration).
    pub async fn spawn_replica_with(&mut self, flags: &[String]) -> SocketAddr {
        let env = flags.iter().fold(self.env.clone(), |env, flag| env.set_flag(flag));
        let worker = Worker::build(env.settings()).await.unwrap();
        let ops_addr = worker.ops_addr();
        let shutdown = CancellationToken::new();
        self.replicas.push((shutdown.clone(), tokio::spawn(worker.run_until_stopped(shutdown))));
        assert!(ops::wait_ready(ops_addr, Duration::from_secs(15)).await, "replica never became ready");
        ops_addr
    }

    /// Stops the first worker (as a rollout replaces a pod): its unsettled deliveries
    /// return to the queue; replicas go on. Its ops address answers no more, so
    /// [`Self::metrics`] and [`Self::wait_idle`] need a replica's.
    pub async fn stop_worker(&mut self) {
        self.shutdown.cancel();
        if let Some(worker) = self.worker.take() {
            worker.await.unwrap().unwrap();
        }
    }

    /// Stops the worker and removes everything the test created.
    pub async fn teardown(mut self) {
        for (shutdown, replica) in self.replicas.drain(..) {
            shutdown.cancel();
            replica.await.unwrap().unwrap();
        }
        self.shutdown.cancel();
        if let Some(worker) = self.worker.take() {
            worker.await.unwrap().unwrap();
        }
        self.leftovers.clean().await.unwrap();
        let _ = self.connection.close(200, "teardown".into()).await;
        self.fake.shutdown().await;
    }
}

/// Deliveries settled for good: every outcome but a trip through the retry queue and a
/// return to the queue, which each come back as another delivery.
fn final_outcomes(metrics: &str) -> u64 {
    let all = ops::metric_sum(metrics, "bunq_session_worker_deliveries_total{");
    let again = ["retried", "returned"].map(|outcome| {
        ops::metric_sum(metrics, &format!(r#"bunq_session_worker_deliveries_total{{outcome="{outcome}""#))
    });
    (all - again.iter().sum::<f64>()) as u64
}

/// A random 32-byte encryption key in a file of its own.
pub fn key_file() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("session.key");
    let key: [u8; 32] = std::array::from_fn(|_| rand::random::<u8>());
    std::fs::write(&path, hex::encode(key)).unwrap();
    (dir, path.to_str().unwrap().to_owned())
}

pub fn header_str(properties: &BasicProperties, name: &str) -> Option<String> {
    bunq_session_worker::amqp::headers::get_str(properties, name)
}

/// The worker binary as a process: `run` with exactly `vars` (JSON logs at debug), its
/// stderr collected for the test to read after [`Binary::terminate`].
pub struct Binary {
    pub child: tokio::process::Child,
    logs: JoinHandle<String>,
}

impl Binary {
    pub fn run<'a>(vars: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        use tokio::io::AsyncReadExt as _;
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_bunq-session-worker"))
            .arg("run")
            .env_clear()
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "debug")
            .envs(vars)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let logs = tokio::spawn(async move {
            let mut text = String::new();
            stderr.read_to_string(&mut text).await.unwrap();
            text
        });
        Self { child, logs }
    }

    /// Fails the test if the process has exited.
    pub fn assert_running(&mut self) {
        assert!(self.child.try_wait().unwrap().is_none(), "worker exited early");
    }

    /// SIGTERM; the worker drains and must exit 0 within 30 s. Returns what it logged.
    pub async fn terminate(mut self) -> String {
        let pid = self.child.id().unwrap();
        std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("exits after SIGTERM")
            .unwrap();
        assert!(status.success(), "exit status {status}");
        self.logs.await.unwrap()
    }
}

/// A test's own view of the output, the way downstream would have it: a connection, the
/// worker's topology declared, and a capture queue bound to every event (deleted with the
/// rest by the returned [`Leftovers`]).
pub async fn observe_output(names: &TestNames) -> (Connection, Channel, String, Leftovers) {
    let connection = connect_amqp(AMQP_URL).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    topology::declare(&channel, &names.topology).await.unwrap();
    let capture = names.queue("capture");
    let leftovers = Leftovers::new(Cleanup::new(names).queue(&capture));
    capture_queue(&channel, &names.topology, &capture, Some("#")).await.unwrap();
    (connection, channel, capture, leftovers)
}
