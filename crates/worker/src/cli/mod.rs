//! Subcommands besides `run`: `check`, `publish`, `dead-letters`, `session`.

pub mod check;
pub mod dead_letters;
pub mod publish;
pub mod session;
