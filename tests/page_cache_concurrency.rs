//! Many readers and writers on one cache: no torn or foreign page is ever returned, a key's single
//! writer always reads back its last write (or nothing), other threads never see a key go back in
//! time, and the byte and entry accounting is exact afterwards.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bop_storage::page_cache::{PageCache, PageCacheConfig, PageKey, PageRef, ENTRY_OVERHEAD_BYTES};

const THREADS: usize = 8;
const OPS_PER_THREAD: usize = 20_000;
const DBS: u64 = 3;
const PAGES_PER_DB: u32 = 160;
const VERSIONS: u64 = 3;
const HEADER_BYTES: usize = 28;
const WAIT_MAX: Duration = Duration::from_secs(120);

/// Page length is a function of the key, so the cost of any cached key is known.
fn page_len(key: &PageKey) -> usize {
    HEADER_BYTES + 100 * (key.page_no as usize % 5) + 7 * key.version as usize
}

/// A page encodes its key and the writer's generation; the rest is a fill derived from both.
fn make_page(key: &PageKey, generation: u64) -> PageRef {
    let mut bytes = Vec::with_capacity(page_len(key));
    bytes.extend_from_slice(&key.db.to_le_bytes());
    bytes.extend_from_slice(&key.page_no.to_le_bytes());
    bytes.extend_from_slice(&key.version.to_le_bytes());
    bytes.extend_from_slice(&generation.to_le_bytes());
    bytes.resize(page_len(key), fill(key, generation));
    Arc::from(bytes)
}

fn fill(key: &PageKey, generation: u64) -> u8 {
    (key.db ^ u64::from(key.page_no) ^ key.version ^ generation) as u8
}

/// Checks the page is a whole page written for `key`; returns its generation.
fn check_page(key: &PageKey, page: &[u8]) -> u64 {
    assert_eq!(page.len(), page_len(key), "length of {key:?}");
    let word = |at: usize| u64::from_le_bytes(page[at..at + 8].try_into().unwrap());
    assert_eq!(word(0), key.db);
    assert_eq!(u32::from_le_bytes(page[8..12].try_into().unwrap()), key.page_no);
    assert_eq!(word(12), key.version);
    let generation = word(20);
    let expected_fill = fill(key, generation);
    assert!(page[HEADER_BYTES..].iter().all(|&byte| byte == expected_fill), "torn page for {key:?}");
    generation
}

/// Thread `t` is the only writer of pages whose `page_no % THREADS == t`.
fn owner(key: &PageKey) -> usize {
    key.page_no as usize % THREADS
}

struct WorkerReport {
    gets: u64,
    /// The generation each owned key holds, or `None` if the worker last removed it.
    last_written: HashMap<PageKey, Option<u64>>,
}

fn worker(cache: &PageCache, thread: usize, seed: u64) -> WorkerReport {
    let mut rng = SplitMix(seed);
    let mut gets = 0u64;
    let mut last_written: HashMap<PageKey, Option<u64>> = HashMap::new();
    let mut last_seen: HashMap<PageKey, u64> = HashMap::new();
    let mut generation = 0u64;
    for _ in 0..OPS_PER_THREAD {
        let mut key = PageKey {
            db: rng.below(DBS),
            page_no: rng.below(u64::from(PAGES_PER_DB)) as u32,
            version: rng.below(VERSIONS),
        };
        let roll = rng.below(100);
        if roll < 60 {
            // Read any key.
            gets += 1;
            let Some(page) = cache.get(&key) else { continue };
            let seen = check_page(&key, &page);
            if owner(&key) == thread {
                // Single writer: a hit is exactly its last write.
                assert_eq!(
                    last_written.get(&key).copied().flatten(),
                    Some(seen),
                    "stale read of own {key:?}"
                );
            }
            // Linearizable per key: generations a thread sees never go back.
            let previous = last_seen.insert(key, seen).unwrap_or(0);
            assert!(seen >= previous, "{key:?} went back from {previous} to {seen}");
        } else if roll < 90 {
            // Write an owned key with a new generation.
            key.page_no = key.page_no - key.page_no % THREADS as u32 + thread as u32;
            generation += 1;
            cache.insert(key, make_page(&key, generation));
            last_written.insert(key, Some(generation));
        } else if roll < 97 {
            // Remove an owned key.
            key.page_no = key.page_no - key.page_no % THREADS as u32 + thread as u32;
            if let Some(page) = cache.remove(&key) {
                assert_eq!(Some(check_page(&key, &page)), last_written.get(&key).copied().flatten());
            }
            last_written.insert(key, None);
        } else if roll < 99 {
            // Remove old versions of an owned page.
            key.page_no = key.page_no - key.page_no % THREADS as u32 + thread as u32;
            cache.remove_versions_upto(key.db, key.page_no, key.version);
            for version in 0..=key.version {
                last_written.insert(PageKey { version, ..key }, None);
            }
        } else if roll == 99 && rng.below(20) == 0 {
            // Rarely, drop a whole database (any owner's pages): owners then read nothing, allowed.
            cache.remove_db(key.db);
        }
        let bytes = cache.bytes();
        assert!(bytes <= cache.capacity_bytes(), "{bytes} bytes cached");
    }
    WorkerReport { gets, last_written }
}

