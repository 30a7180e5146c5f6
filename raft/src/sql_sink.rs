//! The cluster's frame sink: a SQLite commit on the leader becomes a Raft entry, and the transaction
//! succeeds once that entry is applied.

use std::sync::Arc;

use bop_sql::{FrameSink, SinkError};
use bop_storage::page_store::{encode_commit, Db, Manager};
use openraft::async_runtime::WatchReceiver;
use openraft::Raft;

/// How often a proposal is retried while this node's leadership is being established, and how long apart.
const PROPOSE_RETRIES_MAX: u32 = 40;
const PROPOSE_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

use crate::blocking::Blocking;
use crate::state_machine::{BopConfig, BopStateMachine, Command, Response};

/// Proposes each committed transaction through Raft and returns once this node applied it.
///
/// Runs on the SQL connection's thread and blocks on `runtime`: call SQL from blocking threads
/// (`spawn_blocking`), never from an async task. Outcomes: applied (`Ok`, the entry's index); refused by the
/// state machine or too large for the log (`SinkError::Rejected`, never visible); not the leader
/// (`SinkError::Unavailable`, never visible); Raft failed after proposing (`SinkError::OutcomeUnknown`: the
/// entry may still commit, as with any replicated database, and a later write on the stale snapshot is
/// refused as busy rather than lost).
pub struct RaftSink {
    raft: Raft<BopConfig, BopStateMachine>,
    runtime: tokio::runtime::Handle,
    blocking: Blocking,
    /// Largest serialized Raft entry the log accepts ([`crate::LogStore::entry_bytes_max`]).
    entry_bytes_max: usize,
}

/// Bytes a serialized commit entry needs beyond its commit record: the entry's log id, payload tags, the
/// `read_index` and the record's length prefix, each at its largest.
pub fn commit_entry_overhead_bytes() -> usize {
    static OVERHEAD: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *OVERHEAD.get_or_init(measure_commit_entry_overhead)
}

fn measure_commit_entry_overhead() -> usize {
    use openraft::entry::RaftEntry;
    let log_id = openraft::testing::log_id::<BopConfig>(u64::MAX, u64::MAX, u64::MAX);
    let entry = openraft::type_config::alias::EntryOf::<BopConfig>::new_normal(
        log_id,
        Command::Commit { read_index: u64::MAX, record: Vec::new() },
    );
    let empty = bincode::serde::encode_to_vec(&entry, bincode::config::standard()).map_or(64, |v| v.len());
    // The record's length prefix grows from 1 byte (empty) to at most 9 (a varint u64).
    empty + 8
}

/// The most pages one transaction may change so that its commit entry fits the log: the commit record is
/// a header and one frame (page number, checksum, image) per page.
pub fn commit_pages_max(entry_bytes_max: usize) -> usize {
    use bop_storage::page_store::{COMMIT_HEADER_LEN, FRAME_LEN};
    entry_bytes_max.saturating_sub(commit_entry_overhead_bytes() + COMMIT_HEADER_LEN) / FRAME_LEN
}

impl RaftSink {
    /// A sink proposing through `raft`, waiting on `runtime` the way `blocking` says (SQL must run through
    /// the same [`Blocking`]).
    pub fn new(
        raft: Raft<BopConfig, BopStateMachine>,
        runtime: tokio::runtime::Handle,
        blocking: Blocking,
        entry_bytes_max: usize,
    ) -> Arc<Self> {
        Arc::new(RaftSink { raft, runtime, blocking, entry_bytes_max })
    }

    fn propose(&self, command: Command) -> Result<(u64, Response), SinkError> {
        let raft = self.raft.clone();
        let outcome = self.blocking.block_on(&self.runtime, async move {
            // A leader elected a moment ago refuses writes until its leadership is established (its first
            // entry committed): wait for that, a bounded number of times, rather than bounce the client.
            let mut attempts = 0u32;
            loop {
                match raft.client_write(command.clone()).await {
                    Err(e)
                        if attempts < PROPOSE_RETRIES_MAX
                            && e.forward_to_leader().is_some_and(|f| {
                                f.leader_id.is_none()
                                    || f.leader_id == Some(raft.metrics().borrow_watched().id)
                            }) =>
                    {
                        attempts += 1;
                        tokio::time::sleep(PROPOSE_RETRY_PAUSE).await;
                    }
                    other => return other,
                }
            }
        });
        let outcome =
            outcome.map_err(|e| SinkError::OutcomeUnknown { reason: format!("outcome unknown: {e}") })?;
        match outcome {
            Ok(response) => Ok((response.log_id.index, response.data)),
            Err(e) => Err(match e.forward_to_leader() {
                Some(forward) => SinkError::Unavailable {
                    reason: format!("not the leader (leader: {:?})", forward.leader_id),
                },
                None => SinkError::OutcomeUnknown { reason: format!("outcome unknown: {e}") },
            }),
        }
    }
}

impl FrameSink for RaftSink {
    fn commit(
        &self,
        db: &Db,
        frames: &[(u32, &[u8])],
        db_page_count: u32,
        read_index: u64,
    ) -> Result<u64, SinkError> {
        let record = encode_commit(db.id(), db_page_count, frames);
        // Checked before proposing: an entry the log cannot hold must never reach Raft, where an append
        // error stops the node.
        let entry_bytes = commit_entry_overhead_bytes() + record.len();
        if entry_bytes > self.entry_bytes_max {
            return Err(SinkError::Rejected {
                reason: format!(
                    "transaction too large: {entry_bytes} bytes, limit {} bytes ({} pages changed, at most {})",
                    self.entry_bytes_max,
                    frames.len(),
                    commit_pages_max(self.entry_bytes_max)
                ),
            });
        }
        match self.propose(Command::Commit { read_index, record })? {
            (index, Response::Committed { db: Some(_), .. }) => Ok(index),
            (_, Response::Committed { db: None, .. }) => {
                Err(SinkError::Rejected { reason: format!("database {} was dropped", db.name()) })
            }
            (_, Response::Refused { reason }) => Err(SinkError::Rejected { reason }),
            (_, other) => Err(SinkError::Rejected { reason: format!("unexpected answer {other:?}") }),
        }
    }

    fn create_database(&self, manager: &Manager, name: &str) -> Result<Db, SinkError> {
        match self.propose(Command::CreateDatabase { name: name.to_owned() })? {
            (_, Response::Created { .. }) => Ok(manager.open_database(name)?),
            (_, Response::Refused { reason }) => Err(SinkError::Rejected { reason }),
            (_, other) => Err(SinkError::Rejected { reason: format!("unexpected answer {other:?}") }),
        }
    }
}
