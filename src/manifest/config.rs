//! Manifest configuration: every queue, batch, blob and feed bound in one place.

use super::error::{ManifestError, Result};

/// Map sizes are multiples of this, which is a multiple of every OS page size LMDB runs on
/// (4 KiB, 16 KiB, 64 KiB), as `mdb_env_set_mapsize` requires.
pub const MAP_SIZE_ALIGN_BYTES: usize = 64 * 1024;

/// Configuration of [`super::Manifest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestConfig {
    /// Map size at open (rounded up to [`MAP_SIZE_ALIGN_BYTES`]; LMDB raises it to the size the
    /// data needs when reopening a larger file).
    pub map_size_initial_bytes: usize,
    /// The map doubles on `MDB_MAP_FULL` up to this size (rounded down to
    /// [`MAP_SIZE_ALIGN_BYTES`]); past it commits fail with `ManifestError::MapFull`.
    pub map_size_max_bytes: usize,
    /// Batches (and cursor operations) waiting for a commit; `commit` blocks and `try_commit`
    /// fails with `Backpressure` when full.
    pub commit_queue_batches_max: usize,
    /// Batches applied in one LMDB transaction by a commit leader.
    pub group_batches_max: usize,
    /// Operations in one batch.
    pub batch_ops_max: usize,
    /// Size of one opaque blob (membership, snapshot metadata, database options).
    pub blob_bytes_max: usize,
    /// Databases in the manifest.
    pub databases_max: u64,
    /// Stored snapshots.
    pub snapshots_max: u64,
    /// Registered change-feed cursors.
    pub cursors_max: usize,
    /// Feed entries kept when no live cursor holds truncation back.
    pub feed_retention_entries_max: u64,
    /// A cursor whose acknowledged sequence is more than this many entries behind the head is
    /// marked stale and stops holding truncation back.
    pub feed_cursor_lag_entries_max: u64,
    /// Entries returned by one `read_feed` call.
    pub feed_page_entries_max: usize,
    /// Entries deleted by the truncation that runs inside each commit; must exceed
    /// `group_batches_max` so truncation keeps up with appends.
    pub feed_truncate_per_commit_max: usize,
    /// Reserve the data file's blocks up to the map size on the file system (fallocate keeping the
    /// file's size) at open and after each growth, so that commits rarely meet a full file system.
    pub reserve_map_space: bool,
}

impl Default for ManifestConfig {
    fn default() -> Self {
        ManifestConfig {
            map_size_initial_bytes: 8 * 1024 * 1024,
            map_size_max_bytes: 4 * 1024 * 1024 * 1024,
            commit_queue_batches_max: 1024,
            group_batches_max: 256,
            batch_ops_max: 4096,
            blob_bytes_max: 1024 * 1024,
            databases_max: 1_000_000,
            snapshots_max: 1024,
            cursors_max: 64,
            feed_retention_entries_max: 100_000,
            feed_cursor_lag_entries_max: 1_000_000,
            feed_page_entries_max: 4096,
            feed_truncate_per_commit_max: 4096,
            reserve_map_space: true,
        }
    }
}

impl ManifestConfig {
    /// Checks the bounds against each other; returns the config with map sizes aligned.
    pub(crate) fn validated(&self) -> Result<ManifestConfig> {
        let invalid =
            |field: &'static str, reason: String| Err(ManifestError::InvalidConfig { field, reason });
        let mut config = self.clone();
        config.map_size_initial_bytes = self
            .map_size_initial_bytes
            .max(MAP_SIZE_ALIGN_BYTES)
            .div_ceil(MAP_SIZE_ALIGN_BYTES)
            .saturating_mul(MAP_SIZE_ALIGN_BYTES);
        config.map_size_max_bytes = self.map_size_max_bytes / MAP_SIZE_ALIGN_BYTES * MAP_SIZE_ALIGN_BYTES;
        if config.map_size_max_bytes < config.map_size_initial_bytes {
            return invalid(
                "map_size_max_bytes",
                format!(
                    "{} is below map_size_initial_bytes {} (both aligned to {} bytes)",
                    config.map_size_max_bytes, config.map_size_initial_bytes, MAP_SIZE_ALIGN_BYTES
                ),
            );
        }
        for (field, value) in [
            ("commit_queue_batches_max", self.commit_queue_batches_max),
            ("group_batches_max", self.group_batches_max),
            ("batch_ops_max", self.batch_ops_max),
            ("cursors_max", self.cursors_max),
            ("feed_page_entries_max", self.feed_page_entries_max),
        ] {
            if value == 0 {
                return invalid(field, "must be at least 1".into());
            }
        }
        if self.databases_max == 0 {
            return invalid("databases_max", "must be at least 1".into());
        }
        if self.snapshots_max == 0 {
            return invalid("snapshots_max", "must be at least 1".into());
        }
        if self.feed_truncate_per_commit_max <= self.group_batches_max {
            return invalid(
                "feed_truncate_per_commit_max",
                format!(
                    "{} must exceed group_batches_max {} so truncation keeps up with appends",
                    self.feed_truncate_per_commit_max, self.group_batches_max
                ),
            );
        }
        Ok(config)
    }
}
