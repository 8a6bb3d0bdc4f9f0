//! The shared session-server budget, served earliest deadline first across replicas
//! (docs/architecture.md §5.6).
//!
//! Every replica behind one egress IP shares bunq's session-server budget, and each
//! waiting call has a deadline: a new session's credential expiry, a renewal's session
//! expiry. Served in arrival order, a backlog larger than the budget loses credentials an
//! earliest-deadline order would have served. So waiters register in Redis by deadline,
//! and a slot goes to the earliest deadline among those who will be there to use it:
//! - *present* waiters are held in a worker and poll;
//! - *parked* waiters went to the retry queue and come back shortly before their slot. One
//!   whose slot arrives while it is away (held up behind a longer delay in the queue)
//!   loses that slot to whoever is present: a slot is never kept for someone not there.
//!
//! A waiter whose slot falls after its deadline hears so at once: whatever it does, the
//! budget serves the earlier deadlines first, so it is dead-lettered without waiting.
//! Slots follow the same sliding-window log and next-slot rule as every other call
//! (`limit.rs`); this module decides
//! who takes the next one.

use super::limit::{Limit, RateLimitError, Reservation, SLOTS};
use super::line::{ADMIT, MEMBERS, PLAN, RENAME};
use crate::metrics::{BudgetLine, Metrics};
use crate::store::Redis;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// What a waiter is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A slot is free now (and, when taking, reserved).
    Go,
    /// The slot is this far off: stay and ask again.
    Hold(Duration),
    /// The slot is further off than is worth holding a delivery for: come back after this.
    Park(Duration),
    /// No slot before the deadline: the next one this waiter could get is this far off.
    Hopeless { slot_in: Duration, ahead: u64 },
}

/// Slots counted for [`BudgetLine::servable_before_earliest`] at most: enough for bunq's hours
/// of credential life, bounded for a script that runs every few seconds.
pub(crate) const PLAN_SLOT_CAP: u64 = 20_000;

/// Waiters ahead that will not be there for their slot (parked and due back after it)
/// one admission reads at most, so a cascade of late returns cannot make every poll read
/// the whole line. A line holds that many only when parked waiters' slots moved earlier
/// than their wakes en masse; past them the admission errs towards the caller (ADMIT).
pub(crate) const ABSENT_CAP: u64 = 256;

/// Who waits: one entry per provision and purpose, so a redelivery or a second
/// replica handling the same provision takes its place instead of a second one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiter {
    Open(u64),
    Renew(u64),
    /// The partner's own session (`CREDENTIAL_RESET=on`): one for every replica.
    Partner,
    /// A provision whose new token (`CREDENTIAL_RESET=on`) is in hand: it waits in the
    /// worker for its slot, up to its retry budget, instead of parking in the retry queue
    /// (a late return there would let the token expire unused and cost a second reset).
    Reset(u64),
}

impl Waiter {
    fn member(self) -> String {
        match self {
            Waiter::Open(id) => format!("open:{id}"),
            Waiter::Renew(id) => format!("renew:{id}"),
            Waiter::Partner => "partner".to_owned(),
            Waiter::Reset(id) => format!("reset:{id}"),
        }
    }

    /// The longest this waiter is held in its worker for its slot, given its remaining
    /// retry budget: a new token the whole budget, anyone else the hold horizon.
    fn hold(self, horizon: Duration, budget: Duration) -> Duration {
        match self {
            Waiter::Reset(_) => budget,
            _ => horizon.min(budget),
        }
    }
}

/// The session-server budget's waiting line, in Redis.
#[derive(Clone)]
pub struct Budget {
    conn: Redis,
    log_key: String,
    limit: Limit,
    /// The longest a parked waiter stays away: the retry queue's largest delay.
    max_park: Duration,
    admit: Arc<redis::Script>,
    plan: Arc<redis::Script>,
    rename: Arc<redis::Script>,
}

/// How close before its deadline a waiter's call may start at the latest: signing and
/// the trip to bunq fit in it on a loaded machine (tens of milliseconds), and a second
/// of lead would cost 3% of a 30 s credential window.
const LEAD: Duration = Duration::from_millis(250);
/// A parked waiter not back this long after its wake time is forgotten (it comes back
/// and registers again).
const FORGET_AFTER: Duration = Duration::from_secs(600);

