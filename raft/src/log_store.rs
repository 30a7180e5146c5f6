//! `LogStore<C>`: openraft log storage on bop's WAL chunk store, for any `RaftTypeConfig` whose entries,
//! votes and log ids serialize with serde.
//!
//! - Entries are WAL entries at their Raft index; the payload is the bincode (serde) encoding of the
//!   whole openraft entry, so the log id travels with it. The WAL's own term field is not used (0).
//! - `append` returns once the entries are readable and hands openraft's `IOFlushed` callback to the WAL's
//!   group commit: it fires after the fdatasync that covers the entries, or with an error if the store is
//!   poisoned. Appends are not awaited one by one, so concurrent appends share fdatasyncs.
//! - The vote is saved in the manifest (one LMDB commit, durable before the call returns). The committed
//!   log id is saved there too, but written behind: `save_committed` records it and returns, and one
//!   blocking task at a time writes the newest one (after the WAL made the entries it names durable), so
//!   Raft's commit path waits for one fdatasync (the entries') instead of two in turn. After a crash the
//!   saved id may trail the true one by the commits of the last write in flight; openraft then re-applies
//!   less at start and the rest once the leader tells the node its commit (entries are durable in the
//!   log either way). `close` writes the newest one before closing, so a clean restart resumes exactly.
//!   The inline writer (the simulation) saves it before returning, as no thread may run behind. The
//!   purged log id rides in the WAL's purge record, so it is exactly as durable as the purge itself.
//! - `truncate_after` and `purge` map onto the WAL's truncate and purge records. `purge` returns once the
//!   purge record is durable; the whole segments below it are deleted behind, by one blocking task at a
//!   time, because openraft's core awaits `purge` before it replicates or commits anything else, and the
//!   unlinks and the directory fsync took up to hundreds of milliseconds on a shared disk (every node's
//!   writes stalled at each snapshot). The inline writer (the simulation) deletes them before returning.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use bop_storage::format::{encoded_len, RECORD_ALIGN, RECORD_HEADER_LEN};
use bop_storage::manifest::{Batch, Manifest, RaftBlob};
use bop_storage::wal::{LogPos, NewEntry, WalError, WalStore, WriterMode};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::type_config::alias::{LogIdOf, VoteOf};
use openraft::{OptionalSend, RaftLogReader, RaftTypeConfig};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Most bytes `limited_get_log_entries` returns in one call (at least one entry is always returned).
pub const READ_BATCH_BYTES_MAX: usize = 4 << 20;

/// Errors opening a [`LogStore`].
#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    /// The WAL could not be opened.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// The manifest could not be read.
    #[error(transparent)]
    Manifest(#[from] bop_storage::manifest::ManifestError),
    /// A stored vote or log id does not decode as this type config's.
    #[error("stored {what} does not decode: {reason}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// Why not.
        reason: String,
    },
}

fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(io::Error::other)
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> io::Result<T> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {e}")))?;
    if used != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what}: {} trailing bytes", bytes.len() - used),
        ));
    }
    Ok(value)
}

fn wal_err(e: WalError) -> io::Error {
    io::Error::other(e)
}

struct Inner<C: RaftTypeConfig> {
    wal: Arc<WalStore>,
    manifest: Arc<Manifest>,
    vote: Mutex<Option<VoteOf<C>>>,
    /// The newest committed log id openraft saved (written to the manifest behind, see the module doc).
    committed: Mutex<Option<LogIdOf<C>>>,
    /// The index of the committed log id the manifest holds; held while one is written, so that writes
    /// of it are ordered and never go backwards.
    committed_written: Mutex<Option<u64>>,
    /// The writer behind of the committed log id (outside `Inner`: its task signals its end after it
    /// dropped its handle on the store).
    committed_saver: Arc<SaverShared>,
    /// See [`LogStore::observe_appends`].
    append_observer: std::sync::OnceLock<AppendObserver<C>>,
}

/// What [`LogStore::observe_appends`] calls with each entry appended.
pub type AppendObserver<C> = Box<dyn Fn(&<C as RaftTypeConfig>::Entry) + Send + Sync>;

