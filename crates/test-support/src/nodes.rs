//! Service nodes a test starts for itself beside the machine's own: a certificate
//! authority made for the test, a Redis with a TLS listener, a RabbitMQ node with a TLS
//! listener (a Redis Cluster is in [`crate::redis_cluster`]). Each node has its own ports
//! and data directory and is stopped by PID when dropped, so a failing test leaves
//! nothing running.

use crate::services::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// A CA with a server certificate (for `localhost` and `127.0.0.1`) and a client
/// certificate, as PEM files: `ca.pem`, `server.pem`, `server.key`, `client.pem`,
/// `client.key`. Made with `openssl`, RSA-2048, valid for two days.
pub struct Pki {
    dir: TempDir,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ca = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem"];
        run_openssl(dir.path(), &[&ca[..], &["-days", "2", "-subj", "/CN=bsw test CA"]].concat());
        let pki = Self { dir };
        pki.leaf("server", "/CN=localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
        pki.leaf("client", "/CN=bsw-client", "extendedKeyUsage=clientAuth\n");
        pki
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn leaf(&self, name: &str, subject: &str, extensions: &str) {
        let dir = self.dir.path();
        std::fs::write(dir.join(format!("{name}.ext")), extensions).expect("writable temporary directory");
        let (key, csr, pem, ext) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
        run_openssl(dir, &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", subject]);
        run_openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

fn run_openssl<S: AsRef<std::ffi::OsStr>>(dir: &Path, args: &[S]) {
    let output = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl is installed");
    assert!(output.status.success(), "openssl failed: {}", String::from_utf8_lossy(&output.stderr));
}

/// Waits until something accepts TCP connections on `port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// A `redis-server` of the test's own, TLS only, requiring client certificates
/// (`--tls-auth-clients yes`).
pub struct RedisNode {
    child: Child,
    pub port: u16,
    _dir: TempDir,
}

impl RedisNode {
    pub fn start_tls(pki: &Pki) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = free_port();
        let path = |name: &str| pki.path(name).to_str().expect("UTF-8 path").to_owned();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--tls-cert-file", &path("server.pem"), "--tls-key-file", &path("server.key")])
            .args(["--tls-ca-cert-file", &path("ca.pem"), "--tls-auth-clients", "yes"])
            .args(["--save", "", "--appendonly", "no", "--dir", dir.path().to_str().expect("UTF-8 path")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        Self { child, port, _dir: dir }
    }

    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/0", self.port)
    }

    pub fn wait(&self) {
        assert!(wait_for_port(self.port, Duration::from_secs(20)), "redis-server on {} never listened", self.port);
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A RabbitMQ node of the test's own: its own node name, ports, data directory, Erlang
/// cookie (`HOME`) and no plugins; started detached as Debian's wrappers cannot (they
/// switch user and cookie), stopped by the PID it writes.
pub struct RabbitNode {
    pub name: String,
    /// The AMQP port: TLS when started with [`RabbitNode::start_tls`].
    pub port: u16,
    dir: TempDir,
}

impl RabbitNode {
    /// A node whose only listener is TLS, requiring client certificates.
    pub fn start_tls(pki: &Pki) -> Self {
        let port = free_port();
        let path = |name: &str| pki.path(name).display().to_string();
        let config = format!(
            "listeners.tcp = none\nlisteners.ssl.default = {port}\nssl_options.cacertfile = {}\nssl_options.certfile = {}\nssl_options.keyfile = {}\nssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = true\n",
            path("ca.pem"),
            path("server.pem"),
            path("server.key"),
        );
        Self::start(port, &config, None)
    }

    /// A node with a plain AMQP listener.
    pub fn start_plain() -> Self {
        let port = free_port();
        Self::start(port, &format!("listeners.tcp.default = {port}\n"), None)
    }

    /// `size` nodes with plain listeners joined into one cluster (one Erlang cookie,
    /// `rabbitmqctl join_cluster` to the first), booted at once.
    pub fn start_cluster(size: usize) -> Vec<Self> {
        let cookie = uuid::Uuid::new_v4().simple().to_string();
        let nodes: Vec<Self> = (0..size)
            .map(|_| {
                let port = free_port();
                Self::start(port, &format!("listeners.tcp.default = {port}\n"), Some(&cookie))
            })
            .collect();
        for node in &nodes {
            node.wait();
        }
        for node in &nodes[1..] {
            for args in [&["stop_app"][..], &["join_cluster", &nodes[0].name], &["start_app"]] {
                node.ctl(args).unwrap_or_else(|e| panic!("{}: {e}", node.name));
            }
        }
        for node in &nodes {
            node.ctl(&["await_startup", "--timeout", "60"]).unwrap();
        }
        nodes
    }

    /// Kills the node's VM (SIGKILL), as a crashed host would; the data directory stays.
    pub fn kill(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).stderr(Stdio::null()).status();
        }
    }

    /// Starts a clean shutdown of the node (`rabbitmqctl stop`), as a rolling restart
    /// does, and returns at once: the returned process ends when the node is down.
    pub fn stop(&self) -> Child {
        Command::new("/usr/lib/rabbitmq/bin/rabbitmqctl")
            .args(["-n", &self.name, "stop"])
            .envs(Self::env(self.dir.path(), &self.name))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rabbitmqctl runs")
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn start(port: u16, config: &str, cookie: Option<&str>) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let name = format!("bsw-{}@localhost", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let root = dir.path();
        for sub in ["home", "mnesia", "log"] {
            std::fs::create_dir_all(root.join(sub)).expect("writable temporary directory");
        }
        std::fs::write(root.join("rabbitmq.conf"), config).expect("writable temporary directory");
        std::fs::write(root.join("enabled_plugins"), "[].\n").expect("writable temporary directory");
        std::fs::write(root.join("rabbitmq-env.conf"), "").expect("writable temporary directory");
        if let Some(cookie) = cookie {
            use std::os::unix::fs::PermissionsExt as _;
            let path = root.join("home").join(".erlang.cookie");
            std::fs::write(&path, cookie).expect("writable temporary directory");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).expect("chmod the cookie");
        }
        let status = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server")
            .arg("-detached")
            .envs(Self::env(root, &name))
            .env("RABBITMQ_NODE_PORT", free_port().to_string())
            .env("RABBITMQ_DIST_PORT", free_port().to_string())
            .env("RABBITMQ_CONFIG_FILE", root.join("rabbitmq.conf"))
            .env("RABBITMQ_CONF_ENV_FILE", root.join("rabbitmq-env.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", root.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", root.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", root.join("log"))
            .env("RABBITMQ_PID_FILE", root.join("pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("RabbitMQ is installed");
        assert!(status.success(), "rabbitmq-server -detached failed");
        Self { name, port, dir }
    }

    fn env(root: &Path, name: &str) -> Vec<(&'static str, String)> {
        vec![("HOME", root.join("home").display().to_string()), ("RABBITMQ_NODENAME", name.to_owned())]
    }

    /// Waits until the node accepts connections on its AMQP port (about 10 s here).
    pub fn wait(&self) {
        assert!(
            wait_for_port(self.port, Duration::from_secs(90)),
            "RabbitMQ node {} never listened on {}: see {}",
            self.name,
            self.port,
            self.dir.path().join("log").display()
        );
    }

    /// `rabbitmqctl -n NODE ARGS…` with the node's cookie.
    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new("/usr/lib/rabbitmq/bin/rabbitmqctl")
            .args(["-n", &self.name])
            .args(args)
            .envs(Self::env(self.dir.path(), &self.name))
            .output()?;
        anyhow::ensure!(output.status.success(), "rabbitmqctl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.path().join("pid")).ok()?.trim().parse().ok()
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        // The PID file appears once the VM runs; a node still booting gets a moment.
        let deadline = Instant::now() + Duration::from_secs(20);
        let pid = loop {
            match self.pid() {
                Some(pid) => break Some(pid),
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
                None => break None,
            }
        };
        if let Some(pid) = pid {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).stderr(Stdio::null()).status();
            let gone = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < gone {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}
