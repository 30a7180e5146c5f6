//! One shard of the page cache: a hash index over a ring of slots swept by a CLOCK hand.
//!
//! Invariants (hold whenever the shard lock is free):
//! - `index[key] == slot` iff `slots[slot]` holds the entry of `key`;
//! - `free_slots` lists exactly the empty slots;
//! - `bytes` is the sum of the live entries' `cost_bytes` and never exceeds `capacity_bytes`;
//! - the `bytes`/`entries` gauges in the counters equal `bytes` and `index.len()`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::RwLock;

use super::hash::BuildKeyHasher;
use super::metrics::{PageCacheMetrics, ShardCounters};
use super::observer::{deliver, CacheEvent, ObserverList};
use super::{PageKey, PageRef, ENTRY_OVERHEAD_BYTES};

/// Events of one insert are delivered from a stack buffer of this size; more spill to the heap.
const INLINE_EVENTS_MAX: usize = 4;

struct Entry {
    key: PageKey,
    page: PageRef,
    /// Page length plus [`ENTRY_OVERHEAD_BYTES`].
    cost_bytes: usize,
    /// The CLOCK reference bit: set by hits under the read lock, cleared by the hand under the
    /// write lock. Relaxed ordering suffices: it is a hint, and the write lock orders the hand's
    /// reads after every earlier hit's store.
    referenced: AtomicBool,
}

/// `repr(C)` with the hit and miss counters first: the lock word of `RwLock<ShardState>` precedes
/// the state, so the counters share its cache line, which a hit has just taken exclusive for the
/// read-lock increment; a separate counter line would be a second line moving between cores.
#[repr(C)]
struct ShardState {
    /// `get` calls that found their key; bumped under the read lock.
    hits: AtomicU64,
    /// `get` calls that did not find their key; bumped under the read lock.
    misses: AtomicU64,
    index: HashMap<PageKey, usize, BuildKeyHasher>,
    /// The CLOCK ring. Never shrinks; its length is at most the largest number of entries the
    /// shard ever held, which is bounded by `capacity_bytes / ENTRY_OVERHEAD_BYTES`.
    slots: Vec<Option<Entry>>,
    free_slots: Vec<usize>,
    /// Next slot the CLOCK hand examines; `< slots.len()` whenever `slots` is non-empty.
    hand: usize,
    bytes: usize,
    capacity_bytes: usize,
    observers: ObserverList,
}

/// A shard: its state behind a reader-writer lock, and its counters.
pub(crate) struct Shard {
    state: RwLock<ShardState>,
    pub(crate) counters: ShardCounters,
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
            state: RwLock::new(ShardState {
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                index: HashMap::with_hasher(BuildKeyHasher),
                slots: Vec::new(),
                free_slots: Vec::new(),
                hand: 0,
                bytes: 0,
                capacity_bytes,
                observers: ObserverList::from(Vec::new()),
            }),
            counters: ShardCounters::default(),
        }
    }

    /// Looks `key` up under the read lock; a hit sets the entry's reference bit.
    pub(crate) fn get(&self, key: &PageKey) -> Option<PageRef> {
        let (page, observers) = {
            let state = self.state.read();
            let page = state.index.get(key).and_then(|&slot| state.slots.get(slot)).and_then(|entry| {
                let entry = entry.as_ref()?;
                // Load first: a hot page's bit is usually already set, and a plain load keeps its
                // cache line shared between readers.
                if !entry.referenced.load(Ordering::Relaxed) {
                    entry.referenced.store(true, Ordering::Relaxed);
                }
                Some(PageRef::clone(&entry.page))
            });
            let counter = if page.is_some() { &state.hits } else { &state.misses };
            counter.fetch_add(1, Ordering::Relaxed);
            (page, observers_if_any(&state.observers))
        };
        if let Some(observers) = observers {
            let event = if page.is_some() { CacheEvent::Hit(*key) } else { CacheEvent::Miss(*key) };
            deliver(&observers, &[event]);
        }
        page
    }

    /// Stores `page` under `key`, replacing the key's previous page and evicting with the CLOCK
    /// hand until it fits. A page whose cost exceeds the shard capacity is not stored (and the
    /// key's previous page, now stale, is removed).
    pub(crate) fn insert(&self, key: PageKey, page: PageRef) {
        let cost_bytes = page.len().saturating_add(ENTRY_OVERHEAD_BYTES);
        let mut events = EventBuffer::new();
        let observers = {
            let mut state = self.state.write();
            let observers = observers_if_any(&state.observers);
            let stored = state.insert(key, page, cost_bytes, &self.counters, &mut |evicted| {
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
            state.publish_gauges(&self.counters);
            observers
        };
        if let Some(observers) = observers {
            events.deliver(&observers);
        }
    }

    /// Removes `key`; returns its page.
    pub(crate) fn remove(&self, key: &PageKey) -> Option<PageRef> {
        let mut state = self.state.write();
        let slot = state.index.get(key).copied()?;
        let page = state.free_slot(slot).map(|entry| entry.page);
        state.publish_gauges(&self.counters);
        page
    }

    /// Removes every entry whose key satisfies `matches`; returns how many. O(slots).
    pub(crate) fn remove_matching(&self, matches: impl Fn(&PageKey) -> bool) -> usize {
        let mut state = self.state.write();
        let mut removed_count = 0;
        for slot in 0..state.slots.len() {
            let is_match =
                state.slots.get(slot).and_then(Option::as_ref).is_some_and(|entry| matches(&entry.key));
            if is_match && state.free_slot(slot).is_some() {
                removed_count += 1;
            }
        }
        if removed_count > 0 {
            state.publish_gauges(&self.counters);
        }
        removed_count
    }

    /// Adds this shard's counters to `total` (takes the read lock for the hit and miss counts).
    pub(crate) fn add_metrics_to(&self, total: &mut PageCacheMetrics) {
        self.counters.add_to(total);
        let state = self.state.read();
        total.hits += state.hits.load(Ordering::Relaxed);
        total.misses += state.misses.load(Ordering::Relaxed);
    }

    /// Makes `observers` the list this shard's events are delivered to.
    pub(crate) fn set_observers(&self, observers: ObserverList) {
        self.state.write().observers = observers;
    }

    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        self.state.read().check_invariants(&self.counters);
    }
}

