//! Unit tests of the page cache, one behaviour each.

use std::sync::Arc;

use parking_lot::Mutex;

use super::*;

const PAGE_BYTES: usize = 100;
/// What one `PAGE_BYTES` page costs.
const COST_BYTES: usize = PAGE_BYTES + ENTRY_OVERHEAD_BYTES;

fn key(db: u64, page_no: u32, version: u64) -> PageKey {
    PageKey { db, page_no, version }
}

fn page(fill: u8, len: usize) -> PageRef {
    Arc::from(vec![fill; len])
}

/// One shard holding exactly `pages` pages of `PAGE_BYTES`, so the CLOCK order is predictable.
fn one_shard_cache(pages: usize) -> PageCache {
    PageCache::new(PageCacheConfig { capacity_bytes: pages * COST_BYTES, shards: 1 })
}

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<CacheEvent>>,
}

impl PageCacheObserver for Recorder {
    fn on_event(&self, event: CacheEvent) {
        self.events.lock().push(event);
    }
}

#[test]
fn hits_and_misses_are_counted() {
    // A cache with one page.
    let cache = one_shard_cache(4);
    cache.insert(key(1, 1, 1), page(7, PAGE_BYTES));

    // Two gets of the cached key and one of an absent key.
    assert_eq!(cache.get(&key(1, 1, 1)).as_deref(), Some(&[7u8; PAGE_BYTES][..]));
    assert!(cache.get(&key(1, 1, 1)).is_some());
    assert!(cache.get(&key(1, 1, 2)).is_none());

    // Two hits, one miss, one insert.
    let metrics = cache.metrics();
    assert_eq!((metrics.hits, metrics.misses, metrics.inserts), (2, 1, 1));
    assert_eq!((metrics.entries, metrics.bytes), (1, COST_BYTES as u64));
    cache.check_invariants();
}

#[test]
fn insert_replaces_the_previous_page_of_a_key() {
    // A key cached with a short page.
    let cache = one_shard_cache(4);
    cache.insert(key(1, 1, 1), page(1, 10));

    // The same key inserted again with a longer page.
    cache.insert(key(1, 1, 1), page(2, PAGE_BYTES));

    // One entry, charged for the new page only, returning the new page.
    assert_eq!(cache.len(), 1);
    assert_eq!(cache.bytes(), COST_BYTES);
    assert_eq!(cache.get(&key(1, 1, 1)).as_deref(), Some(&[2u8; PAGE_BYTES][..]));
    assert_eq!(cache.metrics().inserts, 2);
    assert_eq!(cache.metrics().evictions, 0);
    cache.check_invariants();
}

#[test]
fn eviction_keeps_bytes_within_capacity() {
    // Room for 10 pages spread over 4 shards.
    let capacity_bytes = 10 * COST_BYTES;
    let cache = PageCache::new(PageCacheConfig { capacity_bytes, shards: 4 });

    // 1000 distinct pages inserted.
    for page_no in 0..1000 {
        cache.insert(key(1, page_no, 0), page(page_no as u8, PAGE_BYTES));
        assert!(cache.bytes() <= capacity_bytes);
    }

    // Never above capacity; every insert was stored, so inserts = entries + evictions.
    let metrics = cache.metrics();
    assert!(metrics.bytes <= capacity_bytes as u64);
    assert_eq!(metrics.capacity_bytes, capacity_bytes as u64);
    assert_eq!(metrics.inserts, 1000);
    assert_eq!(metrics.entries + metrics.evictions, 1000);
    assert!(metrics.entries >= 4, "each shard holds at least one page: {metrics:?}");
    assert!(metrics.eviction_scans >= metrics.evictions);
    cache.check_invariants();
}

#[test]
fn second_chance_keeps_recently_hit_pages() {
    // A full shard of A, B, C; A was hit since.
    let cache = one_shard_cache(3);
    let [a, b, c, d] = [key(1, 1, 0), key(1, 2, 0), key(1, 3, 0), key(1, 4, 0)];
    for k in [a, b, c] {
        cache.insert(k, page(0, PAGE_BYTES));
    }
    assert!(cache.get(&a).is_some());

    // D needs room.
    cache.insert(d, page(0, PAGE_BYTES));

    // The hand passed A (clearing its bit) and evicted B, the oldest unreferenced page.
    assert!(cache.get(&b).is_none());
    for k in [a, c, d] {
        assert!(cache.get(&k).is_some(), "{k:?} was evicted");
    }
    assert_eq!(cache.metrics().evictions, 1);
    assert_eq!(cache.metrics().eviction_scans, 2);
    cache.check_invariants();
}

