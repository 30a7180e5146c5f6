//! The node manifest: the durable record of which facts are true on this node, kept in LMDB.
//!
//! One LMDB environment per node data directory, in `<data_dir>/manifest/`, opened with durable
//! commits. It holds the databases, the Raft state (vote, committed, purged, membership), the log
//! segments, the page generations, the snapshots, a runtime sentinel that tells a clean shutdown
//! from a crash, and a change feed with durable cursors. docs/design.md (Manifest) gives every table's
//! byte layout and the durability argument.
//!
//! ```no_run
//! use bop_storage::manifest::{Batch, DatabaseConfig, Manifest, ManifestConfig, Vote};
//! # fn main() -> Result<(), bop_storage::manifest::ManifestError> {
//! let manifest = Manifest::open("/var/lib/bop", ManifestConfig::default())?;
//! let mut batch = Batch::new();
//! batch
//!     .create_database("orders", DatabaseConfig { page_size_bytes: 4096, options: vec![] })
//!     .set_vote(Vote { term: 1, node_id: 1, committed: false });
//! let outcome = manifest.commit(batch)?; // returns after the LMDB commit (fsync)
//! let orders = manifest.read(|r| r.database_by_name("orders"))?;
//! assert_eq!(orders.map(|db| db.id), outcome.created_databases.first().copied());
//! manifest.close()?;
//! # Ok(()) }
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

mod apply;
mod batch;
mod change_feed;
mod codec;
mod config;
mod error;
mod group_commit;
mod keys;
mod metrics;
mod names;
mod open;
mod read;
mod records;
mod store;
mod tables;

use std::path::Path;

pub use batch::{Batch, CommitOutcome};
pub use change_feed::{FeedPage, FeedStart};
pub use config::{ManifestConfig, MAP_SIZE_ALIGN_BYTES};
pub use error::{ManifestError, NameKind, Result, Table};
pub use metrics::MetricsSnapshot;
pub use names::{validate_name, FILE_NAME_BYTES_MAX, NAME_BYTES_MAX};
pub use open::{FORMAT_VERSION, MANIFEST_DIR_NAME};
pub use read::ManifestReader;
pub use records::{
    Change, CursorInfo, DatabaseConfig, DatabaseId, DatabaseInfo, FeedEntry, Generation, GenerationRef,
    LogId, Membership, PreviousShutdown, RaftBlob, RaftState, Segment, SegmentState, Snapshot, Vote,
};

use change_feed::CursorOp;
use group_commit::{Done, Pipeline, WhenFull, Work};
use records::{RunState, Sentinel};

/// The manifest of one node. `Send + Sync`: share it behind an `Arc`; concurrent `commit`
/// calls are batched into shared LMDB transactions.
pub struct Manifest {
    store: store::Store,
    pipeline: Pipeline,
    config: ManifestConfig,
    previous_shutdown: PreviousShutdown,
}

impl std::fmt::Debug for Manifest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manifest")
            .field("path", &self.store.path)
            .field("previous_shutdown", &self.previous_shutdown)
            .finish_non_exhaustive()
    }
}

impl Manifest {
    /// Opens or creates the manifest in `<data_dir>/manifest/`.
    ///
    /// Fails without modifying anything if the directory holds a file that is not an LMDB
    /// environment, an LMDB environment that is not a manifest, or a manifest of a newer format.
    pub fn open(data_dir: impl AsRef<Path>, config: ManifestConfig) -> Result<Manifest> {
        let config = config.validated()?;
        let opened = open::open_store(data_dir.as_ref(), &config)?;
        tracing::info!(
            path = %opened.store.path.display(),
            previous_shutdown = ?opened.previous_shutdown,
            "manifest opened"
        );
        Ok(Manifest {
            store: opened.store,
            pipeline: Pipeline::new(&config),
            config,
            previous_shutdown: opened.previous_shutdown,
        })
    }

    /// How the previous process left the manifest.
    pub fn previous_shutdown(&self) -> PreviousShutdown {
        self.previous_shutdown
    }

    /// The environment directory.
    pub fn path(&self) -> &Path {
        &self.store.path
    }

    /// The configuration in effect (map sizes aligned).
    pub fn config(&self) -> &ManifestConfig {
        &self.config
    }

    /// Commits a batch atomically; returns after the LMDB commit that holds it succeeded.
    /// Waits while the commit queue is full.
    pub fn commit(&self, batch: Batch) -> Result<CommitOutcome> {
        self.commit_one(batch, WhenFull::Wait)
    }

    /// Like [`Manifest::commit`], but fails with `Backpressure` instead of waiting when the
    /// commit queue is full.
    pub fn try_commit(&self, batch: Batch) -> Result<CommitOutcome> {
        self.commit_one(batch, WhenFull::Fail)
    }

    fn commit_one(&self, batch: Batch, when_full: WhenFull) -> Result<CommitOutcome> {
        batch.validate_static(&self.config)?;
        let mut results =
            self.pipeline.submit(&self.store, &self.config, vec![Work::Batch(batch)], when_full)?;
        match results.pop() {
            Some(result) => result.and_then(expect_batch),
            None => unreachable!("one submission yields one result"),
        }
    }