impl Budget {
    pub(crate) fn new(conn: Redis, log_key: String, limit: Limit, max_park: Duration) -> Self {
        Self {
            conn,
            log_key,
            limit,
            max_park,
            admit: Arc::new(redis::Script::new(&format!("{SLOTS}{MEMBERS}{ADMIT}"))),
            plan: Arc::new(redis::Script::new(&format!("{SLOTS}{PLAN}"))),
            rename: Arc::new(redis::Script::new(&format!("{SLOTS}{MEMBERS}{RENAME}"))),
        }
    }

    /// Time between slots on average: the window spread over its calls.
    fn slot_interval(&self) -> Duration {
        self.limit.spacing() / self.limit.calls
    }

    /// Longest a delivery is held for its slot before it is parked: two slots, at least
    /// 3 s. Parked waiters come back half of it before their slot, which absorbs their
    /// being late behind a longer delay in the retry queue; and the waiters held meanwhile
    /// are who takes a slot a late one misses.
    pub(crate) fn hold_horizon(&self) -> Duration {
        (self.slot_interval() * 2).max(Duration::from_secs(3))
    }

    /// How long a held waiter counts as present after it asked: it outlives the longest
    /// sleep between two polls (half the hold horizon, or half the lease for a waiter held
    /// longer).
    fn lease(&self) -> Duration {
        self.hold_horizon() / 2 + self.poll_interval() * 4 + Duration::from_secs(1)
    }

    /// How often a held waiter asks again: often enough that a slot a parked waiter did
    /// not come back for is taken within half a slot.
    fn poll_interval(&self) -> Duration {
        (self.slot_interval() / 2).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }

    fn keys(&self, invocation: &mut redis::ScriptInvocation<'_>) {
        let base = &self.log_key;
        invocation
            .key(base)
            .key(format!("{base}:waiting"))
            .key(format!("{base}:present"))
            .key(format!("{base}:parked"));
    }

    /// Asks once. `take`: reserve the slot when it is free now (else only ask whether to
    /// go on, park or give up); `hold`: the longest this caller would stay for its slot,
    /// whatever the retry queue's order.
    pub async fn admit(
        &self,
        waiter: Waiter,
        deadline: OffsetDateTime,
        take: bool,
        hold: Duration,
    ) -> Result<Admission, RateLimitError> {
        self.admit_as(waiter, deadline, take, (hold, hold), &uuid::Uuid::new_v4().to_string()).await
    }

