//! The write side. Whoever holds the flush lock (the writer thread, or an appender waiting in
//! `append_durable` that found the lock free — leader/follower group commit) turns the queue into a batch:
//! one write and one fdatasync. Callbacks of small batches run inline when nothing is pending ahead of
//! them; larger ones go to the completer thread, so that waking many waiters overlaps with the next batch's
//! I/O. Either way they run in submission order.
//!
//! Lack of space (ENOSPC, EDQUOT) creating, reserving or preparing a segment, or writing a batch, does not
//! poison the store: the flusher keeps the batch (`FlushCore::held`, with how far it got) and retries it
//! later — the writer thread with a backoff, the inline writer at the next submission — rewriting a
//! partial write at the same offset. A failed sync poisons, whatever its errno.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::format::{encode_record, encoded_len, RecordHeader, RecordKind, FLAG_BATCH_START};
use crate::io::{align_up, AlignedBuf, Io, IoError, IoFile};
use crate::panic;

use super::completion::DurableCallback;
use super::config::{RetryPolicy, WalConfig, WriterMode};
use super::error::PoisonCause;
use super::index::{Loc, LogIndex, LogPos};
use super::metrics::Metrics;
use super::segment::{self, SegmentError, SegmentHandle, FIRST_RECORD_OFFSET};
use super::WalError;

/// Completed batches waiting for the completer thread (each holds at most `batch_bytes_max` of records).
pub(crate) const COMPLETION_QUEUE_MAX: usize = 64;

pub(crate) enum Op {
    Entry {
        index: u64,
        term: u64,
        payload: Arc<Vec<u8>>,
    },
    /// Removes entries at or after `from`.
    Truncate {
        from: u64,
    },
    Purge {
        pos: LogPos,
        meta: Option<Arc<Vec<u8>>>,
    },
    /// Writes nothing; its callback fires once everything before it is durable.
    Barrier,
}

pub(crate) struct QueuedOp {
    pub lsn: u64,
    pub op: Op,
    pub done: Option<DurableCallback>,
    pub cost_bytes: usize,
}

impl QueuedOp {
    fn cost_records(&self) -> usize {
        usize::from(!matches!(self.op, Op::Barrier))
    }
}

pub(crate) struct State {
    pub poison: Option<Arc<PoisonCause>>,
    pub closing: bool,
    pub index: LogIndex,
    pub segments: BTreeMap<u64, SegmentHandle>,
    pub queue: VecDeque<QueuedOp>,
    /// Records and bytes accepted and not yet durable (queued or being written).
    pub inflight_records: usize,
    pub inflight_bytes: usize,
    pub next_lsn: u64,
    /// Async appenders waiting for space.
    pub space_wakers: Vec<Waker>,
    /// Queue length at which an appender wakes the writer (`usize::MAX` while it is busy writing).
    pub writer_wake_at: usize,
    /// Segment holding the newest purge record (never deleted, so the purge point survives reopen).
    pub purge_seq: Option<u64>,
    /// Asks the writer thread to retry a batch held for space without waiting out its backoff.
    pub retry_now: bool,
    /// Set when the store closed with a batch held for space (its operations failed with `NoSpace`).
    pub abandoned: Option<Arc<PoisonCause>>,
}

pub(crate) struct Shared {
    pub io: Arc<dyn Io>,
    pub config: WalConfig,
    pub state: Mutex<State>,
    /// Only the writer thread waits on it (for work, or for stragglers).
    pub work_cv: Condvar,
    pub space_cv: Condvar,
    pub metrics: Metrics,
    /// The flush lock: whoever holds it writes the next batch.
    pub core: Mutex<FlushCore>,
    /// To the completer thread; taken (closing the channel) when the store closes.
    pub completions: Mutex<Option<SyncSender<Completion>>>,
    /// Batches handed to the completer and not yet finished; inline callbacks need it to be zero.
    pub completions_pending: Arc<AtomicUsize>,
    /// The next segment, prepared ahead by the preparer thread (writer threads only).
    pub prepare: Mutex<PrepareSlot>,
    pub prepare_cv: Condvar,
}

/// Hand-off between the flusher and the preparer thread.
#[derive(Default)]
pub(crate) struct PrepareSlot {
    /// The flusher asked for the next segment and the preparer has not finished it.
    pub requested: bool,
    /// A prepared file under `segment::PREPARED_NAME`, ready for a roll.
    pub ready: Option<Arc<dyn IoFile>>,
    pub closing: bool,
}

