//! The WAL chunk store: the log that is also bop's Raft log storage.
//!
//! Records (entries, truncations, purges) go into a bounded queue; one writer thread turns the queue into
//! group-commit batches — one write and one fdatasync per batch — and a completer thread resolves each
//! operation's [`Durable`] ticket or callback in submission order once the fdatasync returned success.
//! Entries are readable as soon as `append` returns (from memory until durable, from the segment after).
//! A failed fdatasync, a permanent write error or a writer panic poisons the store: every waiter and
//! every later call gets [`WalError::Poisoned`], nothing is retried, and reopening runs recovery. Before
//! the failure is reported, whatever the failed batch wrote is overwritten with zeros (not synced): after
//! a failed fdatasync the kernel keeps those bytes cached but never writes them, and a reopen in the same
//! boot must not read them back and count them durable.
//!
//! Lack of space (ENOSPC, EDQUOT) creating, reserving or preparing a segment, or writing a batch, is not
//! a durability failure and does not poison: [`WalStore::space_alarm`] goes up, the batch is held and
//! retried (the writer thread backs off from 10 ms to 1 s; the inline writer retries at the next
//! submission or [`WalStore::retry_now`]), appends stay in flight, and everything completes once space
//! returns. [`WalStore::io_stalled_for`] tells how long the writer's current I/O call has been running.
//! The on-disk layout, the fsync sequences and the recovery rules are in docs/design.md.

mod completion;
mod config;
mod error;
mod index;
mod metrics;
mod recovery;
mod segment;
mod writer;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

use crate::format::{decode_record, encoded_len, RecordKind};
use crate::io::{AlignedBuf, Io};

pub use completion::{Durable, DurableCallback};
pub use config::{Preallocate, RecoveryMode, RetryPolicy, WalConfig, WriterMode};
pub use error::{CorruptionReason, PoisonCause, WalError};
pub use index::LogPos;
pub use metrics::{WalMetrics, FSYNC_BUCKETS, FSYNC_BUCKET_BOUNDS};
pub use recovery::RecoveryReport;

use index::{Loc, Slot};
use metrics::Metrics;
use writer::{FlushCore, Flushed, Op, PrepareSlot, QueuedOp, Shared, State, COMPLETION_QUEUE_MAX};

/// An entry to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    /// Raft index; consecutive within an append and following the log's last index.
    pub index: u64,
    /// Raft term.
    pub term: u64,
    /// Opaque payload.
    pub payload: Vec<u8>,
}

/// An entry read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Raft index.
    pub index: u64,
    /// Raft term.
    pub term: u64,
    /// The payload as appended.
    pub payload: Vec<u8>,
}

/// The bounds of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogState {
    /// First readable index, if any entry is readable.
    pub first_index: Option<u64>,
    /// The last entry, if any.
    pub last: Option<LogPos>,
    /// The last purged position, if anything was purged.
    pub purged: Option<LogPos>,
    /// The index the next append must have, once known.
    pub next_index: Option<u64>,
}

/// What a purge removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeOutcome {
    /// Segment sequence numbers whose files were deleted.
    pub segments_deleted: Vec<u64>,
}

/// The WAL chunk store. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct WalStore {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    purge_lock: Mutex<()>,
    report: RecoveryReport,
}

impl std::fmt::Debug for WalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalStore").field("dir", &self.shared.config.dir).finish_non_exhaustive()
    }
}

enum Wait {
    Block,
    Fail,
}