    /// [`Self::admit`], the call going into the log as `member` when it takes a slot;
    /// `stay`: how long it is held for a near slot, and the most it may stay at all
    /// (what is left of its retry budget) when parking would bring it back too late.
    async fn admit_as(
        &self,
        waiter: Waiter,
        deadline: OffsetDateTime,
        take: bool,
        (hold, budget): (Duration, Duration),
        member: &str,
    ) -> Result<Admission, RateLimitError> {
        let deadline_ms = (deadline.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
        let lease = self.lease();
        let mut invocation = self.admit.prepare_invoke();
        self.keys(&mut invocation);
        invocation
            .arg(self.limit.spacing().as_millis() as u64)
            .arg(self.limit.calls)
            .arg(waiter.member())
            .arg(deadline_ms)
            .arg(u8::from(take))
            .arg(hold.as_millis() as u64)
            .arg(lease.as_millis() as u64)
            .arg(self.max_park.as_millis() as u64)
            .arg(FORGET_AFTER.as_millis() as u64)
            .arg(member)
            .arg(LEAD.as_millis() as u64)
            .arg(budget.as_millis() as u64)
            .arg(ABSENT_CAP);
        let mut conn = self.conn.clone();
        let (kind, ms, ahead): (i64, i64, u64) = invocation.invoke_async(&mut conn).await?;
        let ms = Duration::from_millis(ms.max(0) as u64);
        Ok(match kind {
            0 => Admission::Go,
            1 => Admission::Hold(ms),
            2 => Admission::Park(ms),
            _ => Admission::Hopeless { slot_in: ms, ahead },
        })
    }

    /// Waits for a slot before `deadline` and reserves it; `max_hold` bounds the stay
    /// (what is left of the caller's retry budget).
    pub async fn acquire(
        &self,
        waiter: Waiter,
        deadline: OffsetDateTime,
        max_hold: Duration,
    ) -> Result<Reservation, RateLimitError> {
        let started = tokio::time::Instant::now();
        let member = uuid::Uuid::new_v4().to_string();
        loop {
            let budget = max_hold.saturating_sub(started.elapsed());
            let hold = waiter.hold(self.hold_horizon(), budget);
            match self.admit_as(waiter, deadline, true, (hold, budget), &member).await? {
                Admission::Go => {
                    let spacing = self.limit.spacing();
                    return Ok(Reservation::new(self.log_key.clone(), member, spacing, started.elapsed()));
                }
                // Half the wait at most: a slot that moves earlier (a waiter ahead left or
                // is away) is noticed before it comes. Within its lease: a waiter not seen
                // for longer counts as gone.
                Admission::Hold(wait) => {
                    let sleep = wait.min(self.poll_interval().max(wait / 2)).min(self.lease() / 2);
                    tokio::time::sleep(sleep).await;
                }
                Admission::Park(after) => return Err(RateLimitError::Parked { after }),
                Admission::Hopeless { slot_in, ahead } => {
                    return Err(RateLimitError::NoSlotBeforeDeadline { deadline, slot_in, ahead })
                }
            }
        }
    }

    /// Before a handshake starts: whether to go on (the slot is near), park, or give up,
    /// reserving nothing, so no installation or device is spent on a credential the
    /// budget cannot serve in time. `budget`: the caller's retry budget, as for `acquire`.
    pub(crate) async fn check(
        &self,
        waiter: Waiter,
        deadline: OffsetDateTime,
        budget: Duration,
    ) -> Result<(), RateLimitError> {
        let member = uuid::Uuid::new_v4().to_string();
        let stay = (waiter.hold(self.hold_horizon(), budget), budget);
        match self.admit_as(waiter, deadline, false, stay, &member).await? {
            Admission::Go | Admission::Hold(_) => Ok(()),
            Admission::Park(after) => Err(RateLimitError::Parked { after }),
            Admission::Hopeless { slot_in, ahead } => {
                Err(RateLimitError::NoSlotBeforeDeadline { deadline, slot_in, ahead })
            }
        }
    }

    /// `from` goes on as `to`, due by `deadline`: `from`'s place is given up and `to` is
    /// registered present for `lease`, taking no slot. A provision whose reset is requested
    /// waits on as [`Waiter::Reset`] before its new token is there: the resets asked for
    /// next see it ahead of them (else up to a quarter of a token's life of new tokens
    /// would be asked for at once, each seeing a near slot, and the last parked), and its
    /// old entry, parked with a wake already past, is not counted as coming back by every
    /// waiter behind it (a scale run saw new tokens parked 4–10 s behind such entries,
    /// and some expire unused).
    pub async fn rename(
        &self,
        (from, to): (Waiter, Waiter),
        deadline: OffsetDateTime,
        lease: Duration,
    ) -> Result<(), RateLimitError> {
        let deadline_ms = (deadline.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
        let mut invocation = self.rename.prepare_invoke();
        self.keys(&mut invocation);
        invocation
            .arg(self.limit.spacing().as_millis() as u64)
            .arg(self.limit.calls)
            .arg(from.member())
            .arg(to.member())
            .arg(deadline_ms)
            .arg(lease.as_millis() as u64);
        let mut conn = self.conn.clone();
        let _: i64 = invocation.invoke_async(&mut conn).await?;
        Ok(())
    }

    /// The whole line, planned in deadline order.
    pub async fn plan(&self) -> Result<BudgetLine, RateLimitError> {
        let mut invocation = self.plan.prepare_invoke();
        self.keys(&mut invocation);
        invocation
            .arg(self.limit.spacing().as_millis() as u64)
            .arg(self.limit.calls)
            .arg(LEAD.as_millis() as u64)
            .arg(PLAN_SLOT_CAP);
        let mut conn = self.conn.clone();
        let (waiting, servable, hopeless, last, earliest, before, slack): (u64, u64, u64, i64, i64, u64, i64) =
            invocation.invoke_async(&mut conn).await?;
        let ms = |v: i64| Duration::from_millis(v.max(0) as u64);
        Ok(BudgetLine {
            waiting,
            servable,
            hopeless,
            reserved_ahead: ms(last),
            earliest_deadline_in: (earliest >= 0).then(|| ms(earliest)),
            servable_before_earliest: before,
            least_slack: (slack >= 0).then(|| ms(slack)),
        })
    }

    /// Publishes the plan as gauges every `every` until shutdown; every replica does,
    /// dashboards take the max.
    pub(crate) async fn watch(
        self,
        metrics: Arc<Metrics>,
        every: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        loop {
            match self.plan().await {
                Ok(line) => metrics.budget_line(&line),
                Err(e) => tracing::debug!(event = "budget_plan_failed", error = %e),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}
