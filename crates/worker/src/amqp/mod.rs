//! RabbitMQ: topology, confirmed publishing, the consume loop and its supervisor.

pub mod broker;
pub(crate) mod consume;
pub mod dead_letter;
pub mod headers;
pub(crate) mod publish;
pub(crate) mod settle;
pub(crate) mod supervisor;
pub mod topology;
pub(crate) mod trace_context;
