//! Just-in-time token resets (`CREDENTIAL_RESET=on`): a ready provision whose credential
//! expired, that the session-server budget cannot serve before it expires, or whose
//! credential bunq refused at session-server, waits in the budget's line ordered by when
//! it first needed a reset; once its slot is near, the worker asks bunq for a new token
//! on the partner's session (`PUT /partner-user-provision/{id}`
//! `{"status":"TOKEN_RESET_REQUESTED"}`), reads the provision until the new token is there
//! (`GET`), and the handler opens the session with it (docs/bunq-api.md §7.3, §12).
//! A reset is requested once per credential it replaces, across tries and replicas: the
//! record in Redis says so, and a retry (or another replica after a crash) only reads.

use super::context::{Partner, PartnerSession};
use crate::failure::{Failure, Reason};
use crate::lifecycle::ReadyProvision;
use crate::metrics::Metrics;
use crate::ratelimit::budget::Waiter;
use crate::ratelimit::limit::RateLimitError;
use crate::store::{credential_tag, ResetRecord, Store};
use bunq_protocol::error::Endpoint;
use bunq_protocol::PartnerProvision;
use secrecy::ExposeSecret;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// How often the provision is read while bunq prepares the new token.
const READ_EVERY: Duration = Duration::from_millis(1000);
/// Reset records outlive any wait for a slot.
const KEEP: Duration = Duration::from_secs(2 * 24 * 3600);
/// Statuses in which bunq resets a token ("as long as the provision and the user are active").
const ACTIVE_STATUSES: [&str; 3] = ["CREATED", "ACTIVE", "TOKEN_RESET_REQUESTED"];

/// Validated reset settings (`CREDENTIAL_RESET=on`).
#[derive(Debug, Clone)]
pub(crate) struct ResetSettings {
    /// The partner's API key; zeroized when the last copy is dropped.
    pub(crate) partner_api_key: Arc<secrecy::SecretString>,
    pub(crate) max_refusals: u32,
    pub(crate) credential_lifetime: Duration,
}

/// The provision whose credential cannot open its session any more.
#[derive(Debug, Clone)]
pub(crate) struct NeedsReset {
    pub(crate) provision_id: u64,
    pub(crate) external_uuid: Option<String>,
    /// The token that expired or was refused, as `credential_tag(None, token)` names it
    /// (no secret): a reset is requested once per replaced token, and a token read back
    /// counts as new only when it is another.
    pub(crate) replaces: Option<String>,
    /// Why, for the log and a dead letter's detail.
    pub(crate) why: String,
    /// When the old credential lapses, if it has not yet (the budget cannot serve it in
    /// time): no reset before then.
    pub(crate) lapses_at: Option<OffsetDateTime>,
}

/// What bunq shows of a provision being reset.
enum Seen {
    /// A new, unused token: open with it.
    Fresh(ReadyProvision),
    /// The reset is under way.
    Pending,
    /// Neither: no reset under way (a request that never arrived).
    Idle,
    /// Not active any more: bunq will not reset it.
    Inactive(String),
}

/// What a reset attempt came to.
#[derive(Debug)]
pub(crate) enum Reset {
    /// A fresh token: the handler opens the session with it.
    Fresh(ReadyProvision),
    /// Not yet (the slot is far, or bunq is still preparing the token): again after this,
    /// no attempt spent.
    Later { after: Duration, detail: String },
    /// bunq will not reset it (the provision or user is no longer active, or it refused
    /// `CREDENTIAL_RESET_MAX_ATTEMPTS` times): dead-lettered `credential_expired`.
    Refused(String),
}

pub(crate) struct Resetter {
    partner: Arc<Partner>,
    store: Store,
    settings: ResetSettings,
    metrics: Arc<Metrics>,
    /// The retry queue's first delay: how soon a refused request is asked again.
    retry_delay: Duration,
    max_delay: Duration,
}

