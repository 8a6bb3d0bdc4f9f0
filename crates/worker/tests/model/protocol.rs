//! The model's state: Redis's two copies of the provision's keys, the queue, two
//! replicas of the worker, and ghost variables (what bunq opened, what downstream was
//! told) that only the properties read.

/// A session bunq opened: its index in [`State::sessions`].
pub type Sid = u8;

/// How a fenced write decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fence {
    /// The rule before issue 18: refused only while another owner holds the lock.
    OwnerOnly,
    /// `store/lock.rs`: refused once the generation moved past the holder's.
    Generation,
}

/// The protocol variant checked: the correct one, or one with a seeded bug.
#[derive(Clone, Copy, Debug)]
pub struct Protocol {
    pub fence: Fence,
    /// WAIT for the replica before publishing or acking what depends on a write: a
    /// commit, a cache repair, the closed marker, a purge (`REDIS_MIN_REPLICAS`).
    pub wait_writes: bool,
    /// WAIT after taking the lock, before working under the generation it gave.
    pub wait_take: bool,
    /// Check the fence and the closed marker again right before publishing (one step
    /// with the publish), not only at the commit.
    pub check_before_announce: bool,
    /// `session:{user}` keeps the generation that wrote it and refuses a lower one.
    pub fenced_cache: bool,
}

impl Protocol {
    pub const CORRECT: Protocol = Protocol {
        fence: Fence::Generation,
        wait_writes: true,
        wait_take: true,
        check_before_announce: true,
        fenced_cache: true,
    };
}

/// What the world may do, bounded so the state space is finite.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Copies of the provision's ready event (a duplicate publish).
    pub readies: u8,
    /// Whether a close (provision CANCELLED) comes too, at any time.
    pub close: bool,
    /// Renewal passes.
    pub renewals: u8,
    pub crashes: u8,
    pub failovers: u8,
    /// `MAX_ATTEMPTS`: counted failures (a lost lock) before a dead letter.
    pub max_attempts: u8,
    /// Sessions bunq may open before a path is cut off.
    pub max_sessions: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    pub replica: u8,
    pub generation: u8,
}

/// The handshake record's session and the credential record's unannounced mark, written
/// together by one fenced script.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Record {
    pub session: Sid,
    pub unannounced: bool,
}

/// One copy of the provision's keys (the primary's, or its replica's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Keys {
    pub lock: Option<Owner>,
    pub generation: u8,
    pub closed: bool,
    pub record: Option<Record>,
    /// `session:{user}`, with the generation that wrote it: written after the record, by
    /// a command of its own (another slot).
    pub cache: Option<(Sid, u8)>,
    /// The renewal schedule's entry.
    pub scheduled: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Settled {
    Announced,
    Skipped,
    DeadLettered,
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Msg {
    Queued { failures: u8 },
    Held { failures: u8 },
    Done(Settled),
}

/// Whether a replica's writes since its last WAIT are on Redis's replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Sync {
    Synced,
    Pending,
    /// A failover lost one of them: the next WAIT fails, whatever was written since.
    Lost,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    // An open (`provision/handler.rs`).
    Reuse(Sid),
    SessionServer,
    CommitRecord(Sid),
    CommitCache(Sid),
    Announce(Sid),
    Finish(Settled),
    // A close (`lifecycle/close.rs`), after its closed marker.
    TakeLock,
    End,
    Purge,
    // A renewal pass (`lifecycle/renew.rs`), after taking the lock.
    Check,
    Republish(Sid),
    RenewAtBunq(Sid),
    RenewRecord(Sid),
    RenewCache(Sid),
    AnnounceRenewed(Sid),
    EndPass { clear: bool },
}

/// What a replica is doing: its delivery (none for a renewal pass), the generation it
/// took, its next step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Job {
    pub msg: Option<u8>,
    pub claim: u8,
    pub step: Step,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Replica {
    pub job: Option<Job>,
    /// Its next move is a WAIT.
    pub waiting: bool,
    pub sync: Sync,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    pub primary: Keys,
    pub replica: Keys,
    /// The ready events first, then the close.
    pub msgs: Vec<Msg>,
    pub workers: [Replica; 2],
    /// Ghost: every session bunq opened, with the one it was renewed from.
    pub sessions: Vec<Option<Sid>>,
    /// Ghost: announced sessions not closed or renewed away since (a bit per session).
    pub live: u8,
    /// Ghost: a `session.closed` went out, or the close was acked.
    pub close_seen: bool,
    /// Ghost: something was announced after that.
    pub late: bool,
    /// Ghost: something was announced at all.
    pub announced: bool,
    /// What the bounds still allow.
    pub crashes: u8,
    pub failovers: u8,
    pub renewals: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Replica `.0` takes message `.1` and runs its first step: an open's lock taking,
    /// a close's marker.
    Deliver(u8, u8),
    /// Replica `.0` claims the renewal entry and takes the lock.
    Renew(u8),
    Step(u8),
    Wait(u8),
    /// The replica dies: its delivery returns to the queue, its lock stays until it expires.
    Crash(u8),
    LockExpires,
    Replicate,
    /// The replica is promoted: the primary's writes it has not got are lost.
    Failover,
}

pub struct ProtocolModel {
    pub protocol: Protocol,
    pub bounds: Bounds,
    /// Each state stands for the states it equals up to swapping the replicas, the ready
    /// copies, or shifting every generation: fewer states, same verdicts, but paths that
    /// may swap the replicas' names half way.
    pub canonical: bool,
}

