//! The page cache's two halves: the index (one `dashmap::DashMap` for the whole cache, so a hit
//! takes only a read lock of one of the map's own shards) and the rings (one CLOCK ring per cache
//! shard, each behind its own mutex, which inserts and removals take).
//!
//! Invariants (for each ring, whenever its mutex is free):
//! - for every key whose ring this is, `index[key].slot == slot` iff `slots[slot]` holds `key`;
//! - `free_slots` lists exactly the empty slots;
//! - `bytes` is the sum of the live slots' `cost_bytes` and never exceeds `capacity_bytes`;
//! - the `bytes`/`entries` gauges in the counters equal `bytes` and the live slots.
//!
//! Every change of the index entries of a ring's keys happens under that ring's mutex, and a ring
//! only ever touches its own keys, so the index and the rings agree. Lock order: a ring's mutex,
//! then an index shard's lock; a hit takes only the index shard's read lock, and no index lock is
//! held while another is taken.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};

use super::hash::BuildKeyHasher;
use super::metrics::{PageCacheMetrics, ShardCounters};
use super::observer::{deliver, CacheEvent, ObserverList};
use super::{PageKey, PageRef, ENTRY_OVERHEAD_BYTES};

/// Events of one insert are delivered from a stack buffer of this size; more spill to the heap.
const INLINE_EVENTS_MAX: usize = 4;

/// The cache's index: every cached key, its page and its place in its ring.
pub(crate) type Index = DashMap<PageKey, IndexEntry, BuildKeyHasher>;

/// What the index holds for one key.
pub(crate) struct IndexEntry {
    page: PageRef,
    /// The key's slot in its ring; fixed while the entry lives.
    slot: usize,
}

/// One slot of a ring: the key it holds and what the entry costs.
#[derive(Clone, Copy)]
struct Slot {
    key: PageKey,
    /// Page length plus [`ENTRY_OVERHEAD_BYTES`].
    cost_bytes: usize,
}

struct Ring {
    /// The CLOCK ring. Never shrinks; its length is at most the largest number of entries the
    /// shard ever held, which is bounded by `capacity_bytes / ENTRY_OVERHEAD_BYTES`.
    slots: Vec<Option<Slot>>,
    free_slots: Vec<usize>,
    /// Next slot the CLOCK hand examines; `< slots.len()` whenever `slots` is non-empty.
    hand: usize,
    bytes: usize,
    live: usize,
    capacity_bytes: usize,
}

/// A cache shard: its ring behind a mutex, its hit and miss counters on their own cache line,
/// and its insert-path counters.
pub(crate) struct Shard {
    ring: Mutex<Ring>,
    /// The CLOCK reference bits, one per slot the ring can ever have (`capacity_bytes /
    /// ENTRY_OVERHEAD_BYTES`, 64 bits a word): set by hits without the ring's mutex, cleared by
    /// the hand under it. Relaxed ordering suffices: a bit is a hint, and a hit racing with the
    /// reuse of its slot at worst gives the slot's new page a second chance it did not earn.
    referenced: Box<[AtomicU64]>,
    pub(crate) counters: ShardCounters,
    lookups: HitCounters,
    /// Whether `observers` is non-empty, so a lookup without observers takes no lock for them.
    observed: AtomicBool,
    observers: RwLock<ObserverList>,
}

/// Bumped by every `get`, so kept off the ring mutex's cache line, which inserts write.
#[repr(align(128))]
#[derive(Default)]
struct HitCounters {
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Events gathered under the lock, delivered after it is released.
struct EventBuffer {
    inline: [Option<CacheEvent>; INLINE_EVENTS_MAX],
    inline_len: usize,
    spilled: Vec<CacheEvent>,
}

impl EventBuffer {
    fn new() -> Self {
        Self { inline: [None; INLINE_EVENTS_MAX], inline_len: 0, spilled: Vec::new() }
    }

    fn push(&mut self, event: CacheEvent) {
        if let Some(slot) = self.inline.get_mut(self.inline_len) {
            *slot = Some(event);
            self.inline_len += 1;
        } else {
            self.spilled.push(event);
        }
    }

