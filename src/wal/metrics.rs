//! Counters of the WAL chunk store.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::error::PoisonCause;

#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub appends: AtomicU64,
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub fsyncs: AtomicU64,
    /// Time spent in those fdatasyncs, in nanoseconds.
    pub fsync_ns: AtomicU64,
    /// Those fdatasyncs by how long each took: bucket `i` counts the ones above bucket `i - 1`'s bound and
    /// at most [`FSYNC_BUCKET_BOUNDS`]`[i]` seconds; the last, the ones above every bound.
    pub fsync_buckets: [AtomicU64; FSYNC_BUCKETS],
    pub batches: AtomicU64,
    pub queue_depth_peak: AtomicU64,
    pub backpressure_rejections: AtomicU64,
    pub retries: AtomicU64,
    pub permanent_failures: AtomicU64,
    pub segments_created: AtomicU64,
    pub segments_prepared: AtomicU64,
    pub segments_prepared_ahead: AtomicU64,
    pub segments_deleted: AtomicU64,
    pub last_panic: Mutex<Option<String>>,
    /// Failed attempts for lack of space (ENOSPC, EDQUOT) of the writer and the preparer.
    pub no_space_events: AtomicU64,
    /// The flusher holds a batch it could not write for lack of space.
    pub writer_held: AtomicBool,
    /// The preparer's last attempt failed for lack of space.
    pub preparer_no_space: AtomicBool,
    /// The most recent failure for lack of space.
    pub last_no_space: Mutex<Option<Arc<PoisonCause>>>,
    /// When the flusher's current write, fdatasync or roll began ([`now_ns`]); 0 when none runs.
    pub io_started_ns: AtomicU64,
}

/// Buckets of the fdatasync latency histogram: one per bound of [`FSYNC_BUCKET_BOUNDS`], and one above.
pub const FSYNC_BUCKETS: usize = 17;

/// Upper bounds of the fdatasync latency histogram's buckets, in seconds: 0.25 ms doubling to 8.192 s.
pub const FSYNC_BUCKET_BOUNDS: [f64; FSYNC_BUCKETS - 1] = {
    let mut bounds = [0.000_25; FSYNC_BUCKETS - 1];
    let mut i = 1;
    while i < bounds.len() {
        bounds[i] = bounds[i - 1] * 2.0;
        i += 1;
    }
    bounds
};

/// Nanoseconds since a process-wide origin, plus one (so that 0 can mean "none").
fn now_ns() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX - 1).saturating_add(1)
}

/// Marks the flusher's I/O call as running while it lives (see [`Metrics::io_call`]).
pub(crate) struct IoCall<'a> {
    started: Option<&'a AtomicU64>,
}

impl Drop for IoCall<'_> {
    fn drop(&mut self) {
        if let Some(started) = self.started {
            started.store(0, Ordering::Release);
        }
    }
}

impl Metrics {
    pub(crate) fn add(counter: &AtomicU64, value: u64) {
        counter.fetch_add(value, Ordering::Relaxed);
    }

    /// Records one fdatasync of the write path that took `ns` nanoseconds.
    pub(crate) fn fsync_took(&self, ns: u64) {
        Metrics::add(&self.fsync_ns, ns);
        let seconds = ns as f64 / 1e9;
        let bucket =
            FSYNC_BUCKET_BOUNDS.iter().position(|bound| seconds <= *bound).unwrap_or(FSYNC_BUCKETS - 1);
        Metrics::add(&self.fsync_buckets[bucket], 1);
    }

    /// Starts timing an I/O call of the flusher, unless an enclosing one (a roll) is already timed; the
    /// returned guard clears the mark when dropped.
    pub(crate) fn io_call(&self) -> IoCall<'_> {
        let set = self.io_started_ns.compare_exchange(0, now_ns(), Ordering::AcqRel, Ordering::Acquire);
        IoCall { started: set.is_ok().then_some(&self.io_started_ns) }
    }

    /// How long the flusher's current I/O call has been running, if one is.
    pub(crate) fn io_stalled_for(&self) -> Option<Duration> {
        match self.io_started_ns.load(Ordering::Acquire) {
            0 => None,
            started => Some(Duration::from_nanos(now_ns().saturating_sub(started))),
        }
    }

    /// True while the WAL lacks space: a batch is held, or the next segment could not be prepared.
    pub(crate) fn space_alarm(&self) -> bool {
        self.writer_held.load(Ordering::Acquire) || self.preparer_no_space.load(Ordering::Acquire)
    }

    /// Records a failure for lack of space.
    pub(crate) fn no_space(&self, cause: &Arc<PoisonCause>) {
        Metrics::add(&self.no_space_events, 1);
        *self.last_no_space.lock() = Some(Arc::clone(cause));
    }
}