/// The preparer zero-fills at most this many bytes per byte the log appends (see
/// [`Shared::pace_zero_fill`]): started at half full, a 64 MiB fill is done when the active segment is about
/// 83 % full.
const ZERO_FILL_PACE: u64 = 3;

/// The fraction of a segment (numerator, denominator) the log appends after a preparation began beyond
/// which the preparer no longer paces its fill (the active segment is then about 7/8 full).
const ZERO_FILL_UNPACED_AFTER: (u64, u64) = (3, 8);

/// How often a paced preparer looks again at what the log appended: every 2 ms while the log moves, backing
/// off to every 100 ms while it does not.
const ZERO_FILL_PACE_POLL: (std::time::Duration, std::time::Duration) =
    (std::time::Duration::from_millis(2), std::time::Duration::from_millis(100));

/// Callbacks of a batch are run inline by the flusher when there are at most this many and nothing is
/// pending at the completer; more are handed to the completer.
const INLINE_CALLBACKS_MAX: usize = 4;

impl Shared {
    /// Poisons the store with `cause`: every queued operation fails, as does everything submitted later.
    pub(crate) fn poison(&self, cause: Arc<PoisonCause>, mut failed: Vec<DurableCallback>) {
        tracing::error!(%cause, "WAL store poisoned; reopen to recover");
        Metrics::add(&self.metrics.permanent_failures, 1);
        if let PoisonCause::Panic(ctx) = &*cause {
            *self.metrics.last_panic.lock() =
                Some(format!("{ctx}\n{}", ctx.backtrace.as_deref().unwrap_or("")));
        }
        let wakers = {
            let mut st = self.state.lock();
            st.poison.get_or_insert_with(|| Arc::clone(&cause));
            failed.extend(st.queue.drain(..).filter_map(|op| op.done));
            st.inflight_records = 0;
            st.inflight_bytes = 0;
            std::mem::take(&mut st.space_wakers)
        };
        self.space_cv.notify_all();
        self.work_cv.notify_all();
        for waker in wakers {
            waker.wake();
        }
        self.dispatch(failed, Err(Failure::Poisoned(cause)));
    }

    /// Runs or hands off a batch's callbacks, keeping submission order. Called with the flush lock held
    /// (or after poisoning, when no flush can follow).
    fn dispatch(&self, callbacks: Vec<DurableCallback>, result: Result<(), Failure>) {
        if callbacks.is_empty() {
            return;
        }
        let inline = result.is_ok()
            && callbacks.len() <= INLINE_CALLBACKS_MAX
            && self.completions_pending.load(Ordering::Acquire) == 0;
        let completion = Completion { callbacks, result };
        let completion = if inline {
            completion
        } else {
            let tx = self.completions.lock();
            match tx.as_ref() {
                Some(tx) => {
                    self.completions_pending.fetch_add(1, Ordering::AcqRel);
                    match tx.send(completion) {
                        Ok(()) => return,
                        Err(std::sync::mpsc::SendError(back)) => {
                            self.completions_pending.fetch_sub(1, Ordering::AcqRel);
                            back
                        }
                    }
                }
                None => completion,
            }
        };
        completion.run();
    }

