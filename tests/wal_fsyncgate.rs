//! A failed fdatasync followed by a reopen in the same boot ("fsyncgate"). After a failed writeback
//! Linux keeps the unwritten pages cached and clean: a reopen reads the batch back, its own fsync succeeds
//! without writing anything, and the batch would be counted durable although it never reached the disk.
//! The simulated disk behaves the same way (see `bop_storage::io::SimDisk`).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use bop_storage::io::{CrashMode, Io, SimDisk};
use bop_storage::wal::{LogPos, WalError, WalStore, WriterMode};
use common::{check_payload, entry, small_config};

fn open(disk: &SimDisk, writer: WriterMode) -> WalStore {
    let io: Arc<dyn Io> = Arc::new(disk.clone());
    let mut config = small_config("/wal");
    config.writer = writer;
    // Large enough that no segment gets half full, so that the preparer thread never asks for a sync:
    // under direct I/O ten padded records pass half of a small segment, and the preparer's fdatasync
    // could take the one failure meant for the batch (the test failed so in 1 run of 20).
    config.segment_size_bytes = 1 << 20;
    WalStore::open(io, config).expect("open")
}

/// Every readable entry, index to payload.
fn readable(store: &WalStore) -> BTreeMap<u64, Vec<u8>> {
    let state = store.state();
    let (Some(first), Some(last)) = (state.first_index, state.last) else { return BTreeMap::new() };
    (first..=last.index)
        .map(|i| (i, store.read(i).expect("read").unwrap_or_else(|| panic!("hole at {i}")).payload))
        .collect()
}

fn failed_fsync_then_reopen_in_the_same_boot(disk: SimDisk, writer: WriterMode) {
    // Set-up: ten acknowledged entries, then a batch whose fdatasync fails.
    let store = open(&disk, writer);
    for index in 1..=10 {
        store.append_durable(vec![entry(index, 1, 300)]).expect("durable");
    }
    disk.fail_sync_after(0);
    let failed = store.append_durable((11..=20).map(|i| entry(i, 1, 300)).collect());
    assert!(matches!(failed, Err(WalError::Poisoned(_))), "{failed:?}");
    assert!(store.poisoned().is_some());
    drop(store);

    // Action: reopen without a crash (the failed batch's bytes are still what a reader sees), append.
    let store = open(&disk, writer);
    let mut after_reopen = readable(&store);
    // Property: what never became durable is not in the log (openraft would trust it).
    for index in 11..=20 {
        assert_eq!(store.read(index).expect("read"), None, "entry {index} never reached the disk");
    }
    let next = store.state().next_index.expect("next index");
    for index in next..next + 15 {
        store.append_durable(vec![entry(index, 2, 300)]).expect("durable after reopen");
        after_reopen.insert(index, entry(index, 2, 300).payload);
    }
    drop(store);

    // Action: power loss.
    let store = open(&disk.crash(CrashMode::TornSectors), writer);

    // Property: everything the reopened store reported durable survives, and nothing else appears,
    // half-written or whole.
    let recovered = readable(&store);
    for (index, payload) in &recovered {
        assert!(check_payload(payload).is_some(), "entry {index} is whole");
    }
    assert_eq!(recovered, after_reopen, "the log after power loss is the log the reopen acknowledged");
}

#[test]
fn a_reopen_after_a_failed_fsync_does_not_count_the_unwritten_batch_durable() {
    for seed in [1u64, 3, 5] {
        failed_fsync_then_reopen_in_the_same_boot(SimDisk::new(seed), WriterMode::Threads);
        failed_fsync_then_reopen_in_the_same_boot(SimDisk::new_direct(seed), WriterMode::Threads);
        failed_fsync_then_reopen_in_the_same_boot(SimDisk::new(seed), WriterMode::Inline);
    }
}

/// Deleting purged segments ends with a directory fsync; if it fails, the store is poisoned (no retry, every
/// later write fails) and a reopen after a crash recovers the purge and every acknowledged entry above it.
#[test]
fn a_failed_directory_fsync_after_deleting_purged_segments_poisons_the_store() {
    let disk = SimDisk::new(11);
    // Small segments, so that the purge leaves whole segments behind.
    let io: Arc<dyn Io> = Arc::new(disk.clone());
    let mut config = small_config("/wal");
    config.writer = WriterMode::Inline;
    let store = WalStore::open(Arc::clone(&io), config.clone()).expect("open");
    for index in 1..=400u64 {
        store.append_durable(vec![entry(index, 1, 500)]).expect("durable");
    }
    let purge = store.submit_purge(LogPos { index: 300, term: 1 }, None).expect("submit purge");
    purge.expect("something to purge").wait().expect("the purge is durable");

    disk.fail_dir_sync_after(0);
    let failed = store.delete_purged_segments();
    assert!(matches!(failed, Err(WalError::Poisoned(_))), "{failed:?}");
    assert!(store.poisoned().is_some(), "a failed directory fsync poisons the store");
    let after = store.append_durable(vec![entry(401, 1, 500)]);
    assert!(matches!(after, Err(WalError::Poisoned(_))), "no write after the failed fsync: {after:?}");
    drop(store);

    let io: Arc<dyn Io> = Arc::new(disk.crash(CrashMode::LoseUnsynced));
    let store = WalStore::open(io, config).expect("reopen recovers");
    let state = store.state();
    assert_eq!(state.purged, Some(LogPos { index: 300, term: 1 }));
    assert_eq!(state.first_index, Some(301));
    assert_eq!(state.last, Some(LogPos { index: 400, term: 1 }));
    for index in 301..=400 {
        let read = store.read(index).expect("read").expect("acknowledged entry survives");
        assert_eq!(read.payload, entry(index, 1, 500).payload);
    }
}
