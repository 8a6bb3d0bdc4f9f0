//! Shared test support (filled in below).