    /// With the flush lock held: takes a batch (first the one held for space, if any), writes it, makes
    /// it durable and dispatches its callbacks. Returns `Err(())` once the store is poisoned.
    pub(crate) fn flush_batch(&self, core: &mut FlushCore, straggler_wait: bool) -> Result<Flushed, ()> {
        let (batch, mut progress) = match core.held.take() {
            Some(held) => held,
            None => match self.take_batch(core.last_batch_ops, straggler_wait) {
                Some(batch) => (batch, Progress::default()),
                None => {
                    return if self.state.lock().poison.is_some() { Err(()) } else { Ok(Flushed::Idle) };
                }
            },
        };
        match panic::catch(|| core.write_batch(self, &batch, &mut progress)) {
            Ok(Ok(())) => {
                if self.metrics.writer_held.swap(false, Ordering::AcqRel) {
                    tracing::info!("WAL writes resumed: space for the log again");
                }
                core.last_batch_ops = batch.len();
                self.complete(batch, progress.placed);
                Ok(Flushed::Wrote)
            }
            Ok(Err(WriteFail::NoSpace(cause))) => {
                let cause = Arc::new(cause);
                self.metrics.no_space(&cause);
                if !self.metrics.writer_held.swap(true, Ordering::AcqRel) {
                    tracing::warn!(%cause, "no space for the log; writes held until space is freed");
                }
                core.held = Some((batch, progress));
                if self.config.writer == WriterMode::Threads {
                    // Whoever held it (a leading appender, say), the writer thread retries it. Taking the
                    // state lock orders the flag before the writer's check, so the wake-up is not lost.
                    drop(self.state.lock());
                    self.work_cv.notify_all();
                }
                Ok(Flushed::Held)
            }
            Ok(Err(WriteFail::Permanent(cause))) => {
                self.metrics.writer_held.store(false, Ordering::Release);
                core.blank_failed_batch(self);
                self.poison(Arc::new(cause), batch.into_iter().filter_map(|op| op.done).collect());
                Err(())
            }
            Err(ctx) => {
                self.metrics.writer_held.store(false, Ordering::Release);
                core.blank_failed_batch(self);
                self.poison(
                    Arc::new(PoisonCause::Panic(ctx)),
                    batch.into_iter().filter_map(|op| op.done).collect(),
                );
                Err(())
            }
        }
    }

    /// Takes the queued operations (up to `batch_bytes_max`). With `straggler_wait`, first waits a bounded
    /// moment for the appenders the previous batch released, if fewer than `last_batch_ops` are queued.
    fn take_batch(&self, last_batch_ops: usize, straggler_wait: bool) -> Option<Vec<QueuedOp>> {
        let mut st = self.state.lock();
        if st.poison.is_some() || st.queue.is_empty() {
            return None;
        }
        // A lone appender (previous batch of one) never waits here.
        let wait_us = self.config.group_commit_wait_us_max;
        if straggler_wait && wait_us > 0 && st.queue.len() < last_batch_ops {
            let deadline = Instant::now() + Duration::from_micros(wait_us);
            st.writer_wake_at = last_batch_ops;
            while st.queue.len() < last_batch_ops && !st.closing && st.poison.is_none() {
                if self.work_cv.wait_until(&mut st, deadline).timed_out() {
                    break;
                }
            }
            st.writer_wake_at = usize::MAX;
        }
        let mut bytes = 0usize;
        let mut batch = Vec::new();
        while let Some(front) = st.queue.front() {
            if !batch.is_empty() && bytes + front.cost_bytes > self.config.batch_bytes_max {
                break;
            }
            bytes += front.cost_bytes;
            batch.extend(st.queue.pop_front());
        }
        Some(batch)
    }

    fn complete(&self, batch: Vec<QueuedOp>, placed: Vec<Placed>) {
        let records: usize = batch.iter().map(QueuedOp::cost_records).sum();
        let bytes: usize = batch.iter().map(|op| op.cost_bytes).sum();
        let wakers = {
            let mut st = self.state.lock();
            for p in &placed {
                let Some(queued) = batch.get(p.op) else { continue };
                match &queued.op {
                    Op::Entry { index, payload, .. } => {
                        let loc = Loc::Disk { seq: p.seq, offset: p.offset, len: payload.len() as u32 };
                        st.index.mark_durable(*index, queued.lsn, loc);
                        if let Some(seg) = st.segments.get_mut(&p.seq) {
                            seg.max_index = seg.max_index.max(Some(*index));
                        }
                    }
                    Op::Purge { .. } => st.purge_seq = Some(p.seq),
                    Op::Truncate { .. } | Op::Barrier => {}
                }
            }
            st.inflight_records -= records;
            st.inflight_bytes -= bytes;
            std::mem::take(&mut st.space_wakers)
        };
        self.space_cv.notify_all();
        for waker in wakers {
            waker.wake();
        }
        Metrics::add(&self.metrics.records, records as u64);
        Metrics::add(&self.metrics.batches, 1);
        self.dispatch(batch.into_iter().filter_map(|op| op.done).collect(), Ok(()));
    }

