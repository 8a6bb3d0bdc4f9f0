//! The steps: what each action does to the state, and the properties checked.

use crate::protocol::{bit, Action, Job, Keys, Msg, ProtocolModel, Record, Replica, Settled, State, Step, Sync};
use stateright::{Model, Property};

impl ProtocolModel {
    pub(crate) fn is_ready(&self, m: u8) -> bool {
        m < self.bounds.readies
    }

    fn deliver(&self, s: &mut State, w: u8, m: u8) {
        let Msg::Queued { failures } = s.msgs[usize::from(m)] else { unreachable!("a queued message") };
        if !self.is_ready(m) {
            s.primary.closed = true;
            s.write(w);
            s.msgs[usize::from(m)] = Msg::Held { failures };
            *s.worker(w) = Replica {
                job: Some(Job { msg: Some(m), claim: 0, step: Step::TakeLock }),
                waiting: self.protocol.wait_writes,
                sync: s.workers[usize::from(w)].sync,
            };
            return;
        }
        if s.primary.closed {
            s.msgs[usize::from(m)] = Msg::Done(Settled::Skipped);
            return;
        }
        let claim = s.take(w);
        let step = s.primary.record.map_or(Step::SessionServer, |r| Step::Reuse(r.session));
        s.msgs[usize::from(m)] = Msg::Held { failures };
        let sync = s.workers[usize::from(w)].sync;
        *s.worker(w) = Replica { job: Some(Job { msg: Some(m), claim, step }), waiting: self.protocol.wait_take, sync };
    }

    /// The last check before a publish, in the same step (`check_before_announce`):
    /// `None` to publish, else what the job does instead.
    fn blocked(&self, s: &State, w: u8) -> Option<bool> {
        if !self.protocol.check_before_announce {
            return None;
        }
        if !s.fence_ok(self.protocol.fence, w, s.job(w).claim) {
            return Some(true);
        }
        s.primary.closed.then_some(false)
    }

    fn step(&self, s: &mut State, w: u8) {
        let (p, job) = (self.protocol, s.job(w));
        match job.step {
            Step::Reuse(sid) => {
                s.cache(w, sid, p.fenced_cache);
                s.primary.scheduled = true;
                s.write(w);
                match s.primary.closed {
                    true => s.settle(w, Settled::Skipped),
                    false => s.set_step(w, Step::Announce(sid), p.wait_writes),
                }
            }
            Step::SessionServer => {
                let sid = s.open_session(None);
                s.set_step(w, Step::CommitRecord(sid), false);
            }
            Step::CommitRecord(sid) => {
                if !s.fence_ok(p.fence, w, job.claim) {
                    return s.retry(w, true, self.bounds.max_attempts);
                }
                s.primary.record = Some(Record { session: sid, unannounced: false });
                s.write(w);
                match s.primary.closed {
                    true => s.settle(w, Settled::Skipped),
                    false => s.set_step(w, Step::CommitCache(sid), false),
                }
            }
            Step::CommitCache(sid) => {
                s.cache(w, sid, p.fenced_cache);
                s.primary.scheduled = true;
                s.write(w);
                s.set_step(w, Step::Announce(sid), p.wait_writes);
            }
            Step::Announce(sid) => match self.blocked(s, w) {
                Some(true) => s.retry(w, true, self.bounds.max_attempts),
                Some(false) => s.settle(w, Settled::Skipped),
                None => {
                    s.announce(sid);
                    s.set_step(w, Step::Finish(Settled::Announced), false);
                }
            },
            Step::Finish(outcome) => s.settle(w, outcome),
            Step::TakeLock => {
                if s.primary.lock.is_some() {
                    return s.retry(w, false, self.bounds.max_attempts);
                }
                let claim = s.take(w);
                s.worker(w).job.as_mut().expect("a close").claim = claim;
                s.set_step(w, Step::End, p.wait_take);
            }
            Step::End => {
                // Ends at bunq and publishes `session.closed` for the session it finds.
                if s.primary.cache.map(|c| c.0).or(s.primary.record.map(|r| r.session)).is_some() {
                    s.close_seen = true;
                    s.live = 0;
                }
                s.set_step(w, Step::Purge, false);
            }
            Step::Purge => {
                (s.primary.record, s.primary.cache, s.primary.scheduled) = (None, None, false);
                s.write(w);
                s.set_step(w, Step::Finish(Settled::Closed), p.wait_writes);
            }
            Step::Check => match s.primary.record {
                Some(r) if !s.primary.closed => {
                    let next = if r.unannounced { Step::Republish(r.session) } else { Step::RenewAtBunq(r.session) };
                    s.set_step(w, next, false);
                }
                _ => {
                    s.primary.scheduled = false;
                    s.release(w);
                }
            },
            Step::Republish(sid) | Step::AnnounceRenewed(sid) => match self.blocked(s, w) {
                Some(_) => s.release(w),
                None => {
                    s.announce(sid);
                    s.set_step(w, Step::EndPass { clear: true }, false);
                }
            },
            Step::RenewAtBunq(current) => {
                let sid = s.open_session(Some(current));
                s.set_step(w, Step::RenewRecord(sid), false);
            }
            Step::RenewRecord(sid) => {
                if !s.fence_ok(p.fence, w, job.claim) {
                    return s.release(w);
                }
                // The commit's "closed" answer is not looked at (issue 18, item 4): the
                // close waits for this lock and closes the new session.
                s.primary.record = Some(Record { session: sid, unannounced: true });
                s.write(w);
                s.set_step(w, Step::RenewCache(sid), false);
            }
            Step::RenewCache(sid) => {
                s.cache(w, sid, p.fenced_cache);
                s.set_step(w, Step::AnnounceRenewed(sid), p.wait_writes);
            }
            Step::EndPass { clear } => {
                if clear && s.fence_ok(p.fence, w, job.claim) {
                    if let Some(record) = s.primary.record.as_mut() {
                        record.unannounced = false;
                    }
                }
                s.primary.scheduled = true;
                s.release(w);
            }
        }
    }

