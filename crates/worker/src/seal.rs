//! Secrets at rest: AES-256-GCM under a configured key, with key ids so keys rotate.
//!
//! A sealed value is `v2:<key id>:<base64 nonce‖ciphertext‖tag>`. The key id (the first 8
//! hex digits of the key's SHA-256) says which key opens it: the current key seals, the
//! current and every old key (`SESSION_ENCRYPTION_OLD_KEY_FILES`) open. The associated
//! data is the record's owner and the field (`user:1364/session_token`), so a sealed token
//! can be moved neither into another field nor into another user's record. `v1:` values
//! (field-only associated data, no key id) from earlier versions are still read.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::digest::{digest, SHA256};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use zeroize::Zeroizing;

const V2: &str = "v2:";
const V1: &str = "v1:";

/// Whether a stored value is sealed (by any version).
pub(crate) fn is_sealed(value: &str) -> bool {
    value.starts_with(V2) || value.starts_with(V1)
}

/// The key id a `v2:` value names, when it is one (8 hex digits); anything else in its
/// place is no key id, and is never echoed (the value may be anything).
pub(crate) fn key_id(sealed: &str) -> Option<&str> {
    let (id, _) = sealed.strip_prefix(V2)?.split_once(':')?;
    (id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// Why a sealed value did not open. Names the field and, for a key this process does
/// not hold, the key id; never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Sealed by a key that is neither the current nor an old one: during a key rotation
    /// a replica that has not got the new key yet reads what one that has wrote.
    #[error("{field}: sealed with key {key_id}, which is neither SESSION_ENCRYPTION_KEY_FILE nor an old key")]
    UnknownKey { field: String, key_id: String },
    /// Sealed, and this process has no key at all.
    #[error("{field}: sealed with key {key_id}, and no key is configured (SESSION_ENCRYPTION_KEY_FILE)")]
    NoKey { field: String, key_id: String },
    /// Anything else: not sealed where it must be, not base64, or the tag does not verify.
    #[error("{field}: {problem}")]
    Unreadable { field: String, problem: &'static str },
}

impl SealError {
    /// The key id, when a key this process does not hold explains the failure.
    pub(crate) fn missing_key(&self) -> Option<&str> {
        match self {
            SealError::UnknownKey { key_id, .. } | SealError::NoKey { key_id, .. } => Some(key_id),
            SealError::Unreadable { .. } => None,
        }
    }

    pub(crate) fn unreadable(field: &str, problem: &'static str) -> Self {
        SealError::Unreadable { field: field.to_owned(), problem }
    }
}

/// What a sealed value belongs to: the associated data of its encryption.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Context<'a> {
    /// The record's owner, e.g. `user:1364`, `provision:7`.
    pub(crate) owner: &'a str,
    /// The field inside it, e.g. `session_token`.
    pub(crate) field: &'a str,
}

impl Context<'_> {
    fn aad(&self) -> Vec<u8> {
        format!("{}/{}", self.owner, self.field).into_bytes()
    }
}

struct Key {
    id: String,
    key: LessSafeKey,
}

impl Key {
    fn new(bytes: &[u8; 32]) -> Self {
        let id = hex::encode(&digest(&SHA256, bytes).as_ref()[..4]);
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).expect("a 32-byte key is valid for AES-256");
        Self { id, key: LessSafeKey::new(unbound) }
    }
}

/// The current key and the old ones still accepted for reading.
pub struct Sealer {
    current: Key,
    old: Vec<Key>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer([REDACTED])")
    }
}

impl Sealer {
    /// One key, no old ones.
    pub fn new(key: &[u8; 32]) -> Self {
        Self { current: Key::new(key), old: Vec::new() }
    }

