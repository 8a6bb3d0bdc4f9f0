//! bunq's request and response signatures: RSASSA-PKCS1-v1_5 with SHA-256 over the
//! exact body bytes, standard base64 with padding (docs/bunq-api.md §4).

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use std::fmt;

/// What went wrong with a key or a signature. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// The text is not PEM.
    #[error("not a PEM document: {0}")]
    Pem(String),
    /// PEM of another kind (e.g. a public key where the private key belongs).
    #[error("PEM label is `{found}`, expected `{expected}`")]
    PemLabel {
        /// The label this call reads.
        expected: &'static str,
        /// The label the document has.
        found: String,
    },
    /// The DER inside is not an RSA key the library accepts.
    #[error("the key is not a valid RSA key: {0}")]
    KeyRejected(String),
    /// A client key must be 2048 bits.
    #[error("RSA key has {bits} bits; bunq requires 2048")]
    KeySize {
        /// The key's modulus size.
        bits: usize,
    },
    /// The signature header is not base64.
    #[error("signature is not valid base64")]
    SignatureEncoding,
    /// The signature is not over these bytes with this key.
    #[error("signature does not match the body")]
    SignatureMismatch,
    /// The crypto library failed (no randomness, or a key it cannot use).
    #[error("signing failed")]
    Sign,
}

/// Our RSA-2048 key pair: signs request bodies, and its public half is what
/// `POST /installation` registers.
pub struct ClientKey {
    pair: KeyPair,
    public_pem: String,
}

impl ClientKey {
    /// Loads a PKCS#8 PEM (`BEGIN PRIVATE KEY`), as mounted from a Kubernetes Secret.
    pub fn from_pkcs8_pem(pem_text: &str) -> Result<Self, SigningError> {
        // The DER is the private key itself: wiped once the key pair holds it.
        let der = zeroize::Zeroizing::new(decode_pem(pem_text, "PRIVATE KEY")?);
        let pair = KeyPair::from_pkcs8(&der).map_err(|e| SigningError::KeyRejected(e.to_string()))?;
        Self::from_pair(pair)
    }

    /// A fresh key pair (the stand-in's server key, tests, the demo).
    pub fn generate() -> Result<Self, SigningError> {
        let pair = KeyPair::generate(KeySize::Rsa2048).map_err(|_| SigningError::Sign)?;
        Self::from_pair(pair)
    }

    fn from_pair(pair: KeyPair) -> Result<Self, SigningError> {
        let bits = pair.public_modulus_len() * 8;
        if bits != 2048 {
            return Err(SigningError::KeySize { bits });
        }
        let spki = pair.public_key().as_der().map_err(|_| SigningError::Sign)?;
        let public_pem = encode_pem("PUBLIC KEY", spki.as_ref());
        Ok(Self { pair, public_pem })
    }

    /// The public key as SubjectPublicKeyInfo PEM, the form bunq expects.
    pub fn public_key_pem(&self) -> &str {
        &self.public_pem
    }

    /// The private key as PKCS#8 PEM, for writing a generated key to a file.
    pub fn to_pkcs8_pem(&self) -> Result<String, SigningError> {
        let der: Pkcs8V1Der = self.pair.as_der().map_err(|_| SigningError::Sign)?;
        Ok(encode_pem("PRIVATE KEY", der.as_ref()))
    }

    /// Signs the body bytes exactly as they will be sent; returns base64.
    pub fn sign(&self, body: &[u8]) -> Result<String, SigningError> {
        let mut sig = vec![0; self.pair.public_modulus_len()];
        let rng = aws_lc_rs::rand::SystemRandom::new();
        self.pair.sign(&RSA_PKCS1_SHA256, &rng, body, &mut sig).map_err(|_| SigningError::Sign)?;
        Ok(BASE64.encode(sig))
    }
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientKey([REDACTED])")
    }
}

/// A peer's public key (bunq's server key, or a client's key inside the stand-in),
/// parsed once so verifying costs no parsing.
#[derive(Clone)]
pub struct PublicKey {
    parsed: ParsedPublicKey,
    pem: String,
    bits: usize,
}

impl PublicKey {
    /// Accepts `BEGIN PUBLIC KEY` (SPKI) and, like the official SDK, `BEGIN RSA PUBLIC KEY`,
    /// of 2048 to 8192 bits: bunq's server key is not ours to size. Client keys must be
    /// 2048 bits; see [`Self::require_client_size`].
    pub fn from_pem(pem_text: &str) -> Result<Self, SigningError> {
        let doc = pem::parse(pem_text.trim()).map_err(|e| SigningError::Pem(pem_problem(&e)))?;
        if doc.tag() != "PUBLIC KEY" && doc.tag() != "RSA PUBLIC KEY" {
            return Err(SigningError::PemLabel { expected: "PUBLIC KEY", found: doc.tag().to_owned() });
        }
        let parsed = ParsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, doc.contents())
            .map_err(|e| SigningError::KeyRejected(e.to_string()))?;
        let key = aws_lc_rs::rsa::PublicKey::from_der(doc.contents())
            .map_err(|e| SigningError::KeyRejected(e.to_string()))?;
        Ok(Self { parsed, pem: pem_text.to_owned(), bits: key.modulus_len() * 8 })
    }

    /// The PEM text as received, for storing beside a session.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// bunq requires client keys (the one `POST /installation` registers) of 2048 bits.
    pub fn require_client_size(self) -> Result<Self, SigningError> {
        if self.bits != 2048 {
            return Err(SigningError::KeySize { bits: self.bits });
        }
        Ok(self)
    }

    /// Verifies a base64 signature over the exact body bytes.
    pub fn verify(&self, body: &[u8], signature_b64: &str) -> Result<(), SigningError> {
        let sig = BASE64.decode(signature_b64.trim()).map_err(|_| SigningError::SignatureEncoding)?;
        self.parsed.verify_sig(body, &sig).map_err(|_| SigningError::SignatureMismatch)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PublicKey(..)")
    }
}

