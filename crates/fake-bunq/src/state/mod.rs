//! bunq's handshake state: installations, devices, credentials, users and sessions;
//! the partner's provisions and their token resets live in [`provisions`].
//!
//! Everything here is synchronous: callers hold the fake's `std::sync::Mutex` only for
//! one of these calls and never across an `.await`.

mod provisions;

pub use provisions::{NewProvision, ProvisionAdminError, ProvisionStatus};

use super::errors::BunqError;
use super::secret::SecretDigest;
use bunq_protocol::signing::PublicKey;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use uuid::Uuid;

/// A Partner credential's lifecycle (docs/bunq-api.md §7.3), plus `Rejected` for a secret
/// bunq does not know at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CredentialState {
    /// Usable; the default for any secret the fake has not seen before, so demos need
    /// no setup.
    #[serde(alias = "pending_first_use")]
    PendingFirstUse,
    /// A session was opened with it.
    #[serde(alias = "active")]
    Active,
    /// Not used within its window; every handshake step with it fails.
    #[serde(alias = "expired")]
    Expired,
    /// Treated as an unknown key; every handshake step with it fails.
    #[serde(alias = "rejected")]
    Rejected,
    /// Replaced by a token reset of its provision; every handshake step with it fails.
    #[serde(alias = "superseded")]
    Superseded,
}

/// Stable identities bunq would return for one secret: the same secret always maps to
/// the same `UserApiKey` and granted `UserPerson`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserIds {
    pub user_api_key_id: u64,
    pub user_person_id: u64,
    pub user_person_uuid: Uuid,
    pub created: OffsetDateTime,
}

#[derive(Debug)]
struct Credential {
    state: CredentialState,
    /// When the fake first saw the secret; the TTL counts from here.
    first_seen: Instant,
    /// A provision's credential expires at its `expiry_time` instead of after the TTL.
    expires_at: Option<OffsetDateTime>,
    users: UserIds,
}

#[derive(Debug)]
struct Installation {
    id: u64,
    client_key: PublicKey,
    /// `X-Bunq-Client-Request-Id`s seen on this installation (its device).
    used_request_ids: HashSet<String>,
    /// Secrets registered via `POST /device-server` on this installation → device id.
    devices: HashMap<SecretDigest, u64>,
}

/// What `POST /installation` created.
#[derive(Debug, Clone)]
pub struct NewInstallation {
    pub id: u64,
    pub token: String,
    pub created: OffsetDateTime,
}

/// What `POST /session-server` created.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: u64,
    pub token: String,
    pub created: OffsetDateTime,
    pub users: UserIds,
    /// Opened with the partner's own API key: bunq answers `UserCompany`.
    pub partner: bool,
}

/// A session bunq handed out: valid until `session_timeout` after it opened, or until
/// `DELETE /session` ended it.
#[derive(Debug)]
struct LiveSession {
    id: u64,
    /// `UserApiKey.id`: the `{userId}` the session may act for.
    user_id: u64,
    /// The credential that opened it.
    secret: SecretDigest,
    installation_token: String,
    expires: Instant,
    ended: bool,
    partner: bool,
}

/// What a session token authenticated as.
#[derive(Debug, Clone)]
pub struct SessionAuth {
    pub session_id: u64,
    pub user_id: u64,
    /// The installation's token, which request ids are claimed on.
    pub installation_token: String,
    pub installation: Authenticated,
    /// The partner's own session: the only one that may manage provisions.
    pub partner: bool,
}

/// The installation a token authenticated as.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub installation_id: u64,
    pub client_key: PublicKey,
}