    fn deliver(&self, observers: &ObserverList) {
        for event in self.inline.iter().flatten() {
            deliver(observers, std::slice::from_ref(event));
        }
        deliver(observers, &self.spilled);
    }
}

impl Shard {
    pub(crate) fn new(capacity_bytes: usize) -> Self {
        Self {
            ring: Mutex::new(Ring {
                slots: Vec::new(),
                free_slots: Vec::new(),
                hand: 0,
                bytes: 0,
                live: 0,
                capacity_bytes,
            }),
            referenced: (0..(capacity_bytes / ENTRY_OVERHEAD_BYTES).div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            counters: ShardCounters::default(),
            lookups: HitCounters::default(),
            observed: AtomicBool::new(false),
            observers: RwLock::new(ObserverList::from(Vec::new())),
        }
    }

    /// Looks `key` up in the index (one read lock of one of its shards); a hit sets the entry's
    /// reference bit. The ring is not touched.
    pub(crate) fn get(&self, index: &Index, key: &PageKey) -> Option<PageRef> {
        let page = index.get(key).map(|entry| {
            self.set_referenced(entry.slot);
            PageRef::clone(&entry.page)
        });
        let counter = if page.is_some() { &self.lookups.hits } else { &self.lookups.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(observers) = self.observers() {
            {
                let event = if page.is_some() { CacheEvent::Hit(*key) } else { CacheEvent::Miss(*key) };
                deliver(&observers, &[event]);
            }
        }
        page
    }

    /// Stores `page` under `key`, replacing the key's previous page and evicting with the CLOCK
    /// hand until it fits. A page whose cost exceeds the shard capacity is not stored (and the
    /// key's previous page, now stale, is removed).
    pub(crate) fn insert(&self, index: &Index, key: PageKey, page: PageRef) {
        let cost_bytes = page.len().saturating_add(ENTRY_OVERHEAD_BYTES);
        let mut events = EventBuffer::new();
        let observers = {
            let mut ring = self.ring.lock();
            let observers = self.observers();
            let stored =
                ring.insert(index, &self.referenced, key, page, cost_bytes, &self.counters, &mut |evicted| {
                    if observers.is_some() {
                        events.push(CacheEvent::Evict(evicted));
                    }
                });
            if stored {
                self.counters.inserts.fetch_add(1, Ordering::Relaxed);
                if observers.is_some() {
                    events.push(CacheEvent::Insert(key));
                }
            }
            ring.publish_gauges(&self.counters);
            observers
        };
        if let Some(observers) = observers {
            events.deliver(&observers);
        }
    }

    /// Removes `key`; returns its page.
    pub(crate) fn remove(&self, index: &Index, key: &PageKey) -> Option<PageRef> {
        let mut ring = self.ring.lock();
        let page = ring.remove(index, key);
        ring.publish_gauges(&self.counters);
        page
    }

    /// Removes every entry whose key satisfies `matches`; returns how many. O(slots).
    pub(crate) fn remove_matching(&self, index: &Index, matches: impl Fn(&PageKey) -> bool) -> usize {
        let mut ring = self.ring.lock();
        let mut removed_count = 0;
        for slot in 0..ring.slots.len() {
            let is_match =
                ring.slots.get(slot).and_then(Option::as_ref).is_some_and(|held| matches(&held.key));
            if is_match && ring.free_slot(index, slot).is_some() {
                removed_count += 1;
            }
        }
        if removed_count > 0 {
            ring.publish_gauges(&self.counters);
        }
        removed_count
    }

    /// Adds this shard's counters to `total`.
    pub(crate) fn add_metrics_to(&self, total: &mut PageCacheMetrics) {
        self.counters.add_to(total);
        total.hits += self.lookups.hits.load(Ordering::Relaxed);
        total.misses += self.lookups.misses.load(Ordering::Relaxed);
    }

    fn set_referenced(&self, slot: usize) {
        if let Some(word) = self.referenced.get(slot / 64) {
            let bit = 1u64 << (slot % 64);
            // Load first: a hot page's bit is usually already set, and a plain load keeps its
            // cache line shared between readers.
            if word.load(Ordering::Relaxed) & bit == 0 {
                word.fetch_or(bit, Ordering::Relaxed);
            }
        }
    }

    /// Makes `observers` the list this shard's events are delivered to.
    pub(crate) fn set_observers(&self, observers: ObserverList) {
        let mut current = self.observers.write();
        self.observed.store(!observers.is_empty(), Ordering::Release);
        *current = observers;
    }

    /// The registered observers, if any (a clone of the list: one reference count increment).
    fn observers(&self) -> Option<ObserverList> {
        if !self.observed.load(Ordering::Acquire) {
            return None;
        }
        let observers = self.observers.read();
        (!observers.is_empty()).then(|| ObserverList::clone(&observers))
    }

    /// Checks this ring against the index; returns how many index entries it accounts for.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self, index: &Index) -> usize {
        self.ring.lock().check_invariants(index, &self.counters)
    }
}

impl Ring {
    /// Returns whether the page was stored; calls `on_evict` for every key the hand evicted.
    #[allow(clippy::too_many_arguments)]
    fn insert(
        &mut self,
        index: &Index,
        referenced: &[AtomicU64],
        key: PageKey,
        page: PageRef,
        cost_bytes: usize,
        counters: &ShardCounters,
        on_evict: &mut dyn FnMut(PageKey),
    ) -> bool {
        // The previous page of the key goes first: it is stale whether or not the new one fits,
        // and freeing it first means the hand can never evict the entry being written.
        self.remove(index, &key);
        if cost_bytes > self.capacity_bytes {
            return false;
        }
        if !self.make_room(index, referenced, cost_bytes, counters, on_evict) {
            return false;
        }
        let held = Slot { key, cost_bytes };
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                debug_assert!(self.slots.get(slot).is_some_and(Option::is_none));
                if let Some(empty) = self.slots.get_mut(slot) {
                    *empty = Some(held);
                }
                slot
            }
            None => {
                self.slots.push(Some(held));
                self.slots.len() - 1
            }
        };
        // New entries start with the bit clear.
        if let Some(word) = referenced.get(slot / 64) {
            word.fetch_and(!(1u64 << (slot % 64)), Ordering::Relaxed);
        }
        index.insert(key, IndexEntry { page, slot });
        self.bytes += cost_bytes;
        self.live += 1;
        debug_assert!(self.bytes <= self.capacity_bytes);
        true
    }

