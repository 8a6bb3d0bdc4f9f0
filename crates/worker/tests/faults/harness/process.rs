//! The processes a fault test starts, stops and breaks: the worker (its metrics and
//! signals) and a Redis of the test's own.

use super::Env;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use test_support::{free_port, ops, WorkerEnv};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_bunq-session-worker");

impl Env {
    /// Starts `bunq-session-worker run` as a process; its logs go to a file per start.
    pub fn start_worker(&self, name: &str) -> Worker {
        self.start(name, None)
    }

    /// The same, its clock off by `offset` (libfaketime's `FAKETIME`, e.g. `+30s`);
    /// monotonic time is left alone, so its timers run as anyone's.
    pub fn start_worker_with_clock(&self, name: &str, offset: &str) -> Worker {
        self.start(name, Some(offset))
    }

    fn start(&self, name: &str, clock: Option<&str>) -> Worker {
        let ops_port = free_port();
        let log_path = self.logs.path().join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let env = self
            .redis
            .configure(WorkerEnv::fast(&self.fake.base_url(), &self.names))
            .set("AMQP_URL", &self.amqp_url)
            // Known in advance: the test reads the worker's metrics.
            .set("OPS_ADDR", format!("127.0.0.1:{ops_port}"))
            .set("POD_NAME", format!("{}-{name}", self.names.id))
            .set("LOG_FORMAT", "json")
            .set("RUST_LOG", "info,lapin=warn")
            // The fault tests' own tuning: a kill leaves at most two prefetches in flight;
            // a hang costs one short request timeout; a killed worker's locks expire soon;
            // a stream through many faults gets more attempts; SIGTERM drains within 10 s.
            .set("PREFETCH", "16")
            .set("BUNQ_REQUEST_TIMEOUT", "1000ms")
            .set("LOCK_TTL", "12000ms")
            .set("RETRY_MAX_INTERVAL", "300ms")
            .set("MAX_ATTEMPTS", "30")
            .set("SHUTDOWN_TIMEOUT", "10s");
        let env = self.worker_env.iter().fold(env, |env, (variable, value)| env.set(variable, value));
        let mut command = Command::new(BIN);
        command.arg("run").env_clear().envs(env.vars()).stdout(Stdio::null()).stderr(log).kill_on_drop(true);
        if let Some(offset) = clock {
            // libfaketime preloaded into the worker itself, not the `faketime` wrapper: the
            // wrapper forks, so a signal or a kill on drop would reach it and leave the
            // worker running.
            command.env("LD_PRELOAD", libfaketime()).env("FAKETIME", offset).env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        Worker { child: command.spawn().unwrap(), ops_port, log_path }
    }
}

/// Debian's `libfaketime` (package `faketime`, which `make test-faults` installs).
fn libfaketime() -> &'static str {
    const PLACES: [&str; 3] = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ];
    PLACES.into_iter().find(|p| std::path::Path::new(p).exists()).expect("libfaketime is installed (Debian: faketime)")
}

pub struct Worker {
    pub child: Child,
    pub ops_port: u16,
    pub log_path: PathBuf,
}

impl Worker {
    pub fn ops_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ops_port))
    }

    pub async fn wait_ready(&self) {
        if !ops::wait_ready(self.ops_addr(), Duration::from_secs(20)).await {
            panic!("worker not ready; log: {}", std::fs::read_to_string(&self.log_path).unwrap_or_default());
        }
    }

    pub async fn metric(&self, name: &str) -> f64 {
        ops::metric_sum(&ops::metrics(self.ops_addr()).await.unwrap(), name)
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running").to_string();
        assert!(std::process::Command::new("kill").args([signal, &pid]).status().unwrap().success());
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

/// Waits until `count` session-ready events have been published (read from metrics);
/// returns how many there were, so a test can show its fault landed mid-stream.
pub async fn wait_for_announcements(worker: &Worker, count: f64, timeout: Duration) -> f64 {
    let deadline = Instant::now() + timeout;
    loop {
        let announced = worker.metric("bunq_session_worker_deliveries_total{outcome=\"announced\"").await;
        if announced >= count {
            return announced;
        }
        assert!(Instant::now() < deadline, "fewer than {count} announcements");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A Redis of the test's own, so restarting it disturbs no other test. It keeps an
/// append-only file, as a production Redis holding sessions would.
pub struct OwnRedis {
    port: u16,
    dir: tempfile::TempDir,
    /// `None` while stopped.
    child: Option<std::process::Child>,
}

impl OwnRedis {
    pub async fn start() -> OwnRedis {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut redis = OwnRedis { port, dir, child: None };
        redis.resume().await;
        redis
    }

    fn spawn(port: u16, dir: &tempfile::TempDir) -> std::process::Child {
        std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", "always", "--dir", dir.path().to_str().unwrap()])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed")
    }

    async fn wait_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Shuts Redis down, leaves it down for `down`, starts it again on the same port and data.
    pub async fn restart(mut self, down: Duration) -> OwnRedis {
        self.stop();
        tokio::time::sleep(down).await;
        self.resume().await;
        self
    }

    /// Shuts Redis down; its data stays on disk (append-only file, fsync always).
    pub fn stop(&mut self) {
        let _ = std::process::Command::new("redis-cli").args(["-p", &self.port.to_string(), "shutdown"]).output();
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// Starts it (again) on the same port and data.
    pub async fn resume(&mut self) {
        self.child = Some(Self::spawn(self.port, &self.dir));
        self.wait_up().await;
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