impl Resetter {
    pub(crate) fn new(
        partner: Arc<Partner>,
        store: Store,
        settings: ResetSettings,
        metrics: Arc<Metrics>,
        retry_delay: Duration,
        max_delay: Duration,
    ) -> Self {
        Self { partner, store, settings, metrics, retry_delay, max_delay }
    }

    /// The place of a provision waiting for a reset in the budget's line: by when it
    /// first needed one, a fresh token's lifetime later (so waiting resets go in arrival
    /// order among the deadlines of live credentials); one that has waited longer than
    /// that goes half a lifetime from now.
    pub(crate) async fn line_deadline(&self, provision_id: u64) -> Result<OffsetDateTime, Failure> {
        let life = self.settings.credential_lifetime;
        let (first, now) = self.store.first_seen(provision_id, "reset", life * 4).await?;
        let deadline = first + life.as_secs() as i64;
        let at = deadline.max(now + (life / 2).as_secs() as i64);
        Ok(OffsetDateTime::from_unix_timestamp(at).unwrap_or(OffsetDateTime::UNIX_EPOCH))
    }

    /// One try: wait for the slot, request the reset (once per credential it replaces),
    /// read the new token. The caller holds the provision's lock.
    pub(crate) async fn reset(&self, needs: &NeedsReset) -> Result<Reset, Failure> {
        let id = needs.provision_id;
        self.store.wait_for_reset(id).await?;
        let record = self.store.load_reset(id).await?;
        let session = self.partner.session().await?;
        let line = self.line_deadline(id).await?;
        if let (Some(requested_at), true) = (record.requested_at, record.replaces == needs.replaces) {
            // Asked before (an earlier try, or a replica that died after asking): bunq's
            // state says whether the request arrived. A new token already there is used
            // now, whatever the line says.
            let serve_by = self.serve_by(requested_at);
            match self.seen(&self.read(&session, id).await?, needs, serve_by) {
                Seen::Fresh(fresh) => return Ok(self.fresh(fresh)),
                Seen::Inactive(status) => return self.inactive(needs, &status).await,
                Seen::Pending => return self.read_new_token(&session, needs, serve_by).await,
                Seen::Idle => {}
            }
        }
        // A credential the budget cannot serve in time is reset once it lapses, not
        // before: until then the line may still change for it, and a new token's life
        // starts no sooner than needed.
        if let Some(at) = needs.lapses_at.filter(|at| *at > self.store.clock_now()) {
            let until = (at - self.store.clock_now()).unsigned_abs();
            let after = until.clamp(self.retry_delay, self.max_delay);
            return Ok(Reset::Later {
                after,
                detail: format!("provision {id}'s credential lapses at {at}; reset after"),
            });
        }
        // Just in time: a new token starts its life only when a session-server slot is
        // near; until then the provision waits in the line, in arrival order. And never
        // more new tokens unused than the budget serves in a quarter of a token's life: others
        // waiting in the retry queue are not in the line, and would expire unused.
        let limiter = self.partner.opener().limiter();
        let life = self.settings.credential_lifetime;
        let limit = limiter.session_server_limit();
        let capacity =
            (u64::from(limit.calls) * (life / 4).as_millis() as u64 / limit.per.as_millis().max(1) as u64).max(1);
        if self.store.resets_outstanding(life).await? >= capacity {
            let detail =
                format!("{capacity} new tokens wait for their sessions; provision {id}'s reset comes after them");
            return Ok(Reset::Later { after: self.retry_delay, detail });
        }
        let retry_budget = self.partner.opener().retry_budget();
        match limiter.check_session_server(Waiter::Open(id), line, retry_budget).await {
            Ok(()) => {}
            Err(RateLimitError::Parked { after }) => {
                let detail = format!("waiting for a session-server slot for provision {id}'s reset");
                return Ok(Reset::Later { after, detail });
            }
            Err(RateLimitError::NoSlotBeforeDeadline { slot_in, ahead, .. }) => {
                let after = (slot_in / 2).clamp(self.retry_delay, self.max_delay);
                let detail =
                    format!("{ahead} provisions come first; its reset waits for a slot (in {}s)", slot_in.as_secs());
                return Ok(Reset::Later { after, detail });
            }
            Err(e) => return Err(Failure::from(&e)),
        }
        // From here it waits for its slot as a new token (`Waiter::Reset`), in the line at
        // once: the next resets see it before its token is there. Present while bunq
        // prepares the token, at most a retry budget (then forgotten, and back as it
        // comes).
        let requested_at = self.store.clock_now().unix_timestamp();
        let renamed = (Waiter::Open(id), Waiter::Reset(id));
        limiter
            .rename_session_server_waiter(renamed, self.serve_by(requested_at), retry_budget)
            .await
            .map_err(|e| Failure::from(&e))?;
        // The intent first: a crash after bunq took the request must not ask twice.
        let intent = ResetRecord {
            replaces: needs.replaces.clone(),
            requested_at: Some(requested_at),
            refusals: record.refusals,
        };
        self.store.save_reset(id, &intent, KEEP).await?;
        self.store.reset_requested(id).await?;
        match self.request(&session, id).await? {
            Ok(()) => {
                self.metrics.credential_reset("requested");
                tracing::info!(event = "credential_reset_requested", provision_id = id, why = %needs.why);
            }
            Err(refused) => return self.refused(&session, needs, record, refused).await,
        }
        self.read_new_token(&session, needs, self.serve_by(requested_at)).await
    }

