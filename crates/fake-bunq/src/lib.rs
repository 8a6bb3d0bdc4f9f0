//! `fake-bunq`: a faithful local stand-in for bunq's `POST /v1/installation`,
//! `POST /v1/device-server` and `POST /v1/session-server`, and for the partner's
//! `PUT`/`GET /v1/partner-user-provision/{id}` (contract: docs/bunq-api.md §10), with rate
//! limits, fault injection and an admin API under `/_fake/`.
//!
//! In-process use:
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use fake_bunq::{spawn, FakeConfig};
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let fake = spawn(listener, FakeConfig::default()).await?;
//! let base = fake.base_url(); // "http://127.0.0.1:PORT/v1"
//! # let _ = base;
//! fake.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Behaviour
//! - Any non-empty secret is a usable `PENDING_FIRST_USE` credential until registered
//!   otherwise; its `UserApiKey.id` and granted `UserPerson.id` are fixed the first
//!   time the fake sees it.
//! - The partner's API key ([`FakeConfig::partner_api_key`]) opens sessions answered with
//!   `UserCompany`; only such a session may read provisions or reset their tokens.
//! - A provision's token is a credential until its `expiry_time`; a token reset supersedes
//!   it at once and hands out a new one after [`FakeConfig::token_reset_delay`]. The
//!   handshake refuses a superseded or expired token (400 below) and counts it in [`Stats`].
//! - Every `/v1` answer (success, error, injected fault) carries
//!   `X-Bunq-Server-Signature` over the exact body bytes, `X-Bunq-Client-Response-Id`
//!   and the echoed `X-Bunq-Client-Request-Id` — unless a signature fault removes or
//!   corrupts the signature.
//! - Status choices bunq never documented precisely (all UNCERTAIN, docs/bunq-api.md §11):
//!   unknown/missing installation token → 403 `Insufficient authentication.`;
//!   reused request id → 400; expired, rejected or unregistered credential → 400
//!   `User credentials are incorrect. Incorrect API key or IP address.`; missing
//!   `User-Agent` → 400. See [`errors::BunqError`].
//!
//! # Admin API (not bunq; unsigned JSON)
//! - `GET /_fake/calls`, `DELETE /_fake/calls`: the [`RecordedCall`] log.
//! - `GET /_fake/faults`, `PUT /_fake/faults`: the [`Faults`] configuration, e.g.
//!   `{"latency_ms":0,"seed":7,"rules":[{"endpoint":"session-server",
//!   "action":"http_500_html","next_calls":2},{"endpoint":"any",
//!   "action":"drop_connection","probability":0.1}]}`. `lose_answer` does the call's
//!   work (a session-server call opens its session), then drops the connection unanswered.
//!   Rule endpoints: `any`, `installation`, `device-server`, `session-server`,
//!   `partner-user-provision` (PUT and GET), `partner-user-provision-update` (the PUT),
//!   `partner-user-provision-read` (the GET).
//! - `POST /_fake/credentials`: `{"secret":"…","state":"EXPIRED"}` (states
//!   `PENDING_FIRST_USE`, `ACTIVE`, `EXPIRED`, `REJECTED`, `SUPERSEDED`, also lowercase).
//! - `POST /_fake/provisions`: `{"id":7,"token_value":"…","expiry_time":"2026-01-01
//!   10:00:00.000000","external_uuid":"…"}` registers a provision ready for onboarding
//!   (`expiry_time` UTC, default now + `credential_ttl` or 1 h; `external_uuid` optional);
//!   `GET /_fake/provisions/{id}` shows it (bunq's object and `token_resets`);
//!   `PUT /_fake/provisions/{id}` `{"status":"CANCELLED"}` (or `CLOSED`, `FAILED`) ends it.
//! - `GET /_fake/stats`: [`Stats`].
//! - `GET /_fake/server-public-key`: the server key PEM.
//!
//! Module map: [`routes`] runs the bunq endpoints, [`admin`] the `/_fake/` API,
//! [`state`] holds installations/devices/credentials/sessions and the partner's
//! provisions, [`faults`] and [`ratelimit`] decide misbehaviour, [`responses`] and
//! [`errors`] shape the bodies, [`conn`] lets a handler drop its connection, [`calls`]
//! records what happened.

pub mod admin;
pub mod calls;
pub mod conn;
pub mod errors;
pub mod faults;
pub mod filters;
pub mod ratelimit;
pub mod responses;
pub mod routes;
pub mod secret;
pub mod state;

pub use calls::{RecordedCall, Stats};
pub use errors::BunqError;
pub use faults::{Endpoint, EndpointMatch, FaultAction, FaultRule, Faults, Trigger};
pub use ratelimit::RateLimitScope;
pub use state::{CredentialState, ProvisionAdminError, ProvisionStatus};