pub(crate) fn bit(s: Sid) -> u8 {
    1 << s
}

impl State {
    pub(crate) fn worker(&mut self, w: u8) -> &mut Replica {
        &mut self.workers[usize::from(w)]
    }

    pub(crate) fn job(&self, w: u8) -> Job {
        self.workers[usize::from(w)].job.expect("a replica at work")
    }

    pub(crate) fn set_step(&mut self, w: u8, step: Step, wait: bool) {
        let worker = self.worker(w);
        worker.job.as_mut().expect("a replica at work").step = step;
        worker.waiting = wait;
    }

    pub(crate) fn write(&mut self, w: u8) {
        let worker = self.worker(w);
        if worker.sync == Sync::Synced {
            worker.sync = Sync::Pending;
        }
    }

    pub(crate) fn take(&mut self, w: u8) -> u8 {
        self.primary.generation += 1;
        self.primary.lock = Some(Owner { replica: w, generation: self.primary.generation });
        self.write(w);
        self.primary.generation
    }

    /// Writes `session:{user}` unless (`fenced`) a later generation wrote it.
    pub(crate) fn cache(&mut self, w: u8, sid: Sid, fenced: bool) {
        let claim = self.job(w).claim;
        if !(fenced && self.primary.cache.is_some_and(|(_, g)| g > claim)) {
            self.primary.cache = Some((sid, claim));
            self.write(w);
        }
    }

    pub(crate) fn fence_ok(&self, fence: Fence, w: u8, claim: u8) -> bool {
        match fence {
            Fence::OwnerOnly => self.primary.lock.is_none_or(|o| o == Owner { replica: w, generation: claim }),
            Fence::Generation => self.primary.generation == claim,
        }
    }

    /// Downstream's view: `s` replaces the sessions it was renewed from.
    pub(crate) fn announce(&mut self, s: Sid) {
        self.late |= self.close_seen;
        self.announced = true;
        self.live = (self.live & !self.ancestors(s)) | bit(s);
    }

    /// The sessions `s` was renewed from, a bit each.
    pub(crate) fn ancestors(&self, s: Sid) -> u8 {
        let mut ancestors = 0;
        let mut at = self.sessions[usize::from(s)];
        while let Some(parent) = at {
            ancestors |= bit(parent);
            at = self.sessions[usize::from(parent)];
        }
        ancestors
    }

    /// The replica's job is over: its lock released if still its own.
    pub(crate) fn release(&mut self, w: u8) {
        let job = self.job(w);
        if self.primary.lock == Some(Owner { replica: w, generation: job.claim }) {
            self.primary.lock = None;
        }
        *self.worker(w) = Replica { job: None, waiting: false, sync: Sync::Synced };
    }

    pub(crate) fn settle(&mut self, w: u8, outcome: Settled) {
        if let Some(m) = self.job(w).msg {
            self.msgs[usize::from(m)] = Msg::Done(outcome);
        }
        self.close_seen |= outcome == Settled::Closed;
        self.release(w);
    }

    /// Back to the queue; a counted failure past the budget is a dead letter.
    pub(crate) fn retry(&mut self, w: u8, counted: bool, max_attempts: u8) {
        if let Some(m) = self.job(w).msg {
            let Msg::Held { failures } = self.msgs[usize::from(m)] else { unreachable!("a held message") };
            let failures = failures + u8::from(counted);
            self.msgs[usize::from(m)] = match failures >= max_attempts {
                true => Msg::Done(Settled::DeadLettered),
                false => Msg::Queued { failures },
            };
        }
        self.release(w);
    }

    pub(crate) fn open_session(&mut self, parent: Option<Sid>) -> Sid {
        self.sessions.push(parent);
        (self.sessions.len() - 1) as Sid
    }

    /// Something not yet on the replica: replication (or a failover) can happen.
    pub(crate) fn unreplicated(&self) -> bool {
        self.primary != self.replica || self.workers.iter().any(|w| w.sync == Sync::Pending)
    }
}

impl State {
    /// The representative of this state's class (see [`ProtocolModel::canonical`]).
    pub(crate) fn canonical(mut self, readies: u8) -> State {
        let claimed = |j: &Job| j.step != Step::TakeLock;
        let mut low = u8::MAX;
        for k in [&self.primary, &self.replica] {
            let gens = [Some(k.generation), k.lock.map(|o| o.generation), k.cache.map(|c| c.1)];
            low = gens.into_iter().flatten().fold(low, u8::min);
        }
        let jobs = self.workers.iter().filter_map(|w| w.job);
        low = jobs.filter(claimed).map(|j| j.claim).fold(low, u8::min);
        for k in [&mut self.primary, &mut self.replica] {
            k.generation -= low;
            k.lock.iter_mut().for_each(|o| o.generation -= low);
            k.cache.iter_mut().for_each(|c| c.1 -= low);
        }
        for j in self.workers.iter_mut().filter_map(|w| w.job.as_mut()).filter(|j| claimed(j)) {
            j.claim -= low;
        }
        if self.workers[1] < self.workers[0] {
            self.workers.swap(0, 1);
            for o in [&mut self.primary.lock, &mut self.replica.lock].into_iter().flatten() {
                o.replica = 1 - o.replica;
            }
        }
        if readies == 2 && self.msgs[1] < self.msgs[0] {
            self.msgs.swap(0, 1);
            for m in self.workers.iter_mut().filter_map(|w| w.job.as_mut()).filter_map(|j| j.msg.as_mut()) {
                if *m < 2 {
                    *m = 1 - *m;
                }
            }
        }
        self
    }
}
