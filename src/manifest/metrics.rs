//! Manifest metrics: atomics updated by the commit path, read as a [`MetricsSnapshot`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::change_feed::FeedStats;

/// Live counters; every field is monotonic except the gauges marked so.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub(crate) commits: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) batches_rejected: AtomicU64,
    pub(crate) cursor_ops: AtomicU64,
    pub(crate) group_retries: AtomicU64,
    pub(crate) feed_truncations: AtomicU64,
    pub(crate) feed_truncated_entries: AtomicU64,
    pub(crate) map_grows: AtomicU64,
    pub(crate) no_space_retries: AtomicU64,
    /// Gauge: a commit is held because the file system has no space.
    pub(crate) space_alarm: AtomicBool,
    /// Gauge.
    pub(crate) space_reserved_bytes: AtomicU64,
    /// Gauge.
    pub(crate) feed_len: AtomicU64,
    /// Gauge.
    pub(crate) cursor_lag_max: AtomicU64,
    /// Gauge.
    pub(crate) cursors_stale: AtomicU64,
    /// Gauge.
    pub(crate) map_size_bytes: AtomicU64,
}

impl Metrics {
    pub(crate) fn record_feed(&self, stats: &FeedStats) {
        self.feed_len.store(stats.feed_len, Ordering::Relaxed);
        self.cursor_lag_max.store(stats.cursor_lag_max, Ordering::Relaxed);
        self.cursors_stale.store(stats.cursors_stale, Ordering::Relaxed);
        if stats.truncated_entries > 0 {
            self.feed_truncations.fetch_add(1, Ordering::Relaxed);
            self.feed_truncated_entries.fetch_add(stats.truncated_entries, Ordering::Relaxed);
        }
    }

    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        let load = |value: &AtomicU64| value.load(Ordering::Relaxed);
        let commits = load(&self.commits);
        let batches = load(&self.batches);
        MetricsSnapshot {
            commits,
            batches,
            batches_per_commit: if commits == 0 { 0.0 } else { batches as f64 / commits as f64 },
            batches_rejected: load(&self.batches_rejected),
            cursor_ops: load(&self.cursor_ops),
            group_retries: load(&self.group_retries),
            feed_len: load(&self.feed_len),
            feed_truncations: load(&self.feed_truncations),
            feed_truncated_entries: load(&self.feed_truncated_entries),
            cursor_lag_max: load(&self.cursor_lag_max),
            cursors_stale: load(&self.cursors_stale),
            map_size_bytes: load(&self.map_size_bytes),
            map_grows: load(&self.map_grows),
            space_alarm: self.space_alarm.load(Ordering::Relaxed),
            no_space_retries: load(&self.no_space_retries),
            space_reserved_bytes: load(&self.space_reserved_bytes),
        }
    }
}

/// A point-in-time copy of the manifest metrics (since open).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSnapshot {
    /// LMDB write transactions committed by the commit pipeline (each one fsync).
    pub commits: u64,
    /// Batches committed.
    pub batches: u64,
    /// `batches / commits` (cursor-only commits count in the denominator).
    pub batches_per_commit: f64,
    /// Batches rejected (validation or decode errors).
    pub batches_rejected: u64,
    /// Cursor operations committed.
    pub cursor_ops: u64,
    /// Group transactions restarted without a rejected batch.
    pub group_retries: u64,
    /// Entries in the change feed now.
    pub feed_len: u64,
    /// Commits that deleted feed entries.
    pub feed_truncations: u64,
    /// Feed entries deleted.
    pub feed_truncated_entries: u64,
    /// Largest lag (head - acknowledged) of a live cursor at the last commit.
    pub cursor_lag_max: u64,
    /// Cursors marked stale, at the last commit.
    pub cursors_stale: u64,
    /// The LMDB map size now.
    pub map_size_bytes: u64,
    /// Times the map was grown.
    pub map_grows: u64,
    /// True while a commit group is held because the file system has no space for it (ENOSPC or
    /// EDQUOT); cleared by the next successful commit. Same as [`super::Manifest::space_alarm`].
    pub space_alarm: bool,
    /// Group transactions that met a full file system and were retried (after a backoff).
    pub no_space_retries: u64,
    /// Bytes of the data file reserved on the file system ahead of use (fallocate, keeping the file's
    /// size): the map size at the last reservation that succeeded, 0 if none did.
    pub space_reserved_bytes: u64,
}
