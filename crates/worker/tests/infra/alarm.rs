//! A broker memory alarm (`connection.blocked`) on a RabbitMQ node of the test's own:
//! readiness turns false, nothing hangs, and the work completes once the alarm clears.

use bunq_session_worker::amqp::topology;
use std::time::{Duration, Instant};
use test_support::nodes::RabbitNode;
use test_support::{
    capture_queue, connect_amqp, connect_redis, delete_keys, free_port, ops, publish_input, random_id, random_token,
    ready_body, relaxed_fake, TestNames, WorkerEnv, REDIS_URL,
};

const BIN: &str = env!("CARGO_BIN_EXE_bunq-session-worker");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_alarm_turns_readiness_false_and_the_work_completes_when_it_clears() {
    let node = tokio::task::spawn_blocking(|| {
        let node = RabbitNode::start_plain();
        node.wait();
        node
    })
    .await
    .unwrap();
    let mut fake_config = relaxed_fake();
    fake_config.faults.latency_ms = 1_500; // the alarm goes off while bunq answers
    let fake =
        fake_bunq::spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), fake_config).await.unwrap();
    let names = TestNames::new("infra");
    let ops_addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let env = WorkerEnv::fast(&fake.base_url(), &names)
        .set("AMQP_URL", node.amqp_url())
        .set("OPS_ADDR", ops_addr.to_string());

    let connection = connect_amqp(&node.amqp_url()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    topology::declare(&channel, &names.topology).await.unwrap();
    let capture = names.queue("capture");
    capture_queue(&channel, &names.topology, &capture, Some("#")).await.unwrap();
    let mut worker =
        tokio::process::Command::new(BIN).arg("run").env_clear().envs(env.vars()).kill_on_drop(true).spawn().unwrap();
    assert!(ops::wait_ready(ops_addr, Duration::from_secs(20)).await);

    let id = random_id();
    publish_input(&channel, &names.topology, &ready_body(id, &random_token()), Default::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // taken, bunq is answering
    node.ctl(&["set_vm_memory_high_watermark", "0"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while ops::wait_ready(ops_addr, Duration::from_millis(200)).await {
        assert!(Instant::now() < deadline, "still ready under a memory alarm");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(worker.try_wait().unwrap().is_none(), "the worker exited under the alarm");
    node.ctl(&["set_vm_memory_high_watermark", "0.4"]).unwrap();

    let deadline = Instant::now() + Duration::from_secs(90);
    let event = loop {
        if let Some(message) = channel.basic_get(capture.as_str().into(), Default::default()).await.unwrap() {
            break serde_json::from_slice::<serde_json::Value>(&message.delivery.data).unwrap();
        }
        assert!(Instant::now() < deadline, "no session-ready after the alarm cleared");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(event["provision_id"], id);
    assert!(ops::wait_ready(ops_addr, Duration::from_secs(20)).await, "ready again");
    worker.kill().await.unwrap();
    let _ = connection.close(200, "done".into()).await;
    // The broker objects go with the node; the Redis keys are removed here.
    delete_keys(&mut connect_redis(REDIS_URL).unwrap(), &names.key_prefix).await.unwrap();
    fake.shutdown().await;
}
