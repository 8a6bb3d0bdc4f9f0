//! Where the CPU goes during a run: user + system time of each process taking part (the
//! worker, this bench process with the in-process stand-in, RabbitMQ, Redis), read from
//! `/proc/PID/stat` before and after, so a rate can be set beside what it cost and
//! against how much of the machine was busy.

use std::time::{Duration, Instant};

/// `/proc` reports times in USER_HZ ticks, 100 per second on Linux whatever the kernel's HZ.
const TICKS_PER_SECOND: f64 = 100.0;

/// A group of processes measured together, e.g. every `beam.smp` of the broker.
pub struct Part {
    pub name: &'static str,
    pids: Vec<u32>,
}

impl Part {
    pub fn new(name: &'static str, pids: Vec<u32>) -> Self {
        Self { name, pids }
    }

    /// Every process whose command name is `comm` (`beam.smp`, `redis-server`).
    pub fn by_name(name: &'static str, comm: &str) -> Self {
        let pids = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm))
            .collect();
        Self { name, pids }
    }

    fn seconds(&self) -> (f64, f64) {
        self.pids.iter().filter_map(|pid| cpu_seconds(*pid)).fold((0.0, 0.0), |(u, s), (pu, ps)| (u + pu, s + ps))
    }
}

/// CPU seconds a process has used so far (all its threads), in user space and in the
/// kernel, `None` once it is gone.
fn cpu_seconds(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields count from after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some((user as f64 / TICKS_PER_SECOND, system as f64 / TICKS_PER_SECOND))
}

pub struct Meter {
    parts: Vec<(Part, (f64, f64))>,
    started: Instant,
}

/// What each part spent over a run.
pub struct Usage {
    pub elapsed: Duration,
    /// Per part: (user, system) seconds.
    pub seconds: Vec<(&'static str, (f64, f64))>,
    pub cores: usize,
}

impl Meter {
    pub fn start(parts: Vec<Part>) -> Self {
        let parts = parts.into_iter().map(|part| {
            let at = part.seconds();
            (part, at)
        });
        Self { parts: parts.collect(), started: Instant::now() }
    }

    pub fn stop(self, cores: usize) -> Usage {
        let elapsed = self.started.elapsed();
        let seconds = self
            .parts
            .into_iter()
            .map(|(part, (user, system))| {
                let (u, s) = part.seconds();
                (part.name, (u - user, s - system))
            })
            .collect();
        Usage { elapsed, seconds, cores }
    }
}

impl Usage {
    pub fn total(&self) -> f64 {
        self.seconds.iter().map(|(_, (u, s))| u + s).sum()
    }

    /// The share of all CPU time spent in the kernel (system calls, network stack).
    pub fn system_share(&self) -> f64 {
        self.seconds.iter().map(|(_, (_, s))| s).sum::<f64>() / self.total()
    }

    /// The share of the machine the measured processes kept busy (1.0: every core).
    pub fn busy(&self) -> f64 {
        self.total() / (self.elapsed.as_secs_f64() * self.cores as f64)
    }

    /// CPU milliseconds per event, by part: (user + system, system).
    pub fn ms_per_event(&self, events: usize) -> Vec<(&'static str, f64, f64)> {
        let ms = |s: f64| s * 1000.0 / events as f64;
        self.seconds.iter().map(|(name, (u, s))| (*name, ms(u + s), ms(*s))).collect()
    }

    /// `name total ms (system ms)` per part, for a line of output.
    pub fn describe(&self, events: usize) -> String {
        let parts = self.ms_per_event(events);
        parts.iter().map(|(name, all, sys)| format!("{name} {all:.2} (kernel {sys:.2})")).collect::<Vec<_>>().join(", ")
    }
}
