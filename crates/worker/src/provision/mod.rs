//! One provision-status delivery (or downstream's `session.invalid`): decoded once,
//! decided, handled to an [`outcome::Outcome`]. No AMQP types: the consumer settles.

pub mod decide;
pub mod decode;
pub(crate) mod document;
pub(crate) mod handler;
pub(crate) mod outcome;
mod reset;
