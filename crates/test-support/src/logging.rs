//! Test logging.

use bunq_session_worker::telemetry;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

/// Quiet unless `TEST_LOG` is set (then `RUST_LOG`, or debug for the worker), written
/// through the test harness so output stays with its test. Production's filter, so a
/// test log never holds what production's would not (lapin's frames and bodies). Safe
/// to call from every test: only the first call installs the subscriber.
pub fn init_test_logging() {
    if std::env::var_os("TEST_LOG").is_some() {
        let layer = tracing_subscriber::fmt::layer()
            .with_test_writer()
            .with_filter(telemetry::filter("info,bunq_session_worker=debug"));
        let _ = tracing_subscriber::registry().with(layer).try_init();
    }
}
