//! Observers are called outside every cache lock: an observer that calls back into the cache
//! (read-through insert on a miss, get + insert on an eviction, remove on a hit) from several
//! threads at once neither deadlocks nor breaks the accounting, and every event is delivered once.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Weak};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use bop_storage::page_cache::{CacheEvent, PageCache, PageCacheConfig, PageCacheObserver, PageKey, PageRef};
use parking_lot::Mutex;

const THREADS: usize = 4;
const GETS_PER_THREAD: u64 = 5_000;
const PAGE_BYTES: usize = 256;
/// Nested inserts an observer starts from inside its own callbacks on one thread.
const REENTRY_DEPTH_MAX: u32 = 4;
const WAIT_MAX: Duration = Duration::from_secs(60);

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

fn page_for(key: &PageKey) -> PageRef {
    Arc::from(vec![(key.page_no as u8) ^ (key.version as u8); PAGE_BYTES])
}

#[derive(Default)]
struct Counts {
    inserts: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    callbacks_into_cache: AtomicU64,
}

/// Calls back into the cache on every kind of event.
struct ReentrantObserver {
    cache: Weak<PageCache>,
    counts: Counts,
}

impl ReentrantObserver {
    /// Runs `call` unless this thread is already `REENTRY_DEPTH_MAX` callbacks deep: an observer
    /// that inserts on eviction must bound its own recursion (that insert may evict again).
    fn reenter(&self, call: impl FnOnce(&PageCache)) {
        let Some(cache) = self.cache.upgrade() else { return };
        let depth = DEPTH.with(Cell::get);
        if depth >= REENTRY_DEPTH_MAX {
            return;
        }
        DEPTH.with(|d| d.set(depth + 1));
        call(&cache);
        DEPTH.with(|d| d.set(depth));
        self.counts.callbacks_into_cache.fetch_add(1, Ordering::Relaxed);
    }
}

impl PageCacheObserver for ReentrantObserver {
    fn on_event(&self, event: CacheEvent) {
        match event {
            CacheEvent::Insert(_) => {
                self.counts.inserts.fetch_add(1, Ordering::Relaxed);
                // A read of the cache-wide gauges from inside the callback.
                self.reenter(|cache| assert!(cache.bytes() <= cache.capacity_bytes()));
            }
            CacheEvent::Hit(key) => {
                self.counts.hits.fetch_add(1, Ordering::Relaxed);
                // Drop the shadow copy of a hot page: a write lock on the same shard as the hit.
                if key.page_no % 8 == 0 {
                    self.reenter(|cache| {
                        cache.remove(&PageKey { version: 1, ..key });
                    });
                }
            }
            CacheEvent::Miss(key) => {
                self.counts.misses.fetch_add(1, Ordering::Relaxed);
                // Read-through: the missed page is loaded and inserted (same shard as the miss).
                if key.version == 0 {
                    self.reenter(|cache| cache.insert(key, page_for(&key)));
                }
            }
            CacheEvent::Evict(key) => {
                self.counts.evictions.fetch_add(1, Ordering::Relaxed);
                // Keep a shadow copy of an evicted primary page under version 1.
                if key.version == 0 {
                    self.reenter(|cache| {
                        let shadow = PageKey { version: 1, ..key };
                        if cache.get(&shadow).is_none() {
                            cache.insert(shadow, page_for(&shadow));
                        }
                    });
                }
            }
        }
    }
}

/// Joins `THREADS` workers through a channel with a deadline, failing instead of hanging.
fn run_workers(work: impl Fn(usize) + Send + Sync + 'static) {
    let work = Arc::new(work);
    let start = Arc::new(Barrier::new(THREADS));
    let (done, finished) = mpsc::channel();
    for thread in 0..THREADS {
        let work = Arc::clone(&work);
        let start = Arc::clone(&start);
        let done = done.clone();
        std::thread::spawn(move || {
            start.wait();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(thread)));
            let _ = done.send((thread, outcome.is_ok()));
        });
    }
    let deadline = Instant::now() + WAIT_MAX;
    for _ in 0..THREADS {
        let timeout = deadline.saturating_duration_since(Instant::now());
        let (thread, ok) =
            finished.recv_timeout(timeout).expect("a worker hung: observer deadlocked the cache");
        assert!(ok, "worker {thread} panicked");
    }
}