/// A snapshot of the store's counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WalMetrics {
    /// Append calls accepted.
    pub appends: u64,
    /// Records (entries, truncations, purges) made durable.
    pub records: u64,
    /// Encoded bytes written.
    pub bytes: u64,
    /// fdatasync calls that succeeded on the write path.
    pub fsyncs: u64,
    /// Seconds spent in those fdatasyncs (with `fsyncs`: their mean over any window).
    pub fsync_seconds: f64,
    /// Those fdatasyncs by how long each took, per bucket (not cumulative): `fsync_buckets[i]` for
    /// `i <` [`FSYNC_BUCKET_BOUNDS`]`.len()` counts the ones that took more than the bound before and at
    /// most `FSYNC_BUCKET_BOUNDS[i]` seconds; the last, the ones that took longer than every bound. Only
    /// fdatasyncs that were timed (not the ones a test's bug switch skips) are counted.
    pub fsync_buckets: [u64; FSYNC_BUCKETS],
    /// Group-commit batches written.
    pub batches: u64,
    /// `records / fsyncs`.
    pub records_per_fsync: f64,
    /// Records accepted but not yet durable, now.
    pub queue_depth: u64,
    /// Highest `queue_depth` seen.
    pub queue_depth_peak: u64,
    /// `try_append` calls refused with `Backpressure`.
    pub backpressure_rejections: u64,
    /// Transient write errors retried.
    pub retries: u64,
    /// Permanent failures (each poisons the store; at most one per store lifetime).
    pub permanent_failures: u64,
    /// Segment files created (prepared ones included, at their installation).
    pub segments_created: u64,
    /// Segments that a roll took ready-made from the background preparer.
    pub segments_prepared: u64,
    /// Segment files the background preparer finished (space reserved and fsynced, ready for a roll),
    /// whether a roll took them yet or not.
    pub segments_prepared_ahead: u64,
    /// Segment files deleted by purges.
    pub segments_deleted: u64,
    /// The writer's panic, if one poisoned the store.
    pub last_panic: Option<String>,
    /// True while the WAL lacks disk space: a batch is held because a segment could not be created or
    /// its data written (ENOSPC, EDQUOT), or the next segment could not be prepared ahead. See
    /// [`super::WalStore::space_alarm`].
    pub space_alarm: bool,
    /// True while a batch is held for lack of space (the log is blocked; appends stay in flight).
    pub writes_held_for_space: bool,
    /// Attempts (of the writer and of the preparer) that failed for lack of space.
    pub no_space_events: u64,
    /// The most recent failure for lack of space, if any.
    pub last_no_space: Option<String>,
    /// How long the writer's current write, fdatasync or roll has been running; `None` when idle.
    pub io_stalled_for: Option<Duration>,
}

impl Metrics {
    pub(crate) fn snapshot(&self, queue_depth: u64) -> WalMetrics {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let records = get(&self.records);
        let fsyncs = get(&self.fsyncs);
        WalMetrics {
            appends: get(&self.appends),
            records,
            bytes: get(&self.bytes),
            fsyncs,
            fsync_seconds: get(&self.fsync_ns) as f64 / 1e9,
            fsync_buckets: std::array::from_fn(|i| get(&self.fsync_buckets[i])),
            batches: get(&self.batches),
            records_per_fsync: if fsyncs == 0 { 0.0 } else { records as f64 / fsyncs as f64 },
            queue_depth,
            queue_depth_peak: get(&self.queue_depth_peak),
            backpressure_rejections: get(&self.backpressure_rejections),
            retries: get(&self.retries),
            permanent_failures: get(&self.permanent_failures),
            segments_created: get(&self.segments_created),
            segments_prepared: get(&self.segments_prepared),
            segments_prepared_ahead: get(&self.segments_prepared_ahead),
            segments_deleted: get(&self.segments_deleted),
            last_panic: self.last_panic.lock().clone(),
            space_alarm: self.space_alarm(),
            writes_held_for_space: self.writer_held.load(Ordering::Acquire),
            no_space_events: get(&self.no_space_events),
            last_no_space: self.last_no_space.lock().as_ref().map(|c| c.to_string()),
            io_stalled_for: self.io_stalled_for(),
        }
    }
}
