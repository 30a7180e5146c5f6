//! bop's Raft state machine: the page store.
//!
//! Commands are creating a database, dropping one, and committing a transaction's page frames. Applying a
//! commit does not copy pages: the commit record is the last field of the serialized log entry, so its bytes
//! end the WAL entry's payload, and the page index points at its frames there. A snapshot is a checkpoint
//! of every database at one index (their generation chains), recorded in the manifest with the snapshot's
//! metadata; it ships as the generation files themselves, streamed in bounded chunks; installing one
//! replaces the page store in one manifest commit. Last applied log id and membership survive restarts as
//! the newest snapshot record plus the log after it, which openraft re-applies (every apply is idempotent).

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::Arc;

use bop_storage::page_store::{CommitCheck, Manager, PageStoreError, SnapshotDatabase, COMMIT_HEADER_LEN};
use bop_storage::wal::{WalStore, WriterMode};
use futures_util::StreamExt;
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::{EntryPayload, OptionalSend};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// A command in bop's Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Create a database; its id is the index of this entry.
    CreateDatabase {
        /// Exact name.
        name: String,
    },
    /// Drop a database.
    DropDatabase {
        /// Exact name.
        name: String,
    },
    /// Commit page frames: `record` is a page-store commit record (`bop_storage::page_store::encode_commit`)
    /// naming the database by id. It must stay the last field: its bytes end the serialized entry.
    Commit {
        /// The applied index the transaction read at: a commit to the database after it makes this one
        /// stale, and every node refuses it (`PageStoreError::StaleCommit`).
        read_index: u64,
        /// The commit record. (Serialized as bytes, not element by element: the same encoding, written and
        /// read as one copy.)
        #[serde(with = "serde_bytes")]
        record: Vec<u8>,
    },
    /// Commit page frames built on the commit at log index `base` (a pipelined writer's: proposed, not yet
    /// applied, when the transaction ran): refused on every node unless that commit is the database's
    /// newest when this one is applied (`PageStoreError::WrongBase`), so that a refused or lost commit
    /// refuses everything built on it. `record` as in `Commit`, last for the same reason.
    CommitAfter {
        /// The log index of the commit the transaction was built on.
        base: u64,
        /// The commit record.
        #[serde(with = "serde_bytes")]
        record: Vec<u8>,
    },
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::CreateDatabase { name } => write!(f, "create {name:?}"),
            Command::DropDatabase { name } => write!(f, "drop {name:?}"),
            Command::Commit { record, read_index } => {
                write!(f, "commit of {} bytes read at {read_index}", record.len())
            }
            Command::CommitAfter { record, base } => {
                write!(f, "commit of {} bytes built on {base}", record.len())
            }
        }
    }
}

/// What applying a command answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A blank or membership entry.
    Applied,
    /// The database was created with this id.
    Created {
        /// Its id (the entry's index).
        id: u64,
    },
    /// The database was dropped (or did not exist).
    Dropped,
    /// The commit was applied at this log index.
    Committed {
        /// The entry's index: the commit is visible to every read at or after it.
        index: u64,
        /// The database it went to (`None` if it was dropped before the commit applied).
        db: Option<u64>,
        /// Pages it carried.
        pages: u32,
        /// The database's size in pages after it.
        db_page_count: u32,
    },
    /// The command was refused, identically on every node (e.g. a duplicate name).
    Refused {
        /// Why.
        reason: String,
    },
}

openraft::declare_raft_types!(
    /// bop's Raft type config.
    pub BopConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        AsyncRuntime = crate::runtime::BopRuntime,
);

/// Snapshot data: every database's generation chain, shipped file by file in bounded chunks.
#[derive(Debug, Clone)]
pub struct BopSnapshot {
    /// The databases.
    pub databases: Vec<SnapshotDatabase>,
}

