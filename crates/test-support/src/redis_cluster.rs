//! A Redis Cluster of the test's own, and the ways a test breaks it: a node killed,
//! paused, cut off from its replica, restarted on its own port and data.

use crate::nodes::wait_for_port;
use crate::services::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// A Redis Cluster of the test's own: `primaries` primaries with one replica each, on
/// ports of their own (client and explicit cluster-bus ports), joined with
/// `redis-cli --cluster create`, a node timeout of one second so a killed primary's
/// replica takes over within about two. No persistence: a replica holds the data.
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
    _dir: TempDir,
}

struct ClusterNode {
    port: u16,
    bus: u16,
    data: PathBuf,
    /// `None` once killed.
    child: Option<Child>,
    /// SIGSTOPped: it answers nothing, so nobody may wait for its answer.
    paused: bool,
}

impl ClusterNode {
    fn spawn(port: u16, bus: u16, data: &Path) -> Child {
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--cluster-port", &bus.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
            // A replica syncs at once (the default waits 5 s for more replicas)
            // and may always take over, however long it has been cut off.
            .args(["--repl-diskless-sync-delay", "0", "--cluster-replica-validity-factor", "0"])
            .args(["--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "no"])
            .args(["--dir", data.to_str().expect("UTF-8 path")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed")
    }

    fn answers(&self) -> bool {
        self.child.is_some() && !self.paused
    }

    fn signal(&self, signal: &str) -> bool {
        let Some(child) = &self.child else { return false };
        let status = Command::new("kill").args([signal, &child.id().to_string()]).status();
        status.is_ok_and(|s| s.success())
    }
}

/// A node's line of CLUSTER NODES.
#[derive(Debug, Clone)]
pub struct ClusterMember {
    pub id: String,
    pub port: u16,
    pub primary: bool,
    pub failed: bool,
    /// The primary's id, for a replica.
    pub replica_of: Option<String>,
    /// Slot ranges a primary serves.
    pub slots: Vec<std::ops::RangeInclusive<u16>>,
}

impl RedisCluster {
    pub fn start(primaries: usize) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let nodes: Vec<ClusterNode> = (0..primaries * 2)
            .map(|i| {
                let (port, bus) = (free_port(), free_port());
                let data = dir.path().join(format!("node-{i}"));
                std::fs::create_dir_all(&data).expect("writable temporary directory");
                let child = Some(ClusterNode::spawn(port, bus, &data));
                ClusterNode { port, bus, data, child, paused: false }
            })
            .collect();
        let cluster = Self { nodes, _dir: dir };
        for node in &cluster.nodes {
            assert!(wait_for_port(node.port, Duration::from_secs(20)), "cluster node {} never listened", node.port);
        }
        let addresses: Vec<String> = cluster.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli is installed");
        assert!(output.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&output.stdout));
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    /// Seed URLs: every node, as `REDIS_CLUSTER_URLS` would list them.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("redis://127.0.0.1:{}", n.port)).collect()
    }

    /// CLUSTER NODES as a live node sees it.
    pub fn members(&self) -> Vec<ClusterMember> {
        let text = self.ask(&["cluster", "nodes"]);
        text.lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let port = fields.get(1)?.split(['@', ':']).nth(1)?.parse().ok()?;
                let flags = fields.get(2)?;
                Some(ClusterMember {
                    id: fields[0].to_owned(),
                    port,
                    primary: flags.contains("master"),
                    failed: flags.contains("fail") && !flags.contains("fail?"),
                    replica_of: fields.get(3).filter(|p| **p != "-").map(|p| (*p).to_owned()),
                    // `start-end` or a single slot; importing/migrating entries (`[…]`) are not served.
                    slots: fields
                        .iter()
                        .skip(8)
                        .filter(|f| !f.starts_with('['))
                        .filter_map(|f| {
                            let (start, end) = f.split_once('-').unwrap_or((f, f));
                            Some(start.parse().ok()?..=end.parse().ok()?)
                        })
                        .collect(),
                })
            })
            .collect()
    }

    /// The port of the primary that serves `key` now.
    pub fn primary_of(&self, key: &str) -> u16 {
        let slot: u16 = self.ask(&["cluster", "keyslot", key]).trim().parse().expect("a slot number");
        let members = self.members();
        let owner = members.iter().find(|m| m.primary && !m.failed && m.slots.iter().any(|r| r.contains(&slot)));
        owner.unwrap_or_else(|| panic!("no primary serves slot {slot}: {members:?}")).port
    }

