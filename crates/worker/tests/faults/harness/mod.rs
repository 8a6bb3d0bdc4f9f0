//! Fault-test harness: a RabbitMQ vhost per test (so `close_all_connections --vhost`
//! touches no other test), the worker as a real process, fake-bunq in-process, a stream
//! of mixed events, and the ledger that accounts for every input.

mod inputs;
mod ledger;
mod process;

pub use inputs::{mixed_stream, ready_stream, Expect, Input};
pub use process::{wait_for_announcements, OwnRedis, Worker};

use bunq_session_worker::amqp::topology;
use bunq_session_worker::store::{Keys, Store};
use fake_bunq::{self, FakeConfig, FakeHandle};
use lapin::options::{BasicAckOptions, BasicGetOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection};
use test_support::{
    amqp_vhost_url, capture_queue, connect_amqp, connect_redis, connect_redis_cluster, init_test_logging,
    publish_input, rabbitmqctl, Cleanup, Leftovers, TestNames, WorkerEnv,
};

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

/// Where a test's broker objects are, and its connection to them.
struct Broker {
    vhost: String,
    amqp_url: String,
    connection: Connection,
    channel: Channel,
    capture: String,
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
        let broker = Broker { vhost, amqp_url, connection, channel, capture };
        Self::assemble(names, leftovers, redis, fake, broker)
    }

    fn assemble(names: TestNames, leftovers: Leftovers, redis: RedisAt, fake: FakeHandle, broker: Broker) -> Env {
        let Broker { vhost, amqp_url, connection, channel, capture } = broker;
        Env {
            store: redis.store(&names),
            leftovers,
            names,
            vhost,
            amqp_url,
            redis,
            capture,
            fake,
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
        let broker = Broker { vhost: "/".to_owned(), amqp_url: urls.join(","), connection, channel, capture };
        Self::assemble(names, leftovers, RedisAt::Url(redis_url.to_owned()), fake, broker)
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

    /// Takes every dead letter, with its properties.
    pub async fn take_dead_letters(&self) -> Vec<(Vec<u8>, BasicProperties)> {
        let mut out = Vec::new();
        self.drain(&self.names.topology.dead_letter_queue.clone(), &mut out).await;
        out
    }

    /// Drains `queue` into `out` (acking what it takes).
    async fn drain(&self, queue: &str, out: &mut Vec<(Vec<u8>, BasicProperties)>) {
        while let Some(message) = self.channel.basic_get(queue.into(), BasicGetOptions { no_ack: false }).await.unwrap()
        {
            message.ack(BasicAckOptions::default()).await.unwrap();
            out.push((message.delivery.data.clone(), message.delivery.properties.clone()));
        }
    }

    /// A new AMQP connection for the test itself, after the broker closed the old one.
    pub async fn reconnect(mut self) -> Env {
        self.connection = connect_amqp(&self.amqp_url).await.unwrap();
        self.channel = self.connection.create_channel().await.unwrap();
        self.channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        self
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

/// Worker settings for renewal tests: sessions (62 s at the stand-in) renewed 31 s before
/// they expire with a key of the test's own (kept in the returned directory), plus `extra`.
pub fn renewing(extra: &[(&str, &str)]) -> (tempfile::TempDir, Vec<(String, String)>) {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("session.key");
    std::fs::write(&key_path, hex::encode(rand::random::<[u8; 32]>())).unwrap();
    let key = key_path.to_str().unwrap().to_owned();
    let base = [
        ("SESSION_RENEWAL", "on"),
        ("SESSION_ENCRYPTION_KEY_FILE", key.as_str()),
        ("SESSION_RENEW_BEFORE", "31s"),
        ("SESSION_TTL_MARGIN", "30s"),
    ];
    let vars = base.iter().chain(extra).map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    (dir, vars)
}
