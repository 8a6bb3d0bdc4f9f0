//! `session reseal`: every record sealed by the current key, beside running workers.

use super::{record_error, Sealer, Store, StoreError, StoredHandshake, StoredSession};
use redis::AsyncCommands as _;

/// What a re-seal run found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resealed {
    /// Session, handshake and credential records read.
    pub records: u64,
    /// Records rewritten because a token was plaintext or sealed by an old key.
    pub rewritten: u64,
    /// Records that changed (a worker wrote them) between the read and the write: left
    /// as they are, since the worker sealed them with the current key.
    pub skipped: u64,
}

/// Replaces a record only if it still holds what was read, keeping its TTL.
static REPLACE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL') return 1 else return 0 end"#,
    )
});

impl Store {
    /// Rewrites every session, handshake and credential record under the prefix whose tokens are not
    /// sealed by the current key (plaintext, or an old key), keeping each record's TTL.
    /// Safe beside running workers: a record they changed meanwhile is left alone.
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
                    let Some(raw) = raw else { continue };
                    report.records += 1;
                    let Some(sealed) = self.resealed(&key, &raw, sealer)? else { continue };
                    let replaced: i64 = REPLACE.key(&key).arg(&raw).arg(sealed).invoke_async(&mut conn).await?;
                    if replaced == 1 {
                        report.rewritten += 1;
                    } else {
                        report.skipped += 1;
                    }
                }
            }
        }
        Ok(report)
    }

    /// The record sealed by the current key, or `None` when it already is.
    fn resealed(&self, key: &str, raw: &[u8], sealer: &Sealer) -> Result<Option<Vec<u8>>, StoreError> {
        let corrupt = |problem: String| StoreError::Corrupt { key: key.to_owned(), problem };
        let current = |token: &String| sealer.is_current(token);
        // `…{provision_id}…`: the id is the hash tag.
        let provision_id = |rest: &str| -> Result<u64, StoreError> {
            rest.strip_prefix('{')
                .and_then(|r| r.split_once('}'))
                .and_then(|(id, _)| id.parse().ok())
                .ok_or_else(|| corrupt("not a provision key".into()))
        };
        let body = if let Some(rest) = key.strip_prefix(&self.keys.credential_prefix()) {
            return self.resealed_credential(provision_id(rest)?, raw, sealer).map_err(corrupt);
        } else if let Some(rest) = key.strip_prefix(&self.keys.handshake_prefix()) {
            let provision_id = provision_id(rest)?;
            let stored: StoredHandshake = serde_json::from_slice(raw).map_err(|e| corrupt(record_error(&e)))?;
            let tokens = stored
                .installation_token
                .iter()
                .chain(stored.session.iter().flat_map(|s| [&s.session_token, &s.installation_token]));
            if tokens.into_iter().all(current) {
                return Ok(None);
            }
            let open = self.open_handshake(provision_id, stored).map_err(corrupt)?;
            serde_json::to_vec(&self.seal_handshake(provision_id, &open))
        } else {
            let stored: StoredSession = serde_json::from_slice(raw).map_err(|e| corrupt(record_error(&e)))?;
            if current(&stored.session_token) && current(&stored.installation_token) {
                return Ok(None);
            }
            let open = self.open_session(stored).map_err(corrupt)?;
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
