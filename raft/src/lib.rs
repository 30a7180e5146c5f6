//! bop's Raft layer.
//!
//! - [`LogStore`]: openraft log storage on bop's WAL chunk store, usable by any openraft application.
//! - [`LocalRouter`]: an in-process Raft network for tests, examples and benchmarks.
#![deny(missing_docs)]

mod local_network;
mod log_store;

pub use local_network::{LocalConnection, LocalNetwork, LocalRouter};
pub use log_store::{LogStore, LogStoreError, READ_BATCH_BYTES_MAX};
