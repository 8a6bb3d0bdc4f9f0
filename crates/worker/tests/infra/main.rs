//! The worker against infrastructure as its users run it, on nodes each test starts for
//! itself (own ports, data directories and certificates), stopped by PID when the test
//! ends: TLS to RabbitMQ and Redis.

mod alarm;
mod tls;