impl WalStore {
    /// Opens (creating if needed) the store in `config.dir`, running recovery per `config.recovery_mode`.
    pub fn open(io: Arc<dyn Io>, config: WalConfig) -> Result<WalStore, WalError> {
        config.validate()?;
        let recovered = recovery::recover(io.as_ref(), &config)?;
        let mut report = recovered.report;
        let mut segments = recovered.segments;
        // Finish a purge that a crash interrupted after its record became durable.
        let leftover =
            recovery::segments_fully_purged(&segments, recovered.index.purged(), recovered.purge_seq);
        for seq in &leftover {
            if let Some(seg) = segments.remove(seq) {
                io.remove_file(&seg.path).map_err(|e| WalError::io("remove purged segment", &seg.path, e))?;
                report.removed_segments.push(*seq);
            }
        }
        if !leftover.is_empty() {
            io.sync_dir(&config.dir).map_err(|e| WalError::io("sync log directory", &config.dir, e))?;
        }
        segment::remove_prepared(io.as_ref(), &config.dir)?;
        let mut write_pos = recovered.write_pos;
        if segments.is_empty() {
            let first = segment::create(io.as_ref(), &config, 1, recovered.store_id, &Metrics::default())?;
            segments.insert(1, first);
            write_pos = segment::FIRST_RECORD_OFFSET;
        }
        let (active_seq, active) = match segments.iter().next_back() {
            Some((seq, seg)) => (*seq, seg.clone()),
            None => unreachable!("a segment was created above"),
        };
        tracing::info!(
            dir = %config.dir.display(),
            segments = report.segments,
            records = report.records,
            torn_tail = ?report.torn_tail,
            "WAL store opened"
        );
        let state = State {
            poison: None,
            closing: false,
            index: recovered.index,
            segments,
            queue: VecDeque::new(),
            inflight_records: 0,
            inflight_bytes: 0,
            next_lsn: recovered.next_lsn,
            space_wakers: Vec::new(),
            writer_wake_at: 1,
            purge_seq: recovered.purge_seq,
            retry_now: false,
            abandoned: None,
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(COMPLETION_QUEUE_MAX);
        let core = FlushCore {
            active_seq,
            active: active.file,
            active_path: active.path,
            write_pos,
            store_id: recovered.store_id,
            buf: AlignedBuf::new(),
            last_batch_ops: 0,
            prepare_requested: false,
            held: None,
        };
        let pending = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let shared = Arc::new(Shared {
            io,
            config,
            state: Mutex::new(state),
            work_cv: Condvar::new(),
            space_cv: Condvar::new(),
            metrics: Metrics::default(),
            core: Mutex::new(core),
            completions: Mutex::new(Some(tx)),
            completions_pending: Arc::clone(&pending),
            prepare: Mutex::new(PrepareSlot::default()),
            prepare_cv: Condvar::new(),
        });
        let spawn_err = |e: std::io::Error| {
            WalError::io("spawn WAL thread", &shared.config.dir, crate::io::IoError::os("spawn", e))
        };
        if shared.config.writer == WriterMode::Inline {
            // Without a completions channel, every batch's callbacks run on the flushing thread.
            shared.completions.lock().take();
            return Ok(WalStore {
                shared,
                threads: Mutex::new(Vec::new()),
                purge_lock: Mutex::new(()),
                report,
            });
        }
        let completer = std::thread::Builder::new()
            .name("bop-wal-complete".into())
            .spawn(move || writer::run_completer(rx, pending))
            .map_err(spawn_err)?;
        let writer_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("bop-wal-writer".into())
            .spawn(move || writer_shared.run_writer())
            .map_err(spawn_err)?;
        let preparer_shared = Arc::clone(&shared);
        let preparer = std::thread::Builder::new()
            .name("bop-wal-prepare".into())
            .spawn(move || preparer_shared.run_preparer())
            .map_err(spawn_err)?;
        Ok(WalStore {
            shared,
            threads: Mutex::new(vec![writer, completer, preparer]),
            purge_lock: Mutex::new(()),
            report,
        })
    }

    /// What recovery found when the store was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// The configuration the store runs with.
    pub fn config(&self) -> &WalConfig {
        &self.shared.config
    }

    fn check_open(st: &State) -> Result<(), WalError> {
        if let Some(cause) = &st.poison {
            return Err(WalError::Poisoned(Arc::clone(cause)));
        }
        if st.closing {
            return Err(WalError::Closed);
        }
        Ok(())
    }

    fn enqueue(&self, st: &mut State, op: Op, cost_bytes: usize, done: Option<DurableCallback>) {
        let lsn = st.next_lsn;
        st.next_lsn += 1;
        let records = usize::from(!matches!(op, Op::Barrier));
        st.inflight_records += records;
        st.inflight_bytes += cost_bytes;
        st.queue.push_back(QueuedOp { lsn, op, done, cost_bytes });
    }

    fn wake_writer(&self, st: &State) {
        if st.queue.len() >= st.writer_wake_at {
            self.shared.work_cv.notify_one();
        }
    }

    /// In [`WriterMode::Inline`], writes everything queued on this thread (call without the state lock),
    /// starting with a batch held for space, if any; it stops (leaving the work queued) when a batch cannot
    /// get space. A callback that submits more re-enters here, finds the flush lock held by its own
    /// caller and leaves the new work to that caller's loop.
    fn flush_inline(&self) {
        if self.shared.config.writer != WriterMode::Inline {
            return;
        }
        let Some(mut core) = self.shared.core.try_lock() else { return };
        while let Ok(Flushed::Wrote) = self.shared.flush_batch(&mut core, false) {}
    }

    /// Validates, waits for (or refuses on lack of) space, and enqueues `entries`.
    fn submit_entries(
        &self,
        entries: Vec<NewEntry>,
        done: DurableCallback,
        wait: Wait,
    ) -> Result<(), WalError> {
        self.submit_entries_from(&mut Some(entries), done, wait, true)
    }

    /// As `submit_entries`; the entries are taken out of `slot` only once they are accepted, so that a
    /// caller refused with backpressure still has them.
    fn submit_entries_from(
        &self,
        slot: &mut Option<Vec<NewEntry>>,
        done: DurableCallback,
        wait: Wait,
        wake_writer: bool,
    ) -> Result<(), WalError> {
        let Some(entries) = slot.as_ref() else { return Err(WalError::Closed) };
        let config = &self.shared.config;
        let payload_max = config.record_payload_max_bytes();
        let mut cost_bytes = 0usize;
        for entry in entries {
            if entry.payload.len() > payload_max {
                return Err(WalError::TooLarge { size_bytes: entry.payload.len(), max_bytes: payload_max });
            }
            cost_bytes += encoded_len(entry.payload.len());
        }
        let cost_records = entries.len().max(1);
        if cost_bytes > config.queue_bytes_max || cost_records > config.queue_records_max {
            return Err(WalError::TooLarge { size_bytes: cost_bytes, max_bytes: config.queue_bytes_max });
        }
        let mut st = self.shared.state.lock();
        loop {
            Self::check_open(&st)?;
            let fits = st.inflight_bytes + cost_bytes <= config.queue_bytes_max
                && st.inflight_records + cost_records <= config.queue_records_max;
            if fits {
                break;
            }
            match wait {
                Wait::Fail => {
                    Metrics::add(&self.shared.metrics.backpressure_rejections, 1);
                    return Err(WalError::Backpressure {
                        queued_records: st.inflight_records,
                        queued_bytes: st.inflight_bytes,
                        records_max: config.queue_records_max,
                        bytes_max: config.queue_bytes_max,
                    });
                }
                Wait::Block => self.shared.space_cv.wait(&mut st),
            }
        }
        if let (Some(expected), Some(first)) = (st.index.next_index(), entries.first()) {
            if first.index != expected {
                return Err(WalError::NonContiguous { expected, got: first.index });
            }
        }
        for pair in entries.windows(2) {
            if pair[1].index != pair[0].index + 1 {
                return Err(WalError::NonContiguous { expected: pair[0].index + 1, got: pair[1].index });
            }
        }
        Metrics::add(&self.shared.metrics.appends, 1);
        let entries = slot.take().unwrap_or_default();
        let count = entries.len();
        let mut done = Some(done);
        if count == 0 {
            self.enqueue(&mut st, Op::Barrier, 0, done.take());
        }
        for (i, entry) in entries.into_iter().enumerate() {
            let payload = Arc::new(entry.payload);
            let lsn = st.next_lsn;
            let slot = Slot { term: entry.term, lsn, loc: Loc::Pending(Arc::clone(&payload)) };
            st.index.push(entry.index, slot);
            let cost = encoded_len(payload.len());
            let op = Op::Entry { index: entry.index, term: entry.term, payload };
            let callback = if i + 1 == count { done.take() } else { None };
            self.enqueue(&mut st, op, cost, callback);
        }
        let depth = st.inflight_records as u64;
        self.shared.metrics.queue_depth_peak.fetch_max(depth, std::sync::atomic::Ordering::Relaxed);
        if wake_writer {
            self.wake_writer(&st);
        }
        drop(st);
        self.flush_inline();
        Ok(())
    }

    /// Appends entries, waiting while the in-flight bounds are full. Returns once the entries are
    /// readable; the ticket resolves when they are durable. An empty append resolves once everything
    /// appended before it is durable.
    pub fn append(&self, entries: Vec<NewEntry>) -> Result<Durable, WalError> {
        let (ticket, done) = Durable::new(Arc::downgrade(&self.shared));
        self.submit_entries(entries, done, Wait::Block)?;
        Ok(ticket)
    }

    /// Appends and returns once the entries are durable (`append` followed by [`Durable::wait`]).
    pub fn append_durable(&self, entries: Vec<NewEntry>) -> Result<(), WalError> {
        self.append(entries)?.wait()
    }

    /// Like [`WalStore::append`], but refuses with [`WalError::Backpressure`] instead of waiting.
    pub fn try_append(&self, entries: Vec<NewEntry>) -> Result<Durable, WalError> {
        let (ticket, done) = Durable::new(Arc::downgrade(&self.shared));
        self.submit_entries(entries, done, Wait::Fail)?;
        Ok(ticket)
    }

    /// Appends, waiting for space, and calls `done` on the completer thread once durable (or failed).
    /// If this returns an error, `done` is dropped without being called.
    pub fn append_with(&self, entries: Vec<NewEntry>, done: DurableCallback) -> Result<(), WalError> {
        self.submit_entries(entries, done, Wait::Block)
    }

    /// Like [`WalStore::append_with`], but refuses with [`WalError::Backpressure`] instead of waiting.
    pub fn try_append_with(&self, entries: Vec<NewEntry>, done: DurableCallback) -> Result<(), WalError> {
        self.submit_entries(entries, done, Wait::Fail)
    }

    /// Appends from async code: waits for space without blocking the thread, then returns the ticket.
    pub fn append_async(&self, entries: Vec<NewEntry>) -> AppendFuture<'_> {
        AppendFuture { store: self, entries: Some(entries) }
    }

