//! The bunq API: request signing, the three handshake calls, their wire models and errors.

pub mod signing;
