//! The cluster's frame sink: a SQLite commit on the leader becomes a Raft entry, and the transaction
//! succeeds once that entry is applied.

use std::collections::HashMap;
use std::sync::Arc;

use bop_sql::{FrameSink, SinkError};
use bop_storage::page_store::{commit_db_id, encode_commit, Db, Manager};
use openraft::async_runtime::WatchReceiver;
use openraft::entry::RaftEntry;
use openraft::error::ClientWriteError;
use openraft::impls::ProgressResponder;
use openraft::raft::ClientWriteResult;
use openraft::type_config::alias::{CommittedLeaderIdOf, EntryOf, OneshotReceiverOf};
use openraft::{EntryPayload, Raft};
use parking_lot::Mutex;
use tokio::sync::oneshot;

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
    proposals: Arc<Proposals>,
    /// What became of each pipelined commit proposed and not asked about yet, by log index.
    outcomes: Mutex<HashMap<u64, Outcome>>,
}

/// What became of a pipelined commit: known, or to be waited for.
enum Outcome {
    Pending(OneshotReceiverOf<BopConfig, ClientWriteResult<BopConfig>>),
    Done(ClientWriteResult<BopConfig>),
}

type LeaderId = CommittedLeaderIdOf<BopConfig>;
/// A pipelined proposal: its database's id and the commit it was built on.
type ProposalKey = (u64, u64);

/// Pipelined commits proposed and not seen in the log yet: each waits to learn its log index, which the
/// log store tells as it appends the entry ([`Proposals::observe`]). A commit is known by its database and
/// the commit it was built on (one proposal at a time per database: its writer's) and by the leader that
/// proposed it, so that an entry another leader sent here is never taken for this node's own.
#[derive(Default)]
pub struct Proposals {
    waiting: Mutex<HashMap<ProposalKey, (LeaderId, oneshot::Sender<u64>)>>,
}