    /// The port of the replica of the primary on `primary`.
    pub fn replica_of(&self, primary: u16) -> u16 {
        let members = self.members();
        let id = &members.iter().find(|m| m.port == primary).expect("the primary is a member").id;
        let replica = members.iter().find(|m| m.replica_of.as_ref() == Some(id));
        replica.unwrap_or_else(|| panic!("the primary on {primary} has no replica: {members:?}")).port
    }

    /// Whether the primary on `port` serves any slot.
    pub fn serves_slots(&self, port: u16) -> bool {
        self.members().iter().any(|m| m.port == port && m.primary && !m.failed && !m.slots.is_empty())
    }

    /// How many keys the node on `port` holds.
    pub fn dbsize(&self, port: u16) -> u64 {
        cli(port, &["dbsize"]).and_then(|n| n.trim().parse().ok()).expect("the node answers DBSIZE")
    }

    /// The keys matching `pattern` in the node's own data (`KEYS`: a test's small data
    /// set): a replica answers for its primary's slots (`READONLY`) instead of redirecting.
    pub fn keys(&self, port: u16, pattern: &str) -> Vec<String> {
        use std::io::Write as _;
        let mut child = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("redis-cli is installed");
        let script = format!("READONLY\nKEYS {pattern}\n");
        child.stdin.take().expect("piped").write_all(script.as_bytes()).expect("redis-cli reads its input");
        let output = child.wait_with_output().expect("redis-cli ends");
        let text = String::from_utf8_lossy(&output.stdout);
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("OK"), "READONLY on {port}: {text}");
        lines.filter(|l| !l.is_empty()).map(str::to_owned).collect()
    }

    /// SIGKILLs the node on `port`, as a crashed host would.
    pub fn kill(&mut self, port: u16) {
        let node = self.node(port);
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        node.paused = false;
    }

    /// SIGSTOPs (`pause`) or SIGCONTs the node on `port`: a stopped replica takes no more
    /// of its primary's stream, and the bytes already in its socket wait for it.
    pub fn pause(&mut self, port: u16, pause: bool) {
        let node = self.node(port);
        assert!(node.signal(if pause { "-STOP" } else { "-CONT" }), "signal the node on {port}");
        node.paused = pause;
    }

    /// Closes every replica link of the primary on `port` (`CLIENT KILL TYPE replica`):
    /// what it had not sent yet is never sent, and a replica that cannot reconnect (paused)
    /// gets nothing written afterwards. Returns how many links it closed.
    pub fn cut_replicas(&self, port: u16) -> u32 {
        let answer = cli(port, &["client", "kill", "type", "replica"]).expect("the node answers CLIENT KILL");
        answer.trim().parse().unwrap_or_else(|_| panic!("CLIENT KILL TYPE replica on {port}: {answer}"))
    }

    /// Starts the node on `port` again after [`Self::kill`], on its own ports and data
    /// directory: it reads its `nodes.conf` (no data: no persistence), rejoins, and finding
    /// its slots served by a newer epoch becomes the replica of the node that took them.
    pub fn restart(&mut self, port: u16) {
        let node = self.node(port);
        assert!(node.child.is_none(), "the node on {port} still runs");
        node.child = Some(ClusterNode::spawn(node.port, node.bus, &node.data));
        assert!(wait_for_port(port, Duration::from_secs(20)), "restarted node {port} never listened");
    }

    /// Waits until every slot is served (`cluster_state:ok` on every live node) and every
    /// live replica has synced with its primary (a replica that never synced cannot take over).
    pub fn wait_healthy(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let ok = self.nodes.iter().filter(|n| n.answers()).all(|n| {
                let info = cli(n.port, &["info", "replication"]).unwrap_or_default();
                let synced = info.contains("role:master") || info.contains("master_link_status:up");
                synced && cli(n.port, &["cluster", "info"]).is_some_and(|info| info.contains("cluster_state:ok"))
            });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster is not healthy after {timeout:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn node(&mut self, port: u16) -> &mut ClusterNode {
        self.nodes.iter_mut().find(|n| n.port == port).unwrap_or_else(|| panic!("no cluster node on {port}"))
    }

    /// Asks the first node that can answer.
    fn ask(&self, args: &[&str]) -> String {
        self.nodes.iter().filter(|n| n.answers()).find_map(|n| cli(n.port, args)).expect("a live cluster node answers")
    }
}

fn cli(port: u16, args: &[&str]) -> Option<String> {
    let output = Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            // A stopped node is resumed first so its end is not left to chance.
            if node.paused {
                let _ = node.signal("-CONT");
            }
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