    /// At close, with a batch still held for space (with the flush lock held, `closing` set): the
    /// operations of the batch already durable (written into the previous segment before a roll failed)
    /// complete; the rest of the batch and everything queued fail with [`WalError::NoSpace`], without
    /// poisoning, and whatever the held batch may have written into the active segment is blanked (it was
    /// never synced, and it was not acknowledged). Returns the cause, if a batch was held.
    pub(crate) fn abandon_held(&self, core: &mut FlushCore) -> Option<Arc<PoisonCause>> {
        let (mut batch, progress) = core.held.take()?;
        self.metrics.writer_held.store(false, Ordering::Release);
        let cause = self.metrics.last_no_space.lock().clone().unwrap_or_else(|| {
            Arc::new(io_cause(
                "write batch",
                &core.active_path,
                IoError::os("write", std::io::Error::from(std::io::ErrorKind::StorageFull)),
            ))
        });
        let rest = batch.split_off(progress.durable_ops.min(batch.len()));
        let placed = progress.placed.into_iter().filter(|p| p.op < batch.len()).collect();
        if !batch.is_empty() {
            self.complete(batch, placed);
        }
        core.blank_failed_batch(self);
        core.buf.clear();
        let mut failed: Vec<DurableCallback> = rest.into_iter().filter_map(|op| op.done).collect();
        let wakers = {
            let mut st = self.state.lock();
            failed.extend(st.queue.drain(..).filter_map(|op| op.done));
            st.inflight_records = 0;
            st.inflight_bytes = 0;
            st.abandoned = Some(Arc::clone(&cause));
            std::mem::take(&mut st.space_wakers)
        };
        self.space_cv.notify_all();
        for waker in wakers {
            waker.wake();
        }
        tracing::error!(
            %cause,
            failed = failed.len(),
            "WAL closed while waiting for space; the waiting operations failed (not poisoned, not durable)"
        );
        self.dispatch(failed, Err(Failure::NoSpace(Arc::clone(&cause))));
        Some(cause)
    }

    /// True while the flusher holds a batch for lack of space.
    pub(crate) fn writes_held(&self) -> bool {
        self.metrics.writer_held.load(Ordering::Acquire)
    }

    /// Writes batches on the calling thread while the flush lock is free and `done` is false; returns as
    /// soon as someone else is flushing (after making sure a flusher will follow) or there is nothing left.
    /// With the writer threads, a batch held for space is left to the writer thread's backoff.
    pub(crate) fn lead_until(&self, done: impl Fn() -> bool) {
        while !done() {
            if self.config.writer == WriterMode::Threads && self.writes_held() {
                return;
            }
            let Some(mut core) = self.core.try_lock() else {
                // Someone else is writing a batch; make sure a flusher picks up what is queued after it.
                self.work_cv.notify_one();
                return;
            };
            if core.last_batch_ops > 1 {
                // Appenders are concurrent: the writer thread's bounded wait for stragglers makes bigger
                // batches than leading right away would. Leading pays off for a lone appender.
                drop(core);
                self.work_cv.notify_one();
                return;
            }
            match self.flush_batch(&mut core, false) {
                Ok(Flushed::Wrote) => {}
                // Nothing queued (another flusher took it; its callbacks may still be on the way), held
                // for space, or poisoned.
                Ok(Flushed::Idle | Flushed::Held) | Err(()) => return,
            }
        }
    }

    /// Asks the preparer thread for the next segment, unless one is ready or on its way.
    fn request_prepare(&self) {
        let mut slot = self.prepare.lock();
        if slot.ready.is_none() && !slot.requested && !slot.closing {
            slot.requested = true;
            self.prepare_cv.notify_one();
        }
    }