/// The writer behind of the committed log id, and its end signalled to `close`.
#[derive(Default)]
struct SaverShared {
    state: Mutex<CommittedSaver>,
    ended: parking_lot::Condvar,
}

/// Counts a writer task out when dropped, after the task let go of the store.
struct AliveGuard(Arc<SaverShared>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.state.lock().alive -= 1;
        self.0.ended.notify_all();
    }
}

/// State of the work done behind openraft's calls: the writer of the committed log id and the deleter of
/// purged segments.
#[derive(Default)]
struct CommittedSaver {
    /// A blocking task is writing (it ends when nothing newer is left to write).
    running: bool,
    /// A blocking task is deleting purged segments.
    deleting: bool,
    /// A purge became durable while `deleting`: the deleter goes round once more.
    delete_again: bool,
    /// Tasks that still hold a handle on the store (and so on the manifest); `close` waits for none.
    alive: usize,
    /// `close` ran: no task starts any more.
    closed: bool,
    /// A write failed: every later `save_committed` fails with it (the manifest is poisoned or gone).
    error: Option<String>,
}

/// openraft log storage on a [`WalStore`] and a [`Manifest`]. Cheap to clone; the clone is also its reader.
pub struct LogStore<C: RaftTypeConfig> {
    inner: Arc<Inner<C>>,
}

impl<C: RaftTypeConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore { inner: Arc::clone(&self.inner) }
    }
}