use bunq_protocol::signing::{ClientKey, SigningError};
use calls::CallLog;
use faults::FaultInjector;
use ratelimit::RateLimiter;
use secret::SecretDigest;
use state::{BunqState, NewProvision};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How the fake behaves. `Default` is bunq's documented behaviour with per-device
/// rate limits.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// `session_timeout` reported for both users in `UserApiKey` (bunq's default:
    /// one week).
    pub session_timeout_secs: u64,
    pub rate_limit_scope: RateLimitScope,
    /// Calls per window on `POST /session-server` (bunq: 1 per 30 s).
    pub session_server_limit: (u32, Duration),
    /// Calls per window on the other POSTs (bunq: 5 per 3 s).
    pub other_post_limit: (u32, Duration),
    /// Seeds the fault-probability RNG, so fault sequences are reproducible.
    pub seed: u64,
    /// Whether an `ACTIVE` credential may open further sessions. bunq does not say
    /// (docs/bunq-api.md §7.3); `true` lets the official SDK's `reset_session` work.
    pub allow_credential_reuse: bool,
    /// How long a never-used credential stays usable after the fake first sees it,
    /// like bunq's 1 h (sandbox) / 4 h (production) window. `None`: forever.
    pub credential_ttl: Option<Duration>,
    /// The partner company that "requested" every `UserApiKey`.
    pub partner_company_id: u64,
    pub partner_display_name: String,
    /// The partner's own API key: as a secret it opens a `UserCompany` session that may
    /// read provisions and reset their tokens. `None`: no partner session exists.
    pub partner_api_key: Option<String>,
    /// How long a token reset stays `PENDING_PROCESS_TOKEN_RESET` before the new token.
    pub token_reset_delay: Duration,
    /// Calls per window on `PUT /partner-user-provision/{id}` (bunq: 2 per 3 s).
    pub put_limit: (u32, Duration),
    /// Calls per window on `GET /partner-user-provision/{id}` (bunq: 3 per 3 s).
    pub get_limit: (u32, Duration),
    /// Faults active from the start.
    pub faults: Faults,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            session_timeout_secs: 604_800,
            rate_limit_scope: RateLimitScope::Device,
            session_server_limit: (1, Duration::from_secs(30)),
            other_post_limit: (5, Duration::from_secs(3)),
            seed: 0,
            allow_credential_reuse: true,
            credential_ttl: None,
            partner_company_id: 1,
            partner_display_name: "Fake Partner B.V.".to_owned(),
            partner_api_key: None,
            token_reset_delay: Duration::from_secs(2),
            put_limit: (2, Duration::from_secs(3)),
            get_limit: (3, Duration::from_secs(3)),
            faults: Faults::default(),
        }
    }
}

/// State shared by every handler.
pub(crate) struct App {
    pub(crate) config: FakeConfig,
    pub(crate) server_key: ClientKey,
    pub(crate) state: Mutex<BunqState>,
    pub(crate) calls: Mutex<CallLog>,
    pub(crate) faults: Mutex<FaultInjector>,
    pub(crate) limiter: Mutex<RateLimiter>,
    /// Cancelled on shutdown; hanging handlers wait for it.
    pub(crate) shutdown: CancellationToken,
}

/// Locks a mutex, recovering from poisoning: every critical section here leaves the
/// data consistent, so a panicking test thread must not take the fake down with it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl App {
    fn new(config: FakeConfig, server_key: ClientKey) -> Self {
        let faults = FaultInjector::new(config.faults.clone(), config.seed);
        let mut state = BunqState::new(config.credential_ttl, Duration::from_secs(config.session_timeout_secs));
        if let Some(key) = &config.partner_api_key {
            state.set_partner_key(SecretDigest::of(key), config.partner_company_id);
        }
        Self {
            config,
            server_key,
            state: Mutex::new(state),
            calls: Mutex::new(CallLog::default()),
            faults: Mutex::new(faults),
            limiter: Mutex::new(RateLimiter::default()),
            shutdown: CancellationToken::new(),
        }
    }

    pub(crate) fn set_faults(&self, faults: Faults) {
        lock(&self.faults).replace(faults);
    }

    pub(crate) fn register_credential(&self, secret: &str, state: CredentialState) -> String {
        let digest = SecretDigest::of(secret);
        lock(&self.state).register_credential(digest, state);
        digest.short()
    }

    pub(crate) fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        lock(&self.calls).fill_stats(&mut stats);
        let state = lock(&self.state);
        for (digest, n) in state.sessions_per_secret() {
            stats.sessions_per_secret_hash.insert(digest.short(), n);
        }
        (stats.installations, stats.devices, stats.sessions) = state.counts();
        let refusals = state.refusals();
        (stats.refused_superseded_tokens, stats.refused_expired_tokens) = (refusals.superseded, refusals.expired);
        stats.token_resets = state.total_token_resets();
        stats
    }
}

/// A running fake. Dropping it leaves the server running until the runtime ends;
/// call [`FakeHandle::shutdown`] to stop it.
pub struct FakeHandle {
    app: Arc<App>,
    addr: SocketAddr,
    task: JoinHandle<std::io::Result<()>>,
}