    /// The preparer thread's body: prepares a segment file whenever asked, until the store closes. A
    /// failure for lack of space raises the space alarm (the active segment may still have room: the alarm
    /// comes before the log is blocked) and is retried with the no-space backoff until a preparation
    /// succeeds, which clears it; meanwhile, and while the flusher itself is held for space, the roll
    /// creates the segment itself. Any other failure is logged and left to the roll (which poisons the
    /// store if it fails too).
    pub(crate) fn run_preparer(&self) {
        let mut attempt = 0u32;
        loop {
            {
                let mut slot = self.prepare.lock();
                while !slot.requested && !slot.closing {
                    self.prepare_cv.wait(&mut slot);
                }
                if slot.closing {
                    return;
                }
                if attempt > 0 {
                    // A retry after lack of space: wait first (close interrupts the wait).
                    let _ = self.prepare_cv.wait_for(&mut slot, self.config.no_space_backoff(attempt));
                    if slot.closing {
                        return;
                    }
                    if slot.ready.is_some() || !slot.requested {
                        attempt = 0;
                        continue;
                    }
                }
            }
            if self.state.lock().poison.is_some() {
                // No roll will follow; a reopen recovers the store.
                self.prepare.lock().requested = false;
                attempt = 0;
                continue;
            }
            if attempt > 0 && self.writes_held() {
                // The flusher is retrying a roll itself; two retries would compete for the same space.
                attempt = attempt.saturating_add(1);
                continue;
            }
            let appended_at_start = self.metrics.bytes.load(Ordering::Relaxed);
            let mut pace = |zeroed| self.pace_zero_fill(appended_at_start, zeroed);
            let prepared = segment::prepare(self.io.as_ref(), &self.config, &self.metrics, &mut pace);
            let mut slot = self.prepare.lock();
            match prepared {
                Ok(file) => {
                    slot.requested = false;
                    slot.ready = Some(file);
                    attempt = 0;
                    Metrics::add(&self.metrics.segments_prepared_ahead, 1);
                    if self.metrics.preparer_no_space.swap(false, Ordering::AcqRel) {
                        tracing::info!("the next log segment is prepared: space for the log again");
                    }
                }
                Err(error) if error.is_no_space() => {
                    // Still requested: retried after the backoff.
                    let cause = Arc::new(segment_cause(error));
                    self.metrics.no_space(&cause);
                    if !self.metrics.preparer_no_space.swap(true, Ordering::AcqRel) {
                        tracing::warn!(%cause, "no space to prepare the next log segment; space alarm raised");
                    }
                    attempt = attempt.saturating_add(1);
                }
                Err(error) => {
                    slot.requested = false;
                    attempt = 0;
                    let error = WalError::from(error);
                    tracing::warn!(%error, "preparing the next log segment failed");
                }
            }
        }
    }

    /// Holds the preparer's zero fill after a chunk until the log has appended, since the preparation
    /// began, a [`ZERO_FILL_PACE`]th of the zeros written so far (less one chunk), so that the fill is spread
    /// over the active segment's second half instead of reaching the disk at once: unpaced, the 64 MiB of
    /// every node's next segment went out within a few hundred milliseconds and held the log's fdatasyncs
    /// (every write over 32 ms for 100–300 ms, at each roll, measured at 64 clients). It stops holding once
    /// the log has appended [`ZERO_FILL_UNPACED_AFTER`] of a segment since (the roll is near), and at close.
    fn pace_zero_fill(&self, appended_at_start: u64, zeroed: u64) {
        let size = self.config.segment_size_bytes;
        let unpaced_after = size / ZERO_FILL_UNPACED_AFTER.1 * ZERO_FILL_UNPACED_AFTER.0;
        let allowance = segment::ZERO_FILL_CHUNK_BYTES as u64;
        let (mut poll, mut seen) = (ZERO_FILL_PACE_POLL.0, None);
        loop {
            let appended = self.metrics.bytes.load(Ordering::Relaxed).saturating_sub(appended_at_start);
            if zeroed <= appended.saturating_mul(ZERO_FILL_PACE).saturating_add(allowance)
                || appended >= unpaced_after
            {
                return;
            }
            // An idle log is looked at less and less often.
            poll = if seen == Some(appended) {
                (poll * 2).min(ZERO_FILL_PACE_POLL.1)
            } else {
                ZERO_FILL_PACE_POLL.0
            };
            seen = Some(appended);
            let mut slot = self.prepare.lock();
            if slot.closing {
                return;
            }
            let _ = self.prepare_cv.wait_for(&mut slot, poll);
        }
    }

