//! Integration tests: the real worker against the machine's RabbitMQ and Redis and the
//! project's fake bunq. One test binary; each test has its own names.

mod bad_input;
mod budget;
mod closing;
mod downstream;
mod end_to_end;
mod forged_headers;
mod helpers;
mod leaks;
mod operations;
mod process;
mod redis_parts;
mod renewal;
mod replication;
mod reset;
mod sealing;
mod settlement;
mod shapes;
mod traces;
