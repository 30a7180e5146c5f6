//! The page cache: a sharded, byte-bounded, concurrent cache of immutable page images with CLOCK
//! (second chance) eviction and observers.
//!
//! A key's shard is chosen by hashing its `db` and `page_no` (so every version of a page shares a
//! shard). Each shard has its own reader-writer lock, its own share of the capacity and its own
//! CLOCK hand. A hit takes only its shard's read lock and sets the entry's reference bit with an
//! atomic; inserts and removals take the shard's write lock. No operation takes a cache-wide lock.
//! Observers are called after every lock is released (see [`PageCacheObserver`] for the contract).
//! docs/design.md (Page cache) describes the structure, the eviction policy and the bounds.
//!
//! ```
//! use std::sync::Arc;
//! use bop_storage::page_cache::{PageCache, PageCacheConfig, PageKey, PageRef};
//!
//! let cache = PageCache::new(PageCacheConfig::new(1 << 20));
//! let key = PageKey { db: 1, page_no: 7, version: 3 };
//! let page: PageRef = Arc::from(vec![0u8; 4096]);
//! cache.insert(key, page);
//! assert_eq!(cache.get(&key).map(|page| page.len()), Some(4096));
//! assert_eq!(cache.metrics().hits, 1);
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod config;
mod hash;
mod metrics;
mod observer;
mod shard;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::Mutex;

pub use config::PageCacheConfig;
pub use metrics::PageCacheMetrics;
pub use observer::{CacheEvent, PageCacheObserver};

use observer::ObserverList;
use shard::Shard;

/// Bytes charged per entry on top of the page length: an estimate of the index slot, the ring
/// slot and the `Arc` header. It also bounds the number of entries (and so the ring length) of a
/// shard to `shard capacity / ENTRY_OVERHEAD_BYTES`, even for empty pages.
pub const ENTRY_OVERHEAD_BYTES: usize = 64;

/// Identifies one version of one page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PageKey {
    /// Database id.
    pub db: u64,
    /// Page number within the database.
    pub page_no: u32,
    /// Version of the page.
    pub version: u64,
}

/// A cached page image (4096 bytes in practice; the cache does not care about the length).
pub type PageRef = Arc<[u8]>;

/// A concurrent page cache bounded in bytes. `Send + Sync`; share it behind an `Arc`.
pub struct PageCache {
    /// Padded so two shards' locks never share a cache line.
    shards: Box<[CachePadded<Shard>]>,
    capacity_bytes: usize,
    /// Every observer added so far; taken only by `add_observer`, never on the get/insert path
    /// (each shard holds its own copy of the list).
    observers: Mutex<Vec<Arc<dyn PageCacheObserver>>>,
}

/// Aligns its content to 128 bytes (two 64-byte lines, for adjacent-line prefetchers).
#[repr(align(128))]
struct CachePadded<T>(T);

impl PageCache {
    /// Creates an empty cache. `config.shards` is clamped to `1..=PageCacheConfig::SHARDS_MAX`;
    /// the capacity is split evenly across the shards.
    pub fn new(config: PageCacheConfig) -> Self {
        let shard_count = config.shard_count();
        let shards = (0..shard_count)
            .map(|shard_index| CachePadded(Shard::new(config.shard_capacity_bytes(shard_index, shard_count))))
            .collect();
        Self { shards, capacity_bytes: config.capacity_bytes, observers: Mutex::new(Vec::new()) }
    }

    fn shard(&self, db: u64, page_no: u32) -> &Shard {
        let shard_index = hash::shard_index(db, page_no, self.shards.len());
        // `shard_index` is `< self.shards.len()`, which is at least 1.
        &self.shards[shard_index].0
    }

    /// Returns the page cached under `key`, counting a hit (and setting the entry's reference
    /// bit) or a miss. Takes only the key's shard read lock.
    pub fn get(&self, key: &PageKey) -> Option<PageRef> {
        self.shard(key.db, key.page_no).get(key)
    }

    /// Caches `page` under `key`, replacing the key's previous page, evicting other pages of the
    /// key's shard (CLOCK) until it fits. A page longer than the shard capacity minus
    /// [`ENTRY_OVERHEAD_BYTES`] is not cached, and the key's previous page is dropped.
    pub fn insert(&self, key: PageKey, page: PageRef) {
        self.shard(key.db, key.page_no).insert(key, page);
    }

    /// Removes `key`; returns its page if it was cached. Not reported to observers.
    pub fn remove(&self, key: &PageKey) -> Option<PageRef> {
        self.shard(key.db, key.page_no).remove(key)
    }

    /// Removes every page of database `db`; returns how many. Visits every shard (O(entries)).
    /// Not reported to observers.
    pub fn remove_db(&self, db: u64) -> usize {
        self.shards.iter().map(|shard| shard.0.remove_matching(|key| key.db == db)).sum()
    }

    /// Removes every cached version `<= version_max` of page `page_no` of database `db`; returns
    /// how many. Scans the one shard holding that page (O(shard entries)). Not reported to
    /// observers.
    pub fn remove_versions_upto(&self, db: u64, page_no: u32, version_max: u64) -> usize {
        self.shard(db, page_no)
            .remove_matching(|key| key.db == db && key.page_no == page_no && key.version <= version_max)
    }

    /// Registers `observer` for every later event (see [`PageCacheObserver`] for the contract).
    pub fn add_observer(&self, observer: Arc<dyn PageCacheObserver>) {
        // Held while the shards are updated so concurrent additions cannot lose each other.
        let mut observers = self.observers.lock();
        observers.push(observer);
        for shard in self.shards.iter() {
            // A separate allocation per shard: the list's reference count is bumped by every event,
            // and one shared count would be a cache-wide contended line.
            let list: ObserverList = observers.iter().cloned().collect();
            shard.0.set_observers(list);
        }
    }

    /// Current counters summed over the shards.
    pub fn metrics(&self) -> PageCacheMetrics {
        let mut total = PageCacheMetrics { capacity_bytes: self.capacity_bytes as u64, ..Default::default() };
        for shard in self.shards.iter() {
            shard.0.add_metrics_to(&mut total);
        }
        total
    }

    /// Number of cached entries.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.0.counters.entries.load(Ordering::Relaxed) as usize).sum()
    }

    /// Whether no entry is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes charged for the cached entries (page lengths plus [`ENTRY_OVERHEAD_BYTES`] each);
    /// never above the configured capacity.
    pub fn bytes(&self) -> usize {
        self.shards.iter().map(|shard| shard.0.counters.bytes.load(Ordering::Relaxed) as usize).sum()
    }

    /// Configured capacity in bytes.
    pub fn capacity_bytes(&self) -> usize {
        self.capacity_bytes
    }

    #[cfg(test)]
    fn check_invariants(&self) {
        for shard in self.shards.iter() {
            shard.0.check_invariants();
        }
    }
}

impl std::fmt::Debug for PageCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageCache")
            .field("shards", &self.shards.len())
            .field("metrics", &self.metrics())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
