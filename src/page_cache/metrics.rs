//! Page cache metrics: per-shard atomic counters, summed into a [`PageCacheMetrics`] snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of the cache since it was created, summed over shards. Gauges (`bytes`, `entries`,
/// `capacity_bytes`) are current values. Shards are read one after another without a common
/// lock, so under concurrent use the fields are not a single atomic snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageCacheMetrics {
    /// `get` calls that found the key.
    pub hits: u64,
    /// `get` calls that did not find the key.
    pub misses: u64,
    /// `insert` calls that stored their page (replacements included, oversized pages excluded).
    pub inserts: u64,
    /// Entries evicted by the CLOCK hand (explicit removals are not counted).
    pub evictions: u64,
    /// Gauge: bytes charged for the cached entries (page lengths plus
    /// [`super::ENTRY_OVERHEAD_BYTES`] per entry); never above `capacity_bytes`.
    pub bytes: u64,
    /// Gauge: cached entries.
    pub entries: u64,
    /// Slots examined by the CLOCK hand while making room for inserts.
    pub eviction_scans: u64,
    /// Configured capacity (sum of the shard capacities).
    pub capacity_bytes: u64,
}

/// One shard's insert-path counters, written under the shard's write lock and read without it.
/// (Hits and misses live in the shard state, next to the lock word.)
#[derive(Debug, Default)]
pub(crate) struct ShardCounters {
    pub(crate) inserts: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) eviction_scans: AtomicU64,
    /// Gauge, mirrored from the shard state after every change so `len`/`bytes` need no lock.
    pub(crate) bytes: AtomicU64,
    /// Gauge, mirrored like `bytes`.
    pub(crate) entries: AtomicU64,
}

impl ShardCounters {
    /// Adds this shard's counters to `total`.
    pub(crate) fn add_to(&self, total: &mut PageCacheMetrics) {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        total.inserts += load(&self.inserts);
        total.evictions += load(&self.evictions);
        total.eviction_scans += load(&self.eviction_scans);
        total.bytes += load(&self.bytes);
        total.entries += load(&self.entries);
    }
}
