//! Replays the committed fuzz corpus of `bunq_response` (fuzz/corpus/, seeded by
//! scripts/fuzz-corpus.py) as an ordinary test: the fuzz target's properties hold for
//! every hostile answer in it.

use bunq_protocol::client::{read_device_server, read_installation, read_session_server};
use bunq_protocol::redact::is_clean;

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/bunq_response");

#[test]
fn no_answer_in_the_corpus_puts_a_credential_into_an_error() {
    let mut replayed = 0;
    for entry in std::fs::read_dir(CORPUS).expect("the committed corpus") {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let errors = [
            read_installation(&data).err().map(|e| format!("{e} {e:?}")),
            read_device_server(&data).err().map(|e| format!("{e} {e:?}")),
            read_session_server(&data).err().map(|e| format!("{e} {e:?}")),
        ];
        for text in errors.into_iter().flatten() {
            assert!(is_clean(&text), "{}: {text}", path.display());
        }
        replayed += 1;
    }
    assert!(replayed >= 10, "only {replayed} corpus entries");
}
