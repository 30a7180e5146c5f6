//! Cache events and the observer trait, with the delivery contract.

use std::sync::Arc;

use super::PageKey;

/// Something that happened to one key in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheEvent {
    /// The page was stored (new key or replacement of the key's previous page).
    Insert(PageKey),
    /// `get` found the key.
    Hit(PageKey),
    /// `get` did not find the key.
    Miss(PageKey),
    /// The CLOCK hand evicted the key to make room for an insert. Explicit removals
    /// (`remove`, `remove_db`, `remove_versions_upto`) are not reported.
    Evict(PageKey),
}

/// Receives [`CacheEvent`]s.
///
/// Contract:
/// - `on_event` is called after the cache released every lock, on the thread whose call caused
///   the event (the `get` or `insert` caller), so it may call back into the cache (`get`,
///   `insert`, `remove`, …). An observer that inserts on `Evict` must bound its own recursion:
///   that insert may evict again.
/// - Several threads may call `on_event` concurrently; the implementation synchronises itself.
/// - It must be quick: it runs inline on the cache's hot path.
/// - Events are delivered after the state change is visible to other threads, so another thread
///   can observe the effect (an evicted key missing, say) before the observer hears of it, and
///   events from different threads arrive in no particular global order. The events of one
///   `insert` arrive in order: its evictions, then its `Insert`.
/// - An observer sees the events caused after `add_observer` returned; events racing with
///   `add_observer` may or may not be seen. Observers cannot be removed.
/// - A panic in `on_event` propagates to the caller of the cache operation; the cache state is
///   consistent because no lock is held.
pub trait PageCacheObserver: Send + Sync {
    /// Called once per event, outside every cache lock.
    fn on_event(&self, event: CacheEvent);
}

/// The observers registered when a shard lock was taken; cloned (one reference count increment)
/// under the shard lock only when non-empty, and called after the lock is released.
pub(crate) type ObserverList = Arc<[Arc<dyn PageCacheObserver>]>;

/// Delivers `events` to every observer in `observers`, in order.
pub(crate) fn deliver(observers: &ObserverList, events: &[CacheEvent]) {
    for &event in events {
        for observer in observers.iter() {
            observer.on_event(event);
        }
    }
}
