//! Replays the committed fuzz corpus of `event_decode` (fuzz/corpus/, seeded by
//! scripts/fuzz-corpus.py) as an ordinary test: every hostile body decodes or fails
//! without a credential in the error, and what a dead letter keeps of it holds none.

use bunq_protocol::redact::is_clean;
use bunq_session_worker::amqp::dead_letter::{self, Credential};
use bunq_session_worker::provision::decode;
use bunq_session_worker::seal::Sealer;

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/event_decode");
/// The secret every seed carries (scripts/fuzz-corpus.py).
const SECRET: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

#[test]
fn no_body_in_the_corpus_leaks_its_credential() {
    let mut key = [0u8; 32];
    key.iter_mut().enumerate().for_each(|(i, b)| *b = (i as u8).wrapping_mul(37).wrapping_add(0x81));
    let sealer = Sealer::new(&key);
    let mut replayed = 0;
    for entry in std::fs::read_dir(CORPUS).expect("the committed corpus") {
        let path = entry.unwrap().path();
        let body = std::fs::read(&path).unwrap();
        if let Err(e) = decode::decode(&body, 1 << 20) {
            let text = e.to_string();
            assert!(is_clean(&text) && !text.contains(&SECRET[..16]), "{}: {text}", path.display());
        }
        for sealer in [None, Some(&sealer)] {
            let (kept, credential) = dead_letter::protect_body(body.clone(), 1 << 20, sealer, Some("m-1"));
            let kept = String::from_utf8_lossy(&kept);
            assert!(!kept.contains(&SECRET[..24]), "{} ({}): {kept:.200}", path.display(), credential.as_str());
            if credential == Credential::Sealed || credential == Credential::SealedBody {
                let restored = dead_letter::restore(kept.as_bytes(), credential, sealer, Some("m-1"), 1 << 20).unwrap();
                assert!(!restored.is_empty());
            }
        }
        replayed += 1;
    }
    assert!(replayed >= 15, "only {replayed} corpus entries");
}
