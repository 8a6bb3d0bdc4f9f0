//! Counterexamples in words: one line per step, with what it leaves in Redis and what
//! downstream holds as live.

use crate::protocol::{bit, Action, Keys, ProtocolModel, Sid, State, Step};
use stateright::Model;

/// Sessions as the counterexamples name them: s1, s2, …
fn name(s: Sid) -> String {
    format!("s{}", s + 1)
}

fn keys(k: &Keys) -> String {
    let lock = k.lock.map_or("-".to_owned(), |o| format!("r{}@{}", o.replica, o.generation));
    let record =
        k.record.map_or("-".to_owned(), |r| format!("{}{}", name(r.session), if r.unannounced { "*" } else { "" }));
    let cache = k.cache.map_or("-".to_owned(), |c| name(c.0));
    let closed = if k.closed { " closed" } else { "" };
    format!("lock {lock} gen {} record {record} cache {cache}{closed}", k.generation)
}

impl ProtocolModel {
    /// One line of a counterexample: what `action` does from `before`, and what it leaves.
    pub fn describe(&self, before: &State, action: Action) -> String {
        let after = self.next_state(before, action).expect("every action moves");
        let ended = |w: u8| after.workers[usize::from(w)].job.is_none();
        let what = match action {
            Action::Deliver(w, m) if !self.is_ready(m) => format!("r{w} takes the close: sets the closed marker"),
            Action::Deliver(w, m) if after.workers[usize::from(w)].job.is_none() => {
                format!("r{w} takes ready event #{m}: provision closed, skipped")
            }
            Action::Deliver(w, m) => format!("r{w} takes ready event #{m}: locks, reads the record"),
            Action::Renew(w) => format!("r{w} claims the renewal: locks"),
            Action::Wait(w) if ended(w) => format!("r{w} WAIT fails (write lost): not done, retried"),
            Action::Wait(w) => format!("r{w} WAIT: on the replica"),
            Action::Crash(w) => format!("r{w} crashes (its delivery is redelivered)"),
            Action::LockExpires => "the lock expires (holder paused past LOCK_TTL)".to_owned(),
            Action::Replicate => "Redis replicates to the replica".to_owned(),
            Action::Failover => "Redis fails over: the replica is promoted".to_owned(),
            Action::Step(w) => format!("r{w} {}", self.describe_step(before, &after, w)),
        };
        let live: Vec<String> = (0..8u8).filter(|i| after.live & bit(*i) != 0).map(name).collect();
        format!(
            "{what:<62} | primary: {} | replica: {} | live: [{}]",
            keys(&after.primary),
            keys(&after.replica),
            live.join(" ")
        )
    }

    fn describe_step(&self, before: &State, after: &State, w: u8) -> String {
        let ended = after.workers[usize::from(w)].job.is_none();
        let refused = if ended { ": refused, lock lost" } else { "" };
        match before.job(w).step {
            Step::Reuse(s) => format!("reuses {} from the record: caches it", name(s)),
            Step::SessionServer => format!("session-server: bunq opens {}", name(before.sessions.len() as Sid)),
            Step::CommitRecord(s) => format!("fenced commit of {}{refused}", name(s)),
            Step::CommitCache(s) | Step::RenewCache(s) => format!("caches {}", name(s)),
            Step::Announce(s) if after.late || after.live != before.live || !ended => {
                format!("publishes session.ready {}", name(s))
            }
            Step::Announce(s) => format!("last check before announcing {}: refused", name(s)),
            Step::Finish(outcome) => format!("unlocks, acks ({outcome:?})"),
            Step::TakeLock if ended => "close meets the lock: retried".to_owned(),
            Step::TakeLock => "close locks".to_owned(),
            Step::End if after.close_seen && !before.close_seen => {
                "ends the session, publishes session.closed".to_owned()
            }
            Step::End => "close finds no session".to_owned(),
            Step::Purge => "purges the records".to_owned(),
            Step::Check if ended => "renewal: closed or nothing to renew".to_owned(),
            Step::Check => "renewal: due".to_owned(),
            Step::Republish(s) => format!("republishes session.renewed {}", name(s)),
            Step::RenewAtBunq(s) => {
                format!("session-server: bunq renews {} as {}", name(s), name(before.sessions.len() as Sid))
            }
            Step::RenewRecord(s) => format!("fenced commit of renewed {}{refused}", name(s)),
            Step::AnnounceRenewed(s) if ended => format!("last check before announcing {}: refused", name(s)),
            Step::AnnounceRenewed(s) => format!("publishes session.renewed {}", name(s)),
            Step::EndPass { .. } => "clears the mark, reschedules, unlocks".to_owned(),
        }
    }
}
