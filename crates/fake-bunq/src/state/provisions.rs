//! The partner's provisions (docs/bunq-api.md §8.1, §12): each holds one current
//! credential, whose token opens the provisioned user's session. A token reset supersedes
//! that credential at once and, after a delay, hands out a new one for the same user.
//!
//! A reset completes lazily: whoever looks at the state after its moment sees the new
//! credential, so no task runs in the background and the outcome depends only on time.

use super::{BunqState, Credential, CredentialState, UserIds};
use crate::errors::BunqError;
use crate::responses::{bunq_timestamp, ProvisionCredentialObject, ProvisionObject};
use crate::secret::SecretDigest;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use uuid::Uuid;

/// A new credential's first-use window when no `credential_ttl` is configured: bunq's
/// sandbox hour (docs/bunq-api.md §7.3).
const DEFAULT_CREDENTIAL_WINDOW: Duration = Duration::from_secs(3600);

/// `PartnerUserProvision.status` as the fake moves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ProvisionStatus {
    /// Ready for onboarding, with a credential (`PENDING_PROCESS_USER_ONBOARDING`).
    Created,
    /// A token reset is being processed (`PENDING_PROCESS_TOKEN_RESET`).
    TokenResetRequested,
    Cancelled,
    Closed,
    Failed,
}

impl ProvisionStatus {
    fn sub_status(self) -> &'static str {
        match self {
            ProvisionStatus::Created => "PENDING_PROCESS_USER_ONBOARDING",
            ProvisionStatus::TokenResetRequested => "PENDING_PROCESS_TOKEN_RESET",
            ProvisionStatus::Cancelled => "PENDING_PROCESS_CLOSURE",
            ProvisionStatus::Closed | ProvisionStatus::Failed => "NONE",
        }
    }

    /// "As long as the provision and user are active, you can always request a new token."
    fn is_active(self) -> bool {
        matches!(self, ProvisionStatus::Created | ProvisionStatus::TokenResetRequested)
    }
}

/// Why the admin API refused to register or end a provision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProvisionAdminError {
    #[error("provision {0} already exists")]
    Exists(u64),
    #[error("provision {0} does not exist")]
    NotFound(u64),
    #[error("token_value must be a non-empty string")]
    EmptyToken,
    #[error("token_value is already the partner API key or another provision's token")]
    TokenInUse,
    #[error("only CANCELLED, CLOSED or FAILED end a provision")]
    NotAnEndStatus,
}

/// What `POST /_fake/provisions` registers.
#[derive(Debug, Clone)]
pub struct NewProvision {
    pub id: u64,
    pub token: String,
    pub expiry_time: OffsetDateTime,
    pub external_uuid: Option<String>,
}

#[derive(Debug)]
pub(super) struct Provision {
    created: OffsetDateTime,
    updated: OffsetDateTime,
    external_uuid: String,
    status: ProvisionStatus,
    credential: ProvisionCredential,
    /// When a requested reset hands out the new credential.
    reset_ready_at: Option<OffsetDateTime>,
    /// Every token of the provision opens the same user's session. UNCERTAIN at bunq
    /// whether a reset keeps the `UserApiKey.id` (docs/bunq-api.md §10).
    users: UserIds,
    resets: usize,
}

#[derive(Debug)]
struct ProvisionCredential {
    id: u64,
    created: OffsetDateTime,
    updated: OffsetDateTime,
    expiry_time: OffsetDateTime,
    /// Kept while bunq would show it: the fake must answer it in `GET`.
    token: String,
    digest: SecretDigest,
    /// Set when a reset or the provision's end retired the credential: the status the
    /// provision keeps showing for it (the handshake refuses its token either way).
    retired_as: Option<CredentialState>,
}

