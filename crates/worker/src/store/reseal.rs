//! `session reseal`: every record sealed by the current key, beside running workers.
//! Plaintext tokens, tokens sealed by an old key and `v1:` values (bound to their field
//! only, not to their record) are all rewritten as `v2:` under the current key.

use super::record::{record_error, Tokens};
use super::{Sealer, Store, StoreError, StoredHandshake, StoredSession};
use redis::AsyncCommands as _;

/// What a re-seal run found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Resealed {
    /// Session, handshake and credential records read.
    pub records: u64,
    /// Records rewritten because a token was plaintext, `v1:` or sealed by an old key.
    pub rewritten: u64,
    /// Records that changed (a worker wrote them) between the read and the write: left
    /// as they are, since the worker sealed them with the current key.
    pub skipped: u64,
    /// Records that could not be read (a key not configured, not JSON, a tag that does
    /// not verify): left as they are, and the run went on.
    pub unreadable: Vec<Unreadable>,
}

/// A record `session reseal` left alone because it could not read it. Names the key and
/// the problem, never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub key: String,
    pub problem: String,
}

impl Store {
    /// Rewrites every session, handshake and credential record under the prefix whose
    /// tokens are not sealed by the current key (plaintext, `v1:`, or an old key), keeping
    /// each record's TTL. Safe beside running workers: a record they changed meanwhile is
    /// left alone. An unreadable record is reported and skipped; only Redis failing
    /// stops the run.
    pub async fn reseal(&self) -> Result<Resealed, StoreError> {
        let sealer = self.sealer.as_ref().ok_or_else(|| StoreError::Corrupt {
            key: self.keys.prefix.clone(),
            problem: "no SESSION_ENCRYPTION_KEY_FILE: nothing to seal with".to_owned(),
        })?;
        let mut report = Resealed::default();
        let mut conn = self.conn.clone();
        for kind in ["session:", "handshake:", "credential:"] {
            let pattern = format!("{}{kind}*", glob_escape(&self.keys.prefix));
            let mut scan = self.conn.scan(&pattern).await?;
            while let Some(keys) = scan.next_batch().await? {
                for key in keys {
                    let raw: Option<Vec<u8>> = conn.get(&key).await?;
                    let Some(raw) = raw.map(zeroize::Zeroizing::new) else { continue };
                    report.records += 1;
                    let sealed = match self.resealed(&key, &raw, sealer) {
                        Ok(Some(sealed)) => sealed,
                        Ok(None) => continue,
                        Err(StoreError::Corrupt { problem, .. } | StoreError::UnknownKey { problem, .. }) => {
                            report.unreadable.push(Unreadable { key, problem });
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    if self.replace_unchanged(&key, &raw, &sealed).await? {
                        report.rewritten += 1;
                    } else {
                        report.skipped += 1;
                    }
                }
            }
        }
        Ok(report)
    }

    /// The record at `key` sealed by the current key, or `None` when it already is.
    pub(super) fn resealed(&self, key: &str, raw: &[u8], sealer: &Sealer) -> Result<Option<Vec<u8>>, StoreError> {
        let corrupt = |problem: String| StoreError::Corrupt { key: key.to_owned(), problem };
        let unsealable = |e| StoreError::unsealable(key.to_owned(), e);
        // `…{provision_id}…`: the id is the hash tag.
        let provision_id = |rest: &str| -> Result<u64, StoreError> {
            rest.strip_prefix('{')
                .and_then(|r| r.split_once('}'))
                .and_then(|(id, _)| id.parse().ok())
                .ok_or_else(|| corrupt("not a provision key".into()))
        };
        let body = if let Some(rest) = key.strip_prefix(&self.keys.credential_prefix()) {
            return self.resealed_credential(key, provision_id(rest)?, raw, sealer);
        } else if let Some(rest) = key.strip_prefix(&self.keys.handshake_prefix()) {
            let provision_id = provision_id(rest)?;
            let stored: StoredHandshake = serde_json::from_slice(raw).map_err(|e| corrupt(record_error(&e)))?;
            if stored.tokens().all(|token| sealer.is_current(token)) {
                return Ok(None);
            }
            let open = self.open_handshake(provision_id, stored).map_err(unsealable)?;
            serde_json::to_vec(&self.seal_handshake(provision_id, &open))
        } else {
            let stored: StoredSession = serde_json::from_slice(raw).map_err(|e| corrupt(record_error(&e)))?;
            if stored.tokens().all(|token| sealer.is_current(token)) {
                return Ok(None);
            }
            let open = self.open_session(stored).map_err(unsealable)?;
            serde_json::to_vec(&self.seal_session(&open))
        };
        Ok(Some(body.expect("records serialise")))
    }
}

/// `prefix` as a SCAN pattern that matches itself literally.
fn glob_escape(prefix: &str) -> String {
    prefix.chars().fold(String::new(), |mut out, c| {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
        out
    })
}