    /// The deadline a new token is served by: half a lifetime after it was requested
    /// (requested because its slot was near, it goes before live credentials that
    /// expire later, so deadlines arriving meanwhile do not push it past its own expiry
    /// and into a second reset), and never sooner than a few seconds from now.
    fn serve_by(&self, requested_at: i64) -> OffsetDateTime {
        let half = (self.settings.credential_lifetime / 2).as_secs() as i64;
        let floor = self.store.clock_now() + time::Duration::seconds(3);
        OffsetDateTime::from_unix_timestamp(requested_at + half).map_or(floor, |at| at.max(floor))
    }

    /// What bunq shows of the provision, for a reset that replaces `needs.replaces`.
    fn seen(&self, provision: &PartnerProvision, needs: &NeedsReset, line: OffsetDateTime) -> Seen {
        if !ACTIVE_STATUSES.contains(&provision.status.as_str()) {
            return Seen::Inactive(provision.status.clone());
        }
        // A token is new only if it is another than the one replaced (bunq may still
        // show that one before the reset takes effect).
        let token = provision
            .usable_token(self.store.clock_now())
            .filter(|t| !t.expose_secret().is_empty() && Some(credential_tag(None, t)) != needs.replaces);
        if let (Some(token), Some(credential)) = (token, provision.credential.as_ref()) {
            let expires = credential.expiry_time.map_or(line, |at| at.min(line));
            return Seen::Fresh(ReadyProvision {
                provision_id: provision.id,
                external_uuid: needs.external_uuid.clone(),
                credential_id: Some(credential.id),
                token_value: token.clone(),
                credential_expires_at: Some(expires),
                after_reset: true,
            });
        }
        if provision.sub_status == "PENDING_PROCESS_TOKEN_RESET" || provision.status == "TOKEN_RESET_REQUESTED" {
            return Seen::Pending;
        }
        Seen::Idle
    }

    fn fresh(&self, fresh: ReadyProvision) -> Reset {
        self.metrics.credential_reset("token_received");
        tracing::info!(
            event = "credential_reset_token_received",
            provision_id = fresh.provision_id,
            credential_id = fresh.credential_id
        );
        Reset::Fresh(fresh)
    }

    async fn inactive(&self, needs: &NeedsReset, status: &str) -> Result<Reset, Failure> {
        self.metrics.credential_reset("refused");
        self.store.reset_done(needs.provision_id).await?;
        Ok(Reset::Refused(format!(
            "{}; the provision is {status}: bunq resets only an active provision's token",
            needs.why
        )))
    }