impl BunqState {
    /// Registers a provision ready for onboarding whose credential is `token`,
    /// `PENDING_FIRST_USE` until `expiry_time`.
    pub fn register_provision(&mut self, new: NewProvision) -> Result<ProvisionObject, ProvisionAdminError> {
        if self.provisions.contains_key(&new.id) {
            return Err(ProvisionAdminError::Exists(new.id));
        }
        if new.token.trim().is_empty() {
            return Err(ProvisionAdminError::EmptyToken);
        }
        let digest = SecretDigest::of(&new.token);
        if self.is_partner_key(digest) || self.provisions.values().any(|p| p.credential.digest == digest) {
            return Err(ProvisionAdminError::TokenInUse);
        }
        let now = OffsetDateTime::now_utc();
        let user_api_key_id = self.next_id();
        let user_person_id = self.next_id();
        let users = UserIds {
            user_api_key_id,
            user_person_id,
            user_person_uuid: Uuid::new_v5(&Uuid::NAMESPACE_OID, &new.id.to_be_bytes()),
            created: now,
        };
        let credential = self.issue_credential(new.token, new.expiry_time, users, now);
        let external_uuid = new.external_uuid.unwrap_or_else(|| Uuid::new_v4().to_string());
        let provision = Provision {
            created: now,
            updated: now,
            external_uuid,
            status: ProvisionStatus::Created,
            credential,
            reset_ready_at: None,
            users,
            resets: 0,
        };
        self.provisions.insert(new.id, provision);
        self.provision(new.id).ok_or(ProvisionAdminError::NotFound(new.id))
    }

    /// A new `PENDING_FIRST_USE` credential for `token`, known to the handshake.
    fn issue_credential(
        &mut self,
        token: String,
        expiry_time: OffsetDateTime,
        users: UserIds,
        now: OffsetDateTime,
    ) -> ProvisionCredential {
        let digest = SecretDigest::of(&token);
        let credential = Credential {
            state: CredentialState::PendingFirstUse,
            first_seen: Instant::now(),
            expires_at: Some(expiry_time),
            users,
        };
        self.credentials.insert(digest, credential);
        ProvisionCredential {
            id: self.next_id(),
            created: now,
            updated: now,
            expiry_time,
            token,
            digest,
            retired_as: None,
        }
    }

    /// Retires the provision's current credential: its token no longer opens anything.
    fn retire_credential(&mut self, id: u64, as_state: CredentialState, now: OffsetDateTime) {
        let Some(digest) = self.provisions.get(&id).map(|p| p.credential.digest) else { return };
        let shown = self.credential(digest).state;
        self.credential(digest).state = as_state;
        if let Some(provision) = self.provisions.get_mut(&id) {
            provision.credential.retired_as.get_or_insert(shown);
            provision.credential.updated = now;
        }
    }

    /// Completes every reset whose moment has come: a new credential (new id, new token)
    /// valid for the configured window, and the provision ready for onboarding again.
    pub(super) fn advance_resets(&mut self) {
        let now = OffsetDateTime::now_utc();
        let due: Vec<(u64, OffsetDateTime, UserIds)> = self
            .provisions
            .iter()
            .filter_map(|(id, p)| p.reset_ready_at.filter(|at| *at <= now).map(|at| (*id, at, p.users)))
            .collect();
        let window = self.credential_ttl.unwrap_or(DEFAULT_CREDENTIAL_WINDOW);
        for (id, ready_at, users) in due {
            let credential = self.issue_credential(super::new_token(), ready_at + window, users, ready_at);
            if let Some(provision) = self.provisions.get_mut(&id) {
                provision.credential = credential;
                provision.status = ProvisionStatus::Created;
                provision.reset_ready_at = None;
                provision.updated = ready_at;
            }
        }
    }

    /// `PUT … {"status":"TOKEN_RESET_REQUESTED"}`: the current token is superseded at
    /// once, a new one follows after `delay`. Asked again while one is pending, the
    /// pending reset stands (UNCERTAIN at bunq, docs/bunq-api.md §10).
    pub fn request_token_reset(&mut self, id: u64, delay: Duration) -> Result<(), BunqError> {
        self.advance_resets();
        let provision = self.provisions.get(&id).ok_or(BunqError::ProvisionNotFound)?;
        if !provision.status.is_active() {
            return Err(BunqError::ProvisionNotActive);
        }
        if provision.status == ProvisionStatus::TokenResetRequested {
            return Ok(());
        }
        let now = OffsetDateTime::now_utc();
        self.retire_credential(id, CredentialState::Superseded, now);
        if let Some(provision) = self.provisions.get_mut(&id) {
            provision.status = ProvisionStatus::TokenResetRequested;
            provision.reset_ready_at = Some(now + delay);
            provision.updated = now;
            provision.resets += 1;
        }
        Ok(())
    }