/// A small deterministic generator (splitmix64), so a failing seed reproduces.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut value = self.0;
        value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        value ^ (value >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

#[test]
fn eight_threads_of_random_ops_keep_every_invariant() {
    // A cache holding roughly a third of the key space, so eviction runs all the time.
    let capacity_bytes = 150 * 1024;
    let cache = Arc::new(PageCache::new(PageCacheConfig { capacity_bytes, shards: 8 }));
    let seed: u64 = std::env::var("BOP_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    println!("BOP_SEED={seed}");

    // Eight workers mixing gets, inserts, removals; each reports over a channel.
    let start = Arc::new(Barrier::new(THREADS));
    let (done, reports) = mpsc::channel();
    for thread in 0..THREADS {
        let cache = Arc::clone(&cache);
        let start = Arc::clone(&start);
        let done = done.clone();
        std::thread::spawn(move || {
            start.wait();
            let report = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                worker(&cache, thread, seed.wrapping_add(thread as u64))
            }));
            let _ = done.send((thread, report));
        });
    }
    let deadline = Instant::now() + WAIT_MAX;
    let mut gets_total = 0u64;
    let mut last_written = HashMap::new();
    for _ in 0..THREADS {
        let timeout = deadline.saturating_duration_since(Instant::now());
        let (thread, report) = reports.recv_timeout(timeout).expect("a worker hung (deadlock?)");
        let report = report.unwrap_or_else(|_| panic!("worker {thread} failed (seed {seed})"));
        gets_total += report.gets;
        last_written.extend(report.last_written);
    }

    // Afterwards: every cached key holds its owner's last write, and the accounting is exact.
    let metrics_before_probe = cache.metrics();
    assert_eq!(metrics_before_probe.hits + metrics_before_probe.misses, gets_total);
    let mut entries = 0usize;
    let mut bytes = 0usize;
    for db in 0..DBS {
        for page_no in 0..PAGES_PER_DB {
            for version in 0..VERSIONS {
                let key = PageKey { db, page_no, version };
                if let Some(page) = cache.get(&key) {
                    let generation = check_page(&key, &page);
                    assert_eq!(last_written.get(&key).copied().flatten(), Some(generation), "{key:?}");
                    entries += 1;
                    bytes += page.len() + ENTRY_OVERHEAD_BYTES;
                }
            }
        }
    }
    let metrics = cache.metrics();
    assert_eq!(cache.len(), entries);
    assert_eq!(metrics.entries as usize, entries);
    assert_eq!(cache.bytes(), bytes);
    assert!(bytes <= capacity_bytes);
    assert!(metrics.evictions > 0, "the test must exercise eviction: {metrics:?}");
    assert!(metrics.eviction_scans >= metrics.evictions);
    println!("{metrics:?}");
}
