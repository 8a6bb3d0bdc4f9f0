//! Subcommands besides `run`: `check`, `publish` (and, for operators, dead-letter tools).

pub mod check;
pub mod publish;