impl Proposals {
    /// Called by the log store with each entry it appends (see [`crate::LogStore::observe_appends`]).
    pub fn observe(&self, entry: &EntryOf<BopConfig>) {
        let EntryPayload::Normal(Command::CommitAfter { base, record }) = &entry.payload else { return };
        let Some(db) = commit_db_id(record) else { return };
        let mut waiting = self.waiting.lock();
        let log_id = entry.log_id();
        if waiting.get(&(db, *base)).is_some_and(|(leader, _)| leader == log_id.committed_leader_id()) {
            if let Some((_, tx)) = waiting.remove(&(db, *base)) {
                let _ = tx.send(log_id.index());
            }
        }
    }
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
        Arc::new(RaftSink {
            raft,
            runtime,
            blocking,
            entry_bytes_max,
            proposals: Arc::default(),
            outcomes: Mutex::default(),
        })
    }

    /// What the log store must tell of each entry it appends (for pipelined commits to learn their index).
    pub fn proposals(&self) -> Arc<Proposals> {
        Arc::clone(&self.proposals)
    }

    /// Waits for what became of the pipelined commit at `index` (proposed through
    /// [`FrameSink::propose_after`]): `Ok` once it is applied on this node; `Rejected` if the state machine
    /// refused it (on every node), `OutcomeUnknown` if this node cannot tell (it lost leadership, Raft
    /// stopped, or nobody asked for it yet). Each commit's outcome can be asked for once.
    pub async fn outcome(&self, index: u64) -> Result<(), SinkError> {
        let outcome = match self.outcomes.lock().remove(&index) {
            Some(Outcome::Done(result)) => Ok(result),
            Some(Outcome::Pending(done)) => Err(done),
            None => {
                return Err(SinkError::OutcomeUnknown { reason: format!("no pipelined commit at {index}") })
            }
        };
        let result = match outcome {
            Ok(result) => Ok(result),
            Err(done) => done.await,
        };
        match result {
            Ok(Ok(response)) => match response.data {
                Response::Committed { db: Some(_), .. } => Ok(()),
                Response::Committed { db: None, .. } => {
                    Err(SinkError::Rejected { reason: "the database was dropped".into() })
                }
                Response::Refused { reason } => Err(SinkError::Rejected { reason }),
                other => Err(SinkError::Rejected { reason: format!("unexpected answer {other:?}") }),
            },
            Ok(Err(e)) => Err(SinkError::OutcomeUnknown { reason: format!("outcome unknown: {e}") }),
            Err(_) => Err(SinkError::OutcomeUnknown { reason: "outcome unknown: Raft stopped".into() }),
        }
    }

    /// Forgets the outcomes of pipelined commits nobody will ask about (a writer that ended early).
    pub fn forget_outcome(&self, index: u64) {
        self.outcomes.lock().remove(&index);
    }

    /// An error if a commit record of `pages` pages and `record_len` bytes makes an entry the log cannot
    /// hold: it must never reach Raft, where an append error stops the node.
    fn check_size(&self, record_len: usize, pages: usize) -> Result<(), SinkError> {
        let entry_bytes = commit_entry_overhead_bytes() + record_len;
        if entry_bytes > self.entry_bytes_max {
            return Err(SinkError::Rejected {
                reason: format!(
                    "transaction too large: {entry_bytes} bytes, limit {} bytes ({pages} pages changed, at most {})",
                    self.entry_bytes_max,
                    commit_pages_max(self.entry_bytes_max)
                ),
            });
        }
        Ok(())
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
        self.check_size(record.len(), frames.len())?;
        match self.propose(Command::Commit { read_index, record })? {
            (index, Response::Committed { db: Some(_), .. }) => Ok(index),
            (_, Response::Committed { db: None, .. }) => {
                Err(SinkError::Rejected { reason: format!("database {} was dropped", db.name()) })
            }
            (_, Response::Refused { reason }) => Err(SinkError::Rejected { reason }),
            (_, other) => Err(SinkError::Rejected { reason: format!("unexpected answer {other:?}") }),
        }
    }

    fn pipelines(&self) -> bool {
        true
    }

    /// Proposes a `Command::CommitAfter` under this node's current leadership (`with_leader`: a commit is
    /// never appended under another term, whose log may not hold what it was built on) and returns its log
    /// index as soon as the log store is handed the entry. [`RaftSink::outcome`] tells its fate.
    fn propose_after(
        &self,
        db: &Db,
        frames: &[(u32, &[u8])],
        db_page_count: u32,
        base: u64,
    ) -> Result<u64, SinkError> {
        let record = encode_commit(db.id(), db_page_count, frames);
        self.check_size(record.len(), frames.len())?;
        let leader = match self.raft.as_leader() {
            Ok(leader) => leader.to_committed_leader_id(),
            Err(forward) => {
                return Err(SinkError::Unavailable {
                    reason: format!("not the leader (leader: {:?})", forward.leader_id),
                })
            }
        };
        let key = (db.id(), base);
        let (index_tx, index_rx) = oneshot::channel();
        self.proposals.waiting.lock().insert(key, (leader, index_tx));
        let (responder, done) = ProgressResponder::complete_only();
        let raft = self.raft.clone();
        let command = Command::CommitAfter { base, record };
        let proposed = self.blocking.block_on(&self.runtime, async move {
            raft.write(command).with_leader(leader).responder(responder).await?;
            let mut done = done;
            Ok::<_, openraft::error::Fatal<BopConfig>>(tokio::select! {
                biased;
                index = index_rx => match index {
                    Ok(index) => Ok((index, Outcome::Pending(done))),
                    Err(_) => Err(None),
                },
                // It ended before the log store saw it: refused (not the leader, or not the leader it was
                // proposed to), or Raft stopped.
                result = &mut done => match result {
                    Ok(Ok(response)) => Ok((response.log_id.index, Outcome::Done(Ok(response)))),
                    other => Err(Some(other)),
                },
            })
        });
        self.proposals.waiting.lock().remove(&key);
        let unknown =
            |e: &dyn std::fmt::Display| SinkError::OutcomeUnknown { reason: format!("outcome unknown: {e}") };
        match proposed {
            Ok(Ok(Ok((index, outcome)))) => {
                self.outcomes.lock().insert(index, outcome);
                Ok(index)
            }
            Ok(Ok(Err(Some(Ok(Err(ClientWriteError::ForwardToLeader(forward))))))) => {
                Err(SinkError::Unavailable {
                    reason: format!("not the leader (leader: {:?})", forward.leader_id),
                })
            }
            Ok(Ok(Err(Some(Ok(Err(e)))))) => Err(unknown(&e)),
            Ok(Ok(Err(_))) => Err(unknown(&"Raft dropped the proposal")),
            Ok(Err(fatal)) => Err(unknown(&fatal)),
            Err(e) => Err(unknown(&e)),
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
