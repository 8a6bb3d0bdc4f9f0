//! bunq opens the session, and its answer is lost on the way (a connection cut after bunq
//! sent it, a load balancer timing out): the worker cannot know the session exists, and
//! its retry opens another. The README's bound: one orphan at bunq per lost answer, never
//! cached or announced. The ledger counts both from what the stand-in did.

use crate::harness::*;
use crate::SETTLE;
use fake_bunq::{EndpointMatch, FakeConfig, FaultAction, FaultRule, Faults, Trigger};
use test_support::{relaxed_fake, REDIS_URL};

#[tokio::test]
async fn session_server_answers_lost_after_bunq_opened_the_session_leave_one_orphan_each() {
    let rule = FaultRule {
        endpoint: EndpointMatch::SessionServer,
        action: FaultAction::LoseAnswer,
        trigger: Trigger::Probability(0.15),
    };
    let config = FakeConfig {
        seed: 7,
        faults: Faults { latency_ms: 10, rules: vec![rule], ..Faults::default() },
        ..relaxed_fake()
    };
    let env = Env::new(config, REDIS_URL).await;
    let inputs = mixed_stream(200);
    let worker = env.start_worker("only");
    worker.wait_ready().await;
    env.publish_all(&inputs).await;

    let ledger = env.settle_and_check(&inputs, SETTLE).await;
    ledger.print("lost_answers");
    let lost = env.fake.calls().iter().filter(|c| c.fault == Some(FaultAction::LoseAnswer)).count();
    println!(
        "LEDGER lost_answers: {lost} session-server answers lost after the session opened -> {} orphan sessions at bunq (bound: one per lost answer)",
        ledger.extra_sessions_at_bunq
    );
    assert!(lost >= 10, "the fault did not fire: {lost} answers lost");
    // Each lost answer leaves exactly its own session behind: the retry opens the one
    // cached and announced (the ledger checked one session id per provision).
    assert_eq!(ledger.extra_sessions_at_bunq, lost, "{ledger:?}");
    assert!(!ledger.dead_by_reason.contains_key("retries_exhausted"), "{ledger:?}");
    env.teardown().await;
}
