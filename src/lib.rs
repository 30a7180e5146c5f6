//! bop storage engine.