    /// Appends from async code with a callback: waits for space without blocking the thread, then enqueues;
    /// `done` runs once the entries are durable (or can never be). If the future resolves to an error,
    /// `done` was dropped without being called.
    pub fn append_with_async(&self, entries: Vec<NewEntry>, done: DurableCallback) -> AppendWithFuture<'_> {
        AppendWithFuture { store: self, entries: Some(entries), done: Some(done) }
    }

    /// A ticket that resolves once everything submitted before it is durable.
    pub fn flush(&self) -> Result<Durable, WalError> {
        let (ticket, done) = Durable::new(Arc::downgrade(&self.shared));
        let mut st = self.shared.state.lock();
        Self::check_open(&st)?;
        // Nothing accepted is waiting for durability, and no earlier callback is still to run: resolve at
        // once instead of sending the writer an empty batch.
        let settled = st.inflight_records == 0
            && st.queue.is_empty()
            && self.shared.completions_pending.load(std::sync::atomic::Ordering::Acquire) == 0;
        if settled {
            drop(st);
            done(Ok(()));
            return Ok(ticket);
        }
        self.enqueue(&mut st, Op::Barrier, 0, Some(done));
        self.wake_writer(&st);
        drop(st);
        self.flush_inline();
        Ok(ticket)
    }

    /// Removes every entry at or after `index` (readers stop seeing them at once) and returns a ticket
    /// that resolves when the removal is durable. `index` may not be at or below the purge point.
    pub fn submit_truncate_from(&self, index: u64) -> Result<Durable, WalError> {
        let (ticket, done) = Durable::new(Arc::downgrade(&self.shared));
        let mut st = self.shared.state.lock();
        Self::check_open(&st)?;
        if let Some(purged) = st.index.purged() {
            if index <= purged.index {
                return Err(WalError::TruncateBelowPurged {
                    index: index.saturating_sub(1),
                    purged: purged.index,
                });
            }
        }
        st.index.truncate_from(index);
        self.enqueue(&mut st, Op::Truncate { from: index }, 0, Some(done));
        self.wake_writer(&st);
        drop(st);
        self.flush_inline();
        Ok(ticket)
    }

    /// Removes every entry after `index` (readers stop seeing them at once) and returns a ticket that
    /// resolves when the removal is durable.
    pub fn submit_truncate_after(&self, index: u64) -> Result<Durable, WalError> {
        self.submit_truncate_from(index.saturating_add(1))
    }

    /// Removes every entry after `index`; durable when this returns.
    pub fn truncate_after(&self, index: u64) -> Result<(), WalError> {
        self.submit_truncate_after(index)?.wait()
    }

    /// Purges every entry up to and including `pos.index` (whose term is `pos.term`; it may lie beyond
    /// the last entry, after a snapshot install). The purge point is durable before any file is deleted;
    /// whole segments below it are then deleted without holding up appends.
    pub fn purge_upto(&self, pos: LogPos) -> Result<PurgeOutcome, WalError> {
        let _one_purge_at_a_time = self.purge_lock.lock();
        if let Some(ticket) = self.submit_purge(pos, None)? {
            ticket.wait()?;
        }
        self.delete_purged_segments()
    }

    /// Purges every entry up to and including `pos.index`, recording `meta` (opaque, at most a record's
    /// payload) with the purge point, and returns a ticket that resolves when the purge point is durable
    /// (`None` if nothing was left to purge). Entries disappear from reads at once. Call
    /// [`WalStore::delete_purged_segments`] once the ticket resolved to free the disk space.
    pub fn submit_purge(&self, pos: LogPos, meta: Option<Vec<u8>>) -> Result<Option<Durable>, WalError> {
        if let Some(meta) = &meta {
            let max_bytes = self.shared.config.record_payload_max_bytes();
            if meta.len() > max_bytes {
                return Err(WalError::TooLarge { size_bytes: meta.len(), max_bytes });
            }
        }
        let (ticket, done) = Durable::new(Arc::downgrade(&self.shared));
        let mut st = self.shared.state.lock();
        Self::check_open(&st)?;
        if st.index.purged().is_some_and(|p| p.index >= pos.index) {
            return Ok(None);
        }
        let meta = meta.map(Arc::new);
        let cost = meta.as_ref().map_or(0, |m| encoded_len(m.len()));
        st.index.purge_upto(pos, meta.clone());
        self.enqueue(&mut st, Op::Purge { pos, meta }, cost, Some(done));
        self.wake_writer(&st);
        drop(st);
        self.flush_inline();
        Ok(Some(ticket))
    }

    /// Deletes the segment files that durable purges left entirely below the purge point (never the one
    /// holding the newest purge record), then fsyncs the directory. Appends go on meanwhile. A failed
    /// directory fsync poisons the store.
    pub fn delete_purged_segments(&self) -> Result<PurgeOutcome, WalError> {
        let doomed: Vec<_> = {
            let mut st = self.shared.state.lock();
            let seqs = recovery::segments_fully_purged(&st.segments, st.index.purged(), st.purge_seq);
            seqs.iter().filter_map(|seq| st.segments.remove(seq).map(|seg| (*seq, seg.path))).collect()
        };
        let io = &self.shared.io;
        for (_, path) in &doomed {
            io.remove_file(path).map_err(|e| WalError::io("delete purged segment", path, e))?;
        }
        if !doomed.is_empty() {
            let dir = &self.shared.config.dir;
            if let Err(error) = io.sync_dir(dir) {
                // A failed fsync is never retried: the store is poisoned, and reopening recovers it.
                let cause =
                    Arc::new(PoisonCause::Io { during: "sync log directory", path: dir.clone(), error });
                self.shared.poison(Arc::clone(&cause), Vec::new());
                return Err(WalError::Poisoned(cause));
            }
            Metrics::add(&self.shared.metrics.segments_deleted, doomed.len() as u64);
        }
        Ok(PurgeOutcome { segments_deleted: doomed.into_iter().map(|(seq, _)| seq).collect() })
    }

    /// The opaque bytes recorded with the newest purge ([`WalStore::submit_purge`]), if any.
    pub fn purged_meta(&self) -> Option<Vec<u8>> {
        self.shared.state.lock().index.purged_meta().map(|m| m.as_ref().clone())
    }

    /// The entry at `index`, or `None` if it is not in the log (purged, truncated or never appended).
    pub fn read(&self, index: u64) -> Result<Option<Entry>, WalError> {
        let (term, seq, offset, len, file, path) = {
            let st = self.shared.state.lock();
            if let Some(cause) = &st.poison {
                return Err(WalError::Poisoned(Arc::clone(cause)));
            }
            let Some(slot) = st.index.get(index) else { return Ok(None) };
            match &slot.loc {
                Loc::Pending(payload) => {
                    return Ok(Some(Entry { index, term: slot.term, payload: payload.as_ref().clone() }))
                }
                Loc::Disk { seq, offset, len } => {
                    let Some(seg) = st.segments.get(seq) else {
                        return Err(WalError::Corruption {
                            segment: *seq,
                            offset: *offset,
                            reason: CorruptionReason::MissingSegment { missing: *seq },
                        });
                    };
                    (slot.term, *seq, *offset, *len, Arc::clone(&seg.file), seg.path.clone())
                }
            }
        };
        let bytes = segment::read_span(file.as_ref(), &path, offset, encoded_len(len as usize))?;
        let corrupt = |reason| WalError::Corruption { segment: seq, offset, reason };
        let rec = match decode_record(&bytes, seq as u32) {
            Ok(Some(rec)) => rec,
            Ok(None) => {
                return Err(corrupt(CorruptionReason::WrongRecord {
                    index,
                    term,
                    found_index: 0,
                    found_term: 0,
                }))
            }
            Err(e) => return Err(corrupt(CorruptionReason::Decode(e))),
        };
        let h = rec.header;
        if h.kind != RecordKind::Entry || h.index != index || h.term != term {
            return Err(corrupt(CorruptionReason::WrongRecord {
                index,
                term,
                found_index: h.index,
                found_term: h.term,
            }));
        }
        Ok(Some(Entry { index, term, payload: rec.payload.to_vec() }))
    }

    /// Reads `len_bytes` bytes at `offset` within the payload of entry `index`, or `None` if the entry is
    /// not in the log. The WAL's record checksum covers the whole payload and is not checked here: callers
    /// that read part of a payload carry their own checksums (the page store's frames do).
    pub fn read_payload_range(
        &self,
        index: u64,
        offset: usize,
        len_bytes: usize,
    ) -> Result<Option<Vec<u8>>, WalError> {
        let (record_offset, file, path) = {
            let st = self.shared.state.lock();
            if let Some(cause) = &st.poison {
                return Err(WalError::Poisoned(Arc::clone(cause)));
            }
            let Some(slot) = st.index.get(index) else { return Ok(None) };
            let payload_len = match &slot.loc {
                Loc::Pending(payload) => payload.len(),
                Loc::Disk { len, .. } => *len as usize,
            };
            if offset.checked_add(len_bytes).is_none_or(|end| end > payload_len) {
                return Err(WalError::PayloadRange { index, offset, len_bytes, payload_len });
            }
            match &slot.loc {
                Loc::Pending(payload) => return Ok(Some(payload[offset..offset + len_bytes].to_vec())),
                Loc::Disk { seq, offset: record_offset, .. } => {
                    let Some(seg) = st.segments.get(seq) else {
                        return Err(WalError::Corruption {
                            segment: *seq,
                            offset: *record_offset,
                            reason: CorruptionReason::MissingSegment { missing: *seq },
                        });
                    };
                    (*record_offset, Arc::clone(&seg.file), seg.path.clone())
                }
            }
        };
        let at = record_offset + (crate::format::RECORD_HEADER_LEN + offset) as u64;
        segment::read_span(file.as_ref(), &path, at, len_bytes).map(Some)
    }

    /// Entries in `[start, end)` that are in the log, in order, stopping early (after at least one) once
    /// `bytes_max` payload bytes are gathered.
    pub fn read_range(&self, start: u64, end: u64, bytes_max: usize) -> Result<Vec<Entry>, WalError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut index = start;
        while index < end {
            let Some(entry) = self.read(index)? else { break };
            bytes += entry.payload.len();
            out.push(entry);
            if bytes >= bytes_max {
                break;
            }
            index += 1;
        }
        Ok(out)
    }

    /// The payload length of the entry at `index`, if it is in the log.
    pub fn payload_len(&self, index: u64) -> Option<usize> {
        let st = self.shared.state.lock();
        st.index.get(index).map(|slot| match &slot.loc {
            Loc::Pending(payload) => payload.len(),
            Loc::Disk { len, .. } => *len as usize,
        })
    }

    /// The term of the entry at `index`, if it is in the log.
    pub fn term(&self, index: u64) -> Option<u64> {
        self.shared.state.lock().index.get(index).map(|slot| slot.term)
    }

    /// The bounds of the log.
    pub fn state(&self) -> LogState {
        let st = self.shared.state.lock();
        LogState {
            first_index: st.index.first_index(),
            last: st.index.last(),
            purged: st.index.purged(),
            next_index: st.index.next_index(),
        }
    }

    /// Number of segment files the store holds.
    pub fn segment_count(&self) -> usize {
        self.shared.state.lock().segments.len()
    }

    /// A snapshot of the counters.
    pub fn metrics(&self) -> WalMetrics {
        let depth = self.shared.state.lock().inflight_records as u64;
        self.shared.metrics.snapshot(depth)
    }

    /// Why the store is poisoned, if it is.
    pub fn poisoned(&self) -> Option<Arc<PoisonCause>> {
        self.shared.state.lock().poison.clone()
    }

    /// True while the WAL lacks disk space: from the moment creating, reserving or preparing a segment, or
    /// writing a batch's data failed with ENOSPC or EDQUOT, until an operation of that kind next succeeds.
    /// That includes the background preparer failing to prepare the next segment ahead (with the writer
    /// threads, once the active segment is half full): the alarm is then up while the active segment
    /// still has room. Such failures do not poison the store; writes held for space resume by themselves
    /// once space is freed (see docs/design.md, Poisoning). Cheap (two atomic loads).
    pub fn space_alarm(&self) -> bool {
        self.shared.metrics.space_alarm()
    }

    /// How long the writer's current write, fdatasync or segment roll has been running; `None` while no
    /// such call is running (between batches, and while a batch held for space waits out its backoff).
    /// Cheap (one atomic load): meant to be polled by a health check to detect a hung disk.
    pub fn io_stalled_for(&self) -> Option<std::time::Duration> {
        self.shared.metrics.io_stalled_for()
    }

    /// Retries a batch held for lack of space now, instead of after the backoff. With the writer threads
    /// it wakes the writer and returns; with [`WriterMode::Inline`] it retries on this thread (and runs
    /// the callbacks of what becomes durable) before returning — the inline writer retries only when
    /// asked: here, or at the next submission. Does nothing if no batch is held.
    pub fn retry_now(&self) {
        self.shared.retry_now();
    }

    /// Gives up on a batch held for lack of space, as [`WalStore::close`] would: if one is held, the store
    /// begins closing (later submissions are refused), the held batch and everything queued behind it fail
    /// with [`WalError::NoSpace`] (not durable, not poisoned), and their callbacks run. Does nothing when no
    /// batch is held. For a node shutting down while its disk is full: Raft's shutdown waits for the
    /// appends it has in flight, which would otherwise wait for space for ever. [`WalStore::close`] must
    /// still be called.
    pub fn stop_waiting_for_space(&self) {
        if !self.shared.writes_held() {
            return;
        }
        self.shared.state.lock().closing = true;
        if self.shared.config.writer == WriterMode::Inline {
            if let Some(mut core) = self.shared.core.try_lock() {
                self.shared.abandon_held(&mut core);
            }
        }
        self.shared.work_cv.notify_all();
        self.shared.space_cv.notify_all();
    }

    /// Writes everything accepted so far, stops the threads and closes the store. Outstanding tickets
    /// resolve (durable, or failed if the store is poisoned). If a batch is held for lack of space, one
    /// more attempt is made; if it fails too, the operations still waiting fail with
    /// [`WalError::NoSpace`] (they are not durable; the store is not poisoned, and the log on disk is what
    /// was acknowledged), and `close` returns that error.
    pub fn close(&self) -> Result<(), WalError> {
        if self.shared.config.writer == WriterMode::Inline {
            self.shared.state.lock().closing = true;
            if let Some(mut core) = self.shared.core.try_lock() {
                while let Ok(Flushed::Wrote) = self.shared.flush_batch(&mut core, false) {}
                self.shared.abandon_held(&mut core);
            }
        }
        {
            let mut st = self.shared.state.lock();
            st.closing = true;
        }
        self.shared.work_cv.notify_all();
        self.shared.space_cv.notify_all();
        let mut threads = self.threads.lock();
        // The writer drains the queue first; then closing the channel lets the completer finish.
        if !threads.is_empty() {
            let writer = threads.remove(0);
            let _ = writer.join();
        }
        self.shared.completions.lock().take();
        self.shared.prepare.lock().closing = true;
        self.shared.prepare_cv.notify_all();
        for handle in threads.drain(..) {
            let _ = handle.join();
        }
        if self.shared.prepare.lock().ready.take().is_some() {
            // Unused; the next open would remove it anyway.
            let _ = segment::remove_prepared(self.shared.io.as_ref(), &self.shared.config.dir);
        }
        let st = self.shared.state.lock();
        match (&st.poison, &st.abandoned) {
            (Some(cause), _) => Err(WalError::Poisoned(Arc::clone(cause))),
            (None, Some(cause)) => Err(WalError::NoSpace(Arc::clone(cause))),
            (None, None) => Ok(()),
        }
    }
}