    /// Ends an active provision: `CANCELLED` through bunq's PUT closes it (docs/bunq-api.md
    /// §12); the admin API sets any end status. Its token opens nothing any more and a
    /// pending reset is dropped.
    pub fn end_provision(&mut self, id: u64, status: ProvisionStatus) -> Result<(), BunqError> {
        self.advance_resets();
        let provision = self.provisions.get(&id).ok_or(BunqError::ProvisionNotFound)?;
        if !provision.status.is_active() {
            return Err(BunqError::ProvisionNotActive);
        }
        let now = OffsetDateTime::now_utc();
        self.retire_credential(id, CredentialState::Rejected, now);
        if let Some(provision) = self.provisions.get_mut(&id) {
            provision.status = status;
            provision.reset_ready_at = None;
            provision.updated = now;
        }
        Ok(())
    }

    /// The admin API's end of a provision: only an end status, any current status.
    pub fn set_provision_status(&mut self, id: u64, status: ProvisionStatus) -> Result<(), ProvisionAdminError> {
        if status.is_active() {
            return Err(ProvisionAdminError::NotAnEndStatus);
        }
        match self.end_provision(id, status) {
            Err(BunqError::ProvisionNotFound) => Err(ProvisionAdminError::NotFound(id)),
            // Already ended: the new end status replaces the old one.
            Err(_) => {
                if let Some(provision) = self.provisions.get_mut(&id) {
                    provision.status = status;
                }
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    /// The provision as `GET /partner-user-provision/{id}` shows it.
    pub fn provision(&mut self, id: u64) -> Option<ProvisionObject> {
        self.advance_resets();
        let digest = self.provisions.get(&id)?.credential.digest;
        let live = self.credential(digest).state;
        let provision = self.provisions.get(&id)?;
        let credential = &provision.credential;
        let status = credential.retired_as.unwrap_or(live);
        // bunq clears the token once used; a retired one is never shown again.
        let shown = credential.retired_as.is_none()
            && matches!(status, CredentialState::PendingFirstUse | CredentialState::Expired);
        Some(ProvisionObject {
            id,
            created: bunq_timestamp(provision.created),
            updated: bunq_timestamp(provision.updated),
            external_uuid: provision.external_uuid.clone(),
            status: provision.status,
            sub_status: provision.status.sub_status(),
            action_required: if provision.status == ProvisionStatus::Created { "USER" } else { "NONE" },
            products: vec!["USER_VERIFIED"],
            credential: Some(ProvisionCredentialObject {
                id: credential.id,
                created: bunq_timestamp(credential.created),
                updated: bunq_timestamp(credential.updated),
                status,
                expiry_time: bunq_timestamp(credential.expiry_time),
                token_value: shown.then(|| credential.token.clone()),
                permitted_device: None,
            }),
        })
    }

    /// The token `GET` would show now (what a partner webhook would relay).
    pub fn provision_token(&mut self, id: u64) -> Option<String> {
        self.provision(id)?.credential?.token_value
    }

    /// The provision's current credential's token, used or not (what a test checks the
    /// sessions of); `None` while a reset is pending.
    pub fn current_token(&mut self, id: u64) -> Option<String> {
        self.advance_resets();
        let provision = self.provisions.get(&id)?;
        provision.reset_ready_at.is_none().then(|| provision.credential.token.clone())
    }

    /// The current credential's id (`None` while a reset is pending).
    pub fn current_credential_id(&mut self, id: u64) -> Option<u64> {
        self.advance_resets();
        let provision = self.provisions.get(&id)?;
        provision.reset_ready_at.is_none().then_some(provision.credential.id)
    }

    /// Resets started for the provision (a request joining a pending one is not counted).
    pub fn token_resets(&self, id: u64) -> usize {
        self.provisions.get(&id).map_or(0, |p| p.resets)
    }

    pub fn total_token_resets(&self) -> usize {
        self.provisions.values().map(|p| p.resets).sum()
    }
}