    /// Removes `key` (one of this ring's keys) from the index and its slot; returns its page.
    fn remove(&mut self, index: &Index, key: &PageKey) -> Option<PageRef> {
        let (_, entry) = index.remove(key)?;
        self.release_slot(entry.slot);
        Some(entry.page)
    }

    /// Sweeps the CLOCK hand until `cost_bytes` more fit: a referenced entry has its bit cleared
    /// (its second chance), an unreferenced one is evicted. The sweep examines at most
    /// `2 * slots.len()` slots. A hit can set a bit meanwhile (hits take no ring lock), so a
    /// page read during the sweep may get its second chance again; every slot the hand passes
    /// twice without a hit in between is evicted. Returns false if the bound ran out before the
    /// page fit (only under a storm of hits on every entry of the shard); the page is then not
    /// cached, never spinning.
    fn make_room(
        &mut self,
        index: &Index,
        referenced: &[AtomicU64],
        cost_bytes: usize,
        counters: &ShardCounters,
        on_evict: &mut dyn FnMut(PageKey),
    ) -> bool {
        let scans_max = 2 * self.slots.len();
        let mut scans = 0usize;
        let mut evictions = 0u64;
        while self.bytes + cost_bytes > self.capacity_bytes && scans < scans_max {
            let slot = self.hand;
            self.hand = (self.hand + 1) % self.slots.len();
            scans += 1;
            let Some(Some(held)) = self.slots.get(slot).copied() else { continue };
            let bit = 1u64 << (slot % 64);
            let second_chance = referenced.get(slot / 64).is_some_and(|word| {
                word.load(Ordering::Relaxed) & bit != 0 && word.fetch_and(!bit, Ordering::Relaxed) & bit != 0
            });
            if second_chance {
                continue;
            }
            if self.free_slot(index, slot).is_some() {
                evictions += 1;
                on_evict(held.key);
            }
        }
        counters.eviction_scans.fetch_add(scans as u64, Ordering::Relaxed);
        counters.evictions.fetch_add(evictions, Ordering::Relaxed);
        self.bytes + cost_bytes <= self.capacity_bytes
    }

    /// Empties `slot` and unindexes its key; returns the key's page.
    fn free_slot(&mut self, index: &Index, slot: usize) -> Option<PageRef> {
        let held = self.slots.get(slot).copied().flatten()?;
        let (_, entry) = index.remove(&held.key)?;
        debug_assert_eq!(entry.slot, slot);
        self.release_slot(slot);
        Some(entry.page)
    }

    /// Empties `slot` (whose key was just unindexed) and gives its bytes back.
    fn release_slot(&mut self, slot: usize) {
        if let Some(held) = self.slots.get_mut(slot).and_then(Option::take) {
            self.bytes -= held.cost_bytes;
            self.live -= 1;
            self.free_slots.push(slot);
        }
    }

    fn publish_gauges(&self, counters: &ShardCounters) {
        counters.bytes.store(self.bytes as u64, Ordering::Relaxed);
        counters.entries.store(self.live as u64, Ordering::Relaxed);
    }

    #[cfg(test)]
    fn check_invariants(&self, index: &Index, counters: &ShardCounters) -> usize {
        let mut bytes = 0;
        let mut live = 0;
        for (slot, held) in self.slots.iter().enumerate() {
            match held {
                Some(held) => {
                    let entry = index.get(&held.key).expect("a ring's key is indexed");
                    assert_eq!(entry.slot, slot);
                    assert_eq!(held.cost_bytes, entry.page.len() + ENTRY_OVERHEAD_BYTES);
                    bytes += held.cost_bytes;
                    live += 1;
                }
                None => assert!(self.free_slots.contains(&slot)),
            }
        }
        assert_eq!(live, self.live);
        assert_eq!(live + self.free_slots.len(), self.slots.len());
        assert_eq!(bytes, self.bytes);
        assert!(self.bytes <= self.capacity_bytes);
        assert!(self.slots.is_empty() || self.hand < self.slots.len());
        assert_eq!(counters.bytes.load(Ordering::Relaxed), bytes as u64);
        assert_eq!(counters.entries.load(Ordering::Relaxed), live as u64);
        live
    }
}
