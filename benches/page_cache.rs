//! Page cache lookups against a baseline of a `parking_lot::Mutex<HashMap>` holding the same
//! pages (default SipHash hasher, `Arc` clone on a hit), and inserts into a full cache (each one
//! evicting) against the same map evicting in insertion order; both measured in this process with
//! the same keys in the same order.
//!
//! Run: `cargo bench -p bop-storage --bench page_cache`. Environment:
//! - `BOP_BENCH_SECS`: seconds per throughput case (default 2).
//!
//! Latencies are the median over batches of `BATCH_OPS` lookups (one `Instant` pair per batch,
//! divided by the batch size), so the clock's own cost (~20 ns) does not dominate.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bop_storage::page_cache::{PageCache, PageCacheConfig, PageKey, PageRef, ENTRY_OVERHEAD_BYTES};
use parking_lot::Mutex;

const PAGES: usize = 16_384;
const PAGE_BYTES: usize = 4096;
const BATCH_OPS: usize = 256;
const LATENCY_BATCHES: usize = 4_000;

trait Lookup: Sync {
    fn lookup(&self, key: &PageKey) -> Option<PageRef>;
}

/// A bounded map to insert into: full, every insert evicts one entry.
trait Store {
    fn store(&mut self, key: PageKey, page: PageRef);
}

impl Store for PageCache {
    fn store(&mut self, key: PageKey, page: PageRef) {
        self.insert(key, page);
    }
}

/// The insert baseline: a `Mutex<HashMap>` that evicts in insertion order (FIFO), the cheapest
/// eviction there is.
struct FifoBaseline {
    map: Mutex<HashMap<PageKey, PageRef>>,
    order: std::collections::VecDeque<PageKey>,
    capacity: usize,
}

impl Store for FifoBaseline {
    fn store(&mut self, key: PageKey, page: PageRef) {
        let mut map = self.map.lock();
        if map.len() >= self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                map.remove(&oldest);
            }
        }
        map.insert(key, page);
        self.order.push_back(key);
    }
}

/// Median nanoseconds per insert into a full map (each insert evicts), with `keys` cycled so every
/// key inserted is absent.
fn insert_ns_p50(map: &mut dyn Store, keys: &[PageKey], page: &PageRef) -> f64 {
    let mut per_op_ns = Vec::with_capacity(LATENCY_BATCHES / 4);
    let mut position = 0;
    for _ in 0..LATENCY_BATCHES / 4 {
        let began = Instant::now();
        for _ in 0..BATCH_OPS {
            map.store(keys[position], PageRef::clone(page));
            position = (position + 1) % keys.len();
        }
        per_op_ns.push(began.elapsed().as_nanos() as f64 / BATCH_OPS as f64);
    }
    per_op_ns.sort_by(f64::total_cmp);
    per_op_ns[per_op_ns.len() / 2]
}

impl Lookup for PageCache {
    fn lookup(&self, key: &PageKey) -> Option<PageRef> {
        self.get(key)
    }
}

struct Baseline(Mutex<HashMap<PageKey, PageRef>>);

impl Lookup for Baseline {
    fn lookup(&self, key: &PageKey) -> Option<PageRef> {
        self.0.lock().get(key).cloned()
    }
}

/// Keys in a pseudo-random order (an LCG permutation of the page numbers).
fn keys(version: u64) -> Vec<PageKey> {
    (0..PAGES as u64)
        .map(|index| {
            let page_no = (index.wrapping_mul(40_503) % PAGES as u64) as u32;
            PageKey { db: 1 + u64::from(page_no % 4), page_no, version }
        })
        .collect()
}

/// Median nanoseconds per lookup.
fn latency_ns_p50(map: &dyn Lookup, keys: &[PageKey]) -> f64 {
    let mut per_op_ns = Vec::with_capacity(LATENCY_BATCHES);
    let mut position = 0;
    for _ in 0..LATENCY_BATCHES {
        let began = Instant::now();
        for _ in 0..BATCH_OPS {
            black_box(map.lookup(black_box(&keys[position])));
            position = (position + 1) % keys.len();
        }
        per_op_ns.push(began.elapsed().as_nanos() as f64 / BATCH_OPS as f64);
    }
    per_op_ns.sort_by(f64::total_cmp);
    per_op_ns[per_op_ns.len() / 2]
}

