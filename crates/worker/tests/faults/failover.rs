//! A Redis Cluster primary SIGKILLed while its replica lags, so the last writes are
//! really lost (issue #18): the replica is stopped (`SIGSTOP`) and its link cut on the
//! primary (`CLIENT KILL TYPE replica`) before the writes, so nothing of them waits in a
//! socket for it to apply when it wakes. The bug this guards: a session announced from
//! the lost writes, and the same event retried afterwards finding nothing, opening and
//! announcing a second session with another session id.

use crate::harness::*;
use crate::{fake, SETTLE};
use std::time::{Duration, Instant};
use test_support::redis_cluster::RedisCluster;

const NOT_REPLICATED: &str = r#"bunq_session_worker_deliveries_total{outcome="retried",reason="not_replicated""#;
const ANNOUNCED: &str = r#"bunq_session_worker_deliveries_total{outcome="announced""#;
/// Long enough for a few tries of a provision, however loaded the machine.
const PHASE: Duration = Duration::from_secs(90);

/// Two workers with `REDIS_MIN_REPLICAS=1`. Batch A is announced; then the victim primary
/// P's replica R is stopped and cut off, and batch B published: P takes the writes for
/// B's provisions whose keys live on it (their locks' generations), which R never
/// confirms, so the workers go no further with them (`not_replicated`). P is SIGKILLed,
/// R resumed and promoted without those writes, P restarted as R's replica. Every event
/// of A and B is then published again. The ledger spans every announcement: one session
/// id per provision, the cache holding it, no dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_primary_dying_while_its_replica_lags_announces_no_second_session() {
    let mut cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3)).await.unwrap();
    let mut env = Env::on_redis(fake(40), RedisAt::Cluster(cluster.seeds())).await;
    // Each WAIT the victim cannot satisfy holds a worker's one connection to it for the
    // replica timeout, and the commands behind it wait: with more deliveries at once than
    // fit in the 2 s response timeout, the worker reads the victim as away and flaps.
    let settings = [("REDIS_MIN_REPLICAS", "1"), ("REDIS_REPLICA_TIMEOUT", "500ms"), ("PREFETCH", "2")];
    env.worker_env = settings.map(|(k, v)| (k.to_owned(), v.to_owned())).to_vec();
    let mut workers = [env.start_worker("first"), env.start_worker("second")];
    for worker in &workers {
        worker.wait_ready().await;
    }
    let base = u64::from(rand::random::<u32>()) * 1000;
    let (batch_a, batch_b) = (ready_stream(base, 30), ready_stream(base + 500, 45));
    let every: Vec<Input> = batch_a.iter().chain(&batch_b).cloned().collect();
    env.publish_all(&batch_a).await;
    let before = env.settle(&batch_a, SETTLE).await;

    // The victim: the primary serving B's first provision; its provisions are those whose
    // hash tag ({id}) the cluster puts on it, and their keys are those carrying the tag.
    let tag = |id: u64| format!("{{{id}}}");
    let b_ids: Vec<u64> = batch_b.iter().map(provision_id).collect();
    let victim = cluster.primary_of(&tag(b_ids[0]));
    let on_victim: Vec<u64> = b_ids.iter().copied().filter(|id| cluster.primary_of(&tag(*id)) == victim).collect();
    assert!(on_victim.len() >= 3, "too few of B on the victim: {on_victim:?}");
    let pattern = format!("{}*", env.names.key_prefix);
    let theirs = |keys: Vec<String>| -> Vec<String> {
        keys.into_iter().filter(|k| on_victim.iter().any(|id| k.contains(&tag(*id)))).collect()
    };
    let replica = cluster.replica_of(victim);
    cluster.pause(replica, true);
    assert_eq!(cluster.cut_replicas(victim), 1, "the victim's one replica link");

    env.publish_all(&batch_b).await;
    // The victim took writes for each of its provisions that the workers may not rely on
    // (a lock's generation first of all): they are refused, not announced. (With the check
    // off, REDIS_MIN_REPLICAS=0, all of B is announced instead.)
    let deadline = Instant::now() + PHASE;
    let lag_writes = loop {
        let written = theirs(cluster.keys(victim, &pattern));
        let with_writes = on_victim.iter().filter(|id| written.iter().any(|k| k.contains(&tag(**id)))).count();
        let refused = sum(&workers, NOT_REPLICATED).await;
        let all_announced = sum(&workers, ANNOUNCED).await >= every.len() as f64;
        if with_writes == on_victim.len() && (refused >= on_victim.len() as f64 || all_announced) {
            break written;
        }
        assert!(Instant::now() < deadline, "{with_writes} of {} provisions written on the victim", on_victim.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let refused_at_kill = sum(&workers, NOT_REPLICATED).await;
    let killed = Instant::now();
    cluster.kill(victim);
    cluster.pause(replica, false);
    // Read from the replica's own data before it is promoted and written to again.
    let kept: Vec<String> =
        theirs(cluster.keys(replica, &pattern)).into_iter().filter(|k| lag_writes.contains(k)).collect();
    let promoted = loop {
        if cluster.serves_slots(replica) {
            break killed.elapsed();
        }
        assert!(killed.elapsed() < PHASE, "the replica never took the dead primary's slots");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The victim comes back only once the workers write to the promoted replica and are
    // refused (no replica yet): a WAIT of a command sent to the dead primary, retried by
    // the client, can then no longer reach a new primary that already has a replica.
    let deadline = Instant::now() + PHASE;
    while sum(&workers, NOT_REPLICATED).await <= refused_at_kill && sum(&workers, ANNOUNCED).await < every.len() as f64
    {
        assert!(Instant::now() < deadline, "the workers never wrote to the promoted replica");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.restart(victim);
    tokio::task::block_in_place(|| cluster.wait_healthy(PHASE));
    let outputs = before.and(env.settle(&batch_b, SETTLE).await);

    // The same events again: each finds its announced session, or announces a second.
    env.publish_all(&every).await;
    let outputs = outputs.and(env.settle(&every, SETTLE).await);
    let published: Vec<Input> = every.iter().chain(&every).cloned().collect();
    let ledger = env.check(&published, &outputs).await;
    let refused = sum(&workers, NOT_REPLICATED).await;
    ledger.print("redis_cluster_lagging_replica");
    println!(
        "LEDGER redis_cluster_lagging_replica: {} of {} provisions of B with keys on the victim, {} keys of theirs \
         written there during the lag, {} of them on its replica when it woke; {refused} not_replicated retries; \
         replica promoted {} ms after the kill; {} announcements with two session ids",
        on_victim.len(),
        batch_b.len(),
        lag_writes.len(),
        kept.len(),
        promoted.as_millis(),
        ledger.two_session_ids
    );
    assert_eq!(ledger.two_session_ids, 0, "{ledger:?}");
    assert_eq!(ledger.dead_letters, 0, "{ledger:?}");
    // The writes were really lost: none reached the replica.
    assert!(
        kept.is_empty(),
        "the replica holds {} of the {} writes made after its link was cut, e.g. {:?}",
        kept.len(),
        lag_writes.len(),
        &kept[..kept.len().min(3)]
    );
    assert!(refused >= on_victim.len() as f64, "{refused} not_replicated retries");
    for worker in &mut workers {
        assert!(worker.is_running(), "recovered without a restart");
    }
    env.teardown().await;
    drop(cluster);
}

fn provision_id(input: &Input) -> u64 {
    match input.expect {
        Expect::Session { provision_id, .. } => provision_id,
        _ => unreachable!("ready inputs only"),
    }
}

async fn sum(workers: &[Worker], metric: &str) -> f64 {
    let mut total = 0.0;
    for worker in workers {
        total += worker.metric(metric).await;
    }
    total
}
