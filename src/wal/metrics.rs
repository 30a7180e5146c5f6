//! Counters of the WAL chunk store.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub appends: AtomicU64,
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub fsyncs: AtomicU64,
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
}

impl Metrics {
    pub(crate) fn add(counter: &AtomicU64, value: u64) {
        counter.fetch_add(value, Ordering::Relaxed);
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
        }
    }
}
