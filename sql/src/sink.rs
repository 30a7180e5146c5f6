//! Where a committed SQLite transaction goes: the frame sink.
//!
//! The virtual WAL hands the whole transaction (every page it changed, newest image of each, and the database
//! size after it) to a [`FrameSink`] at commit, and reports success to SQLite only when the sink returns
//! `Ok`. The local sink commits straight into the page store; the cluster substitutes "propose through Raft
//! and wait until applied".

use bop_storage::page_store::{Db, Manager, PageStoreError};

/// Why a sink did not commit a transaction.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The page store refused or failed the commit.
    #[error("page store: {0}")]
    PageStore(#[from] PageStoreError),
    /// The sink refused this commit for its own reason (e.g. a state machine's refusal, a commit too large
    /// for the log, a test fault): it never becomes visible, and another commit may well succeed.
    #[error("{reason}")]
    Rejected {
        /// Why.
        reason: String,
    },
    /// The sink takes no commits at the moment (e.g. this node is not the leader): this commit never
    /// becomes visible, and any other made now would fail alike.
    #[error("{reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
    /// The sink could not learn what became of the commit (e.g. Raft failed after proposing it): it may
    /// still become visible. SQLite is told it failed; nothing may be retried on the assumption that it
    /// was lost.
    #[error("{reason}")]
    OutcomeUnknown {
        /// Why.
        reason: String,
    },
}

impl SinkError {
    /// Whether the commit is known never to become visible and the failure is this commit's own, so that
    /// committing its parts separately may succeed ([`crate::Connection::request_group`] then runs each
    /// request of a failed group on its own).
    pub fn is_commit_specific(&self) -> bool {
        matches!(self, SinkError::PageStore(_) | SinkError::Rejected { .. })
    }
}

/// Takes a committed transaction's page frames and makes them the database's next version.
///
/// Contract, relied on by the virtual WAL:
/// - `frames` are `(page_no, 4096-byte image)` with distinct page numbers in `1..=db_page_count`.
/// - `Ok(index)` means the commit is durable **and applied in the local page store**: a `Db::snapshot()` taken
///   after the call returns sees it, and `index` is its log index.
/// - `Err` means no part of the commit is, or will ever become, visible — except
///   [`SinkError::OutcomeUnknown`], which says the sink could not find out (a Raft proposal whose outcome
///   is unknown).
/// - Calls for one database never overlap: the virtual WAL holds the database's write lock around them.
pub trait FrameSink: Send + Sync {
    /// Commits `frames` to `db` with the database size `db_page_count` after the commit. `read_index` is
    /// the applied index the transaction read at: a sink that orders commits elsewhere (Raft) must refuse
    /// the commit if the database changed after it.
    fn commit(
        &self,
        db: &Db,
        frames: &[(u32, &[u8])],
        db_page_count: u32,
        read_index: u64,
    ) -> Result<u64, SinkError>;

    /// Whether [`FrameSink::propose_after`] works: the sink can take a commit before the one before it is
    /// applied.
    fn pipelines(&self) -> bool {
        false
    }

    /// Proposes `frames` (as in [`FrameSink::commit`]) as a commit built on the commit at log index `base`
    /// — the database's newest commit, or one proposed before and not applied yet — and returns its log
    /// index once it is proposed, before it is durable or applied. It is applied only if `base` is the
    /// database's newest commit then; the caller learns its fate from the sink's owner (for Raft: the
    /// writer waits for it) and must not tell anyone it committed before. `Err` as for `commit`: nothing
    /// was proposed, except [`SinkError::OutcomeUnknown`]. The default sink does not pipeline.
    fn propose_after(
        &self,
        db: &Db,
        frames: &[(u32, &[u8])],
        db_page_count: u32,
        base: u64,
    ) -> Result<u64, SinkError> {
        let _ = (db, frames, db_page_count, base);
        Err(SinkError::Unavailable { reason: "this sink does not pipeline commits".into() })
    }

    /// Creates the database `name` (locally by default; a cluster sink creates it through its log) and
    /// returns its handle once it exists in `manager`.
    fn create_database(&self, manager: &Manager, name: &str) -> Result<Db, SinkError> {
        Ok(manager.create_database(name)?)
    }
}

/// The single-node sink: one page-store commit (appended to the WAL, durable, applied) per transaction.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalSink;

impl FrameSink for LocalSink {
    /// The write lock and the staleness check at the start of the write transaction already order local
    /// commits, so `read_index` needs no check here.
    fn commit(
        &self,
        db: &Db,
        frames: &[(u32, &[u8])],
        db_page_count: u32,
        _read_index: u64,
    ) -> Result<u64, SinkError> {
        Ok(db.commit(frames, db_page_count)?.index)
    }
}
