//! The worker as a process of its own for one part of the bench: started, stopped, and
//! what it costs (CPU, memory).

use super::cpu;
use std::net::SocketAddr;
use std::time::Duration;
use test_support::{free_port, ops, WorkerEnv};

const BIN: &str = env!("CARGO_BIN_EXE_bunq-session-worker");

/// A worker process for one part of the bench.
pub struct BenchWorker {
    child: tokio::process::Child,
    pub pid: u32,
    ops_port: u16,
}

impl BenchWorker {
    pub async fn start(env: &WorkerEnv, prefetch: u16) -> anyhow::Result<Self> {
        Self::start_wrapped(env, prefetch, &[], Duration::from_secs(20)).await
    }

    /// Started as `wrapper… worker run` (a profiler) when `wrapper` is not empty.
    pub async fn start_wrapped(
        env: &WorkerEnv,
        prefetch: u16,
        wrapper: &[&str],
        ready_within: Duration,
    ) -> anyhow::Result<Self> {
        let ops_port = free_port();
        let env = env
            .clone()
            .set("OPS_ADDR", format!("127.0.0.1:{ops_port}"))
            .set("PREFETCH", prefetch.to_string())
            .set("POD_NAME", format!("bench-{ops_port}"))
            .set("LOG_FORMAT", "json")
            .set("RUST_LOG", "error"); // the dead-letter run would print a warning per event
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = tokio::process::Command::new(program);
                command.args(args).arg(BIN);
                command
            }
            None => tokio::process::Command::new(BIN),
        };
        let child = command.arg("run").envs(env.vars()).kill_on_drop(true).spawn()?;
        let pid = child.id().expect("running");
        anyhow::ensure!(
            ops::wait_ready(SocketAddr::from(([127, 0, 0, 1], ops_port)), ready_within).await,
            "worker not ready"
        );
        Ok(Self { child, pid, ops_port })
    }

    pub fn ops_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ops_port))
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        std::process::Command::new("kill").args(["-TERM", &self.pid.to_string()]).status()?;
        self.child.wait().await?;
        Ok(())
    }
}

/// The processes a new-session run keeps busy, measured together.
pub fn cpu_meter(worker: &BenchWorker) -> cpu::Meter {
    cpu::Meter::start(vec![
        cpu::Part::new("worker", vec![worker.pid]),
        cpu::Part::new("bench + stand-in", vec![std::process::id()]),
        cpu::Part::by_name("rabbitmq", "beam.smp"),
        cpu::Part::by_name("redis", "redis-server"),
    ])
}

/// A field of /proc/PID/status in KiB (VmRSS now, VmHWM the peak).
pub fn memory_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with(field)).ok_or_else(|| anyhow::anyhow!("no {field}"))?;
    Ok(line.split_whitespace().nth(1).ok_or_else(|| anyhow::anyhow!("bad {field}"))?.parse()?)
}