/// Lookups per second from `threads` threads over `duration`, each thread starting at its own
/// offset in `keys`.
fn throughput(map: &dyn Lookup, keys: &[PageKey], threads: usize, duration: Duration) -> f64 {
    let total = AtomicU64::new(0);
    let start = Barrier::new(threads + 1);
    let began = std::thread::scope(|scope| {
        for thread in 0..threads {
            let (total, start) = (&total, &start);
            scope.spawn(move || {
                start.wait();
                let deadline = Instant::now() + duration;
                let mut position = thread * keys.len() / threads;
                let mut calls = 0u64;
                while Instant::now() < deadline {
                    for _ in 0..BATCH_OPS {
                        black_box(map.lookup(black_box(&keys[position])));
                        position = (position + 1) % keys.len();
                    }
                    calls += BATCH_OPS as u64;
                }
                total.fetch_add(calls, Ordering::Relaxed);
            });
        }
        start.wait();
        Instant::now()
    });
    total.load(Ordering::Relaxed) as f64 / began.elapsed().as_secs_f64()
}

fn main() {
    let seconds: u64 = std::env::var("BOP_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    let duration = Duration::from_secs(seconds);

    // The same 16,384 pages of 4 KiB (64 MiB) in both maps; the cache has room for all of them.
    let present = keys(0);
    let absent = keys(1);
    let cache = PageCache::new(PageCacheConfig::new(2 * PAGES * PAGE_BYTES));
    let mut baseline_map = HashMap::new();
    for key in &present {
        let page: PageRef = Arc::from(vec![key.page_no as u8; PAGE_BYTES]);
        cache.insert(*key, PageRef::clone(&page));
        baseline_map.insert(*key, page);
    }
    let baseline = Baseline(Mutex::new(baseline_map));
    assert_eq!(cache.len(), PAGES, "every page must be cached for the hit cases");

    // Warm both.
    latency_ns_p50(&cache, &present);
    latency_ns_p50(&baseline, &present);

    let hit = (latency_ns_p50(&baseline, &present), latency_ns_p50(&cache, &present));
    let miss = (latency_ns_p50(&baseline, &absent), latency_ns_p50(&cache, &absent));
    let one = (throughput(&baseline, &present, 1, duration), throughput(&cache, &present, 1, duration));
    let two = (throughput(&baseline, &present, 2, duration), throughput(&cache, &present, 2, duration));

    // Inserts into a full map holding half the keys: every insert evicts one entry.
    let insert = {
        let page: PageRef = Arc::from(vec![7u8; PAGE_BYTES]);
        let capacity = PAGES / 2;
        let mut fifo = FifoBaseline { map: Mutex::new(HashMap::new()), order: Default::default(), capacity };
        let mut small = PageCache::new(PageCacheConfig::new(capacity * (PAGE_BYTES + ENTRY_OVERHEAD_BYTES)));
        // Fill both, then measure.
        insert_ns_p50(&mut fifo, &present, &page);
        insert_ns_p50(&mut small, &present, &page);
        (insert_ns_p50(&mut fifo, &present, &page), insert_ns_p50(&mut small, &present, &page))
    };

    let shards = PageCacheConfig::SHARDS_DEFAULT;
    println!("page cache: {PAGES} pages of {PAGE_BYTES} B, {shards} shards, {seconds} s per throughput case");
    println!("baseline: parking_lot::Mutex<HashMap<PageKey, Arc<[u8]>>> (SipHash), same keys, same order");
    println!();
    println!("| case | baseline | page cache | ratio |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| hit latency p50 (ns) | {:.1} | {:.1} | {:.2} (baseline / cache) |",
        hit.0,
        hit.1,
        hit.0 / hit.1
    );
    println!(
        "| miss latency p50 (ns) | {:.1} | {:.1} | {:.2} (baseline / cache) |",
        miss.0,
        miss.1,
        miss.0 / miss.1
    );
    println!(
        "| hit throughput, 1 thread (ops/s) | {:.0} | {:.0} | {:.2} (cache / baseline) |",
        one.0,
        one.1,
        one.1 / one.0
    );
    println!(
        "| hit throughput, 2 threads (ops/s) | {:.0} | {:.0} | {:.2} (cache / baseline) |",
        two.0,
        two.1,
        two.1 / two.0
    );
    println!(
        "| insert into a full map, each evicts one, p50 (ns) | {:.1} | {:.1} | {:.2} (baseline / cache) |",
        insert.0,
        insert.1,
        insert.0 / insert.1
    );
    let metrics = cache.metrics();
    println!();
    println!(
        "cache metrics after the run: hits {}, misses {}, evictions {}",
        metrics.hits, metrics.misses, metrics.evictions
    );
}
