//! Helpers shared by the WAL integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use bop_storage::io::{Io, SimDisk};
use bop_storage::wal::{NewEntry, WalConfig, WalStore, WriterMode};

/// The payload every test writes for `(index, term)`: its content proves which entry it is and that it
/// is whole.
pub fn payload(index: u64, term: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&term.to_le_bytes());
    let mut x = index.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ term;
    while out.len() < len.max(16) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(x as u8);
    }
    out
}

/// Checks a payload written by [`payload`]: `Some((index, term))` if it is whole.
pub fn check_payload(bytes: &[u8]) -> Option<(u64, u64)> {
    let index = u64::from_le_bytes(bytes.get(0..8)?.try_into().ok()?);
    let term = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
    (payload(index, term, bytes.len()) == bytes).then_some((index, term))
}

pub fn entry(index: u64, term: u64, len: usize) -> NewEntry {
    NewEntry { index, term, payload: payload(index, term, len) }
}

pub fn small_config(dir: impl Into<PathBuf>) -> WalConfig {
    let mut config = WalConfig::new(dir);
    config.segment_size_bytes = 64 * 1024;
    config
}

pub fn sim_store(disk: &SimDisk) -> WalStore {
    sim_store_with(disk, WriterMode::Threads)
}

pub fn sim_store_with(disk: &SimDisk, writer: WriterMode) -> WalStore {
    let io: Arc<dyn Io> = Arc::new(disk.clone());
    let mut config = small_config("/wal");
    config.writer = writer;
    WalStore::open(io, config).expect("open on the simulated disk")
}
