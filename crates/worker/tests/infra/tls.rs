//! `amqps://` and `rediss://` with a CA made for the test and client certificates on both
//! (mutual TLS): the whole flow, and certificates that do not verify stopping start-up
//! with the setting named.

use bunq_session_worker::amqp::broker::Broker;
use bunq_session_worker::amqp::topology;
use bunq_session_worker::store::{self, Keys, Store};
use bunq_session_worker::tls::{self, TlsFiles};
use std::time::{Duration, Instant};
use test_support::nodes::{Pki, RabbitNode, RedisNode};
use test_support::{
    capture_queue, publish_input, random_id, random_token, ready_body, relaxed_fake, TestNames, WorkerEnv,
};

const BIN: &str = env!("CARGO_BIN_EXE_bunq-session-worker");

struct Nodes {
    pki: Pki,
    rabbit: RabbitNode,
    redis: RedisNode,
}

impl Nodes {
    /// Both nodes boot at once: RabbitMQ's ~10 s dominate.
    async fn start() -> Self {
        tokio::task::spawn_blocking(|| {
            let pki = Pki::new();
            let (rabbit, redis) = (RabbitNode::start_tls(&pki), RedisNode::start_tls(&pki));
            redis.wait();
            rabbit.wait();
            Self { pki, rabbit, redis }
        })
        .await
        .unwrap()
    }

    fn amqp_url(&self) -> String {
        format!("amqps://guest:guest@127.0.0.1:{}/%2f", self.rabbit.port)
    }

    fn file(&self, name: &str) -> String {
        self.pki.path(name).display().to_string()
    }

    /// A worker's environment with TLS to both, client certificates included.
    fn env(&self, bunq_base_url: &str, names: &TestNames) -> WorkerEnv {
        WorkerEnv::fast(bunq_base_url, names)
            .set("AMQP_URL", self.amqp_url())
            .set("AMQP_TLS_CA_FILE", self.file("ca.pem"))
            .set("AMQP_TLS_CERT_FILE", self.file("client.pem"))
            .set("AMQP_TLS_KEY_FILE", self.file("client.key"))
            .set("REDIS_URL", self.redis.url())
            .set("REDIS_TLS_CA_FILE", self.file("ca.pem"))
            .set("REDIS_TLS_CERT_FILE", self.file("client.pem"))
            .set("REDIS_TLS_KEY_FILE", self.file("client.key"))
    }

    fn tls_files(&self, variables: tls::Variables) -> Option<TlsFiles> {
        let path = |name: &str| self.pki.path(name);
        TlsFiles::load(Some(&path("ca.pem")), Some(&path("client.pem")), Some(&path("client.key")), variables).unwrap()
    }
}

async fn start_up_error(env: &WorkerEnv) -> String {
    let mut child = env.spawn(BIN, std::process::Stdio::piped());
    let mut stderr = child.stderr.take().unwrap();
    let read = tokio::spawn(async move {
        let mut text = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await;
        text
    });
    if tokio::time::timeout(Duration::from_secs(30), child.wait()).await.is_err() {
        child.kill().await.unwrap();
        panic!("still running after 30 s although a certificate does not verify: {}", read.await.unwrap());
    }
    let output = child.wait_with_output().await.unwrap();
    let _ = output.stderr;
    let stderr = read.await.unwrap();
    assert!(!output.status.success(), "started although a certificate does not verify");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_flow_runs_over_mutual_tls_and_a_certificate_that_does_not_verify_stops_start_up() {
    let nodes = Nodes::start().await;
    let fake =
        fake_bunq::spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), relaxed_fake()).await.unwrap();
    let names = TestNames::new("infra");
    let env = nodes.env(&fake.base_url(), &names);

    // The test's own connection goes through the same TLS code as the worker's.
    let broker = Broker::new(vec![nodes.amqp_url().into()], nodes.tls_files(tls::AMQP));
    let (connection, _) = broker.connect("infra test").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    topology::declare(&channel, &names.topology).await.unwrap();
    let capture = names.queue("capture");
    capture_queue(&channel, &names.topology, &capture, Some("#")).await.unwrap();

    let mut worker = env.spawn(BIN, std::process::Stdio::null());
    let (id, token) = (random_id(), random_token());
    publish_input(&channel, &names.topology, &ready_body(id, &token), Default::default()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let event = loop {
        if let Some(message) = channel.basic_get(capture.as_str().into(), Default::default()).await.unwrap() {
            break serde_json::from_slice::<serde_json::Value>(&message.delivery.data).unwrap();
        }
        assert!(worker.try_wait().unwrap().is_none(), "the worker exited");
        assert!(Instant::now() < deadline, "no session-ready over TLS");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(event["provision_id"], id);
    let target = store::Target::Single(nodes.redis.url().into());
    let conn = store::connect(&target, nodes.tls_files(tls::REDIS).as_ref()).unwrap();
    let cached = Store::new(conn, Keys::new(&names.key_prefix), None)
        .read_session(event["user_id"].as_u64().unwrap())
        .await
        .unwrap();
    assert!(cached.is_some(), "the session is cached in the TLS Redis");
    worker.kill().await.unwrap();

    // Certificates that do not verify: each stops start-up naming its setting.
    let stranger = Pki::new();
    let other = |name: &str| stranger.path(name).display().to_string();
    let cases = [
        ("AMQP_TLS_CA_FILE", env.clone().set("AMQP_TLS_CA_FILE", other("ca.pem"))),
        ("REDIS_TLS_CA_FILE", env.clone().set("REDIS_TLS_CA_FILE", other("ca.pem"))),
        // Client certificates the servers' CA did not sign.
        (
            "AMQP_TLS_CERT_FILE",
            env.clone().set("AMQP_TLS_CERT_FILE", other("client.pem")).set("AMQP_TLS_KEY_FILE", other("client.key")),
        ),
        (
            "REDIS_TLS_CERT_FILE",
            env.clone().set("REDIS_TLS_CERT_FILE", other("client.pem")).set("REDIS_TLS_KEY_FILE", other("client.key")),
        ),
    ];
    for (variable, env) in cases {
        let stderr = start_up_error(&env).await;
        assert!(stderr.contains(variable), "{variable} not named: {stderr}");
        assert!(!stderr.contains("guest:guest"), "a password in the error: {stderr}");
    }

    let _ = connection.close(200, "done".into()).await;
    fake.shutdown().await;
}
