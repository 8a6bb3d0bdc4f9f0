//! `session show USER_ID` and `session reseal`: look at a cached session, and re-seal
//! every stored token with the current key after a key rotation.
//!
//! `show` masks tokens unless `--reveal` is given: a session token acts as the user.

use crate::config::StoreArgs;
use crate::store::Session;
use clap::{Args, Subcommand};
use secrecy::{ExposeSecret, SecretString};

#[derive(Debug, Args)]
pub struct SessionArgs {
    #[command(subcommand)]
    pub(crate) action: Action,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Action {
    /// Print the session cached for a user as JSON, tokens masked.
    Show(ShowArgs),
    /// Re-seal every session, handshake and credential record with
    /// SESSION_ENCRYPTION_KEY_FILE (plaintext ones, `v1:` ones, and ones sealed by a key in
    /// SESSION_ENCRYPTION_OLD_KEY_FILES). Unreadable records are listed and skipped; the
    /// exit status is then 1.
    Reseal(ResealArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// The user id (`user_id` of the session-ready event).
    pub(crate) user_id: u64,
    /// Print the tokens themselves. They act as the user: handle the output as a secret.
    #[arg(long)]
    pub(crate) reveal: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ResealArgs {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
}

/// `Ok(false)` when there is no such session, or a re-seal left unreadable records.
pub async fn run(args: SessionArgs) -> anyhow::Result<bool> {
    match args.action {
        Action::Show(args) => {
            let redis = args.store.settings()?;
            let store = redis.store(redis.connect()?);
            let Some(session) = store.read_session(args.user_id).await? else {
                eprintln!("no session cached for user {}", args.user_id);
                return Ok(false);
            };
            let ttl = store.session_ttl(args.user_id).await?;
            println!("{}", serde_json::to_string_pretty(&shown(&session, ttl.map(|t| t.as_secs()), args.reveal))?);
            Ok(true)
        }
        Action::Reseal(args) => {
            let redis = args.store.settings()?;
            anyhow::ensure!(redis.sealer.is_some(), "SESSION_ENCRYPTION_KEY_FILE: required, it is the key that seals");
            let report = redis.store(redis.connect()?).reseal().await?;
            println!(
                "records {}  rewritten {}  changed meanwhile (left as the worker wrote them) {}  unreadable {}",
                report.records,
                report.rewritten,
                report.skipped,
                report.unreadable.len()
            );
            // Keys and problems only: a problem names a field or a key id, never a value.
            for unreadable in &report.unreadable {
                println!("unreadable {}: {}", unreadable.key, unreadable.problem);
            }
            Ok(report.unreadable.is_empty())
        }
    }
}

/// What `show` prints: the record, tokens masked unless revealed.
pub(crate) fn shown(session: &Session, ttl_secs: Option<u64>, reveal: bool) -> serde_json::Value {
    let token = |secret: &SecretString| {
        if reveal {
            secret.expose_secret().to_owned()
        } else {
            format!("[masked, {} characters; --reveal prints it]", secret.expose_secret().chars().count())
        }
    };
    serde_json::json!({
        "provision_id": session.provision_id,
        "external_uuid": session.external_uuid,
        "user_id": session.user_id,
        "granted_by_user_id": session.granted_by_user_id,
        "session_id": session.session_id,
        "session_token": token(&session.session_token),
        "installation_token": token(&session.installation_token),
        "created_at": session.created_at.format(&time::format_description::well_known::Rfc3339).ok(),
        "expires_at": session.expires_at.format(&time::format_description::well_known::Rfc3339).ok(),
        "ttl_secs": ttl_secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        let now = time::OffsetDateTime::now_utc();
        Session {
            provision_id: 7,
            external_uuid: None,
            user_id: 1364,
            granted_by_user_id: Some(1363),
            session_id: 2173,
            session_token: "f981bd6d-session".to_owned().into(),
            installation_token: "a1b2c3-installation".to_owned().into(),
            server_public_key: "pem".into(),
            created_at: now,
            expires_at: now,
        }
    }

    #[test]
    fn tokens_are_masked_unless_revealed() {
        let masked = shown(&session(), Some(60), false).to_string();
        assert!(!masked.contains("f981bd6d") && !masked.contains("a1b2c3"), "{masked}");
        assert!(masked.contains("[masked, 16 characters"), "{masked}");
        let revealed = shown(&session(), Some(60), true).to_string();
        assert!(revealed.contains("f981bd6d-session") && revealed.contains("a1b2c3-installation"));
        let debug = format!("{:?}", session());
        assert!(!debug.contains("f981bd6d") && !debug.contains("a1b2c3"), "{debug}");
    }
}