struct Inner {
    manager: Manager,
    wal: Arc<WalStore>,
    last_applied: Option<LogIdOf<BopConfig>>,
    membership: StoredMembershipOf<BopConfig>,
    /// Log ids applied since the newest snapshot (a snapshot at an older index needs its id).
    applied_ids: BTreeMap<u64, LogIdOf<BopConfig>>,
    /// Memberships applied since the newest snapshot, by index.
    memberships: BTreeMap<u64, StoredMembershipOf<BopConfig>>,
    current: Option<(SnapshotMetaOf<BopConfig>, Vec<SnapshotDatabase>)>,
}

/// bop's state machine over a replicated page store. Cheap to clone.
#[derive(Clone)]
pub struct BopStateMachine {
    inner: Arc<Mutex<Inner>>,
    /// The page store (also in `inner`), reachable without the lock.
    manager: Manager,
    /// Held through a snapshot's checkpoint and through an install: the checkpoint runs without `inner`'s
    /// lock, and must not meet an install replacing the databases it is writing.
    snapshots: Arc<Mutex<()>>,
    /// Blocking storage work (fsyncs, manifest commits, checkpoints) runs right here instead of on a
    /// blocking thread: the WAL's inline writer (the deterministic simulation) allows no other thread.
    inline: bool,
    /// Seconds each entry took to apply (shared by the clones; the node serves it on `/metrics`).
    apply_seconds: prometheus_client::metrics::histogram::Histogram,
}

/// Latency buckets of bop's histograms: 0.25 ms to ~8 s, doubling.
pub(crate) fn latency_histogram() -> prometheus_client::metrics::histogram::Histogram {
    prometheus_client::metrics::histogram::Histogram::new(
        prometheus_client::metrics::histogram::exponential_buckets(0.000_25, 2.0, 16),
    )
}

fn io_err(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::other(e)
}

/// First wait before a snapshot whose checkpoint found no space is tried again.
const NO_SPACE_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(10);
/// Longest wait between two tries.
const NO_SPACE_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// True when `error` is the page store's lack of space (ENOSPC, EDQUOT) for a checkpoint.
fn is_no_space(error: &io::Error) -> bool {
    error.get_ref().and_then(|e| e.downcast_ref::<PageStoreError>()).is_some_and(PageStoreError::is_no_space)
}

fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(io_err)
}

impl BopStateMachine {
    /// The state machine of a page store opened with `Manager::open_replicated` over `wal` (the Raft log
    /// store's WAL). Restores the last applied log id and membership from the newest snapshot record.
    pub fn open(manager: Manager, wal: Arc<WalStore>) -> io::Result<Self> {
        let record = manager.newest_snapshot_record().map_err(io_err)?;
        let meta = match record {
            Some((_, bytes)) => {
                let (meta, _): (SnapshotMetaOf<BopConfig>, usize) =
                    bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).map_err(io_err)?;
                Some(meta)
            }
            None => None,
        };
        let (last_applied, membership, current) = match meta {
            Some(meta) => {
                if let Some(id) = &meta.last_log_id {
                    manager.set_applied(id.index());
                }
                let databases = manager.snapshot_databases().map_err(io_err)?;
                (meta.last_log_id, meta.last_membership.clone(), Some((meta, databases)))
            }
            None => (None, StoredMembershipOf::<BopConfig>::default(), None),
        };
        let inner = Inner {
            manager,
            wal,
            last_applied,
            membership,
            applied_ids: BTreeMap::new(),
            memberships: BTreeMap::new(),
            current,
        };
        let inline = inner.wal.config().writer == WriterMode::Inline;
        let manager = inner.manager.clone();
        Ok(BopStateMachine {
            inner: Arc::new(Mutex::new(inner)),
            manager,
            snapshots: Arc::default(),
            inline,
            apply_seconds: latency_histogram(),
        })
    }

    /// The histogram of the seconds each entry took to apply, since this state machine was opened: from
    /// the entry reaching the state machine to its answer (a manifest commit for creating or dropping a
    /// database; pointing the page index into the log for a commit).
    pub fn apply_seconds(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.apply_seconds.clone()
    }

    /// Runs `work` on the state under its lock, off the async workers (a checkpoint or an fsync there
    /// would delay heartbeats on a two-thread runtime), unless the WAL runs inline.
    async fn off_runtime<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Inner) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let inner = Arc::clone(&self.inner);
        self.off_runtime_unlocked(move || work(&mut inner.lock())).await
    }

    /// Runs `work` off the async workers without the state's lock, unless the WAL runs inline.
    async fn off_runtime_unlocked<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        if self.inline {
            return work();
        }
        tokio::task::spawn_blocking(work).await.map_err(io_err)?
    }

    /// The page store.
    pub fn manager(&self) -> Manager {
        self.inner.lock().manager.clone()
    }
}

