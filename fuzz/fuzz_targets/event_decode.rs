//! Any delivery body: decoding never panics, its error never carries a credential-like
//! run, and what a dead letter keeps of it is computed without panicking.
#![no_main]

use bunq_protocol::redact::is_clean;
use bunq_session_worker::amqp::dead_letter;
use bunq_session_worker::provision::decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = decode::decode(data, 1 << 20) {
        let text = e.to_string();
        assert!(is_clean(&text), "decode error carries a credential-like run: {text}");
    }
    let _ = dead_letter::protect_body(data.to_vec(), 1 << 20, None, Some("m"));
});