fn observers_if_any(observers: &ObserverList) -> Option<ObserverList> {
    (!observers.is_empty()).then(|| ObserverList::clone(observers))
}

impl ShardState {
    /// Returns whether the page was stored; calls `on_evict` for every key the hand evicted.
    fn insert(
        &mut self,
        key: PageKey,
        page: PageRef,
        cost_bytes: usize,
        counters: &ShardCounters,
        on_evict: &mut dyn FnMut(PageKey),
    ) -> bool {
        // The previous page of the key goes first: it is stale whether or not the new one fits,
        // and freeing it first means the hand can never evict the entry being written.
        if let Some(&slot) = self.index.get(&key) {
            self.free_slot(slot);
        }
        if cost_bytes > self.capacity_bytes {
            return false;
        }
        if !self.make_room(cost_bytes, counters, on_evict) {
            return false;
        }
        let entry = Entry { key, page, cost_bytes, referenced: AtomicBool::new(false) };
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                debug_assert!(self.slots.get(slot).is_some_and(Option::is_none));
                if let Some(empty) = self.slots.get_mut(slot) {
                    *empty = Some(entry);
                }
                slot
            }
            None => {
                self.slots.push(Some(entry));
                self.slots.len() - 1
            }
        };
        self.index.insert(key, slot);
        self.bytes += cost_bytes;
        debug_assert!(self.bytes <= self.capacity_bytes);
        true
    }

    /// Sweeps the CLOCK hand until `cost_bytes` more fit: a referenced entry has its bit cleared
    /// (its second chance), an unreferenced one is evicted. The sweep examines at most
    /// `2 * slots.len()` slots: holding the write lock, no hit can set a bit meanwhile, so within
    /// two turns every entry is visited twice and the second visit evicts it; the shard is then
    /// empty and, as `cost_bytes <= capacity_bytes`, the page fits. Returns false only if that
    /// argument is broken (a bug), never spinning.
    fn make_room(
        &mut self,
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
            let Some(Some(entry)) = self.slots.get(slot) else { continue };
            if entry.referenced.load(Ordering::Relaxed) {
                entry.referenced.store(false, Ordering::Relaxed);
                continue;
            }
            if let Some(evicted) = self.free_slot(slot) {
                evictions += 1;
                on_evict(evicted.key);
            }
        }
        counters.eviction_scans.fetch_add(scans as u64, Ordering::Relaxed);
        counters.evictions.fetch_add(evictions, Ordering::Relaxed);
        let fits = self.bytes + cost_bytes <= self.capacity_bytes;
        debug_assert!(fits, "CLOCK sweep of {scans} slots left {} bytes", self.bytes);
        fits
    }

    /// Empties `slot`, unindexes its key and returns its entry.
    fn free_slot(&mut self, slot: usize) -> Option<Entry> {
        let entry = self.slots.get_mut(slot)?.take()?;
        let indexed = self.index.remove(&entry.key);
        debug_assert_eq!(indexed, Some(slot));
        self.bytes -= entry.cost_bytes;
        self.free_slots.push(slot);
        Some(entry)
    }

    fn publish_gauges(&self, counters: &ShardCounters) {
        counters.bytes.store(self.bytes as u64, Ordering::Relaxed);
        counters.entries.store(self.index.len() as u64, Ordering::Relaxed);
    }

    #[cfg(test)]
    fn check_invariants(&self, counters: &ShardCounters) {
        let mut bytes = 0;
        let mut live = 0;
        for (slot, entry) in self.slots.iter().enumerate() {
            match entry {
                Some(entry) => {
                    assert_eq!(self.index.get(&entry.key), Some(&slot));
                    assert_eq!(entry.cost_bytes, entry.page.len() + ENTRY_OVERHEAD_BYTES);
                    bytes += entry.cost_bytes;
                    live += 1;
                }
                None => assert!(self.free_slots.contains(&slot)),
            }
        }
        assert_eq!(live, self.index.len());
        assert_eq!(live + self.free_slots.len(), self.slots.len());
        assert_eq!(bytes, self.bytes);
        assert!(self.bytes <= self.capacity_bytes);
        assert!(self.slots.is_empty() || self.hand < self.slots.len());
        assert_eq!(counters.bytes.load(Ordering::Relaxed), bytes as u64);
        assert_eq!(counters.entries.load(Ordering::Relaxed), live as u64);
    }
}