/// All handshake state of one fake server.
#[derive(Debug)]
pub struct BunqState {
    next_id: u64,
    /// Keyed by installation token.
    installations: HashMap<String, Installation>,
    credentials: HashMap<SecretDigest, Credential>,
    sessions_per_secret: HashMap<SecretDigest, usize>,
    /// Keyed by session token.
    live_sessions: HashMap<String, LiveSession>,
    /// Sessions ended by `DELETE /session`, by id.
    ended_sessions: Vec<u64>,
    /// URL notification filters by user id.
    filters: HashMap<u64, Vec<crate::filters::Filter>>,
    devices: usize,
    sessions: usize,
    credential_ttl: Option<Duration>,
    session_timeout: Duration,
    /// The partner's API key and its company's user id.
    partner: Option<(SecretDigest, u64)>,
    provisions: HashMap<u64, provisions::Provision>,
    refusals: Refusals,
}

/// Handshake calls (device-server, session-server) refused for a secret a token reset
/// replaced, or one past its expiry: what a test asserts never happens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refusals {
    pub superseded: usize,
    pub expired: usize,
}

impl Default for BunqState {
    fn default() -> Self {
        Self::new(None, Duration::from_secs(604_800))
    }
}

impl BunqState {
    /// `credential_ttl`: how long a never-used credential stays usable (`None`: forever);
    /// `session_timeout`: how long a session authenticates (bunq's auto-logout).
    pub fn new(credential_ttl: Option<Duration>, session_timeout: Duration) -> Self {
        Self {
            credential_ttl,
            session_timeout,
            live_sessions: HashMap::new(),
            ended_sessions: Vec::new(),
            filters: HashMap::new(),
            // Ids below 100 are left for fixed objects such as the partner company.
            next_id: 100,
            installations: HashMap::new(),
            credentials: HashMap::new(),
            sessions_per_secret: HashMap::new(),
            devices: 0,
            sessions: 0,
            partner: None,
            provisions: HashMap::new(),
            refusals: Refusals::default(),
        }
    }
}

/// 64 lowercase hex characters from the OS RNG, like bunq's tokens.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

impl BunqState {
    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// The secret's credential, created as `PENDING_FIRST_USE` with fresh user ids the
    /// first time the fake sees it. A pending credential older than the TTL becomes
    /// `EXPIRED` here, like bunq's 1 h (sandbox) / 4 h (production) window.
    fn credential(&mut self, secret: SecretDigest) -> &mut Credential {
        let next_id = &mut self.next_id;
        let credential = self.credentials.entry(secret).or_insert_with(|| {
            let user_api_key_id = *next_id;
            *next_id += 2;
            Credential {
                state: CredentialState::PendingFirstUse,
                first_seen: Instant::now(),
                expires_at: None,
                users: UserIds {
                    user_api_key_id,
                    user_person_id: user_api_key_id + 1,
                    user_person_uuid: Uuid::new_v5(&Uuid::NAMESPACE_OID, secret.as_bytes()),
                    created: OffsetDateTime::now_utc(),
                },
            }
        });
        let expired = match credential.expires_at {
            Some(at) => OffsetDateTime::now_utc() >= at,
            None => self.credential_ttl.is_some_and(|ttl| credential.first_seen.elapsed() >= ttl),
        };
        if credential.state == CredentialState::PendingFirstUse && expired {
            credential.state = CredentialState::Expired;
        }
        credential
    }

    /// Makes `secret` the partner's API key: an `ACTIVE` key that never expires, opens
    /// any number of sessions and answers `UserCompany` with `company_id`.
    pub fn set_partner_key(&mut self, secret: SecretDigest, company_id: u64) {
        self.credential(secret).state = CredentialState::Active;
        self.partner = Some((secret, company_id));
    }

    fn is_partner_key(&self, secret: SecretDigest) -> bool {
        self.partner.is_some_and(|(key, _)| key == secret)
    }

    /// Whether the secret's credential may be used for a handshake step; counts the
    /// refusals of superseded and expired ones.
    fn check_usable(&mut self, secret: SecretDigest, allow_active: bool) -> Result<(), BunqError> {
        self.advance_resets();
        let state = self.credential(secret).state;
        let verdict = usable(state, allow_active);
        if verdict.is_err() {
            match state {
                CredentialState::Superseded => self.refusals.superseded += 1,
                CredentialState::Expired => self.refusals.expired += 1,
                _ => {}
            }
        }
        verdict
    }

