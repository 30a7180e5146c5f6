//! bop's Raft layer.
//!
//! - [`LogStore`]: openraft log storage on bop's WAL chunk store, usable by any openraft application.
#![deny(missing_docs)]

mod log_store;

pub use log_store::{LogStore, LogStoreError, READ_BATCH_BYTES_MAX};