    fn wait(&self, s: &mut State, w: u8) {
        match s.workers[usize::from(w)].sync {
            Sync::Lost if s.job(w).msg.is_some() => s.retry(w, false, self.bounds.max_attempts),
            Sync::Lost => s.release(w),
            _ => s.worker(w).waiting = false,
        }
    }

    /// Where nothing can happen any more: with a close, nothing stays live; without, the
    /// live session is the one the handshake record holds (what a redelivery, a renewal
    /// and a close read), or the record holds its renewal, marked for the renewer's next
    /// pass to announce.
    fn outcome_holds(&self, s: &State) -> bool {
        let mut next = Vec::new();
        self.actions(s, &mut next);
        if !next.is_empty() {
            return true;
        }
        if self.bounds.close {
            return s.live == 0;
        }
        match s.primary.record {
            _ if !s.msgs.contains(&Msg::Done(Settled::Announced)) => true,
            Some(Record { session, unannounced: false }) => s.live == bit(session),
            Some(Record { session, unannounced: true }) => s.live & !s.ancestors(session) & !bit(session) == 0,
            None => false,
        }
    }
}

impl Model for ProtocolModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let b = self.bounds;
        let idle = Replica { job: None, waiting: false, sync: Sync::Synced };
        vec![State {
            primary: Keys::default(),
            replica: Keys::default(),
            msgs: vec![Msg::Queued { failures: 0 }; usize::from(b.readies + u8::from(b.close))],
            workers: [idle; 2],
            sessions: Vec::new(),
            live: 0,
            close_seen: false,
            late: false,
            announced: false,
            crashes: b.crashes,
            failovers: b.failovers,
            renewals: b.renewals,
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        for w in 0..2u8 {
            let worker = s.workers[usize::from(w)];
            if worker.job.is_none() {
                for (m, msg) in (0u8..).zip(&s.msgs) {
                    // A ready event meeting the lock goes back untouched (`lock_busy`).
                    let busy = self.is_ready(m) && !s.primary.closed && s.primary.lock.is_some();
                    if matches!(msg, Msg::Queued { .. }) && !busy {
                        actions.push(Action::Deliver(w, m));
                    }
                }
                if s.renewals > 0 && s.primary.scheduled && s.primary.record.is_some() && s.primary.lock.is_none() {
                    actions.push(Action::Renew(w));
                }
                continue;
            }
            match worker.waiting {
                true if worker.sync != Sync::Pending => actions.push(Action::Wait(w)),
                true => {}
                false => actions.push(Action::Step(w)),
            }
            if s.crashes > 0 {
                actions.push(Action::Crash(w));
            }
        }
        if s.primary.lock.is_some() {
            actions.push(Action::LockExpires);
        }
        if s.unreplicated() {
            actions.push(Action::Replicate);
            if s.failovers > 0 {
                actions.push(Action::Failover);
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Deliver(w, m) => self.deliver(&mut s, w, m),
            Action::Renew(w) => {
                s.renewals -= 1;
                let claim = s.take(w);
                s.worker(w).job = Some(Job { msg: None, claim, step: Step::Check });
                s.worker(w).waiting = self.protocol.wait_take;
            }
            Action::Step(w) => self.step(&mut s, w),
            Action::Wait(w) => self.wait(&mut s, w),
            Action::Crash(w) => {
                s.crashes -= 1;
                if let Some(m) = s.job(w).msg {
                    let Msg::Held { failures } = s.msgs[usize::from(m)] else { unreachable!("a held message") };
                    s.msgs[usize::from(m)] = Msg::Queued { failures };
                }
                *s.worker(w) = Replica { job: None, waiting: false, sync: Sync::Synced };
            }
            Action::LockExpires => s.primary.lock = None,
            Action::Replicate => {
                s.replica = s.primary;
                s.workers.iter_mut().filter(|w| w.sync == Sync::Pending).for_each(|w| w.sync = Sync::Synced);
            }
            Action::Failover => {
                s.failovers -= 1;
                s.primary = s.replica;
                s.workers.iter_mut().filter(|w| w.sync == Sync::Pending).for_each(|w| w.sync = Sync::Lost);
            }
        }
        Some(if self.canonical { s.canonical(self.bounds.readies) } else { s })
    }

    fn within_boundary(&self, s: &State) -> bool {
        s.sessions.len() <= usize::from(self.bounds.max_sessions)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut properties = vec![
            Property::always(TWO_LIVE, |_, s: &State| s.live.count_ones() <= 1),
            Property::always(AFTER_CLOSE, |_, s: &State| !s.late),
            Property::always(OUTCOME, |m: &Self, s: &State| m.outcome_holds(s)),
            // Downstream reads the token from the cache: never an older one than announced.
            Property::always(CACHE, |_, s: &State| s.primary.cache.is_none_or(|(c, _)| s.live >> c <= 1)),
            // A path the session bound cuts off counts as settled: stateright takes it for
            // a terminal one.
            Property::eventually(SETTLED, |m: &Self, s: &State| {
                s.sessions.len() == usize::from(m.bounds.max_sessions)
                    || s.msgs.iter().all(|m| matches!(m, Msg::Done(_)))
            }),
            // Not vacuous: what the bounds allow does happen.
            Property::sometimes("a session is announced", |_, s: &State| s.live != 0),
        ];
        if self.bounds.renewals > 0 {
            properties.push(Property::sometimes("a renewed session is announced", |_, s: &State| {
                (0u8..).zip(&s.sessions).any(|(i, parent)| parent.is_some() && s.live & bit(i) != 0)
            }));
        }
        if self.bounds.failovers > 0 {
            properties.push(Property::sometimes("a failover after an announcement", |m: &Self, s: &State| {
                s.announced && s.failovers < m.bounds.failovers
            }));
        }
        if self.bounds.close {
            properties
                .push(Property::sometimes("a close after an announcement", |_, s: &State| s.announced && s.close_seen));
        }
        properties
    }
}

pub const TWO_LIVE: &str = "never two announced sessions live for one provision";
pub const AFTER_CLOSE: &str = "nothing announced after its close";
pub const OUTCOME: &str = "every ready provision ends announced, dead-lettered or closed";
pub const CACHE: &str = "the cache never goes back behind an announced session";
pub const SETTLED: &str = "every event is eventually settled";
