//! Any answer body: reading it as each handshake answer never panics and its errors never
//! carry a credential-like run; parsing it as a key or verifying it never panics.
#![no_main]

use bunq_protocol::client::{read_device_server, read_installation, read_session_server};
use bunq_protocol::redact::is_clean;
use bunq_protocol::signing::PublicKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for text in [
        read_installation(data).err().map(|e| e.to_string()),
        read_device_server(data).err().map(|e| e.to_string()),
        read_session_server(data).err().map(|e| e.to_string()),
    ]
    .into_iter()
    .flatten()
    {
        assert!(is_clean(&text), "error carries a credential-like run: {text}");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(key) = PublicKey::from_pem(text) {
            let _ = key.verify(data, text);
        }
    }
});