    /// The writer thread's body: flush whenever there is work, until closed (queue drained) or poisoned.
    /// A batch held for space is retried after a backoff (doubling from `no_space_backoff_initial_us` to
    /// `no_space_backoff_max_us`; [`Shared::retry_now`] and close cut the wait short). At close, one last
    /// attempt is made; if the batch is still held, it and everything queued fail with `NoSpace`.
    pub(crate) fn run_writer(&self) {
        let mut attempt = 0u32;
        loop {
            let held = self.writes_held();
            {
                let mut st = self.state.lock();
                if held {
                    if st.poison.is_some() {
                        return;
                    }
                    if !st.closing && !st.retry_now {
                        attempt = attempt.saturating_add(1);
                        // Appends do not wake it (they cannot help); close and `retry_now` do.
                        st.writer_wake_at = usize::MAX;
                        let _ = self.work_cv.wait_for(&mut st, self.config.no_space_backoff(attempt));
                    }
                    st.retry_now = false;
                } else {
                    loop {
                        if st.poison.is_some() {
                            return;
                        }
                        // A batch held for space by a leading appender is the writer's to retry.
                        if !st.queue.is_empty() || self.writes_held() {
                            break;
                        }
                        if st.closing {
                            return;
                        }
                        st.writer_wake_at = 1;
                        self.work_cv.wait(&mut st);
                    }
                    st.writer_wake_at = usize::MAX;
                }
            }
            let mut core = self.core.lock();
            match self.flush_batch(&mut core, !held) {
                Err(()) => return,
                Ok(Flushed::Held) => {
                    if self.state.lock().closing {
                        self.abandon_held(&mut core);
                        return;
                    }
                }
                Ok(Flushed::Wrote | Flushed::Idle) => attempt = 0,
            }
        }
    }

    /// Retries a batch held for space now instead of after the backoff (threads), or on this thread
    /// (inline; call without the flush lock).
    pub(crate) fn retry_now(&self) {
        if !self.writes_held() {
            return;
        }
        match self.config.writer {
            WriterMode::Threads => {
                self.state.lock().retry_now = true;
                self.work_cv.notify_all();
            }
            WriterMode::Inline => {
                if let Some(mut core) = self.core.try_lock() {
                    while let Ok(Flushed::Wrote) = self.flush_batch(&mut core, false) {}
                }
            }
        }
    }
}

/// Why callbacks fail.
#[derive(Clone)]
pub(crate) enum Failure {
    Poisoned(Arc<PoisonCause>),
    /// The store closed while their batch was held for space.
    NoSpace(Arc<PoisonCause>),
}

impl Failure {
    fn error(&self) -> WalError {
        match self {
            Failure::Poisoned(cause) => WalError::Poisoned(Arc::clone(cause)),
            Failure::NoSpace(cause) => WalError::NoSpace(Arc::clone(cause)),
        }
    }
}

/// What [`Shared::flush_batch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flushed {
    /// Nothing was queued.
    Idle,
    /// A batch was made durable and its callbacks dispatched.
    Wrote,
    /// The batch could not get space; it is held in `FlushCore::held` for a retry.
    Held,
}

pub(crate) struct Completion {
    callbacks: Vec<DurableCallback>,
    result: Result<(), Failure>,
}

impl Completion {
    fn run(self) {
        for callback in self.callbacks {
            let result = match &self.result {
                Ok(()) => Ok(()),
                Err(failure) => Err(failure.error()),
            };
            if let Err(ctx) = panic::catch(move || callback(result)) {
                tracing::error!(%ctx, "a durability callback panicked");
            }
        }
    }
}

