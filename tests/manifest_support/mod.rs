//! Helpers shared by the manifest integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use bop_storage::manifest::{
    Batch, CursorInfo, DatabaseConfig, DatabaseId, DatabaseInfo, Generation, Manifest, ManifestConfig,
    RaftState, Segment, Snapshot,
};

/// A small config for tests.
pub fn small_config() -> ManifestConfig {
    ManifestConfig {
        map_size_initial_bytes: 1024 * 1024,
        map_size_max_bytes: 256 * 1024 * 1024,
        ..ManifestConfig::default()
    }
}

pub fn db_config() -> DatabaseConfig {
    DatabaseConfig { page_size_bytes: 4096, options: vec![1, 2, 3] }
}

pub fn create(name: &str) -> Batch {
    let mut batch = Batch::new();
    batch.create_database(name, db_config());
    batch
}

pub fn open(dir: &Path) -> Manifest {
    Manifest::open(dir, small_config()).expect("open manifest")
}

/// Everything the manifest holds, for whole-state comparisons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub databases: Vec<DatabaseInfo>,
    pub next_database_id: DatabaseId,
    pub raft: RaftState,
    pub segments: Vec<(u64, Segment)>,
    pub generations: Vec<(DatabaseId, Vec<(u64, Generation)>)>,
    pub snapshots: Vec<(u64, Snapshot)>,
    pub cursors: Vec<CursorInfo>,
    pub feed_bounds: (u64, u64),
}

pub fn dump(manifest: &Manifest) -> State {
    manifest
        .read(|r| {
            let databases = r.databases(DatabaseId(0), usize::MAX)?;
            let mut generations = Vec::new();
            for db in &databases {
                generations.push((db.id, r.generations(db.id, usize::MAX)?));
            }
            Ok(State {
                next_database_id: r.next_database_id()?,
                raft: r.raft_state()?,
                segments: r.segments(0, usize::MAX)?,
                generations,
                snapshots: r.snapshots(0, usize::MAX)?,
                cursors: r.cursors(usize::MAX)?,
                feed_bounds: r.feed_bounds()?,
                databases,
            })
        })
        .expect("dump manifest")
}

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::yield_now();
    }
}
