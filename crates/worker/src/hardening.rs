//! Process hardening at start-up: no core dumps. A core file of this process would put
//! every credential, token and key it holds at that moment on disk, where whoever reads
//! the node's crash dumps reads them too.

/// Turns core dumps off for this process: `RLIMIT_CORE` 0 (soft and hard, so nothing
/// raises it again) and, on Linux, not dumpable (`PR_SET_DUMPABLE` 0, which also keeps
/// other processes of the same user from attaching to it). Fails soft: a sandbox may
/// refuse either, which is logged as a warning, never a reason not to start. Logs one
/// line; returns whether both held.
pub fn disable_core_dumps() -> bool {
    let limit = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
    #[cfg(target_os = "linux")]
    let undumpable = nix::sys::prctl::set_dumpable(false);
    #[cfg(not(target_os = "linux"))]
    let undumpable: nix::Result<()> = Ok(());
    match (limit, undumpable) {
        (Ok(()), Ok(())) => {
            tracing::info!(event = "core_dumps_disabled", "core dumps off: RLIMIT_CORE 0, not dumpable");
            true
        }
        (limit, undumpable) => {
            tracing::warn!(
                event = "core_dumps_not_disabled",
                rlimit_core = %outcome(limit),
                dumpable = %outcome(undumpable),
                "core dumps could not be turned off entirely: a crash may write memory, secrets included, to disk"
            );
            false
        }
    }
}

fn outcome(result: nix::Result<()>) -> &'static str {
    match result {
        Ok(()) => "off",
        Err(e) => e.desc(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn core_dumps_are_off_after_it() {
        use nix::sys::resource::{getrlimit, Resource};
        assert!(super::disable_core_dumps());
        assert_eq!(getrlimit(Resource::RLIMIT_CORE).unwrap(), (0, 0));
        #[cfg(target_os = "linux")]
        assert!(!nix::sys::prctl::get_dumpable().unwrap());
    }
}
