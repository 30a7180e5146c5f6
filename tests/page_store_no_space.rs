//! A checkpoint on a full disk (docs/design.md, Page store, "Checkpoint and merge"): on `bop up` over a small
//! tmpfs the first snapshot's checkpoint could not write its generation file (ENOSPC), the snapshot build
//! failed, and Raft stopped on all three nodes. Lack of space is not a failure of the page store: the
//! checkpoint fails without poisoning anything, removes its partial file (it keeps no space) and raises the
//! Manager's space alarm, and a later one succeeds once space returns (the state machine's snapshot build
//! waits and tries again: `raft/tests/snapshot_disk_full.rs`).

use std::path::Path;
use std::sync::Arc;

use bop_storage::io::{Io, SimDisk};
use bop_storage::page_store::{Manager, ManagerConfig, PAGE_SIZE};
use bop_storage::wal::WalConfig;

fn config(dir: &Path, disk: &SimDisk) -> ManagerConfig {
    let mut config = ManagerConfig::new(dir);
    config.io = Arc::new(disk.clone()) as Arc<dyn Io>;
    config.wal = WalConfig::new(dir.join("wal"));
    config.wal.segment_size_bytes = 4 << 20;
    config.manifest.map_size_initial_bytes = 1 << 20;
    config
}

fn page(page_no: u32) -> Vec<u8> {
    let mut p = vec![0u8; PAGE_SIZE];
    p[..4].copy_from_slice(&page_no.to_le_bytes());
    p[4] = 0x5a;
    p
}

/// Pages of the database: 1 MiB.
const PAGES: u32 = 256;

/// A Manager with one database of [`PAGES`] pages committed (in the log, not yet in a generation).
fn one_mib_database(dir: &Path, disk: &SimDisk) -> (Manager, bop_storage::page_store::Db) {
    let manager = Manager::open(config(dir, disk)).expect("open");
    let db = manager.create_database("main").expect("create");
    let images: Vec<Vec<u8>> = (1..=PAGES).map(page).collect();
    let frames: Vec<(u32, &[u8])> = (1..=PAGES).zip(&images).map(|(n, i)| (n, &i[..])).collect();
    db.commit(&frames, PAGES).expect("commit");
    (manager, db)
}

#[test]
fn a_checkpoint_without_space_leaves_no_file_and_no_poison_and_succeeds_once_space_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SimDisk::new(7);
    let (manager, db) = one_mib_database(dir.path(), &disk);
    // Room for part of the generation file (written 256 KiB at a time), not for all of it.
    let used = disk.used_bytes();
    disk.set_capacity_bytes(Some(used + (600 << 10)));

    let error = manager.checkpoint_all().expect_err("no space for the generation file");

    assert!(error.is_no_space(), "{error}");
    assert!(manager.space_alarm(), "the Manager's space alarm is raised");
    assert!(manager.waits_for_space(), "a caller may wait and try again");
    assert_eq!(disk.used_bytes(), used, "the partial generation file (512 KiB written) was removed");
    assert!(db.generation_chain().is_empty(), "nothing was published");
    // Not poisoned: reads and commits go on.
    let view = db.snapshot().expect("snapshot");
    assert_eq!(view.read_page(PAGES).expect("read").map(|p| p.to_vec()), Some(page(PAGES)));
    drop(view);

    disk.set_capacity_bytes(None);
    let (target, _) = manager.checkpoint_all().expect("checkpoint once space is back");
    assert!(target >= 1, "the commit is in the generation");
    assert!(!manager.space_alarm(), "the alarm clears");
    assert_eq!(db.generation_chain().len(), 1, "one generation written");
    let view = db.snapshot().expect("snapshot");
    assert_eq!(view.read_page(PAGES).expect("read").map(|p| p.to_vec()), Some(page(PAGES)));
    drop(view);
    manager.close().expect("close");
}

#[test]
fn stop_waiting_for_space_and_close_tell_callers_not_to_wait() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SimDisk::new(8);
    let (manager, _db) = one_mib_database(dir.path(), &disk);
    assert!(manager.waits_for_space());
    manager.stop_waiting_for_space();
    assert!(!manager.waits_for_space());

    let other_dir = tempfile::tempdir().expect("tempdir");
    let (other, _db) = one_mib_database(other_dir.path(), &SimDisk::new(9));
    other.close().expect("close");
    assert!(!other.waits_for_space(), "a closed Manager does not wait");
    manager.close().expect("close");
}