/// A page-store error applying a command: a refusal (an answer, the same on every node) or a storage
/// failure (an error, fatal to Raft).
fn refused(e: PageStoreError) -> io::Result<Response> {
    match e {
        PageStoreError::Manifest(ref m) if m.is_rejection() => {
            Ok(Response::Refused { reason: e.to_string() })
        }
        PageStoreError::InvalidCommit { .. }
        | PageStoreError::UnsupportedPageSize { .. }
        | PageStoreError::StaleCommit { .. }
        | PageStoreError::WrongBase { .. } => Ok(Response::Refused { reason: e.to_string() }),
        other => Err(io_err(other)),
    }
}

impl Inner {
    /// Applies one command at `index`. Refusals are answers; storage failures are errors (fatal to Raft).
    fn apply_command(&mut self, index: u64, command: &Command) -> io::Result<Response> {
        match command {
            Command::CreateDatabase { name } => match self.manager.apply_create_database(index, name) {
                Ok(()) => Ok(Response::Created { id: index }),
                Err(e) => {
                    self.manager.set_applied(index);
                    refused(e)
                }
            },
            Command::DropDatabase { name } => match self.manager.apply_drop_database(index, name) {
                Ok(()) => Ok(Response::Dropped),
                Err(e) => refused(e),
            },
            Command::Commit { record, read_index } => {
                self.apply_commit(index, record, CommitCheck::ReadAt(*read_index))
            }
            Command::CommitAfter { record, base } => {
                self.apply_commit(index, record, CommitCheck::After(*base))
            }
        }
    }

    /// Applies a commit record at `index`, checked as `check` says.
    fn apply_commit(&mut self, index: u64, record: &[u8], check: CommitCheck) -> io::Result<Response> {
        let payload_len = self.wal.payload_len(index).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("applied entry {index} is not in the log"))
        })?;
        let base = payload_len.checked_sub(record.len()).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, format!("commit record longer than entry {index}"))
        })?;
        // The record must be where the page index will point: check its header in the log.
        let head_len = COMMIT_HEADER_LEN.min(record.len());
        let head = self.wal.read_payload_range(index, base, head_len).map_err(io_err)?;
        if head.as_deref() != record.get(..head_len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("commit record of entry {index} is not at the end of its payload"),
            ));
        }
        // The record's content came from a client: one that does not decode is refused, the same
        // way on every node, like an invalid commit (an error here would stop every node that
        // applies the entry, after every restart).
        if let Err(e) = bop_storage::page_store::decode_commit(record) {
            self.manager.set_applied(index);
            return Ok(Response::Refused { reason: format!("invalid commit: {e}") });
        }
        let base = u32::try_from(base).map_err(io_err)?;
        match self.manager.apply_commit(index, base, record, check) {
            Ok(db) => {
                let header = bop_storage::page_store::decode_commit(record).map_err(io_err)?;
                Ok(Response::Committed {
                    index,
                    db,
                    pages: header.frames.len() as u32,
                    db_page_count: header.db_page_count,
                })
            }
            Err(e) => {
                self.manager.set_applied(index);
                refused(e)
            }
        }
    }

    fn membership_at(&self, index: u64) -> StoredMembershipOf<BopConfig> {
        self.memberships.range(..=index).next_back().map(|(_, m)| m.clone()).unwrap_or_else(|| {
            self.current.as_ref().map(|(meta, _)| meta.last_membership.clone()).unwrap_or_default()
        })
    }

    fn log_id_at(&self, index: u64) -> Option<LogIdOf<BopConfig>> {
        if let Some(id) = self.applied_ids.get(&index) {
            return Some(*id);
        }
        self.current.as_ref().and_then(|(meta, _)| meta.last_log_id.filter(|id| id.index() == index))
    }
}

