//! `spawn_app()`: a real worker in-process against the machine's RabbitMQ and Redis and
//! an in-process fake bunq, with names unique to the test so tests run in parallel.

use bunq_session_worker::amqp::topology;
use bunq_session_worker::config::{ConnectionArgs, Settings, WorkerArgs};
use bunq_session_worker::event::SessionReady;
use fake_bunq::{self, FakeConfig, FakeHandle};
use bunq_session_worker::startup::{redis_connection, Worker};
use bunq_session_worker::store::{Keys, Store};
use clap::Parser;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use redis::aio::ConnectionManager;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379/0";
pub const CLIENT_KEY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/client_key.pem");
pub const ROUTING_KEY: &str = "partner_user_provision.updated";

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: WorkerArgs,
}

pub struct AppOptions {
    /// Bind a capture queue to the output exchange (false: session-ready is unroutable).
    pub bind_output: bool,
    pub fake: FakeConfig,
    /// Extra worker flags, e.g. `["--max-attempts", "1"]`.
    pub flags: Vec<String>,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self { bind_output: true, fake: relaxed_fake(), flags: Vec::new() }
    }
}

pub struct TestApp {
    pub names: ConnectionArgs,
    pub prefix: String,
    pub capture_queue: String,
    pub fake: FakeHandle,
    pub store: Store,
    pub redis: ConnectionManager,
    pub ops_addr: SocketAddr,
    connection: Connection,
    channel: Channel,
    shutdown: CancellationToken,
    worker: Option<JoinHandle<anyhow::Result<()>>>,
    leftovers: Leftovers,
}

/// Removes a test's queues, exchanges and Redis keys when the test panics before its
/// teardown, so a failing test leaves nothing behind either.
pub struct Leftovers {
    names: ConnectionArgs,
    extra_queues: Vec<String>,
    prefix: String,
    armed: bool,
}

impl Leftovers {
    pub fn new(names: &ConnectionArgs, extra_queues: &[String], prefix: &str) -> Self {
        Self { names: names.clone(), extra_queues: extra_queues.to_vec(), prefix: prefix.to_owned(), armed: true }
    }

    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (names, queues, prefix) = (self.names.clone(), self.extra_queues.clone(), self.prefix.clone());
        // A runtime of its own: the test's may be gone or panicking.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async {
                if let Ok(connection) = Connection::connect(AMQP_URL, ConnectionProperties::default()).await {
                    let mut redis = redis_connection(&REDIS_URL.to_owned().into()).expect("redis url");
                    cleanup(&connection, &names, &queues, &prefix, &mut redis).await;
                }
            });
        })
        .join();
    }
}

/// bunq's limits make every retry of session-server wait 30 s; tests about other things
/// raise them (rate-limit tests set their own).
pub fn relaxed_fake() -> FakeConfig {
    FakeConfig {
        session_server_limit: (1000, Duration::from_secs(1)),
        other_post_limit: (1000, Duration::from_secs(1)),
        ..FakeConfig::default()
    }
}

/// Names unique to one test: its queues, exchanges and Redis key prefix.
pub fn unique_names() -> (String, Vec<String>) {
    let id = format!("it-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let flags = vec![
        format!("--input-exchange={id}.provisioning"),
        format!("--input-queue={id}.provision-status"),
        format!("--output-exchange={id}.sessions"),
        format!("--dead-letter-queue={id}.dead-letter"),
        format!("--retry-queue={id}.retry"),
        format!("--redis-key-prefix={id}:"),
    ];
    (id, flags)
}

