//! What the bench measures inside its own process, without broker or worker process:
//! decoding and deciding an event, and the RSA signatures a new session costs.

use super::report::Report;
use std::time::Instant;
use test_support::CLIENT_KEY;

/// RSA-2048 PKCS#1 v1.5 SHA-256 signatures per second over `threads` threads, with the
/// key and library the worker and the stand-in sign with.
pub fn crypto_floor(threads: usize, seconds: f64) -> anyhow::Result<f64> {
    let pem = std::fs::read_to_string(CLIENT_KEY)?;
    let body = bunq_session_worker::cli::publish::example_body(bunq_session_worker::cli::publish::Example::Ready, 1);
    let started = Instant::now();
    let counts = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<u64> {
                    let key = bunq_protocol::signing::ClientKey::from_pkcs8_pem(&pem)?;
                    let mut signed = 0u64;
                    while started.elapsed().as_secs_f64() < seconds {
                        key.sign(&body)?;
                        signed += 1;
                    }
                    Ok(signed)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("signing thread")).collect::<anyhow::Result<Vec<u64>>>()
    })?;
    Ok(counts.iter().sum::<u64>() as f64 / started.elapsed().as_secs_f64())
}

pub fn decode_benchmark(report: &mut Report, smoke: bool) {
    let bodies: Vec<Vec<u8>> = (0..if smoke { 200u64 } else { 20_000 })
        .map(|i| bunq_session_worker::cli::publish::example_body(bunq_session_worker::cli::publish::Example::Ready, i))
        .collect();
    let now = time::OffsetDateTime::now_utc();
    let time_it = |f: &dyn Fn(&[u8]) -> bool| {
        let mut best = f64::MAX;
        for _ in 0..5 {
            let started = Instant::now();
            let acted = bodies.iter().filter(|b| f(b)).count();
            assert_eq!(acted, bodies.len());
            best = best.min(started.elapsed().as_nanos() as f64 / bodies.len() as f64);
        }
        best
    };
    let baseline = time_it(&|b| serde_json::from_slice::<serde_json::Value>(b).is_ok());
    let ours = time_it(&|b| {
        use bunq_session_worker::provision::decide::{decide, Decision};
        let provision = bunq_session_worker::provision::decode::decode(b, 1 << 20).expect("valid");
        matches!(decide(&provision, now), Decision::Act(_))
    });
    println!("\n{:<44} {:>12}", format!("decode (best of 5, {} webhook bodies)", bodies.len()), "ns/event");
    println!("{:<44} {:>12.0}", "baseline: serde_json::Value parse", baseline);
    println!("{:<44} {:>12.0}", "decode + decide", ours);
    report.set("decode_ns_per_event", ours);
    report.set("decode_baseline_ns_per_event", baseline);
}
