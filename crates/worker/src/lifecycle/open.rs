//! Opening a session for a ready provision: installation → device-server →
//! session-server, each step rate-limited and retried, progress saved after each step
//! so a retry (or another replica, after a crash) continues where this one stopped.

use crate::failure::{Failure, Reason, Retry};
use crate::ratelimit::budget::Waiter;
use crate::ratelimit::limit::RateLimitError;
use crate::ratelimit::RateLimiter;
use crate::retry::{run_with_retries, RetryPolicy};
use crate::store::gate::RedisGate;
use crate::store::{Claim, Credential, Handshake, Session, Store, StoreError};
use bunq_protocol::client::{BunqClient, CallObserver, ClientSettings, Installation};
use bunq_protocol::error::{BunqError, Endpoint};
use bunq_protocol::signing::{ClientKey, PublicKey};
use secrecy::SecretString;
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// Handshake progress lives at most this long before a session exists: bunq's credential
/// window is 1 h (sandbox) to 4 h (production).
const HANDSHAKE_TTL: Duration = Duration::from_secs(24 * 3600);

/// The longest a session is taken to live, whatever bunq's `session_timeout` says (its
/// users' settings go up to days; a year is beyond any of them).
const MAX_SESSION_LIFE: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long before its expiry a credential must be for its handshake to start: installation
/// and device-server come before the session-server call, whose own lead is 250 ms.
const HANDSHAKE_LEAD: Duration = Duration::from_secs(1);

/// A provision to open a session for (decided by `provision::decide`): everything the later steps need, secret wrapped.
#[derive(Debug, Clone)]
pub struct ReadyProvision {
    pub(crate) provision_id: u64,
    pub(crate) external_uuid: Option<String>,
    pub(crate) credential_id: Option<u64>,
    pub(crate) token_value: SecretString,
    pub(crate) credential_expires_at: Option<OffsetDateTime>,
    /// A new token the worker's own reset just obtained: held for its slot, not parked.
    pub(crate) after_reset: bool,
}

#[derive(Debug, Clone)]
/// The bunq side of the worker's settings.
pub struct BunqSettings {
    pub(crate) base_url: String,
    pub(crate) client_key: Arc<ClientKey>,
    pub(crate) device_description: String,
    /// `permitted_ips` of registered devices: IPv4 addresses, or `*` for any.
    pub permitted_ips: Vec<String>,
    pub(crate) request_timeout: Duration,
}

impl BunqSettings {
    /// The bunq client, reporting each call to `observer`.
    pub(crate) fn client(&self, observer: Arc<dyn CallObserver>) -> Result<BunqClient, reqwest::Error> {
        let settings = ClientSettings {
            base_url: self.base_url.clone(),
            device_description: self.device_description.clone(),
            permitted_ips: self.permitted_ips.clone(),
            request_timeout: self.request_timeout,
            user_agent: format!("bunq-session-worker/{}", env!("CARGO_PKG_VERSION")),
        };
        BunqClient::new(settings, self.client_key.clone(), observer)
    }
}

#[derive(Clone)]
pub(crate) struct SessionOpener {
    client: BunqClient,
    store: Store,
    limiter: RateLimiter,
    retry: RetryPolicy,
    /// Subtracted from bunq's session timeout for the cache TTL.
    ttl_margin: Duration,
    gate: Arc<RedisGate>,
}

/// A session the handshake opened and recorded.
pub(crate) struct Opened {
    pub(crate) session: Session,
    /// The provision was marked closed while it opened: not to be announced (the close,
    /// waiting for the lock, ends it).
    pub(crate) closed: bool,
}

/// One step's error, for the retry loop.
enum StepError {
    Bunq(BunqError),
    RateLimit(RateLimitError),
}

impl StepError {
    fn retry(&self) -> Retry {
        match self {
            StepError::Bunq(e) => e.retry(),
            StepError::RateLimit(e) => e.retry(),
        }
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepError::Bunq(e) => e.fmt(f),
            StepError::RateLimit(e) => e.fmt(f),
        }
    }
}

impl From<&StepError> for Failure {
    fn from(err: &StepError) -> Self {
        match err {
            StepError::Bunq(e) => Failure::from(e),
            StepError::RateLimit(e) => Failure::from(e),
        }
    }
}

impl SessionOpener {
    pub(crate) fn new(
        client: BunqClient,
        store: Store,
        limiter: RateLimiter,
        retry: RetryPolicy,
        ttl_margin: Duration,
        gate: Arc<RedisGate>,
    ) -> Self {
        Self { client, store, limiter, retry, ttl_margin, gate }
    }

    /// Whether a stored session is still worth announcing.
    pub(crate) fn is_usable(&self, session: &Session, now: OffsetDateTime) -> bool {
        session.expires_at - self.ttl_margin > now
    }

