//! What one admission to the session-server budget costs Redis as its line grows
//! (`BENCH_ONLY=budget_cost` alone). A Redis of the bench's own, on a port of its own, so
//! its command statistics are the budget's alone; a line of waiters written by a Lua loop
//! (deadlines spread evenly over bunq's 4 h of credential life, every other waiter held,
//! the others parked and due back in a second), bunq's budget of 1 call per 30 s; then
//! admissions of a new waiter at the back of the line (the latest deadline: it reads
//! whoever is ahead) and at the front, timed by Redis itself: `INFO commandstats`,
//! `cmdstat_evalsha` microseconds per call. The script as it was before it read the line
//! by rank (`admit_before.lua`) runs on the same line as the baseline.

use bunq_session_worker::metrics::Metrics;
use bunq_session_worker::ratelimit::budget::{Budget, Waiter};
use bunq_session_worker::ratelimit::limit::{Limit, Scope};
use bunq_session_worker::ratelimit::RateLimiter;
use bunq_session_worker::store::Redis;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use test_support::{connect_redis, free_port};
use time::OffsetDateTime;

const OLD_ADMIT: &str = include_str!("admit_before.lua");
const LIFE: Duration = Duration::from_secs(4 * 3600);
const HOLD: Duration = Duration::from_secs(60);
/// What the worker passes the old script for 1/30 s: the window with its margin
/// (`Limit::spacing`), a held waiter's lease, the largest park, the forget-after and the lead.
const OLD_ARGS: [u64; 5] = [30_750, 35_750, 300_000, 600_000, 250];

/// Writes waiters `first..first + count` of a line of `n` into KEYS waiting, present, parked.
const FILL: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local first, count, n, life = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
for i = first, first + count - 1 do
  local m = 'open:' .. i
  redis.call('ZADD', KEYS[1], now + 60000 + math.floor(i * (life - 60000) / n), m)
  if i % 2 == 0 then redis.call('ZADD', KEYS[2], now + 2 * life, m) else redis.call('ZADD', KEYS[3], now + 1000, m) end
end
return 0
"#;

/// Microseconds of Redis time per call, at each line size.
#[derive(Debug, Default)]
pub struct Cost {
    pub sizes: Vec<usize>,
    pub back_us: Vec<f64>,
    pub front_us: Vec<f64>,
    pub old_back_us: Vec<f64>,
    pub old_front_us: Vec<f64>,
    pub plan_us: Vec<f64>,
}

impl Cost {
    /// The back waiter's cost at the largest line over that at the smallest (limit ≤ 2).
    pub fn ratio(&self) -> f64 {
        self.back_us[self.back_us.len() - 1] / self.back_us[0]
    }

    pub fn old_ratio(&self) -> f64 {
        self.old_back_us[self.old_back_us.len() - 1] / self.old_back_us[0]
    }

    pub fn print(&self) {
        for (i, n) in self.sizes.iter().enumerate() {
            println!(
                "budget cost, {n} waiters: admission at the back {:.1} µs (script before: {:.1} µs), at the front \
                 {:.1} µs (before: {:.1} µs); plan {:.1} µs",
                self.back_us[i], self.old_back_us[i], self.front_us[i], self.old_front_us[i], self.plan_us[i]
            );
        }
    }

    pub fn record(&self, report: &mut super::report::Report) {
        for (i, n) in self.sizes.iter().enumerate() {
            let k = if *n >= 1000 { format!("{}k", n / 1000) } else { n.to_string() };
            report.set(&format!("budget_admit_back_us_{k}"), self.back_us[i]);
            report.set(&format!("budget_admit_front_us_{k}"), self.front_us[i]);
            report.set(&format!("budget_admit_before_back_us_{k}"), self.old_back_us[i]);
            report.set(&format!("budget_admit_before_front_us_{k}"), self.old_front_us[i]);
            report.set(&format!("budget_plan_us_{k}"), self.plan_us[i]);
        }
        report.set("budget_admit_back_ratio", self.ratio());
        report.set("budget_admit_before_back_ratio", self.old_ratio());
    }
}

