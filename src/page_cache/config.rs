//! Page cache configuration: total capacity and shard count.

/// Configuration of [`super::PageCache`].
#[derive(Debug, Clone)]
pub struct PageCacheConfig {
    /// Total capacity in bytes, split evenly across the shards (the first `capacity_bytes % shards`
    /// shards get one byte more). Each entry costs its page length plus
    /// [`super::ENTRY_OVERHEAD_BYTES`].
    pub capacity_bytes: usize,
    /// Number of shards, each with its own lock and its own CLOCK. Clamped to
    /// `1..=`[`PageCacheConfig::SHARDS_MAX`] by [`super::PageCache::new`].
    pub shards: usize,
}

impl PageCacheConfig {
    /// Shard count of [`PageCacheConfig::new`] and `Default`.
    pub const SHARDS_DEFAULT: usize = 16;
    /// Largest shard count [`super::PageCache::new`] uses; larger values are clamped to it.
    pub const SHARDS_MAX: usize = 1024;
    /// Capacity of `Default`: 64 MiB.
    pub const CAPACITY_BYTES_DEFAULT: usize = 64 * 1024 * 1024;

    /// A configuration with `capacity_bytes` and the default shard count.
    pub fn new(capacity_bytes: usize) -> Self {
        Self { capacity_bytes, shards: Self::SHARDS_DEFAULT }
    }

    /// The shard count actually used: `shards` clamped to `1..=SHARDS_MAX`.
    pub(crate) fn shard_count(&self) -> usize {
        self.shards.clamp(1, Self::SHARDS_MAX)
    }

    /// Capacity of shard `shard_index` of `shard_count`; the shard capacities sum to `capacity_bytes`.
    pub(crate) fn shard_capacity_bytes(&self, shard_index: usize, shard_count: usize) -> usize {
        let base = self.capacity_bytes / shard_count;
        let remainder = self.capacity_bytes % shard_count;
        base + usize::from(shard_index < remainder)
    }
}

impl Default for PageCacheConfig {
    fn default() -> Self {
        Self::new(Self::CAPACITY_BYTES_DEFAULT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_capacities_sum_to_the_total() {
        // 1000 bytes over 7 shards: 6 shards of 143 and one of 142.
        let config = PageCacheConfig { capacity_bytes: 1000, shards: 7 };
        let capacities: Vec<_> = (0..7).map(|index| config.shard_capacity_bytes(index, 7)).collect();
        assert_eq!(capacities.iter().sum::<usize>(), 1000);
        assert!(capacities.iter().all(|&bytes| bytes == 142 || bytes == 143));
    }

    #[test]
    fn shard_count_is_clamped() {
        // Zero shards means one; absurd counts are capped.
        assert_eq!(PageCacheConfig { capacity_bytes: 1, shards: 0 }.shard_count(), 1);
        assert_eq!(PageCacheConfig { capacity_bytes: 1, shards: usize::MAX }.shard_count(), 1024);
        assert_eq!(PageCacheConfig::default().shard_count(), 16);
        assert_eq!(PageCacheConfig::default().capacity_bytes, 64 << 20);
    }
}
