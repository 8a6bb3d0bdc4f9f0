//! What tracing costs: an OTLP/HTTP sink that takes every export and keeps only its size,
//! so the worker's exporter does all its work and nothing here decodes.

use axum::body::Bytes;
use axum::extract::State;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Default)]
pub struct Taken {
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
}

pub struct Sink {
    pub endpoint: String,
    pub taken: Arc<Taken>,
    task: tokio::task::JoinHandle<()>,
}

async fn take(State(taken): State<Arc<Taken>>, body: Bytes) -> &'static [u8] {
    taken.requests.fetch_add(1, Ordering::Relaxed);
    taken.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    // An empty ExportTraceServiceResponse is zero bytes of protobuf.
    b""
}

impl Sink {
    pub async fn start() -> anyhow::Result<Self> {
        let taken = Arc::new(Taken::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let app = axum::Router::new().route("/v1/traces", axum::routing::post(take)).with_state(taken.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { endpoint, taken, task })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}
