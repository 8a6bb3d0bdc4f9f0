//! The partner's side (`CREDENTIAL_RESET=on`): its own bunq session (`context.rs`) and
//! the token resets it runs for provisions whose credential can no longer open their
//! session (`reset.rs`). Below the handler, beside `lifecycle`: it hands the handler a
//! fresh credential, which the handler opens like any other.

pub(crate) mod context;
pub(crate) mod reset;
