//! A Redis primary with one replica, of the test's own.

use crate::nodes::wait_for_port;
use crate::services::free_port;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// A plain Redis primary with one replica of the test's own, no persistence (the replica
/// holds the copy): for writes that must reach a replica before they count. The replica
/// can be paused (`SIGSTOP`) so the primary's writes stop reaching it.
pub struct RedisPair {
    primary: Child,
    replica: Child,
    pub primary_port: u16,
    pub replica_port: u16,
    _dirs: (TempDir, TempDir),
}

impl RedisPair {
    pub fn start() -> Self {
        let spawn = |port: u16, dir: &TempDir, replica_of: Option<u16>| {
            let mut command = Command::new("redis-server");
            command
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--dir", dir.path().to_str().expect("UTF-8 path"), "--repl-diskless-sync-delay", "0"]);
            if let Some(primary) = replica_of {
                command.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
            }
            command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("redis-server is installed")
        };
        let dirs = (tempfile::tempdir().expect("a directory"), tempfile::tempdir().expect("a directory"));
        let (primary_port, replica_port) = (free_port(), free_port());
        let primary = spawn(primary_port, &dirs.0, None);
        assert!(wait_for_port(primary_port, Duration::from_secs(20)), "the primary never listened");
        let replica = spawn(replica_port, &dirs.1, Some(primary_port));
        let pair = Self { primary, replica, primary_port, replica_port, _dirs: dirs };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !pair.info(replica_port, "master_link_status:up") {
            assert!(Instant::now() < deadline, "the replica never linked to its primary");
            std::thread::sleep(Duration::from_millis(100));
        }
        pair
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.primary_port)
    }

    fn info(&self, port: u16, needle: &str) -> bool {
        let out = Command::new("redis-cli").args(["-p", &port.to_string(), "INFO", "replication"]).output();
        out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(needle))
    }

    /// `SIGSTOP`s (`pause`) or `SIGCONT`s the replica.
    pub fn pause_replica(&self, pause: bool) {
        assert!(self.signal_replica(if pause { "-STOP" } else { "-CONT" }), "kill the replica");
    }

    fn signal_replica(&self, signal: &str) -> bool {
        let status = Command::new("kill").args([signal, &self.replica.id().to_string()]).status();
        status.is_ok_and(|s| s.success())
    }
}

impl Drop for RedisPair {
    fn drop(&mut self) {
        // A stopped process is not killed until it runs again.
        self.signal_replica("-CONT");
        for child in [&mut self.primary, &mut self.replica] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