/// Runs handed-off callbacks in order until the store closes the channel.
pub(crate) fn run_completer(rx: Receiver<Completion>, pending: Arc<AtomicUsize>) {
    while let Ok(completion) = rx.recv() {
        completion.run();
        pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A placed record: which queued op, and where its bytes went.
struct Placed {
    op: usize,
    seq: u64,
    offset: u64,
}

/// How far the writing of a batch got, so that a batch held for space resumes where it stopped: ops
/// before `next_op` are encoded (in `FlushCore::buf`, or durable already), ops before `durable_ops` are
/// durable (written into a previous segment before a roll).
#[derive(Default)]
pub(crate) struct Progress {
    next_op: usize,
    durable_ops: usize,
    placed: Vec<Placed>,
}

/// Why writing a batch stopped.
enum WriteFail {
    /// Lack of space outside a sync: the batch is held and retried.
    NoSpace(PoisonCause),
    /// Anything else: poisons the store.
    Permanent(PoisonCause),
}

fn segment_cause(e: SegmentError) -> PoisonCause {
    PoisonCause::Io { during: e.during, path: e.path, error: e.error }
}

/// What the flusher owns: the active segment, where the next batch goes, and the write buffer.
pub(crate) struct FlushCore {
    pub active_seq: u64,
    pub active: Arc<dyn IoFile>,
    pub active_path: std::path::PathBuf,
    pub write_pos: u64,
    pub store_id: u64,
    pub buf: AlignedBuf,
    pub last_batch_ops: usize,
    /// The next segment was asked of the preparer since the last roll.
    pub prepare_requested: bool,
    /// A batch that could not get space, and how far its writing got; retried before anything else.
    pub held: Option<(Vec<QueuedOp>, Progress)>,
}

fn io_cause(during: &'static str, path: &std::path::Path, error: IoError) -> PoisonCause {
    PoisonCause::Io { during, path: path.to_path_buf(), error }
}

/// Writes all of `buf` at `offset`, retrying transient errors (EINTR, EAGAIN) with bounded, capped
/// exponential backoff. Any other error, or too many retries, is returned.
pub(crate) fn write_all_retrying(
    file: &dyn IoFile,
    buf: &[u8],
    offset: u64,
    retry: &RetryPolicy,
    metrics: &Metrics,
) -> Result<(), IoError> {
    let mut done = 0usize;
    let mut attempt = 0u32;
    while done < buf.len() {
        match file.write_at(&buf[done..], offset + done as u64) {
            Ok(0) => return Err(IoError::os("pwrite", std::io::Error::from(std::io::ErrorKind::WriteZero))),
            Ok(n) => done += n,
            Err(e) if e.is_transient() && attempt < retry.attempts_max => {
                attempt += 1;
                Metrics::add(&metrics.retries, 1);
                std::thread::sleep(retry.backoff(attempt));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl FlushCore {
    /// Writes `batch` from where `progress` says it stopped (from the start for a new batch) and makes
    /// it durable. On lack of space the encoded records stay in `buf` and `progress` says how far it got,
    /// so that calling it again resumes: a partial write is written again whole at the same offset.
    fn write_batch(
        &mut self,
        shared: &Shared,
        batch: &[QueuedOp],
        progress: &mut Progress,
    ) -> Result<(), WriteFail> {
        let capacity = shared.config.segment_size_bytes;
        if progress.next_op == 0 && progress.placed.is_empty() {
            self.buf.clear();
        }
        for (i, queued) in batch.iter().enumerate().skip(progress.next_op) {
            let (kind, index, term, payload): (_, _, _, &[u8]) = match &queued.op {
                Op::Entry { index, term, payload } => (RecordKind::Entry, *index, *term, payload),
                Op::Truncate { from } => (RecordKind::Truncate, *from, 0, &[]),
                Op::Purge { pos, meta } => {
                    (RecordKind::Purge, pos.index, pos.term, meta.as_deref().map_or(&[][..], |m| &m[..]))
                }
                Op::Barrier => continue,
            };
            let len = encoded_len(payload.len());
            if self.write_pos + (self.buf.len() + len) as u64 > capacity {
                self.flush(shared)?;
                progress.durable_ops = i;
                self.roll(shared)?;
            }
            let flags = if self.buf.is_empty() { FLAG_BATCH_START } else { 0 };
            let offset = self.write_pos + self.buf.len() as u64;
            let start = self.buf.len();
            self.buf.resize(start + len);
            let header = RecordHeader { kind, index, term, chunk_seq_low: self.active_seq as u32, flags };
            encode_record(&mut self.buf[start..], &header, payload);
            progress.placed.push(Placed { op: i, seq: self.active_seq, offset });
            progress.next_op = i + 1;
        }
        progress.next_op = batch.len();
        self.flush(shared)?;
        progress.durable_ops = batch.len();
        Ok(())
    }

    /// Writes the buffered records at the write position and makes them durable. Under direct I/O the
    /// write is padded with zeros to the block size and the next batch starts at the next block, so a
    /// block holding durable bytes is never written again.
    ///
    /// A write refused for lack of space leaves `buf` as it is, to be written again at the same offset.
    fn flush(&mut self, shared: &Shared) -> Result<(), WriteFail> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let alignment = self.active.alignment().max(1) as u64;
        let len = self.buf.len() as u64;
        self.buf.resize(align_up(len, alignment) as usize);
        {
            let _timed = shared.metrics.io_call();
            write_all_retrying(
                self.active.as_ref(),
                &self.buf,
                self.write_pos,
                &shared.config.retry,
                &shared.metrics,
            )
            .map_err(|e| {
                let no_space = e.is_no_space();
                let cause = io_cause("write batch", &self.active_path, e);
                if no_space {
                    WriteFail::NoSpace(cause)
                } else {
                    WriteFail::Permanent(cause)
                }
            })?;
        }
        // Never retried, whatever its errno: after a failed fdatasync the kernel may have dropped the
        // dirty pages.
        if !crate::bugs::skip_wal_fsync() {
            let _timed = shared.metrics.io_call();
            let started = std::time::Instant::now();
            self.active
                .sync_data()
                .map_err(|e| WriteFail::Permanent(io_cause("fdatasync batch", &self.active_path, e)))?;
            let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            shared.metrics.fsync_took(took);
        }
        Metrics::add(&shared.metrics.fsyncs, 1);
        Metrics::add(&shared.metrics.bytes, len);
        self.write_pos = align_up(self.write_pos + len, alignment);
        self.buf.clear();
        let half_full = self.write_pos > shared.config.segment_size_bytes / 2;
        if half_full && !self.prepare_requested && shared.config.writer == WriterMode::Threads {
            self.prepare_requested = true;
            shared.request_prepare();
        }
        Ok(())
    }

    /// After a batch failed (its write, its fdatasync, a roll or a panic), before anyone learns of the
    /// failure: overwrites with zeros, unsynced, whatever of the batch may have reached the active segment
    /// (nothing at or after `write_pos` was acknowledged). After a failed fdatasync Linux keeps the batch's
    /// pages cached and clean: without this, a reopen in the same boot would read the records back, and its
    /// own fsync would succeed without writing them, so that they would count as durable without being on
    /// the disk. With it, a reopen reads zeros there — the end of the log, as on the disk — and its fsync
    /// writes the zeros out (or fails the open). Best effort: if the zeros cannot be written, it is logged.
    fn blank_failed_batch(&self, shared: &Shared) {
        let alignment = self.active.alignment().max(1) as u64;
        let end =
            align_up(self.write_pos + self.buf.len() as u64, alignment).min(shared.config.segment_size_bytes);
        if end <= self.write_pos {
            return;
        }
        let blanked = panic::catch(|| {
            let zeros = AlignedBuf::zeroed((end - self.write_pos) as usize);
            // Its retries are not the write path's: counted apart, in a throwaway.
            let metrics = Metrics::default();
            write_all_retrying(self.active.as_ref(), &zeros, self.write_pos, &shared.config.retry, &metrics)
        });
        match blanked {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(
                segment = self.active_seq,
                offset = self.write_pos,
                %error,
                "could not blank a failed batch; a reopen before a reboot may count it durable"
            ),
            Err(ctx) => tracing::error!(%ctx, "blanking a failed batch panicked"),
        }
    }

    /// Starts the next segment. The previous one is complete and durable (flushed by the caller) before
    /// the new one exists, so a torn tail can only ever be in the last segment.
    /// Lack of space creating the segment (or installing a prepared one before its rename) fails with
    /// `WriteFail::NoSpace` and leaves everything as it was, so that the roll can be made again.
    fn roll(&mut self, shared: &Shared) -> Result<(), WriteFail> {
        let seq = self.active_seq + 1;
        let prepared = shared.prepare.lock().ready.take();
        let from_preparer = prepared.is_some();
        let (io, config, metrics) = (shared.io.as_ref(), &shared.config, &shared.metrics);
        let _timed = metrics.io_call();
        let handle = match &prepared {
            Some(file) => segment::install(io, config, file, seq, self.store_id, metrics),
            None => segment::create(io, config, seq, self.store_id, metrics),
        };
        let handle = handle.map_err(|e| {
            if e.is_no_space() {
                if let Some(file) = prepared {
                    // Still under its prepared name (the rename did not happen): usable again.
                    shared.prepare.lock().ready = Some(file);
                }
                WriteFail::NoSpace(segment_cause(e))
            } else {
                WriteFail::Permanent(segment_cause(e))
            }
        })?;
        Metrics::add(&shared.metrics.segments_created, 1);
        if from_preparer {
            Metrics::add(&shared.metrics.segments_prepared, 1);
        }
        self.prepare_requested = false;
        self.active = Arc::clone(&handle.file);
        self.active_path = handle.path.clone();
        self.active_seq = seq;
        self.write_pos = FIRST_RECORD_OFFSET;
        shared.state.lock().segments.insert(seq, handle);
        tracing::debug!(segment = seq, "rolled to a new log segment");
        Ok(())
    }
}
