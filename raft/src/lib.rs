//! bop's Raft layer.
//!
//! - [`LogStore`]: openraft log storage on bop's WAL chunk store, usable by any openraft application.
//! - [`BopStateMachine`]: bop's own state machine, the replicated page store ([`BopConfig`], [`Command`]).
//! - [`LocalRouter`]: an in-process Raft network for tests, examples and benchmarks.
//! - [`tcp`]: Raft over TCP (framed, checksummed, snapshots streamed in chunks).
//! - [`RaftSink`]: the SQL layer's frame sink for a cluster (a transaction is a Raft entry).
//! - [`node`]: a bop node — storage, Raft over TCP, SQL through Raft, and an rqlite-compatible HTTP API.
#![deny(missing_docs)]

pub mod auth;
pub mod blocking;
#[doc(hidden)]
pub mod fuzzing;
pub mod http_client;
pub mod https;
mod local_network;
mod log_store;
pub mod net;
pub mod node;
pub mod runtime;
mod sql_sink;
mod state_machine;
pub mod tcp;

pub use local_network::{LocalConnection, LocalNetwork, LocalRouter};
pub use log_store::{LogStore, LogStoreError, READ_BATCH_BYTES_MAX};
pub use sql_sink::RaftSink;
pub use state_machine::{BopConfig, BopSnapshot, BopStateMachine, Command, Response};
