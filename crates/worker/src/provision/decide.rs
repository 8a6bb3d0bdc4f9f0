//! When to act on a provision (docs/contracts.md §1.2). Pure: the clock is a parameter.

use super::decode::Provision;
use crate::lifecycle::ReadyProvision;
use secrecy::ExposeSecret;
use time::OffsetDateTime;

const READY_SUB_STATUS: &str = "PENDING_PROCESS_USER_ONBOARDING";
/// Sources disagree on the main status at the ready point (docs/bunq-api.md §8.1), so both count.
const READY_STATUSES: [&str; 2] = ["CREATED", "ACTIVE"];
const EXPIRED_CREDENTIAL_STATUS: &str = "EXPIRED";
/// The partner ended the relation: whatever the sub-status, the session must go.
const CLOSED_STATUSES: [&str; 2] = ["CANCELLED", "CLOSED"];

/// What to do with a decoded provision.
#[derive(Debug)]
pub enum Decision {
    /// Open (or reuse) a session with this credential.
    Act(ReadyProvision),
    /// Not for this worker: ack and count.
    Skip(SkipReason),
    /// Ready, but the credential can no longer open a session: only a token reset helps.
    CredentialExpired { expired_at: Option<OffsetDateTime> },
    /// `CANCELLED` or `CLOSED`: close the provision's session.
    Close(ClosedProvision),
}

/// A provision the partner cancelled or closed.
#[derive(Debug, Clone)]
pub struct ClosedProvision {
    pub(crate) provision_id: u64,
    pub(crate) external_uuid: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// `status`/`sub_status` are not the onboarding-ready pair.
    NotReady,
    /// Ready, but the event carries no `credential.token_value` (e.g. already used).
    NoCredentialToken,
    /// The provision was closed before or while its session was opened: nothing may be
    /// announced for it any more.
    ProvisionClosed,
    /// A `session.invalid` naming a session the cache no longer holds: downstream reads
    /// the cache again and finds the newer one.
    StaleInvalidation,
    /// The event carries a credential older than one already seen for the provision (a
    /// retry copy from before a token reset): its session must not come back.
    StaleCredential,
}

impl SkipReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SkipReason::NotReady => "not_ready",
            SkipReason::NoCredentialToken => "no_credential_token",
            SkipReason::ProvisionClosed => "provision_closed",
            SkipReason::StaleInvalidation => "stale_invalidation",
            SkipReason::StaleCredential => "stale_credential",
        }
    }
}

pub fn decide(provision: &Provision, now: OffsetDateTime) -> Decision {
    if CLOSED_STATUSES.contains(&provision.status.as_str()) {
        return Decision::Close(ClosedProvision {
            provision_id: provision.id,
            external_uuid: provision.external_uuid.clone(),
        });
    }
    if provision.sub_status != READY_SUB_STATUS || !READY_STATUSES.contains(&provision.status.as_str()) {
        return Decision::Skip(SkipReason::NotReady);
    }
    let Some(credential) = &provision.credential else {
        return Decision::Skip(SkipReason::NoCredentialToken);
    };
    let Some(token_value) = credential.token_value.clone().filter(|t| !t.expose_secret().trim().is_empty()) else {
        return Decision::Skip(SkipReason::NoCredentialToken);
    };
    let expired_by_time = credential.expiry_time.is_some_and(|at| at <= now);
    if expired_by_time || credential.status.as_deref() == Some(EXPIRED_CREDENTIAL_STATUS) {
        return Decision::CredentialExpired { expired_at: credential.expiry_time };
    }
    Decision::Act(ReadyProvision {
        provision_id: provision.id,
        external_uuid: provision.external_uuid.clone(),
        credential_id: credential.id,
        token_value,
        credential_expires_at: credential.expiry_time,
        after_reset: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provision::decode::decode;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2025-09-03 08:30 UTC);

    fn provision(status: &str, sub_status: &str, credential: &str) -> Provision {
        let body = format!(
            r#"{{"PartnerUserProvision":{{"id":7,"status":"{status}","sub_status":"{sub_status}"{credential}}}}}"#
        );
        decode(body.as_bytes(), 1 << 20).unwrap()
    }

    const GOOD: &str = r#","credential":{"id":1,"status":"PENDING_FIRST_USE","expiry_time":"2025-09-03 09:24:14.178685","token_value":"tok"}"#;

    #[test]
    fn acts_on_created_or_active_pending_onboarding_with_a_token() {
        for status in ["CREATED", "ACTIVE"] {
            let decision = decide(&provision(status, READY_SUB_STATUS, GOOD), NOW);
            assert!(matches!(decision, Decision::Act(ReadyProvision { provision_id: 7, .. })), "{status}");
        }
    }

    #[test]
    fn skips_other_states() {
        for (status, sub) in [("CREATED", "PENDING_PROCESS_USER"), ("ACTIVE", "NONE"), ("SOMETHING_NEW", "ALSO_NEW")] {
            assert!(matches!(decide(&provision(status, sub, GOOD), NOW), Decision::Skip(SkipReason::NotReady)));
        }
    }

    #[test]
    fn cancelled_or_closed_closes_whatever_the_sub_status_and_credential() {
        for (status, sub, credential) in
            [("CANCELLED", READY_SUB_STATUS, GOOD), ("CLOSED", "NONE", ""), ("CLOSED", "PENDING_PROCESS_USER", GOOD)]
        {
            let decision = decide(&provision(status, sub, credential), NOW);
            assert!(matches!(decision, Decision::Close(ClosedProvision { provision_id: 7, .. })), "{status}/{sub}");
        }
    }

    #[test]
    fn skips_ready_provisions_without_a_token() {
        for credential in [
            "",
            r#","credential":null"#,
            r#","credential":{"token_value":null}"#,
            r#","credential":{"token_value":" "}"#,
        ] {
            let decision = decide(&provision("CREATED", READY_SUB_STATUS, credential), NOW);
            assert!(matches!(decision, Decision::Skip(SkipReason::NoCredentialToken)), "{credential}");
        }
    }

    #[test]
    fn expired_credentials_are_reported_not_skipped() {
        let past = r#","credential":{"expiry_time":"2025-09-03 08:00:00.000000","token_value":"tok"}"#;
        let marked = r#","credential":{"status":"EXPIRED","token_value":"tok"}"#;
        for credential in [past, marked] {
            let decision = decide(&provision("CREATED", READY_SUB_STATUS, credential), NOW);
            assert!(matches!(decision, Decision::CredentialExpired { .. }), "{credential}");
        }
    }
}