    /// Cache TTL for a session: its remaining life minus the margin, at least a second.
    pub(crate) fn cache_ttl(&self, session: &Session, now: OffsetDateTime) -> Duration {
        let remaining = (session.expires_at - now - self.ttl_margin).whole_seconds();
        Duration::from_secs(remaining.max(1) as u64)
    }

    /// Runs the missing steps of the handshake and makes the new session durable, with
    /// `credential` when it is to be renewed. The caller holds the provision's lock.
    pub(crate) async fn open(
        &self,
        provision: &ReadyProvision,
        mut handshake: Handshake,
        claim: &Claim,
        credential: Option<&Credential>,
    ) -> Result<Opened, Failure> {
        let deadline = Instant::now() + self.retry.budget;
        let id = provision.provision_id;
        let secret = &provision.token_value;
        // bunq takes the secret until the credential expires. A delivery's credential
        // without one already has its deadline from first sight (`provision/handler.rs`);
        // the fallback only orders any other caller's after every dated one.
        let waiter = if provision.after_reset { Waiter::Reset(id) } else { Waiter::Open(id) };
        let due = (waiter, provision.credential_expires_at.unwrap_or_else(|| self.store.clock_now() + HANDSHAKE_TTL));
        if handshake.installation.is_none() || handshake.device_id.is_none() {
            // Spend no installation or device on a credential the budget cannot serve in
            // time, and wait for a far slot in the retry queue, not halfway through.
            let max_wait = deadline.saturating_duration_since(Instant::now());
            // The credential must outlive installation and device-server too, not only the
            // session-server call's lead (a scale run sent one 20 ms past its expiry).
            let by = due.1 - HANDSHAKE_LEAD;
            self.limiter.check_session_server(due.0, by, max_wait).await.map_err(|e| Failure::from(&e))?;
        }

        let installation = match &handshake.installation {
            Some((token, pem)) => Installation {
                token: token.clone(),
                server_key: PublicKey::from_pem(pem)
                    .map_err(|e| Failure::permanent(Reason::CorruptState, format!("stored server key: {e}")))?,
            },
            None => {
                let installation =
                    self.step(Endpoint::Installation, id, deadline, None, || self.client.create_installation()).await?;
                handshake.installation = Some((installation.token.clone(), installation.server_key.pem().to_owned()));
                self.save(claim, &handshake).await?;
                installation
            }
        };

        if handshake.device_id.is_none() {
            let device_id = self
                .step(Endpoint::DeviceServer, id, deadline, None, || {
                    self.client.create_device_server(&installation, secret)
                })
                .await?;
            handshake.device_id = Some(device_id);
            self.save(claim, &handshake).await?;
        }

        let session =
            self.session_server(id, provision.external_uuid.clone(), &installation, secret, deadline, due).await?;
        handshake.session = Some(session.clone());
        let ttl = self.cache_ttl(&session, self.store.clock_now());
        // bunq has opened the session: giving up on recording it means the next attempt
        // opens a second one.
        let written =
            self.durably(id, || self.store.commit_session(claim, &handshake, &session, credential, ttl)).await?;
        tracing::info!(
            event = "session_opened",
            user_id = session.user_id,
            session_id = session.session_id,
            expires_at = %session.expires_at,
        );
        Ok(Opened { session, closed: written.closed })
    }

    /// Renewal: one session-server call on the installation and device `current` was
    /// opened on (no new installation, no new device), rate-limited and retried like a
    /// handshake step. The caller commits the new session.
    pub(crate) async fn renew(&self, current: &Session, secret: &SecretString) -> Result<Session, Failure> {
        let installation = Installation {
            token: current.installation_token.clone(),
            server_key: PublicKey::from_pem(&current.server_public_key)
                .map_err(|e| Failure::permanent(Reason::CorruptState, format!("stored server key: {e}")))?,
        };
        let deadline = Instant::now() + self.retry.budget;
        // Renewals share the budget with new sessions, by the same rule: the earliest
        // deadline (here the session's expiry) first.
        let due = (Waiter::Renew(current.provision_id), current.expires_at);
        self.session_server(current.provision_id, current.external_uuid.clone(), &installation, secret, deadline, due)
            .await
    }

    async fn session_server(
        &self,
        provision_id: u64,
        external_uuid: Option<String>,
        installation: &Installation,
        secret: &SecretString,
        deadline: Instant,
        due: (Waiter, OffsetDateTime),
    ) -> Result<Session, Failure> {
        let opened = self
            .step(Endpoint::SessionServer, provision_id, deadline, Some(due), || {
                self.client.create_session_server(installation, secret)
            })
            .await?;
        // Redis's clock: the session's expiry, and so its renewal, must mean the same on
        // every replica. Redis away just now, the local clock stands in (the commit that
        // follows waits for Redis anyway).
        let now = match self.store.now().await {
            Ok(now) => now,
            Err(e) => {
                tracing::warn!(event = "redis_clock_unavailable", error = %e);
                self.store.clock_now()
            }
        };
        Ok(Session {
            provision_id,
            external_uuid,
            user_id: opened.user_id,
            granted_by_user_id: opened.granted_by_user_id,
            session_id: opened.session_id,
            session_token: opened.token,
            installation_token: installation.token.clone(),
            server_public_key: installation.server_key.pem().to_owned(),
            created_at: now,
            // bunq's value, bounded: a nonsensical one must not overflow the clock.
            expires_at: now + opened.session_timeout.min(MAX_SESSION_LIFE),
        })
    }