/// What is wrong with a PEM document, without quoting it: the pem crate's messages quote
/// the tags, and a hostile answer can put anything there (found by fuzzing).
fn pem_problem(err: &pem::PemError) -> String {
    match err {
        pem::PemError::MismatchedTags(..) => "BEGIN and END labels differ",
        pem::PemError::MalformedFraming => "malformed framing",
        pem::PemError::MissingBeginTag => "no BEGIN line",
        pem::PemError::MissingEndTag => "no END line",
        pem::PemError::MissingData => "no data",
        pem::PemError::InvalidData(_) => "the data is not base64",
        _ => "not a PEM document",
    }
    .to_owned()
}

fn decode_pem(text: &str, expected: &'static str) -> Result<Vec<u8>, SigningError> {
    let doc = pem::parse(text.trim()).map_err(|e| SigningError::Pem(pem_problem(&e)))?;
    if doc.tag() != expected {
        return Err(SigningError::PemLabel { expected, found: doc.tag().to_owned() });
    }
    Ok(doc.into_contents())
}

fn encode_pem(label: &str, der: &[u8]) -> String {
    // bunq's examples use LF line endings and 64-column base64.
    pem::encode_config(
        &pem::Pem::new(label, der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = include_str!("../../../tests/fixtures/client_key.pem");
    const PUBLIC: &str = include_str!("../../../tests/fixtures/client_key.pub.pem");
    const BODY: &[u8] = include_bytes!("../../../tests/fixtures/signed_body.json");
    /// Produced by `openssl dgst -sha256 -sign client_key.pem signed_body.json | base64 -w0`.
    const OPENSSL_SIGNATURE: &str = include_str!("../../../tests/fixtures/signed_body.sig.b64");

    #[test]
    fn signature_matches_openssl_for_the_same_key_and_body() {
        let key = ClientKey::from_pkcs8_pem(KEY).unwrap();
        // PKCS#1 v1.5 is deterministic: equal bytes prove the same algorithm and encoding.
        assert_eq!(key.sign(BODY).unwrap(), OPENSSL_SIGNATURE.trim());
    }

    #[test]
    fn openssl_signature_verifies_and_a_changed_body_does_not() {
        let public = PublicKey::from_pem(PUBLIC).unwrap();
        public.verify(BODY, OPENSSL_SIGNATURE).unwrap();
        let mut tampered = BODY.to_vec();
        tampered[0] ^= 1;
        assert!(matches!(public.verify(&tampered, OPENSSL_SIGNATURE), Err(SigningError::SignatureMismatch)));
    }

    #[test]
    fn public_pem_is_the_spki_form_openssl_derives() {
        let key = ClientKey::from_pkcs8_pem(KEY).unwrap();
        assert_eq!(key.public_key_pem().trim(), PUBLIC.trim());
    }

    #[test]
    fn generated_key_round_trips_through_pkcs8_pem() {
        let key = ClientKey::generate().unwrap();
        let again = ClientKey::from_pkcs8_pem(&key.to_pkcs8_pem().unwrap()).unwrap();
        let sig = again.sign(b"{}").unwrap();
        PublicKey::from_pem(key.public_key_pem()).unwrap().verify(b"{}", &sig).unwrap();
    }

    #[test]
    fn wrong_pem_label_names_what_was_expected() {
        let err = ClientKey::from_pkcs8_pem(PUBLIC).unwrap_err();
        assert!(err.to_string().contains("expected `PRIVATE KEY`"), "{err}");
    }

    #[test]
    fn server_keys_of_other_sizes_are_accepted_but_not_as_client_keys() {
        let pair = KeyPair::generate(KeySize::Rsa3072).unwrap();
        let pem = encode_pem("PUBLIC KEY", pair.public_key().as_der().unwrap().as_ref());
        let key = PublicKey::from_pem(&pem).unwrap();
        assert!(matches!(key.require_client_size(), Err(SigningError::KeySize { bits: 3072 })));
        PublicKey::from_pem(PUBLIC).unwrap().require_client_size().unwrap();
    }

    #[test]
    fn debug_output_hides_key_material() {
        let key = ClientKey::from_pkcs8_pem(KEY).unwrap();
        assert_eq!(format!("{key:?}"), "ClientKey([REDACTED])");
    }
}