    /// `PUT … {"status":"TOKEN_RESET_REQUESTED"}`. Inside: bunq's refusal (a 4xx other
    /// than the partner's session being refused), for the caller to weigh.
    async fn request(&self, session: &PartnerSession, id: u64) -> Result<Result<(), Failure>, Failure> {
        let client = self.partner.opener().client();
        let put = || client.request_token_reset(session.user(), id);
        match self.partner.opener().call(Endpoint::PartnerUserProvisionUpdate, None, put).await {
            Ok(()) => Ok(Ok(())),
            Err(f) if f.reason == Reason::RejectedByBunq && !f.refused_session() => Ok(Err(f)),
            Err(f) => Err(self.on_partner_failure(session, f)),
        }
    }

    /// bunq refused the reset: dead letter at once when the provision is no longer active,
    /// else again later, up to `CREDENTIAL_RESET_MAX_ATTEMPTS` refusals.
    async fn refused(
        &self,
        session: &PartnerSession,
        needs: &NeedsReset,
        mut record: ResetRecord,
        refusal: Failure,
    ) -> Result<Reset, Failure> {
        let id = needs.provision_id;
        record.refusals += 1;
        record.requested_at = None;
        self.store.reset_withdrawn(id).await?;
        let provision = self.read(session, id).await?;
        let inactive = !ACTIVE_STATUSES.contains(&provision.status.as_str());
        if inactive || record.refusals >= self.settings.max_refusals {
            self.metrics.credential_reset("refused");
            self.store.reset_done(id).await?;
            let why = match inactive {
                true => format!("the provision is {}", provision.status),
                false => format!("{} refusals", record.refusals),
            };
            return Ok(Reset::Refused(format!(
                "{}; bunq refused the token reset ({why}): {}",
                needs.why, refusal.detail
            )));
        }
        self.store.save_reset(id, &record, KEEP).await?;
        self.metrics.credential_reset("retried");
        Ok(Reset::Later {
            after: self.retry_delay,
            detail: format!("bunq refused the token reset: {}", refusal.detail),
        })
    }

    /// Reads the provision until its credential is a new, unused token, within the retry
    /// budget; bunq still preparing it after that is tried again later.
    async fn read_new_token(
        &self,
        session: &PartnerSession,
        needs: &NeedsReset,
        line: OffsetDateTime,
    ) -> Result<Reset, Failure> {
        let id = needs.provision_id;
        let give_up = tokio::time::Instant::now() + self.partner.opener().retry_budget();
        loop {
            match self.seen(&self.read(session, id).await?, needs, line) {
                Seen::Fresh(fresh) => return Ok(self.fresh(fresh)),
                Seen::Inactive(status) => return self.inactive(needs, &status).await,
                Seen::Pending | Seen::Idle => {}
            }
            if tokio::time::Instant::now() + READ_EVERY > give_up {
                return Ok(Reset::Later {
                    after: self.retry_delay,
                    detail: format!("bunq is still preparing provision {id}'s new token"),
                });
            }
            tokio::time::sleep(READ_EVERY).await;
        }
    }

    async fn read(&self, session: &PartnerSession, id: u64) -> Result<PartnerProvision, Failure> {
        let client = self.partner.opener().client();
        let get = || client.provision(session.user(), id);
        self.partner
            .opener()
            .call(Endpoint::PartnerUserProvisionRead, None, get)
            .await
            .map_err(|f| self.on_partner_failure(session, f))
    }

    /// A 401 or 403 on the partner's calls means its session is gone: dropped, so the
    /// next try opens another (transient).
    fn on_partner_failure(&self, session: &PartnerSession, failure: Failure) -> Failure {
        if failure.refused_session() {
            let partner = self.partner.clone();
            let session = session.clone();
            tokio::spawn(async move { partner.refused(&session).await });
            return failure.into_transient();
        }
        failure
    }

    /// For the gauge: provisions waiting for a reset or their new token.
    pub(crate) async fn watch(self: Arc<Self>, every: Duration, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            match self.store.resets_waiting(self.settings.credential_lifetime * 2).await {
                Ok(waiting) => self.metrics.resets_waiting(waiting),
                Err(e) => tracing::debug!(event = "resets_waiting_unread", error = %e),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}
