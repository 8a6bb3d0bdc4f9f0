//! bunq-session-worker: opens bunq API sessions for partner-provisioned users.
//!
//! One direction of data flow per delivery: queue → handler → bunq → Redis → publish → ack.
//!
//! - [`bunq`]: the bunq API client (handshake calls, signing, wire models, errors).
//! - [`fake_bunq`]: a faithful local stand-in for bunq's installation, device-server and
//!   session-server endpoints, for tests and the demo.

pub mod bunq;
pub mod fake_bunq;
