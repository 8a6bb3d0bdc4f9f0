//! The bunq API: request signing, the three handshake calls, their wire models and errors.

pub mod client;
pub mod error;
pub(crate) mod model;
pub mod signing;
