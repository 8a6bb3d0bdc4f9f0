//! The worker's ops server, as a test reads it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Polls `/readyz` until it answers 2xx or `timeout` passes; whether it did.
pub async fn wait_ready(addr: SocketAddr, timeout: Duration) -> bool {
    let url = format!("http://{addr}/readyz");
    let deadline = Instant::now() + timeout;
    loop {
        if reqwest::get(&url).await.is_ok_and(|r| r.status().is_success()) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The Prometheus text of `/metrics`.
pub async fn metrics(addr: SocketAddr) -> Result<String, reqwest::Error> {
    reqwest::get(format!("http://{addr}/metrics")).await?.text().await
}

/// The sum of every sample whose line starts with `prefix`, e.g. a metric name, or a
/// name and the start of its labels: one figure over all label sets.
pub fn metric_sum(metrics: &str, prefix: &str) -> f64 {
    metrics.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}