impl RaftSnapshotBuilder<BopConfig> for BopStateMachine {
    type SnapshotData = BopSnapshot;

    /// A checkpoint that finds no space for its generation file (the page store's space alarm is then up) is
    /// tried again after 10 ms doubling to 1 s, until it is written or the page store stops waiting for
    /// space (shutdown): an error here stops Raft.
    ///
    /// The checkpoint (writing and fsyncing every database's generation file) runs without the state
    /// machine's lock, so applies go on meanwhile: the page store checkpoints at an index and keeps newer
    /// versions beside it. Only recording the snapshot takes the lock.
    async fn build_snapshot(&mut self) -> Result<SnapshotOf<BopConfig, BopSnapshot>, io::Error> {
        let mut wait = NO_SPACE_RETRY_FIRST;
        loop {
            let (manager, snapshots) = (self.manager.clone(), Arc::clone(&self.snapshots));
            let checkpoint = move || {
                let _one = snapshots.lock();
                manager.checkpoint_all().map_err(io_err)
            };
            match self.off_runtime_unlocked(checkpoint).await {
                Err(error) if is_no_space(&error) && self.manager.waits_for_space() => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(NO_SPACE_RETRY_MAX);
                }
                Err(error) => return Err(error),
                Ok((target, databases)) => {
                    return self.off_runtime(move |inner| inner.record_snapshot(target, databases)).await
                }
            }
        }
    }
}

impl Inner {
    /// Records the snapshot of a checkpoint of every database at `target` (one manifest commit). A snapshot
    /// installed while the checkpoint was written is newer: it stays, and is the answer.
    fn record_snapshot(
        &mut self,
        target: u64,
        databases: Vec<SnapshotDatabase>,
    ) -> io::Result<SnapshotOf<BopConfig, BopSnapshot>> {
        let inner = self;
        if let Some((meta, current)) = &inner.current {
            if meta.last_log_id.is_some_and(|id| id.index() >= target) {
                return Ok(Snapshot {
                    meta: meta.clone(),
                    snapshot: BopSnapshot { databases: current.clone() },
                });
            }
        }
        let last_log_id =
            if target == 0 && inner.last_applied.is_none() { None } else { inner.log_id_at(target) };
        if target > 0 && last_log_id.is_none() {
            return Err(io::Error::other(format!("no log id known for snapshot index {target}")));
        }
        let meta = SnapshotMetaOf::<BopConfig> { last_log_id, last_membership: inner.membership_at(target) };
        inner.manager.record_snapshot(encode(&meta)?).map_err(io_err)?;
        inner.applied_ids = inner.applied_ids.split_off(&(target + 1));
        let keep_from = inner.memberships.range(..=target).next_back().map(|(i, _)| *i);
        if let Some(from) = keep_from {
            inner.memberships = inner.memberships.split_off(&from);
        }
        inner.current = Some((meta.clone(), databases.clone()));
        Ok(Snapshot { meta, snapshot: BopSnapshot { databases } })
    }
}

