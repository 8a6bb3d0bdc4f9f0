//! Redis Cluster: two worker processes, the shared rate limiter and `session reseal` on a
//! 3-primary cluster the test starts for itself. The cluster refuses a multi-key command
//! or script whose keys live in different slots (CROSSSLOT), so every lock, fenced write
//! and limiter call succeeding here proves the key layout keeps them together.

use bunq_session_worker::amqp::topology;
use bunq_session_worker::metrics::Metrics;
use bunq_session_worker::ratelimit::limit::{Limit, Scope};
use bunq_session_worker::ratelimit::RateLimiter;
use bunq_session_worker::seal::Sealer;
use bunq_session_worker::store::{Keys, Store};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use test_support::redis_cluster::RedisCluster;
use test_support::{
    capture_queue, connect_amqp, connect_redis_cluster, publish_input, random_id, random_token, ready_body,
    relaxed_fake, Cleanup, Leftovers, TestNames, WorkerEnv, AMQP_URL,
};

const BIN: &str = env!("CARGO_BIN_EXE_bunq-session-worker");
const PROVISIONS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_flow_the_shared_limiter_and_reseal_run_on_a_redis_cluster() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3)).await.unwrap();
    let seeds = cluster.seeds();
    let fake =
        fake_bunq::spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), relaxed_fake()).await.unwrap();
    let names = TestNames::new("infra");
    let capture = names.queue("capture");
    // The keys go with the cluster; the broker objects are on this machine's RabbitMQ.
    let leftovers = Leftovers::new(Cleanup::new(&names).queue(&capture));
    let connection = connect_amqp(AMQP_URL).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    topology::declare(&channel, &names.topology).await.unwrap();
    capture_queue(&channel, &names.topology, &capture, Some("#")).await.unwrap();

    // Two replicas: they share the provision locks and the bunq budget on the cluster.
    let env = WorkerEnv::fast(&fake.base_url(), &names).on_redis_cluster(&seeds[..3]);
    let mut workers: Vec<_> = (0..2).map(|_| env.spawn(BIN, std::process::Stdio::null())).collect();
    let mut tokens = HashMap::new();
    for _ in 0..PROVISIONS {
        let (id, token) = (random_id(), random_token());
        publish_input(&channel, &names.topology, &ready_body(id, &token), Default::default()).await.unwrap();
        tokens.insert(id, token);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut events = Vec::new();
    while events.len() < PROVISIONS {
        match channel.basic_get(capture.as_str().into(), Default::default()).await.unwrap() {
            Some(message) => events.push(serde_json::from_slice::<serde_json::Value>(&message.delivery.data).unwrap()),
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
        for worker in &mut workers {
            assert!(worker.try_wait().unwrap().is_none(), "a worker exited");
        }
        assert!(Instant::now() < deadline, "{} of {PROVISIONS} sessions announced on the cluster", events.len());
    }

    let store = Store::new(connect_redis_cluster(&seeds).unwrap(), Keys::new(&names.key_prefix), None);
    for event in &events {
        let provision_id = event["provision_id"].as_u64().unwrap();
        assert_eq!(fake.sessions_created_for(&tokens[&provision_id]), 1, "provision {provision_id}: sessions at bunq");
        let cached = store.read_session(event["user_id"].as_u64().unwrap()).await.unwrap().expect("cached");
        assert_eq!(cached.provision_id, provision_id);
        assert!(store.session_of_provision(provision_id).await.unwrap().is_some(), "no provision index");
    }
    // The records are spread over every primary, so each one ran the scripts.
    let primaries: Vec<u16> = cluster.members().iter().filter(|m| m.primary).map(|m| m.port).collect();
    assert_eq!(primaries.len(), 3);
    for port in &primaries {
        let keys = cluster.dbsize(*port);
        assert!(keys > 0, "primary {port} holds none of the records");
    }

    // `session reseal` reads every primary: each record (a session and a handshake per
    // provision) is found and sealed, wherever its slot lives.
    let key: [u8; 32] = std::array::from_fn(|_| rand::random::<u8>());
    let sealing = Store::new(
        connect_redis_cluster(&seeds).unwrap(),
        Keys::new(&names.key_prefix),
        Some(Arc::new(Sealer::new(&key))),
    );
    let report = sealing.reseal().await.unwrap();
    assert_eq!((report.records, report.rewritten), (2 * PROVISIONS as u64, 2 * PROVISIONS as u64), "{report:?}");
    for event in &events {
        let sealed = sealing.read_session(event["user_id"].as_u64().unwrap()).await.unwrap().expect("still cached");
        assert_eq!(sealed.session_id, event["session_id"].as_u64().unwrap());
        assert!(
            store.read_session(event["user_id"].as_u64().unwrap()).await.is_err(),
            "sealed: unreadable without a key"
        );
    }
    for worker in &mut workers {
        worker.kill().await.unwrap();
    }

    // The shared budget: two replicas on connections of their own never put three calls
    // into one 500 ms window.
    let limiter = || {
        let limit = Limit::parse("2/500ms").unwrap();
        let conn = connect_redis_cluster(&seeds).unwrap();
        RateLimiter::new(conn, &names.key_prefix, limit, limit, Scope::Global, Arc::new(Metrics::new()))
    };
    test_support::budget::two_replicas_keep_every_window(limiter(), limiter(), Duration::from_millis(500)).await;

    let _ = connection.close(200, "done".into()).await;
    leftovers.clean().await.unwrap();
    fake.shutdown().await;
    drop(cluster);
}
