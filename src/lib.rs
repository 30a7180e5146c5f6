//! bop-storage: the storage engine of bop.
//!
//! - [`format`]: the unified chunk header and the log record layout (byte tables in docs/design.md).
//! - [`io`]: the file-access trait every byte goes through, with buffered, direct and simulated backends.
//! - [`wal`]: the WAL chunk store — segments of checksummed records with group commit and recovery — which
//!   is also the Raft log storage.
//! - [`manifest`]: the node's durable metadata on LMDB — databases, Raft state, segments, generations,
//!   snapshots — with group commit and a change feed.
//! - [`page_cache`]: a sharded, byte-bounded cache of page images with CLOCK eviction, metrics and observers.
//! - [`page_store`]: pages of many databases as generation chains plus a page index into the log;
//!   checkpoints; the [`page_store::Manager`] with per-database handles.
#![deny(missing_docs)]
#![warn(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod bugs;
pub mod format;
pub mod io;
pub mod manifest;
pub mod page_cache;
pub mod page_store;
pub mod panic;
pub mod progress;
pub mod wal;