/// A `redis-server` of the bench's own, without persistence, stopped by PID when dropped.
struct OwnRedis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl OwnRedis {
    fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", dir.path().to_str().unwrap_or(".")])
            .stdout(Stdio::null())
            .spawn()?;
        let node = Self { child, port, _dir: dir };
        anyhow::ensure!(
            test_support::nodes::wait_for_port(port, Duration::from_secs(20)),
            "redis-server on {port} never listened"
        );
        Ok(node)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sizes`: the lines measured (the first is the ratio's base); `calls`: admissions per figure.
pub async fn run(sizes: &[usize], calls: usize) -> anyhow::Result<Cost> {
    let node = OwnRedis::start()?;
    let mut conn = connect_redis(&format!("redis://127.0.0.1:{}/0", node.port))?;
    let mut cost = Cost { sizes: sizes.to_vec(), ..Cost::default() };
    let (fill, old) = (redis::Script::new(FILL), redis::Script::new(OLD_ADMIT));
    let limit = Limit::parse("1/30s").map_err(anyhow::Error::msg)?;
    for &n in sizes {
        let prefix = format!("line{n}:");
        let limiter = RateLimiter::new(conn.clone(), &prefix, limit, limit, Scope::Global, Arc::new(Metrics::new()));
        let budget = limiter.with_max_park(Duration::from_secs(300)).budget().cloned().expect("global scope");
        let log = format!("{prefix}ratelimit:session-server:{{global}}");
        let keys = [format!("{log}:waiting"), format!("{log}:present"), format!("{log}:parked")];
        for first in (0..n).step_by(10_000) {
            let _: i64 = fill
                .key(&keys[0])
                .key(&keys[1])
                .key(&keys[2])
                .arg(first)
                .arg(10_000.min(n - first))
                .arg(n)
                .arg(LIFE.as_millis() as u64)
                .invoke_async(&mut conn)
                .await?;
        }
        let now = OffsetDateTime::now_utc();
        let (back, front) = (now + LIFE + Duration::from_secs(600), now + Duration::from_secs(30));
        let admit = |waiter: Waiter, deadline: OffsetDateTime, take: bool| {
            let budget = budget.clone();
            async move { budget.admit(waiter, deadline, take, HOLD).await.map(drop).map_err(anyhow::Error::from) }
        };
        cost.back_us.push(timed(&mut conn, calls, || admit(Waiter::Open(u64::MAX), back, true)).await?);
        cost.front_us.push(timed(&mut conn, calls, || admit(Waiter::Open(u64::MAX - 1), front, false)).await?);
        cost.plan_us.push(timed(&mut conn, calls, || plan(&budget)).await?);
        let before = |member: &'static str, deadline: OffsetDateTime, take: bool| {
            let mut invocation = old.prepare_invoke();
            invocation.key(&log).key(&keys[0]).key(&keys[1]).key(&keys[2]);
            let [spacing, lease, max_park, forget_after, lead] = OLD_ARGS;
            invocation.arg(spacing).arg(1).arg(member);
            invocation.arg((deadline.unix_timestamp_nanos() / 1_000_000) as u64).arg(u8::from(take));
            invocation.arg(HOLD.as_millis() as u64).arg(lease).arg(max_park).arg(forget_after).arg("call").arg(lead);
            let mut conn = conn.clone();
            async move { invocation.invoke_async::<Vec<i64>>(&mut conn).await.map(drop).map_err(anyhow::Error::from) }
        };
        let mut stats = conn.clone();
        cost.old_back_us.push(timed(&mut stats, calls, || before("open:back-before", back, true)).await?);
        cost.old_front_us.push(timed(&mut stats, calls, || before("open:front-before", front, false)).await?);
    }
    drop(node);
    Ok(cost)
}

async fn plan(budget: &Budget) -> anyhow::Result<()> {
    budget.plan().await.map(drop).map_err(anyhow::Error::from)
}

/// Redis's own microseconds per script call over `calls` calls of `f`, after two to
/// load the script.
async fn timed<F, Fut>(conn: &mut Redis, calls: usize, f: F) -> anyhow::Result<f64>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    f().await?;
    f().await?;
    let (calls0, usec0) = evalsha(conn).await?;
    for _ in 0..calls {
        f().await?;
    }
    let (calls1, usec1) = evalsha(conn).await?;
    anyhow::ensure!(calls1 - calls0 == calls as u64, "{} EVALSHA calls counted, {calls} made", calls1 - calls0);
    Ok((usec1 - usec0) as f64 / calls as f64)
}

/// `cmdstat_evalsha`'s calls and microseconds so far.
async fn evalsha(conn: &mut Redis) -> anyhow::Result<(u64, u64)> {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(conn).await?;
    let line = info.lines().find(|l| l.starts_with("cmdstat_evalsha:")).unwrap_or("cmdstat_evalsha:calls=0,usec=0");
    let field = |name: &str| {
        line.split([':', ',']).find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse::<u64>().ok()).unwrap_or(0)
    };
    Ok((field("calls"), field("usec")))
}
