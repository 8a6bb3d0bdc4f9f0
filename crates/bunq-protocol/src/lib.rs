//! bunq's API protocol, as the worker, the stand-in and any downstream service need it.
//!
//! - [`signing`]: RSA-2048 request signatures and response verification over the exact
//!   body bytes, and the key types (docs/bunq-api.md §4).
//! - [`model`]: the wire shapes of the handshake answers and of bunq's error body.
//! - [`error`]: what can go wrong in a call, and whether trying again can help.
//! - [`client`]: a typed client for installation, device-server and session-server; one
//!   attempt per call, retries are the caller's.
//! - [`partner`]: the partner's own calls on a provision: reading it and asking for a new
//!   token (docs/bunq-api.md §8.1, §12).
//! - [`redact`]: the one gate for text that leaves a process: no input value, capped.
//! - [`timestamp`]: bunq's `YYYY-MM-DD hh:mm:ss.ffffff` UTC time format.

// Every public item documented: this crate is for other services too.
#![warn(missing_docs)]

pub mod client;
pub mod error;
pub mod model;
pub mod partner;
pub mod redact;
pub mod signing;
pub mod timestamp;

pub use client::{BunqClient, ClientSettings, Installation, OpenedSession};
pub use error::{BunqError, Endpoint, Retry};
pub use partner::{PartnerProvision, ProvisionCredential};
pub use signing::{ClientKey, PublicKey, SigningError};