    /// Submits several batches together: they enter the commit queue contiguously and, up to
    /// `group_batches_max`, share one LMDB transaction. Each batch commits or fails on its own;
    /// the outer error is for the submission as a whole (poisoned, more batches than the queue
    /// holds).
    pub fn commit_all(&self, batches: Vec<Batch>) -> Result<Vec<Result<CommitOutcome>>> {
        let mut results: Vec<Option<Result<CommitOutcome>>> = Vec::with_capacity(batches.len());
        let mut works = Vec::new();
        for batch in batches {
            match batch.validate_static(&self.config) {
                Ok(()) => {
                    results.push(None);
                    works.push(Work::Batch(batch));
                }
                Err(error) => results.push(Some(Err(error))),
            }
        }
        let mut committed =
            self.pipeline.submit(&self.store, &self.config, works, WhenFull::Wait)?.into_iter();
        Ok(results
            .into_iter()
            .map(|slot| match slot {
                Some(rejected) => rejected,
                None => match committed.next() {
                    Some(result) => result.and_then(expect_batch),
                    None => unreachable!("one result per submitted batch"),
                },
            })
            .collect())
    }

    /// Runs `body` against a consistent read-only view.
    ///
    /// Do not call `commit` or cursor operations from inside `body`: map growth waits for every
    /// open transaction to end, and the commit would wait for the growth.
    pub fn read<T>(&self, body: impl FnOnce(&ManifestReader<'_>) -> Result<T>) -> Result<T> {
        let txn = self.store.begin_read()?;
        let reader = ManifestReader { tables: &self.store.tables, txn: &txn };
        body(&reader)
    }

    fn cursor_op(&self, op: CursorOp) -> Result<()> {
        let name = match &op {
            CursorOp::Register { name, .. } | CursorOp::Ack { name, .. } | CursorOp::Remove { name } => name,
        };
        names::validate_name(NameKind::Cursor, name)?;
        let mut results =
            self.pipeline.submit(&self.store, &self.config, vec![Work::Cursor(op)], WhenFull::Wait)?;
        match results.pop() {
            Some(Ok(Done::Cursor)) => Ok(()),
            Some(Ok(Done::Batch(_))) => unreachable!("a cursor operation yields a cursor result"),
            Some(Err(error)) => Err(error),
            None => unreachable!("one submission yields one result"),
        }
    }

    /// Registers a durable change-feed cursor.
    pub fn register_cursor(&self, name: &str, start: FeedStart) -> Result<()> {
        self.cursor_op(CursorOp::Register { name: name.to_owned(), start })
    }

    /// Acknowledges every entry up to and including `seq`; acknowledging an older sequence again
    /// is a no-op. Entries acknowledged by every live cursor are truncated in the same commit.
    pub fn ack_cursor(&self, name: &str, seq: u64) -> Result<()> {
        self.cursor_op(CursorOp::Ack { name: name.to_owned(), seq })
    }

    /// Removes a cursor; it no longer holds truncation back.
    pub fn remove_cursor(&self, name: &str) -> Result<()> {
        self.cursor_op(CursorOp::Remove { name: name.to_owned() })
    }

    /// Reads up to `page_entries_max` (capped by the config) entries after the cursor's
    /// acknowledged sequence. Reading does not advance the cursor: until `ack_cursor`, the same
    /// entries are returned again (at-least-once delivery).
    pub fn read_feed(&self, name: &str, page_entries_max: usize) -> Result<FeedPage> {
        let page_entries_max = page_entries_max.min(self.config.feed_page_entries_max);
        let txn = self.store.begin_read()?;
        change_feed::read_page(&self.store.tables, &txn, name, page_entries_max)
    }

    /// A copy of the metrics.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.store.metrics.snapshot()
    }

    /// True while a commit is held because the file system has no space for it (ENOSPC or EDQUOT
    /// from LMDB). Such a commit is not failed and does not poison the manifest: it is retried (10 ms
    /// doubling to 1 s) and its callers stay blocked until it is made, which clears the alarm.
    pub fn space_alarm(&self) -> bool {
        self.store.metrics.space_alarm.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops waiting for space, for shutdown: a commit held for space now fails with
    /// [`ManifestError::NoSpace`] (not made, not poisoning), and so does any later commit that meets
    /// a full file system. Commits that find space still succeed. `close` and `drop` take the handle,
    /// so no commit of it can be running then; this is for the owner of a shared handle whose
    /// threads may be held.
    pub fn stop_waiting_for_space(&self) {
        self.pipeline.stop_waiting_for_space();
    }

    /// Marks the shutdown clean and closes the environment. Without `close` (crash, kill, or a
    /// plain drop) the next open reports [`PreviousShutdown::Unclean`].
    pub fn close(self) -> Result<()> {
        if let Some(reason) = self.pipeline.poisoned() {
            return Err(ManifestError::Poisoned { reason });
        }
        let tables = self.store.tables;
        self.store.write(|txn| {
            let sentinel = tables.get::<Sentinel>(txn, Table::Runtime, &keys::RUNTIME_SENTINEL)?;
            let open_count = sentinel.map_or(1, |sentinel| sentinel.open_count);
            let clean = Sentinel { state: RunState::Clean, open_count };
            tables.put(txn, Table::Runtime, &keys::RUNTIME_SENTINEL, &clean)
        })?;
        tracing::info!(path = %self.store.path.display(), "manifest closed cleanly");
        Ok(())
    }
}

fn expect_batch(done: Done) -> Result<CommitOutcome> {
    match done {
        Done::Batch(outcome) => Ok(outcome),
        Done::Cursor => unreachable!("a batch yields a batch result"),
    }
}

#[cfg(test)]
mod tests;