    pub fn refusals(&self) -> Refusals {
        self.refusals
    }

    pub fn register_credential(&mut self, secret: SecretDigest, state: CredentialState) {
        self.credential(secret).state = state;
    }

    /// The credential's state, `None` if the fake never saw the secret.
    pub fn credential_state(&mut self, secret: SecretDigest) -> Option<CredentialState> {
        self.advance_resets();
        if self.credentials.contains_key(&secret) {
            Some(self.credential(secret).state)
        } else {
            None
        }
    }

    pub fn install(&mut self, client_key: PublicKey) -> NewInstallation {
        let id = self.next_id();
        let token = new_token();
        self.installations.insert(
            token.clone(),
            Installation { id, client_key, used_request_ids: HashSet::new(), devices: HashMap::new() },
        );
        NewInstallation { id, token, created: OffsetDateTime::now_utc() }
    }

    /// Resolves `X-Bunq-Client-Authentication` to an installation.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Authenticated, BunqError> {
        let installation =
            token.and_then(|t| self.installations.get(t)).ok_or(BunqError::InsufficientAuthentication)?;
        Ok(Authenticated { installation_id: installation.id, client_key: installation.client_key.clone() })
    }

    /// Claims a request id on the installation; a second use is an error.
    pub fn claim_request_id(&mut self, token: &str, request_id: &str) -> Result<(), BunqError> {
        let installation = self.installations.get_mut(token).ok_or(BunqError::InsufficientAuthentication)?;
        if installation.used_request_ids.insert(request_id.to_owned()) {
            Ok(())
        } else {
            Err(BunqError::RequestIdReused(request_id.to_owned()))
        }
    }

    /// `POST /device-server`: binds the secret to this installation.
    pub fn register_device(&mut self, token: &str, secret: SecretDigest) -> Result<u64, BunqError> {
        self.check_usable(secret, true)?;
        let id = self.next_id();
        let installation = self.installations.get_mut(token).ok_or(BunqError::InsufficientAuthentication)?;
        // Registering the same secret again makes a new device, as a second
        // `POST /device-server` does at bunq; the latest one counts.
        installation.devices.insert(secret, id);
        self.devices += 1;
        Ok(id)
    }

    /// `POST /session-server`: opens a session for a secret registered on this
    /// installation and moves its credential to `ACTIVE`.
    pub fn open_session(
        &mut self,
        token: &str,
        secret: SecretDigest,
        allow_credential_reuse: bool,
    ) -> Result<NewSession, BunqError> {
        let installation = self.installations.get(token).ok_or(BunqError::InsufficientAuthentication)?;
        if !installation.devices.contains_key(&secret) {
            return Err(BunqError::CredentialsIncorrect);
        }
        let partner = self.partner.filter(|(key, _)| *key == secret).map(|(_, company)| company);
        self.check_usable(secret, allow_credential_reuse || partner.is_some())?;
        let credential = self.credential(secret);
        credential.state = CredentialState::Active;
        let users = credential.users;
        let id = self.next_id();
        *self.sessions_per_secret.entry(secret).or_default() += 1;
        self.sessions += 1;
        let session_token = new_token();
        let live = LiveSession {
            id,
            // The partner acts as its company; a provisioned user as its `UserApiKey`.
            user_id: partner.unwrap_or(users.user_api_key_id),
            secret,
            installation_token: token.to_owned(),
            expires: Instant::now() + self.session_timeout,
            ended: false,
            partner: partner.is_some(),
        };
        self.live_sessions.insert(session_token.clone(), live);
        let partner = partner.is_some();
        Ok(NewSession { id, token: session_token, created: OffsetDateTime::now_utc(), users, partner })
    }

    /// Resolves a session token to its session id and the installation's client key:
    /// bunq answers 403 `Insufficient authentication.` for a token it does not know, one
    /// past its `session_timeout`, or one whose session was ended.
    pub fn authenticate_session(&self, token: Option<&str>) -> Result<SessionAuth, BunqError> {
        let session = token
            .and_then(|t| self.live_sessions.get(t))
            .filter(|s| !s.ended && Instant::now() < s.expires)
            .ok_or(BunqError::InsufficientAuthentication)?;
        let installation =
            self.installations.get(&session.installation_token).ok_or(BunqError::InsufficientAuthentication)?;
        Ok(SessionAuth {
            session_id: session.id,
            user_id: session.user_id,
            installation_token: session.installation_token.clone(),
            installation: Authenticated {
                installation_id: installation.id,
                client_key: installation.client_key.clone(),
            },
            partner: session.partner,
        })
    }

    /// `DELETE /session/{id}`: ends the session `token` authenticates. `id` is that
    /// session's id or 0 ("the current session", as bunq's SDKs send it).
    pub fn end_session(&mut self, token: &str, id: u64) -> Result<u64, BunqError> {
        let current = self.authenticate_session(Some(token))?.session_id;
        if id != 0 && id != current {
            return Err(BunqError::NotFound);
        }
        if let Some(session) = self.live_sessions.get_mut(token) {
            session.ended = true;
        }
        self.ended_sessions.push(current);
        Ok(current)
    }

    /// Replaces all of `user_id`'s URL notification filters (bunq's replace-all POST).
    pub fn set_filters(
        &mut self,
        user_id: u64,
        requested: Vec<crate::filters::Requested>,
    ) -> Vec<crate::filters::Filter> {
        let now = crate::responses::bunq_timestamp(OffsetDateTime::now_utc());
        let filters: Vec<_> = requested
            .into_iter()
            .map(|r| crate::filters::Filter {
                id: self.next_id(),
                created: now.clone(),
                updated: now.clone(),
                category: r.category,
                all_user_id: Vec::new(),
                all_monetary_account_id: Vec::new(),
                all_verification_type: r.all_verification_type,
                notification_target: r.notification_target,
            })
            .collect();
        self.filters.insert(user_id, filters.clone());
        filters
    }

    pub fn filters(&self, user_id: u64) -> Vec<crate::filters::Filter> {
        self.filters.get(&user_id).cloned().unwrap_or_default()
    }

    /// Ids of the sessions `DELETE /session` ended, in order.
    pub fn ended_sessions(&self) -> &[u64] {
        &self.ended_sessions
    }

    pub fn sessions_created_for(&self, secret: SecretDigest) -> usize {
        self.sessions_per_secret.get(&secret).copied().unwrap_or(0)
    }

    /// Sessions `secret` opened that are still valid: neither ended nor timed out.
    pub fn live_sessions_for(&self, secret: SecretDigest) -> usize {
        let now = Instant::now();
        self.live_sessions.values().filter(|s| s.secret == secret && !s.ended && now < s.expires).count()
    }

    pub fn sessions_per_secret(&self) -> impl Iterator<Item = (SecretDigest, usize)> + '_ {
        self.sessions_per_secret.iter().map(|(k, v)| (*k, *v))
    }

    pub fn counts(&self) -> (usize, usize, usize) {
        (self.installations.len(), self.devices, self.sessions)
    }
}

/// Whether a credential in `state` may be used for a handshake step.
fn usable(state: CredentialState, allow_active: bool) -> Result<(), BunqError> {
    match state {
        CredentialState::PendingFirstUse => Ok(()),
        CredentialState::Active if allow_active => Ok(()),
        CredentialState::Active
        | CredentialState::Expired
        | CredentialState::Rejected
        | CredentialState::Superseded => Err(BunqError::CredentialsIncorrect),
    }
}

#[cfg(test)]
mod tests;
