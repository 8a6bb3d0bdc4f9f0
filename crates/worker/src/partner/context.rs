//! The partner's own bunq context (`CREDENTIAL_RESET=on`): an installation, a device
//! registered with the partner's API key (usable from `BUNQ_PERMITTED_IPS`) and a
//! session, which the token-reset calls run on. One for every replica: opened once under a
//! lock, sealed in Redis, kept in memory between uses, opened anew shortly before it
//! expires and when bunq refuses it (bunq's own partner client re-bootstraps the same
//! way on a 401 or 403, docs/bunq-api.md §12).

use crate::failure::{Failure, Reason};
use crate::lifecycle::open::SessionOpener;
use crate::ratelimit::budget::Waiter;
use crate::store::{PartnerContext, Store};
use bunq_protocol::client::{Installation, UserSession};
use bunq_protocol::error::Endpoint;
use bunq_protocol::signing::PublicKey;
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::time::Duration;

/// A session this close to its end is not used: a new one is opened first.
const RENEW_MARGIN: Duration = Duration::from_secs(600);
/// How long the context (its installation and device) is kept in Redis past its session.
const KEEP: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often a replica looks again while another opens the session.
const POLL: Duration = Duration::from_millis(200);

/// The partner's session as a call uses it.
#[derive(Clone)]
pub(crate) struct PartnerSession {
    pub(crate) token: SecretString,
    pub(crate) server_key: PublicKey,
    pub(crate) company_id: u64,
}

impl PartnerSession {
    pub(crate) fn user(&self) -> UserSession<'_> {
        UserSession { user_id: self.company_id, session_token: &self.token, server_key: &self.server_key }
    }
}

pub(crate) struct Partner {
    opener: SessionOpener,
    store: Store,
    /// The partner's API key: zeroized when the worker drops it.
    key: Arc<SecretString>,
    owner: String,
    lock_ttl: Duration,
    cached: tokio::sync::Mutex<Option<PartnerContext>>,
}

impl Partner {
    pub(crate) fn new(
        opener: SessionOpener,
        store: Store,
        key: Arc<SecretString>,
        owner: String,
        lock_ttl: Duration,
    ) -> Self {
        Self { opener, store, key, owner: format!("{owner}.partner"), lock_ttl, cached: tokio::sync::Mutex::new(None) }
    }

    pub(crate) fn opener(&self) -> &SessionOpener {
        &self.opener
    }

    /// The partner's session: from memory, from Redis, or opened (by this replica, or
    /// by the one holding the partner lock, which it waits for).
    pub(crate) async fn session(&self) -> Result<PartnerSession, Failure> {
        let mut cached = self.cached.lock().await;
        let now = self.store.clock_now().unix_timestamp();
        if let Some(session) = cached.as_ref().and_then(|c| usable(c, now)) {
            return Ok(session);
        }
        let give_up = tokio::time::Instant::now() + self.lock_ttl * 2;
        loop {
            let stored = self.store.load_partner_context().await?;
            if let Some(session) = stored.as_ref().and_then(|c| usable(c, now)) {
                *cached = stored;
                return Ok(session);
            }
            if self.store.lock_partner(&self.owner, self.lock_ttl).await? {
                // Read again under the lock: the last holder may have just written it.
                let stored = self.store.load_partner_context().await;
                let opened = match stored {
                    Ok(Some(c)) if usable(&c, now).is_some() => Ok(c),
                    Ok(stored) => self.open(stored).await,
                    Err(e) => Err(Failure::from(e)),
                };
                if let Err(e) = self.store.unlock_partner(&self.owner).await {
                    tracing::warn!(event = "partner_unlock_failed", error = %e);
                }
                let context = opened?;
                let session = usable(&context, now).ok_or_else(|| {
                    Failure::transient(Reason::BunqUnavailable, "the partner's new session expires at once")
                })?;
                *cached = Some(context);
                return Ok(session);
            }
            if tokio::time::Instant::now() > give_up {
                return Err(Failure::transient(
                    Reason::LockBusy,
                    "another replica is opening the partner's session and has not finished",
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// bunq refused the partner's session (401/403): it is dropped, here and in Redis,
    /// so the next use opens another on the same installation and device.
    pub(crate) async fn refused(&self, session: &PartnerSession) {
        let mut cached = self.cached.lock().await;
        *cached = None;
        let drop_session = async {
            let Some(mut stored) = self.store.load_partner_context().await? else { return Ok(()) };
            let same =
                stored.session_token.as_ref().is_some_and(|t| t.expose_secret() == session.token.expose_secret());
            if same {
                stored.session_token = None;
                self.store.save_partner_context(&stored, KEEP).await?;
            }
            Ok::<_, crate::store::StoreError>(())
        };
        if let Err(e) = drop_session.await {
            tracing::warn!(event = "partner_session_not_dropped", error = %e);
        }
        tracing::warn!(event = "partner_session_refused", "bunq refused the partner's session: opening another");
    }

    /// Opens the session, on `existing`'s installation and device when there is one.
    async fn open(&self, existing: Option<PartnerContext>) -> Result<PartnerContext, Failure> {
        let client = self.opener.client();
        let installation = match existing {
            Some(context) => Installation {
                token: context.installation_token,
                server_key: PublicKey::from_pem(&context.server_public_key).map_err(|e| {
                    Failure::permanent(Reason::CorruptState, format!("partner's stored server key: {e}"))
                })?,
            },
            None => {
                let installation =
                    self.opener.call(Endpoint::Installation, None, || client.create_installation()).await?;
                self.opener
                    .call(Endpoint::DeviceServer, None, || client.create_device_server(&installation, &self.key))
                    .await?;
                installation
            }
        };
        let now = self.store.clock_now();
        let due = (Waiter::Partner, now + time::Duration::hours(1));
        let opened = self
            .opener
            .call(Endpoint::SessionServer, Some(due), || client.create_session_server(&installation, &self.key))
            .await?;
        let context = PartnerContext {
            installation_token: installation.token.clone(),
            server_public_key: installation.server_key.pem().to_owned(),
            session_token: Some(opened.token),
            company_id: opened.user_id,
            session_expires_at: now.unix_timestamp() + opened.session_timeout.as_secs().min(365 * 24 * 3600) as i64,
        };
        self.opener.durably(0, || self.store.save_partner_context(&context, KEEP)).await?;
        tracing::info!(event = "partner_session_opened", company_id = context.company_id);
        Ok(context)
    }

    /// For `check`: whether a partner session is held in Redis and until when (Unix
    /// seconds), never the session itself.
    pub(crate) async fn describe(store: &Store) -> Result<Option<i64>, crate::store::StoreError> {
        Ok(store.load_partner_context().await?.filter(|c| c.session_token.is_some()).map(|c| c.session_expires_at))
    }
}

/// The context's session, when it has one that does not end within the margin.
fn usable(context: &PartnerContext, now: i64) -> Option<PartnerSession> {
    let token = context.session_token.clone()?;
    if context.session_expires_at - (RENEW_MARGIN.as_secs() as i64) <= now {
        return None;
    }
    let server_key = PublicKey::from_pem(&context.server_public_key).ok()?;
    Some(PartnerSession { token, server_key, company_id: context.company_id })
}