impl Drop for WalStore {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// Future returned by [`WalStore::append_async`].
pub struct AppendFuture<'a> {
    store: &'a WalStore,
    entries: Option<Vec<NewEntry>>,
}

impl Future for AppendFuture<'_> {
    type Output = Result<Durable, WalError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Register interest before trying, so a release between the try and the registration is not lost.
        {
            let mut st = self.store.shared.state.lock();
            st.space_wakers.push(cx.waker().clone());
        }
        // Tickets of async appends never lead a flush: awaiting must not block the executor.
        let (ticket, done) = Durable::new(std::sync::Weak::new());
        let this = &mut *self;
        match this.store.submit_entries_from(&mut this.entries, done, Wait::Fail, true) {
            Ok(()) => Poll::Ready(Ok(ticket)),
            Err(WalError::Backpressure { .. }) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// Future returned by [`WalStore::append_with_async`].
pub struct AppendWithFuture<'a> {
    store: &'a WalStore,
    entries: Option<Vec<NewEntry>>,
    done: Option<DurableCallback>,
}

impl Future for AppendWithFuture<'_> {
    type Output = Result<(), WalError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        {
            let mut st = self.store.shared.state.lock();
            st.space_wakers.push(cx.waker().clone());
        }
        let this = &mut *self;
        let Some(done) = this.done.take() else { return Poll::Ready(Err(WalError::Closed)) };
        // The callback goes to the store only with accepted entries; on backpressure it comes back.
        let held = Arc::new(Mutex::new(Some(done)));
        let slot = Arc::clone(&held);
        let forward: DurableCallback = Box::new(move |result| {
            if let Some(done) = slot.lock().take() {
                done(result);
            }
        });
        match this.store.submit_entries_from(&mut this.entries, forward, Wait::Fail, true) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(WalError::Backpressure { .. }) => {
                this.done = held.lock().take();
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}
