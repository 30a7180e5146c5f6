//! Property test: single-threaded random operations against a model of what any CLOCK cache must
//! guarantee, without modelling which page the hand picks:
//! - a `get`/`remove` returns the page last inserted under the key, or nothing;
//! - a page inserted (and fitting its shard) is returned by every later `get` until an insert
//!   evicts something (capacity pressure) or it is removed;
//! - a page larger than every shard is never cached;
//! - bytes never exceed the capacity; removal counts lie between what must and what may be cached;
//! - at the end, `len` and `bytes` equal the count and cost of the pages a probe finds.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bop_storage::page_cache::{PageCache, PageCacheConfig, PageKey, PageRef, ENTRY_OVERHEAD_BYTES};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Insert { key: PageKey, len: usize, fill: u8 },
    Get(PageKey),
    Remove(PageKey),
    RemoveDb(u64),
    RemoveVersionsUpto { db: u64, page_no: u32, version_max: u64 },
}

fn key_strategy() -> impl Strategy<Value = PageKey> {
    (0..3u64, 0..12u32, 0..4u64).prop_map(|(db, page_no, version)| PageKey { db, page_no, version })
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (key_strategy(), 0..400usize, any::<u8>()).prop_map(|(key, len, fill)| Op::Insert { key, len, fill }),
        5 => key_strategy().prop_map(Op::Get),
        1 => key_strategy().prop_map(Op::Remove),
        1 => (0..3u64).prop_map(Op::RemoveDb),
        1 => key_strategy().prop_map(|key| Op::RemoveVersionsUpto {
            db: key.db,
            page_no: key.page_no,
            version_max: key.version,
        }),
    ]
}

/// What the cache may and must hold.
#[derive(Default)]
struct Model {
    /// The last page inserted under each key that may still be cached.
    may: HashMap<PageKey, PageRef>,
    /// Keys that must be cached: inserted, fitting every shard, no eviction since, not removed.
    must: HashSet<PageKey>,
}

impl Model {
    fn check_found(&self, key: &PageKey, found: Option<&PageRef>) {
        match found {
            Some(page) => assert_eq!(Some(page), self.may.get(key), "{key:?}: not the last page inserted"),
            None => assert!(!self.must.contains(key), "{key:?} vanished without capacity pressure"),
        }
    }

    /// Forgets every key matching `matches`; returns (must, may) counts of what was dropped.
    fn drop_matching(&mut self, matches: impl Fn(&PageKey) -> bool) -> (usize, usize) {
        let must_count = self.must.iter().filter(|key| matches(key)).count();
        let may_count = self.may.keys().filter(|key| matches(key)).count();
        self.must.retain(|key| !matches(key));
        self.may.retain(|key, _| !matches(key));
        (must_count, may_count)
    }
}

fn run(capacity_bytes: usize, shards: usize, ops: Vec<Op>) -> u64 {
    let cache = PageCache::new(PageCacheConfig { capacity_bytes, shards });
    // Shard capacities are `capacity / shards`, some one byte more.
    let shard_capacity_min = capacity_bytes / shards;
    let shard_capacity_max = shard_capacity_min + usize::from(capacity_bytes % shards != 0);
    let mut model = Model::default();
    let mut gets = 0u64;

    for op in ops {
        match op {
            Op::Insert { key, len, fill } => {
                let page: PageRef = Arc::from(vec![fill; len]);
                let cost_bytes = len + ENTRY_OVERHEAD_BYTES;
                let evictions_before = cache.metrics().evictions;
                cache.insert(key, PageRef::clone(&page));
                if cache.metrics().evictions > evictions_before {
                    // Capacity pressure: the model does not say which pages went.
                    model.must.clear();
                }
                model.must.remove(&key);
                model.may.remove(&key);
                if cost_bytes <= shard_capacity_max {
                    model.may.insert(key, page);
                }
                if cost_bytes <= shard_capacity_min {
                    model.must.insert(key);
                }
            }
            Op::Get(key) => {
                gets += 1;
                model.check_found(&key, cache.get(&key).as_ref());
            }
            Op::Remove(key) => {
                model.check_found(&key, cache.remove(&key).as_ref());
                model.drop_matching(|candidate| *candidate == key);
            }
            Op::RemoveDb(db) => {
                let removed_count = cache.remove_db(db);
                let (must_count, may_count) = model.drop_matching(|key| key.db == db);
                assert!((must_count..=may_count).contains(&removed_count));
            }
            Op::RemoveVersionsUpto { db, page_no, version_max } => {
                let removed_count = cache.remove_versions_upto(db, page_no, version_max);
                let (must_count, may_count) = model.drop_matching(|key| {
                    key.db == db && key.page_no == page_no && key.version <= version_max
                });
                assert!((must_count..=may_count).contains(&removed_count));
            }
        }
        assert!(cache.bytes() <= capacity_bytes);
        assert!((model.must.len()..=model.may.len()).contains(&cache.len()));
    }

    // Every get was counted once.
    let metrics = cache.metrics();
    assert_eq!(metrics.hits + metrics.misses, gets);

    // A final probe finds exactly `len` pages costing exactly `bytes`.
    let mut found_count = 0;
    let mut found_bytes = 0;
    for key in model.may.keys() {
        if let Some(page) = cache.get(key) {
            found_count += 1;
            found_bytes += page.len() + ENTRY_OVERHEAD_BYTES;
        }
    }
    assert_eq!(cache.len(), found_count);
    assert_eq!(cache.bytes(), found_bytes);
    metrics.evictions
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn cache_agrees_with_the_model(
        capacity_bytes in 0..4000usize,
        shards in 1..5usize,
        ops in proptest::collection::vec(op_strategy(), 1..300),
    ) {
        run(capacity_bytes, shards, ops);
    }

    #[test]
    fn without_pressure_everything_inserted_stays(
        ops in proptest::collection::vec(op_strategy(), 1..300),
    ) {
        // Room for the whole key space at the largest page length: no insert ever evicts.
        let capacity_bytes = 3 * 12 * 4 * (400 + ENTRY_OVERHEAD_BYTES) * 4;
        prop_assert_eq!(run(capacity_bytes, 4, ops), 0);
    }
}