    /// Ends `session` at bunq (`DELETE /session/0` with the session's own token),
    /// rate-limited and retried like a handshake step. True when bunq ended it; false when
    /// bunq refused with a 4xx, i.e. the session had already expired or been ended: gone
    /// either way.
    pub(crate) async fn end(&self, session: &Session) -> Result<bool, Failure> {
        let server_key = PublicKey::from_pem(&session.server_public_key)
            .map_err(|e| Failure::permanent(Reason::CorruptState, format!("stored server key: {e}")))?;
        let deadline = Instant::now() + self.retry.budget;
        let call = || async {
            match self.client.end_session(&session.session_token, &server_key).await {
                Ok(()) => Ok(true),
                Err(BunqError::Api { status: 400..=499, .. }) => Ok(false),
                Err(e) => Err(e),
            }
        };
        self.step(Endpoint::Session, session.provision_id, deadline, None, call).await
    }

    /// One rate-limited, retried bunq call outside a provision's handshake (the partner's
    /// own), within one retry budget.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        endpoint: Endpoint,
        due: Option<(Waiter, OffsetDateTime)>,
        call: F,
    ) -> Result<T, Failure>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, BunqError>>,
    {
        self.step(endpoint, 0, Instant::now() + self.retry.budget, due, call).await
    }

    pub(crate) fn client(&self) -> &BunqClient {
        &self.client
    }

    pub(crate) fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    pub(crate) fn retry_budget(&self) -> Duration {
        self.retry.budget
    }

    /// One rate-limited, retried bunq call; `due`: who waits for a session-server slot
    /// and until when.
    async fn step<T, F, Fut>(
        &self,
        endpoint: Endpoint,
        provision_id: u64,
        deadline: Instant,
        due: Option<(Waiter, OffsetDateTime)>,
        call: F,
    ) -> Result<T, Failure>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, BunqError>>,
    {
        let attempt = || async {
            let max_wait = deadline.saturating_duration_since(Instant::now());
            let slot = match due {
                Some((waiter, until)) => {
                    self.limiter.acquire_session_server(waiter, provision_id, until, max_wait).await
                }
                None => self.limiter.acquire(endpoint, provision_id, max_wait).await,
            };
            let reservation = slot.map_err(StepError::RateLimit)?;
            let result = call().await;
            self.limiter.answered(reservation);
            if let Err(BunqError::RateLimited { window, .. }) = &result {
                // Every replica sharing the budget backs off, not only this one.
                if let Err(e) = self.limiter.penalize(endpoint, provision_id, *window).await {
                    tracing::warn!(event = "rate_limit_penalty_failed", %endpoint, error = %e);
                }
            }
            result.map_err(StepError::Bunq)
        };
        let on_retry = |err: &StepError, wait: Duration| {
            tracing::warn!(event = "bunq_retry", %endpoint, provision_id, wait_ms = wait.as_millis() as u64, detail = %err);
        };
        run_with_retries(&self.retry.until(deadline), attempt, StepError::retry, on_retry)
            .await
            .map_err(|e| Failure::from(&e))
    }

    async fn save(&self, claim: &Claim, handshake: &Handshake) -> Result<(), Failure> {
        self.durably(claim.provision_id, || self.store.save_handshake(claim, handshake, HANDSHAKE_TTL)).await
    }

    /// Writes what bunq has already handed out. Retried with backoff, and while Redis is
    /// away held until it answers, never given up (doing the step again would ask bunq a
    /// second time), except at shutdown.
    pub(crate) async fn durably<T, F, Fut>(&self, provision_id: u64, mut write: F) -> Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let on_retry = |e: &StoreError, wait: Duration| {
            tracing::warn!(event = "write_retry", provision_id, wait_ms = wait.as_millis() as u64, error = %e);
        };
        loop {
            match run_with_retries(&self.retry, &mut write, StoreError::retry, on_retry).await {
                Ok(written) => return Ok(written),
                Err(StoreError::Redis(e)) => {
                    self.gate.report_down();
                    if !self.gate.wait_up().await {
                        return Err(Failure::from(StoreError::Redis(e)));
                    }
                }
                Err(e) => return Err(Failure::from(e)),
            }
        }
    }
}
