//! The worker settings tests use, kept as one list of (VARIABLE, value) pairs so the same
//! settings reach a worker process (its environment) and an in-process worker (its flags).

use crate::names::TestNames;
use crate::services::{AMQP_URL, CLIENT_KEY, REDIS_URL};
use bunq_session_worker::config::{Settings, WorkerArgs};
use clap::Parser;
use std::path::Path;

/// Fast retries and relaxed rate limits: tests about other things must not wait out
/// production's timings. The lock TTL is tied to none of them (its holder renews it every third of it).
const FAST: [(&str, &str); 9] = [
    ("RATE_LIMIT_SESSION_SERVER", "1000/1s"),
    ("RATE_LIMIT_OTHER_POST", "1000/1s"),
    ("RETRY_INITIAL_INTERVAL", "20ms"),
    ("RETRY_MAX_INTERVAL", "200ms"),
    ("RETRY_BUDGET", "5s"),
    ("RETRY_QUEUE_DELAY", "200ms"),
    ("RETRY_QUEUE_MAX_DELAY", "1s"),
    ("LOCK_TTL", "15s"),
    ("BUNQ_REQUEST_TIMEOUT", "2s"),
];

/// Worker settings by variable name; setting a variable again replaces it.
#[derive(Debug, Clone, Default)]
pub struct WorkerEnv {
    vars: Vec<(String, String)>,
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: WorkerArgs,
}

impl WorkerEnv {
    /// A worker on this machine's services with the run's names and production's timings:
    /// plain http to a fake-bunq on loopback, an ephemeral ops port, and rate limits per
    /// credential because fake-bunq counts them per device.
    pub fn local(bunq_base_url: &str, client_key: impl AsRef<Path>, names: &TestNames) -> Self {
        let client_key = client_key.as_ref().to_str().expect("a UTF-8 key path");
        let env = Self::default()
            .set("AMQP_URL", AMQP_URL)
            .set("REDIS_URL", REDIS_URL)
            .set("BUNQ_BASE_URL", bunq_base_url)
            .set("BUNQ_ALLOW_INSECURE_HTTP", "true")
            .set("BUNQ_CLIENT_PRIVATE_KEY_FILE", client_key)
            .set("REDIS_KEY_PREFIX", &names.key_prefix)
            .set("OPS_ADDR", "127.0.0.1:0")
            .set("RATE_LIMIT_SCOPE", "credential")
            .set("POD_NAME", &names.id);
        names.topology.as_env().into_iter().fold(env, |env, (variable, value)| env.set(variable, value))
    }

    /// [`WorkerEnv::local`] with the fixture key, fast retries and relaxed rate limits.
    pub fn fast(bunq_base_url: &str, names: &TestNames) -> Self {
        FAST.into_iter()
            .fold(Self::local(bunq_base_url, CLIENT_KEY, names), |env, (variable, value)| env.set(variable, value))
    }

    pub fn set(mut self, variable: &str, value: impl Into<String>) -> Self {
        let value = value.into();
        match self.vars.iter_mut().find(|(v, _)| v == variable) {
            Some(entry) => entry.1 = value,
            None => self.vars.push((variable.to_owned(), value)),
        }
        self
    }

    /// Leaves `variable` unset.
    pub fn unset(mut self, variable: &str) -> Self {
        self.vars.retain(|(v, _)| v != variable);
        self
    }

    /// Redis Cluster from these seed nodes instead of the machine's Redis.
    pub fn on_redis_cluster(self, seeds: &[String]) -> Self {
        self.unset("REDIS_URL").set("REDIS_CLUSTER_URLS", seeds.join(","))
    }

    /// Sets the variable behind a flag given as `--name=value`, e.g. `--max-attempts=2`.
    pub fn set_flag(self, flag: &str) -> Self {
        let (name, value) = flag.strip_prefix("--").and_then(|f| f.split_once('=')).expect("a flag as --name=value");
        self.set(&name.replace('-', "_").to_uppercase(), value)
    }

    /// Both rate limits at `calls_per_second`.
    pub fn allowing(self, calls_per_second: u32) -> Self {
        let limit = format!("{calls_per_second}/1s");
        self.set("RATE_LIMIT_SESSION_SERVER", &limit).set("RATE_LIMIT_OTHER_POST", limit)
    }

    /// The environment of a worker process: `Command::envs(env.vars())`.
    pub fn vars(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(variable, value)| (variable.as_str(), value.as_str()))
    }

    /// The same settings as flags (`REDIS_KEY_PREFIX` is `--redis-key-prefix`).
    pub fn flags(&self) -> Vec<String> {
        self.vars()
            .map(|(variable, value)| format!("--{}={value}", variable.to_lowercase().replace('_', "-")))
            .collect()
    }

    /// Parsed as the binary parses its flags.
    pub fn args(&self) -> WorkerArgs {
        let argv = std::iter::once("worker".to_owned()).chain(self.flags());
        Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("test flags do not parse: {e}")).args
    }

    /// `BIN run` with exactly these variables, stderr to `stderr`; killed when dropped.
    pub fn spawn(&self, bin: &str, stderr: std::process::Stdio) -> tokio::process::Child {
        tokio::process::Command::new(bin)
            .arg("run")
            .env_clear()
            .envs(self.vars())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("the worker binary runs")
    }

    /// Validated as the binary validates them at start-up.
    pub fn settings(&self) -> Settings {
        Settings::from_args(self.args()).expect("test settings are valid")
    }
}
