//! Subcommands besides `run`: `check`, `publish`, `dead-letters`.

pub mod check;
pub mod dead_letters;
pub mod publish;
