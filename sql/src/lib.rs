//! bop's SQL layer: libSQL connections whose pages live only in bop's page store, reached through a
//! virtual WAL, with commits handed to a [`FrameSink`] (local page-store commit, or Raft in the cluster).
//!
//! Design and reasoning: docs/design.md (SQL layer).

#![deny(missing_docs)]
#![warn(clippy::unwrap_used)]

mod connection;
mod engine;
mod error;
mod limits;
mod page_one;
mod pipeline;
mod pool;
mod sink;
mod wal;

pub use connection::{
    Column, CommitIndex, Connection, ExecOutcome, GroupRequest, Params, Pipeline, RequestOutcome, Rows,
    ScriptOutcome, Statement, StatementResult, Value,
};
pub use engine::{OpenMode, SqlConfig, SqlEngine};
pub use error::SqlError;
pub use limits::{AnswerUnit, InterruptHandle, Limits, VALUE_OVERHEAD_BYTES};
pub use pool::Reader;
pub use sink::{FrameSink, LocalSink, SinkError};
