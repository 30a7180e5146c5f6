//! bop storage engine.
pub mod manifest;
