//! Shared by the `bop-raft` integration tests: the kv example's type config and state machine, and opening
//! a `LogStore` in a directory.
#![allow(dead_code)]

pub mod bop;
pub mod hardening;

#[path = "../../examples/kv/state_machine.rs"]
pub mod state_machine;

use std::path::Path;
use std::sync::Arc;

use bop_raft::LogStore;
use bop_storage::io::Io;
use bop_storage::manifest::{Manifest, ManifestConfig};
use bop_storage::wal::{WalConfig, WalStore};

#[allow(unused_imports)]
pub use state_machine::{KvConfig, KvStateMachine, Put};

/// Raft timings for in-process clusters (50 ms heartbeats, 200–400 ms elections), keeping no log behind a
/// snapshot so that purges reach every entry a snapshot covers.
pub fn fast_config() -> Arc<openraft::Config> {
    Arc::new(
        openraft::Config {
            heartbeat_interval: 50,
            election_timeout_min: 200,
            election_timeout_max: 400,
            max_in_snapshot_log_to_keep: 0,
            ..Default::default()
        }
        .validate()
        .expect("config"),
    )
}

/// Opens a log store in `dir` (WAL in `dir/wal` with small segments, manifest in `dir/manifest`).
pub fn open_store(dir: &Path, io: Arc<dyn Io>) -> LogStore<KvConfig> {
    let mut wal_config = WalConfig::new(dir.join("wal"));
    wal_config.segment_size_bytes = 64 * 1024;
    let wal = WalStore::open(io, wal_config).expect("open wal");
    let manifest_config = ManifestConfig { map_size_initial_bytes: 1 << 20, ..ManifestConfig::default() };
    let manifest = Arc::new(Manifest::open(dir, manifest_config).expect("open manifest"));
    LogStore::new(Arc::new(wal), manifest).expect("log store")
}