#[test]
fn eviction_scan_is_bounded_when_every_page_is_referenced() {
    // A full shard of 10 pages, every one hit.
    let cache = one_shard_cache(10);
    for page_no in 0..10 {
        cache.insert(key(1, page_no, 0), page(0, PAGE_BYTES));
    }
    for page_no in 0..10 {
        assert!(cache.get(&key(1, page_no, 0)).is_some());
    }

    // A page that needs the room of all 10.
    cache.insert(key(2, 0, 0), page(0, 10 * COST_BYTES - ENTRY_OVERHEAD_BYTES));

    // One turn cleared the bits, the second evicted everything: exactly 2 × 10 slots examined.
    let metrics = cache.metrics();
    assert_eq!(metrics.evictions, 10);
    assert_eq!(metrics.eviction_scans, 20);
    assert_eq!(cache.len(), 1);
    assert_eq!(cache.bytes(), 10 * COST_BYTES);
    cache.check_invariants();
}

#[test]
fn remove_db_drops_only_that_database() {
    // Pages and versions of two databases over several shards.
    let cache = PageCache::new(PageCacheConfig { capacity_bytes: 1 << 20, shards: 8 });
    for page_no in 0..50 {
        for version in 0..2 {
            cache.insert(key(1, page_no, version), page(1, PAGE_BYTES));
            cache.insert(key(2, page_no, version), page(2, PAGE_BYTES));
        }
    }

    // Database 1 removed.
    assert_eq!(cache.remove_db(1), 100);

    // Only database 2 is left; removing again finds nothing; removals are not evictions.
    assert_eq!(cache.len(), 100);
    assert_eq!(cache.bytes(), 100 * COST_BYTES);
    assert!(cache.get(&key(1, 3, 0)).is_none());
    assert!(cache.get(&key(2, 3, 0)).is_some());
    assert_eq!(cache.remove_db(1), 0);
    assert_eq!(cache.metrics().evictions, 0);
    cache.check_invariants();
}

#[test]
fn remove_versions_upto_keeps_newer_versions_and_other_pages() {
    // Versions 0..5 of page 1 and of page 2.
    let cache = PageCache::new(PageCacheConfig { capacity_bytes: 1 << 20, shards: 4 });
    for version in 0..5 {
        cache.insert(key(1, 1, version), page(0, PAGE_BYTES));
        cache.insert(key(1, 2, version), page(0, PAGE_BYTES));
    }

    // Versions up to 2 of page 1 removed.
    assert_eq!(cache.remove_versions_upto(1, 1, 2), 3);

    // Versions 3 and 4 of page 1 and all of page 2 remain.
    assert_eq!(cache.len(), 7);
    assert!(cache.get(&key(1, 1, 2)).is_none());
    assert!(cache.get(&key(1, 1, 3)).is_some());
    assert!(cache.get(&key(1, 2, 0)).is_some());
    cache.check_invariants();
}

#[test]
fn remove_returns_the_page_and_frees_its_bytes() {
    // One cached page.
    let cache = one_shard_cache(2);
    cache.insert(key(1, 1, 1), page(9, PAGE_BYTES));

    // Removed twice.
    let removed = cache.remove(&key(1, 1, 1));
    let removed_again = cache.remove(&key(1, 1, 1));

    // The first returns the page; the cache is empty.
    assert_eq!(removed.as_deref(), Some(&[9u8; PAGE_BYTES][..]));
    assert!(removed_again.is_none());
    assert!(cache.is_empty());
    assert_eq!(cache.bytes(), 0);
    cache.check_invariants();
}

#[test]
fn a_page_larger_than_a_shard_is_not_cached() {
    // Two shards of 2 pages each, one page cached under the key.
    let cache = PageCache::new(PageCacheConfig { capacity_bytes: 4 * COST_BYTES, shards: 2 });
    cache.insert(key(1, 1, 1), page(1, PAGE_BYTES));
    cache.insert(key(1, 2, 1), page(1, PAGE_BYTES));

    // The key re-inserted with a page one byte too large for its shard.
    cache.insert(key(1, 1, 1), page(2, 2 * COST_BYTES - ENTRY_OVERHEAD_BYTES + 1));

    // Not cached, not counted, the stale page is gone, nothing else was evicted.
    assert!(cache.get(&key(1, 1, 1)).is_none());
    assert!(cache.get(&key(1, 2, 1)).is_some());
    let metrics = cache.metrics();
    assert_eq!((metrics.inserts, metrics.evictions, metrics.entries), (2, 0, 1));

    // A page exactly the shard's size is cached.
    cache.insert(key(1, 1, 1), page(3, 2 * COST_BYTES - ENTRY_OVERHEAD_BYTES));
    assert!(cache.get(&key(1, 1, 1)).is_some());
    cache.check_invariants();
}