impl<C> LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
    VoteOf<C>: Serialize + DeserializeOwned,
    LogIdOf<C>: Serialize + DeserializeOwned,
{
    /// A log store over an opened WAL (whose recovery has run) and the node's manifest.
    pub fn new(wal: Arc<WalStore>, manifest: Arc<Manifest>) -> Result<Self, LogStoreError> {
        let (vote, committed) = manifest.read(|r| {
            Ok((r.raft_blob(RaftBlob::LogStoreVote)?, r.raft_blob(RaftBlob::LogStoreCommitted)?))
        })?;
        let decode_err = |what| move |e: io::Error| LogStoreError::Decode { what, reason: e.to_string() };
        let vote = vote.map(|b| decode::<VoteOf<C>>(&b, "vote")).transpose().map_err(decode_err("vote"))?;
        let committed = committed
            .map(|b| decode::<Option<LogIdOf<C>>>(&b, "committed log id"))
            .transpose()
            .map_err(decode_err("committed log id"))?
            .flatten();
        // Written by an older version without the flush in `save_committed`, a committed index may lie past
        // the durable log; forgetting it is safe (the leader tells the node again).
        let state = wal.state();
        let last = state.last.map(|p| p.index).max(state.purged.map(|p| p.index));
        let committed = match committed {
            Some(id) if last.is_none_or(|last| id.index() > last) => {
                tracing::warn!(committed = id.index(), ?last, "committed index past the log; forgotten");
                None
            }
            other => other,
        };
        let committed_written = committed.as_ref().map(|id| id.index());
        Ok(LogStore {
            inner: Arc::new(Inner {
                wal,
                manifest,
                vote: Mutex::new(vote),
                committed: Mutex::new(committed),
                committed_written: Mutex::new(committed_written),
                committed_saver: Arc::default(),
                append_observer: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Calls `observer` with every entry handed to [`RaftLogStorage::append`], before the entry is written
    /// (on the leader, right after it proposed the entry: a proposer learns its entry's log id without
    /// waiting for the commit). Set once; a second call is refused (`false`). The observer runs on the
    /// task that appends, so it must be quick and must not block.
    pub fn observe_appends(&self, observer: AppendObserver<C>) -> bool {
        self.inner.append_observer.set(observer).is_ok()
    }

    /// The WAL underneath.
    pub fn wal(&self) -> &WalStore {
        &self.inner.wal
    }

    /// The manifest holding the vote and the committed log id.
    pub fn manifest(&self) -> &Arc<Manifest> {
        &self.inner.manifest
    }

    /// The largest serialized entry this log accepts: a WAL record's payload, and within the WAL's
    /// in-flight bound. A proposer must refuse anything larger before it reaches Raft (an append error is
    /// fatal to openraft); entries up to it are always accepted, however many arrive in one append.
    pub fn entry_bytes_max(&self) -> usize {
        let config = self.inner.wal.config();
        config
            .record_payload_max_bytes()
            .min(config.queue_bytes_max.saturating_sub(RECORD_HEADER_LEN + RECORD_ALIGN))
    }

    /// Appends `entries` (the next indexes of the log) outside Raft and waits until they are durable: for
    /// repairs made before Raft starts on this store (`--force-new-cluster`), never while it runs.
    pub async fn append_durably(&self, entries: Vec<C::Entry>) -> io::Result<()>
    where
        C::Entry: Serialize,
    {
        let part = entries
            .iter()
            .map(|entry| Ok(NewEntry { index: entry.index(), term: 0, payload: encode(entry)? }))
            .collect::<io::Result<Vec<_>>>()?;
        let (done, durable) = tokio::sync::oneshot::channel();
        let callback = Box::new(move |result: Result<(), WalError>| {
            let _ = done.send(result);
        });
        self.inner.wal.append_with_async(part, callback).await.map_err(wal_err)?;
        durable.await.map_err(|_| io::Error::other("the WAL dropped an append"))?.map_err(wal_err)
    }

    /// Writes the newest committed log id to the manifest, then flushes and closes the WAL (outstanding
    /// callbacks resolve first). A failure to write the committed id is logged: the log is intact, and a
    /// restart re-learns the commit from the leader.
    ///
    /// It also waits until the writer behind has ended and let go of the store, so that the manifest can
    /// be opened again as soon as the store is dropped.
    pub fn close(&self) -> Result<(), WalError> {
        if self.inner.wal.config().writer != WriterMode::Inline {
            self.inner.committed_saver.state.lock().closed = true;
            if let Err(e) = self.write_committed() {
                tracing::warn!(error = %e, "the committed log id was not saved at close");
            }
        }
        let closed = self.inner.wal.close();
        let saver = &self.inner.committed_saver;
        let mut state = saver.state.lock();
        while state.alive > 0 {
            saver.ended.wait(&mut state);
        }
        closed
    }

    /// Writes the newest committed log id, if the manifest does not hold it or a newer one yet: first
    /// waits until everything appended so far is durable (openraft may count entries committed before this
    /// log made them durable, as a follower does; a saved id naming entries a crash can take away would be
    /// forgotten at start), then one LMDB commit. Blocks.
    fn write_committed(&self) -> io::Result<()> {
        let target = self.inner.committed.lock().clone();
        let Some(index) = target.as_ref().map(|id| id.index()) else { return Ok(()) };
        if self.inner.committed_written.lock().is_some_and(|written| written >= index) {
            return Ok(());
        }
        self.inner.wal.flush().map_err(wal_err)?.wait().map_err(wal_err)?;
        let mut written = self.inner.committed_written.lock();
        if written.is_some_and(|written| written >= index) {
            return Ok(());
        }
        let mut batch = Batch::new();
        batch.set_raft_blob(RaftBlob::LogStoreCommitted, encode(&target)?);
        self.inner.manifest.commit(batch).map_err(io::Error::other)?;
        *written = Some(index);
        Ok(())
    }

    /// The writer behind: writes the newest committed log id until none newer is left, then ends (the
    /// next `save_committed` starts another), dropping its handle on the store before it says so. A
    /// failure is kept for `save_committed` to return.
    fn write_committed_behind(&self) {
        let saver = &self.inner.committed_saver;
        loop {
            if let Err(e) = self.write_committed() {
                let mut state = saver.state.lock();
                state.error = Some(e.to_string());
                state.running = false;
                break;
            }
            let mut state = saver.state.lock();
            // Checked under the saver's lock, which `save_committed` takes after recording a new id: either
            // this sees the new id, or that call sees the writer ended and starts another.
            let newest = self.inner.committed.lock().as_ref().map(|id| id.index());
            if newest <= *self.inner.committed_written.lock() {
                state.running = false;
                break;
            }
        }
    }

    /// Deletes the segments that durable purges left behind, on a blocking task that goes round until no
    /// purge came in meanwhile (at most one runs). A failure is logged: the purge itself is durable, and
    /// the next purge (or the next open) deletes what is left.
    fn delete_purged_behind(&self) {
        let behind = &self.inner.committed_saver;
        {
            let mut state = behind.state.lock();
            if state.closed {
                return;
            }
            if state.deleting {
                state.delete_again = true;
                return;
            }
            state.deleting = true;
            state.alive += 1;
        }
        let job = (self.clone(), AliveGuard(Arc::clone(behind)));
        tokio::task::spawn_blocking(move || {
            let (store, guard) = job;
            loop {
                if let Err(error) = store.inner.wal.delete_purged_segments() {
                    tracing::warn!(%error, "deleting purged log segments failed");
                }
                let mut state = store.inner.committed_saver.state.lock();
                if !state.delete_again || state.closed {
                    state.deleting = false;
                    break;
                }
                state.delete_again = false;
            }
            drop(store);
            drop(guard);
        });
    }

    fn decode_entry(payload: &[u8]) -> io::Result<C::Entry> {
        decode(payload, "log entry")
    }

    /// The log id of the entry at `index`, if the log holds it (for checks that compare nodes' logs).
    pub fn log_id_at(&self, index: u64) -> io::Result<Option<LogIdOf<C>>> {
        Ok(self.read_entries(index, index + 1, usize::MAX)?.first().map(|e| e.log_id()))
    }

    fn read_entries(&self, start: u64, end: u64, bytes_max: usize) -> io::Result<Vec<C::Entry>> {
        // Entries before the first one (purged, or never written) are simply not returned.
        let Some(first) = self.inner.wal.state().first_index else { return Ok(Vec::new()) };
        let start = start.max(first);
        if start >= end {
            return Ok(Vec::new());
        }
        // The budget is checked before an entry is added: the first entry always goes (alone if it is
        // larger than the budget), a later one only if it still fits, so a batch never exceeds
        // max(budget, one entry) and always fits a transport frame.
        let mut stop = start;
        let mut bytes = 0usize;
        while stop < end {
            let Some(len) = self.inner.wal.payload_len(stop) else { break };
            if stop > start && bytes.saturating_add(len) > bytes_max {
                break;
            }
            bytes = bytes.saturating_add(len);
            stop += 1;
        }
        let entries = self.inner.wal.read_range(start, stop, usize::MAX).map_err(wal_err)?;
        entries.iter().map(|e| Self::decode_entry(&e.payload)).collect()
    }

    async fn save_blob(&self, which: RaftBlob, bytes: Vec<u8>) -> io::Result<()> {
        let manifest = Arc::clone(&self.inner.manifest);
        // The LMDB commit (an fsync) runs off the async workers.
        self.off_runtime(move || {
            let mut batch = Batch::new();
            batch.set_raft_blob(which, bytes);
            manifest.commit(batch).map(|_| ()).map_err(io::Error::other)
        })
        .await
    }

    /// Runs blocking storage work on a blocking thread, or right here when the WAL runs its inline writer
    /// (the deterministic simulation, which allows no thread the scheduler could reorder).
    async fn off_runtime(&self, work: impl FnOnce() -> io::Result<()> + Send + 'static) -> io::Result<()> {
        if self.inner.wal.config().writer == WriterMode::Inline {
            return work();
        }
        tokio::task::spawn_blocking(work).await.map_err(io::Error::other)?
    }
}

fn range_bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl<C> RaftLogReader<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
    VoteOf<C>: Serialize + DeserializeOwned,
    LogIdOf<C>: Serialize + DeserializeOwned,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, io::Error> {
        let (start, end) = range_bounds(&range);
        self.read_entries(start, end, usize::MAX)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<C>>, io::Error> {
        Ok(self.inner.vote.lock().clone())
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<C::Entry>, io::Error> {
        self.read_entries(start, end, READ_BATCH_BYTES_MAX)
    }
}

impl<C> RaftLogStorage<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
    VoteOf<C>: Serialize + DeserializeOwned,
    LogIdOf<C>: Serialize + DeserializeOwned,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let wal = &self.inner.wal;
        let last_purged_log_id =
            wal.purged_meta().map(|meta| decode::<LogIdOf<C>>(&meta, "purged log id")).transpose()?;
        let state = wal.state();
        let last_log_id = match state.last {
            Some(last) => {
                let entry = wal.read(last.index).map_err(wal_err)?.ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, format!("last entry {} vanished", last.index))
                })?;
                Some(Self::decode_entry(&entry.payload)?.log_id())
            }
            None => last_purged_log_id.clone(),
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<C>) -> Result<(), io::Error> {
        self.save_blob(RaftBlob::LogStoreVote, encode(vote)?).await?;
        *self.inner.vote.lock() = Some(vote.clone());
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        if self.inner.wal.config().writer == WriterMode::Inline {
            // No thread may run behind: wait until everything appended so far is durable (a committed id
            // must not name entries a crash can take away), then save it.
            self.inner.wal.flush().map_err(wal_err)?.await.map_err(wal_err)?;
            self.save_blob(RaftBlob::LogStoreCommitted, encode(&committed)?).await?;
            *self.inner.committed_written.lock() = committed.as_ref().map(|id| id.index());
            *self.inner.committed.lock() = committed;
            return Ok(());
        }
        *self.inner.committed.lock() = committed;
        let mut saver = self.inner.committed_saver.state.lock();
        if let Some(e) = &saver.error {
            return Err(io::Error::other(format!("saving the committed log id failed: {e}")));
        }
        if !saver.running && !saver.closed {
            saver.running = true;
            saver.alive += 1;
            // The store is dropped before the guard (a tuple drops its fields in order), whether the task
            // runs or is dropped unrun by a runtime shutting down.
            let job = (self.clone(), AliveGuard(Arc::clone(&self.inner.committed_saver)));
            tokio::task::spawn_blocking(move || {
                let (store, guard) = job;
                store.write_committed_behind();
                drop(store);
                drop(guard);
            });
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, io::Error> {
        Ok(self.inner.committed.lock().clone())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // openraft may hand over more entries at once than the WAL takes in flight (each fits, their sum
        // may not): submit them in parts that fit, waiting for space between parts. The WAL makes parts
        // durable in order, so the last part's callback covers them all; a failure poisons the store and
        // fails every later part too.
        let config = self.inner.wal.config();
        let (bytes_max, records_max) = (config.queue_bytes_max, config.queue_records_max);
        let mut parts: Vec<Vec<NewEntry>> = Vec::new();
        let mut part: Vec<NewEntry> = Vec::new();
        let mut part_bytes = 0usize;
        let observer = self.inner.append_observer.get();
        for entry in entries {
            if let Some(observer) = observer {
                observer(&entry);
            }
            let payload = encode(&entry)?;
            let cost = encoded_len(payload.len());
            if !part.is_empty() && (part_bytes + cost > bytes_max || part.len() >= records_max) {
                parts.push(std::mem::take(&mut part));
                part_bytes = 0;
            }
            part_bytes += cost;
            part.push(NewEntry { index: entry.index(), term: 0, payload });
        }
        for earlier in parts {
            self.inner.wal.append_with_async(earlier, Box::new(|_| {})).await.map_err(wal_err)?;
        }
        let done =
            Box::new(move |result: Result<(), WalError>| callback.io_completed(result.map_err(wal_err)));
        self.inner.wal.append_with_async(part, done).await.map_err(wal_err)
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index() + 1);
        let ticket = self.inner.wal.submit_truncate_from(from).map_err(wal_err)?;
        ticket.await.map_err(wal_err)
    }

    async fn purge(&mut self, log_id: LogIdOf<C>) -> Result<(), io::Error> {
        let pos = LogPos { index: log_id.index(), term: 0 };
        if let Some(ticket) = self.inner.wal.submit_purge(pos, Some(encode(&log_id)?)).map_err(wal_err)? {
            ticket.await.map_err(wal_err)?;
        }
        if self.inner.wal.config().writer == WriterMode::Inline {
            return self.inner.wal.delete_purged_segments().map(|_| ()).map_err(wal_err);
        }
        self.delete_purged_behind();
        Ok(())
    }
}