    /// The current key and the old keys (read only), each from a key file's bytes.
    pub fn from_key_files(current: &[u8], old: &[Vec<u8>]) -> Result<Self, String> {
        let current = parse_key_file(current)?;
        let old = old
            .iter()
            .enumerate()
            .map(|(i, bytes)| parse_key_file(bytes).map_err(|p| format!("old key {}: {p}", i + 1)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::from_keys(&current, &old))
    }

    /// The current key and the old keys, parsed ([`parse_key_file`]).
    pub(crate) fn from_keys(current: &[u8; 32], old: &[Zeroizing<[u8; 32]>]) -> Self {
        Self { current: Key::new(current), old: old.iter().map(|k| Key::new(k)).collect() }
    }

    /// The id sealed values of the current key carry.
    pub fn current_key_id(&self) -> &str {
        &self.current.id
    }

    /// Whether `sealed` was sealed by the current key in the current format: what a
    /// re-seal can leave alone.
    pub(crate) fn is_current(&self, sealed: &str) -> bool {
        sealed.strip_prefix(V2).and_then(|rest| rest.split_once(':')).is_some_and(|(id, _)| id == self.current.id)
    }

    pub(crate) fn seal(&self, context: Context<'_>, plaintext: &str) -> String {
        self.seal_bytes(context, plaintext.as_bytes())
    }

    /// Seals any bytes (a whole message body) the same way.
    pub(crate) fn seal_bytes(&self, context: Context<'_>, plaintext: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).expect("system randomness is available");
        let mut buffer = plaintext.to_vec();
        self.current
            .key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(context.aad()), &mut buffer)
            .expect("sealing a short value cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buffer);
        format!("{V2}{}:{}", self.current.id, BASE64.encode(out))
    }

    /// Opens a value sealed by any accepted key. Errors name the field, never the value.
    pub(crate) fn open(&self, context: Context<'_>, sealed: &str) -> Result<String, SealError> {
        let bytes = self.open_bytes(context, sealed)?;
        String::from_utf8(bytes).map_err(|e| {
            zeroize::Zeroize::zeroize(&mut e.into_bytes());
            SealError::unreadable(context.field, "not UTF-8")
        })
    }

    /// Opens what [`Self::seal_bytes`] sealed.
    pub(crate) fn open_bytes(&self, context: Context<'_>, sealed: &str) -> Result<Vec<u8>, SealError> {
        let field = context.field;
        if let Some(rest) = sealed.strip_prefix(V2) {
            let id = key_id(sealed).ok_or_else(|| SealError::unreadable(field, "no key id"))?;
            let encoded = &rest[id.len() + 1..];
            let key = self
                .keys()
                .find(|k| k.id == id)
                .ok_or_else(|| SealError::UnknownKey { field: field.to_owned(), key_id: id.to_owned() })?;
            return open_with(&key.key, &context.aad(), encoded, field);
        }
        let encoded = sealed.strip_prefix(V1).ok_or_else(|| SealError::unreadable(field, "is not encrypted"))?;
        // v1 carried no key id and bound the field alone.
        self.keys()
            .find_map(|k| open_with(&k.key, field.as_bytes(), encoded, field).ok())
            .ok_or_else(|| SealError::unreadable(field, "cannot decrypt (wrong SESSION_ENCRYPTION_KEY_FILE?)"))
    }

    fn keys(&self) -> impl Iterator<Item = &Key> {
        std::iter::once(&self.current).chain(&self.old)
    }
}

fn open_with(key: &LessSafeKey, aad: &[u8], encoded: &str, field: &str) -> Result<Vec<u8>, SealError> {
    let mut bytes = BASE64.decode(encoded).map_err(|_| SealError::unreadable(field, "not base64"))?;
    if bytes.len() < NONCE_LEN {
        return Err(SealError::unreadable(field, "too short"));
    }
    // Opened in place: the plaintext is wiped with the buffer, only the copy returned lives on.
    let mut ciphertext = Zeroizing::new(bytes.split_off(NONCE_LEN));
    let nonce = Nonce::try_assume_unique_for_key(&bytes).map_err(|_| SealError::unreadable(field, "bad nonce"))?;
    let plaintext = key
        .open_in_place(nonce, Aad::from(aad), &mut ciphertext)
        .map_err(|_| SealError::unreadable(field, "cannot decrypt (wrong key, or sealed for another record)"))?;
    Ok(plaintext.to_vec())
}

/// A key file: 32 raw bytes, 64 hex characters, or base64 of 32 bytes; refused when it
/// looks like a passphrase or a made-up key rather than 32 random bytes. The key and
/// every decoded copy of it are wiped when dropped.
pub(crate) fn parse_key_file(bytes: &[u8]) -> Result<Zeroizing<[u8; 32]>, String> {
    if let Ok(key) = <&[u8; 32]>::try_from(bytes) {
        if key.iter().all(|b| (0x20..0x7f).contains(b)) {
            return Err("32 printable characters look like a passphrase, not a key: \
                        write 32 random bytes (e.g. `head -c 32 /dev/urandom`)"
                .to_owned());
        }
        return random_looking(Zeroizing::new(*key));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "must be 32 raw bytes, 64 hex characters or base64")?.trim();
    let decoded = Zeroizing::new(
        hex::decode(text)
            .ok()
            .or_else(|| BASE64.decode(text).ok())
            .ok_or("must be 32 raw bytes, 64 hex characters or base64")?,
    );
    let key = <&[u8; 32]>::try_from(decoded.as_slice())
        .map_err(|_| format!("key is {} bytes, AES-256 needs 32", decoded.len()))?;
    random_looking(Zeroizing::new(*key))
}

/// 32 random bytes almost surely hold more than 16 distinct values (fewer than 16 has a
/// probability below 1e-10); a repeated or counted pattern does not.
fn random_looking(key: Zeroizing<[u8; 32]>) -> Result<Zeroizing<[u8; 32]>, String> {
    let distinct = key.iter().collect::<std::collections::BTreeSet<_>>().len();
    if distinct < 16 {
        return Err(format!(
            "the key has only {distinct} distinct byte values: not random; generate one with \
             `head -c 32 /dev/urandom`"
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: Context<'static> = Context { owner: "user:1364", field: "session_token" };

    fn random_key() -> [u8; 32] {
        let mut key = [0u8; 32];
        aws_lc_rs::rand::fill(&mut key).unwrap();
        key[0] = 0x80; // never all printable
        key
    }

    #[test]
    fn sealed_values_round_trip_and_are_bound_to_their_field_and_owner() {
        let sealer = Sealer::new(&random_key());
        let sealed = sealer.seal(ALICE, "f981bd6d");
        assert!(sealed.starts_with(&format!("v2:{}:", sealer.current_key_id())) && !sealed.contains("f981bd6d"));
        assert_eq!(sealer.open(ALICE, &sealed).unwrap(), "f981bd6d");
        assert!(sealer.open(Context { field: "installation_token", ..ALICE }, &sealed).is_err());
        assert!(sealer.open(Context { owner: "user:1365", ..ALICE }, &sealed).is_err(), "moved to another user");
        let unknown = Sealer::new(&random_key()).open(ALICE, &sealed).unwrap_err();
        assert_eq!(unknown.missing_key(), Some(sealer.current_key_id()), "{unknown}");
        assert!(unknown.to_string().contains("neither"), "{unknown}");
        assert_ne!(sealer.seal(ALICE, "f981bd6d"), sealed, "nonces must differ");
    }

    #[test]
    fn old_keys_open_and_only_the_current_key_seals() {
        let (old, new) = (random_key(), random_key());
        let before = Sealer::new(&old).seal(ALICE, "t");
        let rotated = Sealer::from_key_files(&new, &[old.to_vec()]).unwrap();
        assert_eq!(rotated.open(ALICE, &before).unwrap(), "t");
        assert!(!rotated.is_current(&before));
        let after = rotated.seal(ALICE, "t");
        assert!(rotated.is_current(&after));
        assert!(Sealer::new(&old).open(ALICE, &after).is_err(), "sealed with the new key");
    }

    #[test]
    fn version_one_values_are_still_read() {
        let key = random_key();
        let unbound = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).unwrap());
        let nonce = [5u8; NONCE_LEN];
        let mut buffer = b"legacy".to_vec();
        unbound
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(b"session_token"), &mut buffer)
            .unwrap();
        let v1 = format!("v1:{}", BASE64.encode([nonce.as_slice(), &buffer].concat()));
        assert_eq!(Sealer::new(&key).open(ALICE, &v1).unwrap(), "legacy");
    }

    #[test]
    fn key_files_in_raw_hex_and_base64_are_accepted() {
        let raw = random_key();
        for file in [raw.to_vec(), hex::encode(raw).into_bytes(), format!("{}\n", BASE64.encode(raw)).into_bytes()] {
            assert_eq!(*parse_key_file(&file).unwrap(), raw);
        }
        assert!(parse_key_file(b"short").unwrap_err().contains("32"));
    }

    #[test]
    fn key_files_that_are_not_random_are_refused() {
        let passphrase = b"correct horse battery staple!!!!";
        assert!(parse_key_file(passphrase).unwrap_err().contains("passphrase"));
        assert!(parse_key_file(&[9u8; 32]).unwrap_err().contains("distinct"));
        assert!(parse_key_file(hex::encode([7u8; 32]).as_bytes()).unwrap_err().contains("distinct"));
    }
}