#[test]
fn zero_capacity_caches_nothing() {
    // A cache with no room (and a zero shard count, clamped to one).
    let cache = PageCache::new(PageCacheConfig { capacity_bytes: 0, shards: 0 });

    // Even an empty page costs the entry overhead.
    cache.insert(key(1, 1, 1), page(0, 0));

    assert!(cache.is_empty());
    assert!(cache.get(&key(1, 1, 1)).is_none());
    cache.check_invariants();
}

#[test]
fn observers_see_evictions_then_the_insert() {
    // A full shard of two pages, with a recording observer.
    let cache = one_shard_cache(2);
    let recorder = Arc::new(Recorder::default());
    cache.insert(key(1, 1, 0), page(0, PAGE_BYTES));
    cache.add_observer(recorder.clone());
    cache.insert(key(1, 2, 0), page(0, PAGE_BYTES));

    // A hit, a miss, an insert that evicts the unreferenced page 2, a removal.
    assert!(cache.get(&key(1, 1, 0)).is_some());
    assert!(cache.get(&key(9, 9, 9)).is_none());
    cache.insert(key(1, 3, 0), page(0, PAGE_BYTES));
    assert!(cache.remove(&key(1, 3, 0)).is_some());

    // Exactly those events, evictions before the insert that caused them, removals silent.
    assert_eq!(
        *recorder.events.lock(),
        vec![
            CacheEvent::Insert(key(1, 2, 0)),
            CacheEvent::Hit(key(1, 1, 0)),
            CacheEvent::Miss(key(9, 9, 9)),
            CacheEvent::Evict(key(1, 2, 0)),
            CacheEvent::Insert(key(1, 3, 0)),
        ]
    );
}

#[test]
fn many_evictions_in_one_insert_are_all_delivered_in_order() {
    // Eight small pages in one shard, then a page needing the whole shard (more events than the
    // inline event buffer holds).
    let cache = one_shard_cache(8);
    let recorder = Arc::new(Recorder::default());
    cache.add_observer(recorder.clone());
    for page_no in 0..8 {
        cache.insert(key(1, page_no, 0), page(0, PAGE_BYTES));
    }
    recorder.events.lock().clear();
    cache.insert(key(2, 0, 0), page(0, 8 * COST_BYTES - ENTRY_OVERHEAD_BYTES));

    // Eight evictions in CLOCK order, then the insert.
    let mut expected: Vec<_> = (0..8).map(|page_no| CacheEvent::Evict(key(1, page_no, 0))).collect();
    expected.push(CacheEvent::Insert(key(2, 0, 0)));
    assert_eq!(*recorder.events.lock(), expected);
}

#[test]
fn two_observers_both_see_every_event() {
    // Two observers.
    let cache = one_shard_cache(2);
    let first = Arc::new(Recorder::default());
    let second = Arc::new(Recorder::default());
    cache.add_observer(first.clone());
    cache.add_observer(second.clone());

    // One miss.
    assert!(cache.get(&key(1, 1, 1)).is_none());

    // Both saw it.
    assert_eq!(*first.events.lock(), vec![CacheEvent::Miss(key(1, 1, 1))]);
    assert_eq!(*second.events.lock(), vec![CacheEvent::Miss(key(1, 1, 1))]);
}

/// Panics on every insert.
struct PanickingObserver;

impl PageCacheObserver for PanickingObserver {
    fn on_event(&self, event: CacheEvent) {
        if let CacheEvent::Insert(key) = event {
            panic!("observer refuses {key:?}");
        }
    }
}

#[test]
fn a_panicking_observer_leaves_the_cache_consistent() {
    // An observer that panics on insert.
    let cache = one_shard_cache(2);
    cache.add_observer(Arc::new(PanickingObserver));

    // The insert's caller sees the panic.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cache.insert(key(1, 1, 1), page(5, PAGE_BYTES));
    }));
    assert!(outcome.is_err());

    // The page was stored before delivery, no lock is poisoned or held, and the cache works.
    assert_eq!(cache.get(&key(1, 1, 1)).as_deref(), Some(&[5u8; PAGE_BYTES][..]));
    assert!(cache.remove(&key(1, 1, 1)).is_some());
    cache.check_invariants();
}