/// Starts the fake on `listener` and returns once it accepts connections.
pub async fn spawn(listener: tokio::net::TcpListener, config: FakeConfig) -> std::io::Result<FakeHandle> {
    let addr = listener.local_addr()?;
    // RSA key generation takes tens of milliseconds: keep it off the async workers.
    let server_key = tokio::task::spawn_blocking(ClientKey::generate)
        .await
        .map_err(std::io::Error::other)?
        .map_err(|e: SigningError| std::io::Error::other(e.to_string()))?;
    let app = Arc::new(App::new(config, server_key));
    let service = routes::router(app.clone()).into_make_service_with_connect_info::<conn::Conn>();
    let server = axum::serve(conn::KillableListener::new(listener), service)
        .with_graceful_shutdown(app.shutdown.clone().cancelled_owned());
    let task = tokio::spawn(async move { server.await });
    Ok(FakeHandle { app, addr, task })
}

impl FakeHandle {
    /// `http://IP:PORT/v1`; an unspecified bind address is reported as 127.0.0.1.
    pub fn base_url(&self) -> String {
        let ip = match self.addr.ip() {
            ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}/v1", SocketAddr::new(ip, self.addr.port()))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn calls(&self) -> Vec<RecordedCall> {
        lock(&self.app.calls).all()
    }

    pub fn clear_calls(&self) {
        lock(&self.app.calls).clear();
    }

    pub fn set_faults(&self, faults: Faults) {
        self.app.set_faults(faults);
    }

    pub fn faults(&self) -> Faults {
        lock(&self.app.faults).current()
    }

    pub fn sessions_created_for(&self, secret: &str) -> usize {
        lock(&self.app.state).sessions_created_for(SecretDigest::of(secret))
    }

    /// Sessions `secret` opened that bunq would still accept (not ended, not timed out).
    pub fn live_sessions_for(&self, secret: &str) -> usize {
        lock(&self.app.state).live_sessions_for(SecretDigest::of(secret))
    }

    /// The URL notification filters `user_id` has set, in order.
    pub fn notification_filters(&self, user_id: u64) -> Vec<filters::Filter> {
        lock(&self.app.state).filters(user_id)
    }

    /// Ids of the sessions ended with `DELETE /v1/session/{id}`, in order.
    pub fn ended_sessions(&self) -> Vec<u64> {
        lock(&self.app.state).ended_sessions().to_vec()
    }

    pub fn credential_state(&self, secret: &str) -> Option<CredentialState> {
        lock(&self.app.state).credential_state(SecretDigest::of(secret))
    }

    pub fn stats(&self) -> Stats {
        self.app.stats()
    }

    pub fn server_public_key_pem(&self) -> String {
        self.app.server_key.public_key_pem().to_owned()
    }

    pub fn register_credential(&self, secret: &str, state: CredentialState) {
        self.app.register_credential(secret, state);
    }

    /// Registers provision `id`, ready for onboarding, whose credential is `token` until
    /// `expiry` (as the admin API's `POST /_fake/provisions`); returns the credential's id,
    /// which the provision's events carry (bunq issues ids in increasing order).
    pub fn register_provision(&self, id: u64, token: &str, expiry: OffsetDateTime) -> Result<u64, ProvisionAdminError> {
        let new = NewProvision { id, token: token.to_owned(), expiry_time: expiry, external_uuid: None };
        let provision = lock(&self.app.state).register_provision(new)?;
        Ok(provision.credential.map_or(0, |c| c.id))
    }

    /// Ends provision `id` with `CANCELLED`, `CLOSED` or `FAILED`: its token opens nothing
    /// any more and a token reset is refused.
    pub fn set_provision_status(&self, id: u64, status: ProvisionStatus) -> Result<(), ProvisionAdminError> {
        lock(&self.app.state).set_provision_status(id, status)
    }

    /// The token `GET /partner-user-provision/{id}` shows now: `None` once used, while a
    /// reset is pending, or for an unknown id. For tests that relay a new token as the
    /// partner's webhook would.
    pub fn provision_token(&self, id: u64) -> Option<String> {
        lock(&self.app.state).provision_token(id)
    }

    /// The provision's current token, used or not (`None` while a reset is pending): the
    /// one to count sessions of.
    pub fn current_token(&self, id: u64) -> Option<String> {
        lock(&self.app.state).current_token(id)
    }

    /// The id of the provision's current credential (`None` while a reset is pending):
    /// what a relayed event carries with [`FakeHandle::current_token`].
    pub fn current_credential_id(&self, id: u64) -> Option<u64> {
        lock(&self.app.state).current_credential_id(id)
    }

    /// Token resets started for provision `id` (a request while one is pending joins it).
    pub fn token_resets(&self, id: u64) -> usize {
        lock(&self.app.state).token_resets(id)
    }

    /// Stops accepting, releases hanging calls (their connections are dropped), waits
    /// for in-flight answers and returns.
    pub async fn shutdown(self) {
        self.app.shutdown.cancel();
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "fake-bunq server ended with an error"),
            Err(e) => tracing::warn!(error = %e, "fake-bunq server task failed"),
        }
    }

    /// Resolves when the server stops (for the binary, which has no other work).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.app.shutdown.clone()
    }
}