impl RaftStateMachine<BopConfig> for BopStateMachine {
    type SnapshotData = BopSnapshot;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<BopConfig>>, StoredMembershipOf<BopConfig>), io::Error> {
        let inner = self.inner.lock();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm:
            futures_util::Stream<Item = Result<EntryResponder<BopConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let began = std::time::Instant::now();
            let log_id = entry.log_id();
            let index = log_id.index();
            // Creating and dropping a database commit the manifest (an fsync): off the async workers.
            // Commits only point the page index into the log and stay here.
            let slow = match &entry.payload {
                EntryPayload::Normal(
                    command @ (Command::CreateDatabase { .. } | Command::DropDatabase { .. }),
                ) => {
                    let command = command.clone();
                    Some(self.off_runtime(move |inner| inner.apply_command(index, &command)).await?)
                }
                _ => None,
            };
            let response = {
                let mut inner = self.inner.lock();
                let response = match (&entry.payload, slow) {
                    (_, Some(response)) => response,
                    (payload, None) => match payload {
                        EntryPayload::Blank => {
                            inner.manager.set_applied(index);
                            Response::Applied
                        }
                        EntryPayload::Membership(m) => {
                            let stored = StoredMembershipOf::<BopConfig>::new(Some(log_id), m.clone());
                            inner.membership = stored.clone();
                            inner.memberships.insert(index, stored);
                            inner.manager.set_applied(index);
                            Response::Applied
                        }
                        EntryPayload::Normal(command) => inner.apply_command(index, command)?,
                    },
                };
                inner.last_applied = Some(log_id);
                inner.applied_ids.insert(index, log_id);
                response
            };
            self.apply_seconds.observe(began.elapsed().as_secs_f64());
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<BopConfig>,
        snapshot: BopSnapshot,
    ) -> Result<(), io::Error> {
        let meta = meta.clone();
        let snapshots = Arc::clone(&self.snapshots);
        self.off_runtime(move |inner| {
            let _one = snapshots.lock();
            let index = meta.last_log_id.map_or(0, |id| id.index());
            inner
                .manager
                .install_snapshot(index, index, &snapshot.databases, encode(&meta)?)
                .map_err(io_err)?;
            let databases = inner.manager.snapshot_databases().map_err(io_err)?;
            inner.last_applied = meta.last_log_id;
            inner.membership = meta.last_membership.clone();
            inner.applied_ids.clear();
            inner.memberships.clear();
            inner.current = Some((meta, databases));
            Ok(())
        })
        .await
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<BopConfig, BopSnapshot>>, io::Error> {
        let inner = self.inner.lock();
        Ok(inner
            .current
            .clone()
            .map(|(meta, databases)| Snapshot { meta, snapshot: BopSnapshot { databases } }))
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct FileDescriptor {
    db: u64,
    name: String,
    checksum: u32,
}

impl FileDescriptor {
    /// From a snapshot's wire file (a peer's bytes): at most 1 MiB claimed, so that a name claiming a
    /// huge length is an error, not an allocation that aborts the process.
    pub(crate) fn decode(bytes: &[u8]) -> io::Result<FileDescriptor> {
        let config = bincode::config::standard().with_limit::<{ 1 << 20 }>();
        let (descriptor, _) = bincode::serde::decode_from_slice(bytes, config).map_err(io_err)?;
        Ok(descriptor)
    }
}

impl crate::tcp::WireSnapshot for BopSnapshot {
    fn files(&self) -> Vec<crate::tcp::WireFile> {
        let mut out = Vec::new();
        for db in &self.databases {
            for (file, checksum) in &db.generations {
                let descriptor = FileDescriptor { db: db.id, name: db.name.clone(), checksum: *checksum };
                out.push(crate::tcp::WireFile {
                    descriptor: encode(&descriptor).unwrap_or_default(),
                    size_bytes: file.size_bytes,
                });
            }
        }
        out
    }

    fn read(&self, file: usize, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let generation = self
            .databases
            .iter()
            .flat_map(|db| db.generations.iter())
            .nth(file)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no snapshot file {file}")))?;
        generation.0.read_raw(offset, len).map_err(io_err)
    }

    fn assemble(
        io: &dyn bop_storage::io::Io,
        staged: Vec<(crate::tcp::WireFile, std::path::PathBuf)>,
    ) -> io::Result<Self> {
        let mut databases: Vec<SnapshotDatabase> = Vec::new();
        for (spec, path) in staged {
            let descriptor = FileDescriptor::decode(&spec.descriptor)?;
            // Opening checks header, footer and directory; the install verifies every page and the checksum.
            let file = Arc::new(bop_storage::page_store::open_generation(io, &path).map_err(io_err)?);
            match databases.last_mut() {
                Some(db) if db.id == descriptor.db => db.generations.push((file, descriptor.checksum)),
                _ => databases.push(SnapshotDatabase {
                    id: descriptor.db,
                    name: descriptor.name,
                    generations: vec![(file, descriptor.checksum)],
                }),
            }
        }
        Ok(BopSnapshot { databases })
    }
}
