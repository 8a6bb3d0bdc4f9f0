//! The worker against infrastructure as its users run it, on nodes each test starts for
//! itself (own ports, data directories and certificates), stopped by PID when the test
//! ends: TLS to RabbitMQ and Redis, Redis Cluster, a broker alarm.

mod alarm;
mod cluster;
mod tls;