#[test]
fn observers_calling_back_into_the_cache_from_many_threads_do_not_deadlock() {
    // A small cache (eviction on most inserts) with a re-entrant observer.
    let cache =
        Arc::new(PageCache::new(PageCacheConfig { capacity_bytes: 64 * (PAGE_BYTES + 64), shards: 4 }));
    let observer = Arc::new(ReentrantObserver { cache: Arc::downgrade(&cache), counts: Counts::default() });
    cache.add_observer(observer.clone());

    // Four threads get pages of a key space four times the capacity; misses read through.
    let worker_cache = Arc::clone(&cache);
    run_workers(move |thread| {
        let mut state = thread as u64 + 1;
        for _ in 0..GETS_PER_THREAD {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let key = PageKey { db: 1, page_no: ((state >> 33) % 256) as u32, version: 0 };
            if let Some(page) = worker_cache.get(&key) {
                assert_eq!(page, page_for(&key));
            }
        }
    });

    // Every event was delivered exactly once: the observer's counts equal the metrics.
    let metrics = cache.metrics();
    let counts = &observer.counts;
    assert_eq!(counts.hits.load(Ordering::Relaxed), metrics.hits);
    assert_eq!(counts.misses.load(Ordering::Relaxed), metrics.misses);
    assert_eq!(counts.inserts.load(Ordering::Relaxed), metrics.inserts);
    assert_eq!(counts.evictions.load(Ordering::Relaxed), metrics.evictions);
    // The re-entrant paths all ran, and the bounds held.
    assert!(metrics.evictions > 1000, "{metrics:?}");
    assert!(metrics.hits > 0 && metrics.misses > 0, "{metrics:?}");
    assert!(counts.callbacks_into_cache.load(Ordering::Relaxed) > metrics.misses / 2);
    assert!(cache.bytes() <= cache.capacity_bytes());
    assert_eq!(cache.len() as u64, metrics.entries);
}

/// Records which thread each event was delivered on.
#[derive(Default)]
struct ThreadRecorder {
    misses: Mutex<HashMap<PageKey, ThreadId>>,
}

impl PageCacheObserver for ThreadRecorder {
    fn on_event(&self, event: CacheEvent) {
        if let CacheEvent::Miss(key) = event {
            self.misses.lock().insert(key, std::thread::current().id());
        }
    }
}

#[test]
fn events_are_delivered_on_the_thread_that_caused_them() {
    // A recorder of the delivering thread of each miss.
    let cache = Arc::new(PageCache::new(PageCacheConfig::new(1 << 20)));
    let recorder = Arc::new(ThreadRecorder::default());
    cache.add_observer(recorder.clone());

    // Each worker misses its own keys and notes its thread id.
    let ids = Arc::new(Mutex::new(HashMap::new()));
    let (worker_cache, worker_ids) = (Arc::clone(&cache), Arc::clone(&ids));
    run_workers(move |thread| {
        worker_ids.lock().insert(thread as u64, std::thread::current().id());
        for page_no in 0..100 {
            assert!(worker_cache.get(&PageKey { db: thread as u64, page_no, version: 0 }).is_none());
        }
    });

    // Every miss was delivered on the thread that called `get`.
    let misses = recorder.misses.lock();
    assert_eq!(misses.len(), THREADS * 100);
    let ids = ids.lock();
    for (key, delivered_on) in misses.iter() {
        assert_eq!(Some(delivered_on), ids.get(&key.db), "{key:?}");
    }
}
