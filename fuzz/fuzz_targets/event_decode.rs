//! Any delivery body: decoding never panics, its error never carries a credential-like
//! run, and what a dead letter keeps of it, with a key or without, never holds the
//! credential the decoder found in it.
#![no_main]

use bunq_protocol::redact::is_clean;
use bunq_session_worker::amqp::dead_letter;
use bunq_session_worker::provision::decode;
use bunq_session_worker::seal::Sealer;
use libfuzzer_sys::fuzz_target;
use secrecy::ExposeSecret;

fuzz_target!(|data: &[u8]| {
    let token = match decode::decode(data, 1 << 20) {
        Ok(provision) => provision.token_value().map(|t| t.expose_secret().to_owned()),
        Err(e) => {
            let text = e.to_string();
            assert!(is_clean(&text), "decode error carries a credential-like run: {text}");
            None
        }
    };
    let key = Sealer::new(&[7u8; 32]);
    for sealer in [None, Some(&key)] {
        let (kept, _) = dead_letter::protect_body(data.to_vec(), 1 << 20, sealer, Some("m"));
        if let Some(token) = &token {
            assert!(!kept.windows(token.len()).any(|w| w == token.as_bytes()), "a dead letter keeps the credential");
        }
    }
});
