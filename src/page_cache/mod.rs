//! TEMPORARY local stand-in with the agreed API, replaced by the real cache from the page-cache branch.
#![allow(missing_docs)]
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PageKey {
    pub db: u64,
    pub page_no: u32,
    pub version: u64,
}
pub type PageRef = Arc<[u8]>;
#[derive(Debug, Clone)]
pub struct PageCacheConfig {
    pub capacity_bytes: usize,
    pub shards: usize,
}
impl Default for PageCacheConfig {
    fn default() -> Self {
        PageCacheConfig { capacity_bytes: 64 << 20, shards: 16 }
    }
}
impl PageCacheConfig {
    pub fn new(capacity_bytes: usize) -> Self {
        PageCacheConfig { capacity_bytes, shards: 16 }
    }
}
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageCacheMetrics {
    pub hits: u64,
    pub misses: u64,
    pub inserts: u64,
    pub evictions: u64,
    pub bytes: u64,
    pub entries: u64,
    pub eviction_scans: u64,
    pub capacity_bytes: u64,
}
pub struct PageCache {
    map: Mutex<HashMap<PageKey, PageRef>>,
    cap: usize,
}
impl PageCache {
    pub fn new(_config: PageCacheConfig) -> Self {
        PageCache { map: Mutex::new(HashMap::new()), cap: _config.capacity_bytes }
    }
    pub fn get(&self, key: &PageKey) -> Option<PageRef> {
        self.map.lock().get(key).cloned()
    }
    pub fn insert(&self, key: PageKey, page: PageRef) {
        if self.cap == 0 {
            return;
        }
        let mut m = self.map.lock();
        if m.len() > 1000 {
            m.clear();
        }
        m.insert(key, page);
    }
    pub fn remove_db(&self, db: u64) -> usize {
        let mut m = self.map.lock();
        let n = m.len();
        m.retain(|k, _| k.db != db);
        n - m.len()
    }
    pub fn metrics(&self) -> PageCacheMetrics {
        PageCacheMetrics::default()
    }
}