/// Flags every test worker uses: fast retries, per-credential rate limits (the fake
/// limits per device), an ephemeral ops port.
pub fn base_flags(base_url: &str) -> Vec<String> {
    [
        format!("--amqp-url={AMQP_URL}"),
        format!("--redis-url={REDIS_URL}"),
        format!("--bunq-base-url={base_url}"),
        format!("--bunq-client-private-key-file={CLIENT_KEY}"),
        "--ops-addr=127.0.0.1:0".to_owned(),
        "--rate-limit-scope=credential".to_owned(),
        "--rate-limit-session-server=1000/1s".to_owned(),
        "--rate-limit-other-post=1000/1s".to_owned(),
        "--retry-initial-interval-ms=20".to_owned(),
        "--retry-max-interval-ms=200".to_owned(),
        "--retry-budget-ms=5000".to_owned(),
        "--retry-queue-delay-ms=200".to_owned(),
        "--retry-queue-max-delay-ms=1000".to_owned(),
        "--lock-ttl-ms=15000".to_owned(),
        "--bunq-request-timeout-ms=2000".to_owned(),
        "--pod-name=it".to_owned(),
    ]
    .into()
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppOptions::default()).await
}

pub async fn spawn_app_with(options: AppOptions) -> TestApp {
    init_test_logging();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake = fake_bunq::spawn(listener, options.fake).await.unwrap();
    let (id, name_flags) = unique_names();
    // A test's own flags replace the base flags of the same name.
    let name_of = |flag: &String| flag.split('=').next().unwrap_or_default().to_owned();
    let overridden: Vec<String> = options.flags.iter().map(name_of).collect();
    let mut argv = vec!["worker".to_owned()];
    argv.extend(base_flags(&fake.base_url()).into_iter().filter(|f| !overridden.contains(&name_of(f))));
    argv.extend(name_flags);
    argv.extend(options.flags);
    let settings = Settings::from_args(Cli::parse_from(argv).args).expect("test settings are valid");
    let names = settings.connection.clone();
    let prefix = settings.redis_key_prefix.clone();

    let connection = Connection::connect(AMQP_URL, ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    topology::declare(&channel, &names).await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let capture_queue = format!("{id}.capture");
    channel
        .queue_declare(capture_queue.as_str().into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .unwrap();
    if options.bind_output {
        channel
            .queue_bind(
                capture_queue.as_str().into(),
                names.output_exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    let redis = redis_connection(&REDIS_URL.to_owned().into()).unwrap();
    let store = Store::new(redis.clone(), Keys::new(&prefix), None);
    let worker = Worker::build(settings).await.unwrap();
    let ops_addr = worker.ops_addr();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(worker.run_until_stopped(shutdown.clone()));
    let leftovers = Leftovers::new(&names, std::slice::from_ref(&capture_queue), &prefix);
    let app = TestApp {
        leftovers,
        names,
        prefix,
        capture_queue,
        fake,
        store,
        redis,
        ops_addr,
        connection,
        channel,
        shutdown,
        worker: Some(handle),
    };
    app.wait_ready().await;
    app
}

fn init_test_logging() {
    // Quiet unless TEST_LOG is set, as in zero-to-production.
    if std::env::var_os("TEST_LOG").is_some() {
        let _ =
            tracing_subscriber::fmt().with_env_filter("info,bunq_session_worker=debug").with_test_writer().try_init();
    }
}

impl TestApp {
    pub async fn wait_ready(&self) {
        let url = format!("http://{}/readyz", self.ops_addr);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(response) = reqwest::get(&url).await {
                if response.status().is_success() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "worker never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Publishes a body to the input exchange as an upstream would; returns its message id.
    pub async fn publish(&self, body: &[u8]) -> String {
        let message_id = uuid::Uuid::new_v4().to_string();
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(message_id.as_str().into())
            .with_correlation_id(format!("corr-{message_id}").as_str().into());
        let confirm = self
            .channel
            .basic_publish(
                self.names.input_exchange.as_str().into(),
                ROUTING_KEY.into(),
                BasicPublishOptions { mandatory: true, immediate: false },
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack() && confirm.take_message().is_none(), "input must be routable");
        message_id
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

    /// Waits until nothing is ready or in flight on the input and retry queues.
    pub async fn wait_idle(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let metrics_url = format!("http://{}/metrics", self.ops_addr);
        loop {
            let input = self.ready_count(&self.names.input_queue.clone()).await;
            let retry = self.ready_count(&self.names.retry_queue.clone()).await;
            let metrics = reqwest::get(&metrics_url).await.unwrap().text().await.unwrap();
            let in_flight =
                metrics.lines().any(|l| l.starts_with("bunq_session_worker_in_flight ") && !l.ends_with(" 0"));
            if input == 0 && retry == 0 && !in_flight {
                return;
            }
            assert!(Instant::now() < deadline, "not idle: input {input}, retry {retry}, in flight {in_flight}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.ops_addr)).await.unwrap().text().await.unwrap()
    }

    /// Stops the worker and removes everything the test created.
    pub async fn teardown(mut self) {
        self.shutdown.cancel();
        if let Some(worker) = self.worker.take() {
            worker.await.unwrap().unwrap();
        }
        cleanup(&self.connection, &self.names, &[self.capture_queue.clone()], &self.prefix, &mut self.redis).await;
        self.leftovers.disarm();
        let _ = self.connection.close(200, "teardown".into()).await;
        self.fake.shutdown().await;
    }
}

/// Deletes a test's queues, exchanges and Redis keys.
pub async fn cleanup(
    connection: &Connection,
    names: &ConnectionArgs,
    extra_queues: &[String],
    prefix: &str,
    redis: &mut ConnectionManager,
) {
    let channel = connection.create_channel().await.unwrap();
    let queues = [&names.input_queue, &names.retry_queue, &names.dead_letter_queue].into_iter().chain(extra_queues);
    for queue in queues {
        let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    }
    for exchange in [&names.input_exchange, &names.output_exchange] {
        let _ = channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
    }
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(redis).await.unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(&keys).query_async(redis).await.unwrap();
    }
}

pub fn header_str(properties: &BasicProperties, name: &str) -> Option<String> {
    bunq_session_worker::amqp::headers::get_str(properties, name)
}

/// A provision body. `shape`: `webhook` (bunq's NotificationUrl body) or `object`.
pub fn provision_body(
    id: u64,
    status: &str,
    sub_status: &str,
    token: Option<&str>,
    expiry: &str,
    webhook: bool,
) -> Vec<u8> {
    let credential = match token {
        Some(token) => {
            serde_json::json!({"id": id + 500, "status": "PENDING_FIRST_USE", "expiry_time": expiry, "token_value": token})
        }
        None => serde_json::Value::Null,
    };
    let object = serde_json::json!({"PartnerUserProvision": {
        "id": id, "created": "2025-09-03 08:24:13.795007", "updated": "2025-09-03 08:24:14.266407",
        "external_uuid": format!("ext-{id}"), "status": status, "sub_status": sub_status,
        "action_required": "USER", "products": ["USER_VERIFIED"], "credential": credential,
    }});
    let body = if webhook {
        serde_json::json!({"NotificationUrl": {"target_url": "https://partner.example/hook", "category": "PARTNER_USER_PROVISION",
            "event_type": "PARTNER_USER_PROVISION_PROCESS_UPDATED", "object": object}})
    } else {
        object
    };
    serde_json::to_vec(&body).unwrap()
}

/// An expiry an hour from now, in bunq's format.
pub fn future_expiry() -> String {
    bunq_protocol::timestamp::format(time::OffsetDateTime::now_utc() + time::Duration::hours(1))
}

pub fn random_token() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

pub fn ready_body(id: u64, token: &str) -> Vec<u8> {
    provision_body(id, "CREATED", "PENDING_PROCESS_USER_ONBOARDING", Some(token), &future_expiry(), true)
}

pub fn random_id() -> u64 {
    u64::from(rand::random::<u32>()) + 1
}

/// Parses worker flags the way the binary would (for tests that run the binary).
pub fn settings_from_flags(flags: &[String]) -> WorkerArgs {
    let mut argv = vec!["worker".to_owned()];
    argv.extend(flags.iter().cloned());
    Cli::parse_from(argv).args
}
