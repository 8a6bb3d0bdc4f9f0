//! A model of the worker's protocol for one provision, checked by stateright (issue 18):
//! every interleaving of two replicas, Redis and the world, up to the bounds below.
//!
//! **Modelled.** Two worker replicas sharing a queue of the provision's events (ready
//! copies, a close). An open: `begin_open` (closed marker, lock with a new generation,
//! record read) → reuse the recorded session or session-server → fenced commit of the
//! handshake record → `session:{user}` → `session.ready` → unlock, ack. A close: marker →
//! lock (`lock_busy` when held) → end at bunq and `session.closed` → purge → unlock, ack.
//! A renewal pass: lock → republish a renewal marked unannounced, or renew, commit,
//! cache, `session.renewed`, clear the mark. Redis as a primary and a replica copy of
//! every key; replication is a step that copies the primary (so the replica holds any
//! prefix of the stream); a failover promotes the replica, losing what it had not got.
//! A lock's expiry is a step that may come at any time (a holder paused past
//! `LOCK_TTL`); a crash at any step returns the delivery to the queue and leaves the
//! lock to expire. Protocol variants ([`Protocol`]): the fence rule, WAIT before
//! publishing (`REDIS_MIN_REPLICAS`) and after taking the lock, a last check of fence
//! and marker in the step that publishes, a cache write that refuses a lower generation.
//!
//! **Abstracted away.** bunq always answers (no failures, rate limits or budget waits;
//! dead letters come only from lost locks); sessions never expire and renewals are
//! always due; one credential (no token reset, issue 18 item 3); no invalidations. A
//! Redis Cluster's slots on several nodes are one primary/replica pair. A WAIT answers
//! for every write the replica made since its last WAIT: the worker must WAIT on the
//! connection of each write, so a failover in between fails it instead of a fresh
//! connection answering. The last check and the publish are one step: a pause longer
//! than the lock between them stays possible, since RabbitMQ cannot check a fence.
//!
//! **Properties.** Never two announced sessions live for one provision (announced and
//! not closed or renewed away since); nothing announced after its close; the cache never
//! holds a session older than an announced one; every ready provision ends announced
//! (the live session is the recorded one), dead-lettered, or closed with nothing live
//! (checked in every state where nothing can happen any more); every event settles.

#[path = "model/describe.rs"]
mod describe;
#[path = "model/protocol.rs"]
mod protocol;
#[path = "model/steps.rs"]
mod steps;

use protocol::{Bounds, Fence, Protocol, ProtocolModel};
use stateright::{Checker, HasDiscoveries, Model};
use std::time::Instant;
use steps::{AFTER_CLOSE, CACHE, OUTCOME, SETTLED, TWO_LIVE};

/// A duplicated ready event and a renewal: opens racing each other and the renewer.
const DUPLICATES: Bounds =
    Bounds { readies: 2, close: false, renewals: 1, crashes: 1, failovers: 1, max_attempts: 2, max_sessions: 3 };
/// A ready event, a close arriving at any point, and a renewal.
const CLOSING: Bounds =
    Bounds { readies: 1, close: true, renewals: 1, crashes: 1, failovers: 1, max_attempts: 2, max_sessions: 3 };

/// Explores every state (breadth first), or until `stop_at` has a counterexample: then
/// the first one found is a shortest.
fn explore(protocol: Protocol, bounds: Bounds, stop_at: Option<&'static str>) -> impl Checker<ProtocolModel> {
    let started = Instant::now();
    let mut builder = ProtocolModel { protocol, bounds, canonical: stop_at.is_none() }.checker();
    if let Some(property) = stop_at {
        builder = builder.finish_when(HasDiscoveries::AnyOf([property].into()));
    }
    let checker = builder.spawn_bfs().join();
    println!(
        "{protocol:?}\n{bounds:?}\n{} states, {} unique, depth {}, {:.1?}",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth(),
        started.elapsed()
    );
    checker
}

/// Finds a counterexample to `property` and prints it step by step.
fn counterexample(protocol: Protocol, bounds: Bounds, property: &'static str) {
    let checker = explore(protocol, bounds, Some(property));
    let path = checker.discovery(property).unwrap_or_else(|| panic!("no counterexample to {property:?}"));
    println!("counterexample to {property:?}:");
    for (n, (state, action)) in path.into_vec().into_iter().enumerate() {
        if let Some(action) = action {
            println!("{:>3}. {}", n + 1, checker.model().describe(&state, action));
        }
    }
}

#[test]
fn the_protocol_holds() {
    for bounds in [DUPLICATES, CLOSING] {
        let checker = explore(Protocol::CORRECT, bounds, None);
        for property in [TWO_LIVE, AFTER_CLOSE, OUTCOME, CACHE, SETTLED] {
            if checker.discovery(property).is_some() {
                // Again without the reduction, for a path that keeps the replicas' names.
                counterexample(Protocol::CORRECT, bounds, property);
            }
        }
        checker.assert_properties();
    }
}

// Seeded bugs: each variant the issue names must fail, with the path printed.

#[test]
fn the_old_fence_lets_a_stale_holder_announce_a_second_session() {
    let old = Protocol { fence: Fence::OwnerOnly, ..Protocol::CORRECT };
    counterexample(old, DUPLICATES, TWO_LIVE);
}

#[test]
fn announcing_before_replication_loses_an_announced_session() {
    let eager = Protocol { wait_writes: false, wait_take: false, ..Protocol::CORRECT };
    counterexample(eager, DUPLICATES, TWO_LIVE);
    counterexample(eager, CLOSING, AFTER_CLOSE);
    counterexample(eager, CLOSING, OUTCOME);
}

// What else the correct protocol needs: without each, a counterexample.

#[test]
fn a_generation_not_waited_for_is_handed_out_twice_after_a_failover() {
    let unwaited = Protocol { wait_take: false, ..Protocol::CORRECT };
    counterexample(unwaited, DUPLICATES, TWO_LIVE);
}

#[test]
fn without_a_last_check_a_paused_holder_announces_after_the_close() {
    let unchecked = Protocol { check_before_announce: false, ..Protocol::CORRECT };
    counterexample(unchecked, CLOSING, AFTER_CLOSE);
    counterexample(unchecked, DUPLICATES, TWO_LIVE);
}

#[test]
fn an_unfenced_cache_write_rolls_the_cache_back() {
    let unfenced = Protocol { fenced_cache: false, ..Protocol::CORRECT };
    counterexample(unfenced, DUPLICATES, CACHE);
}
