//! A checkpoint on a full disk (docs/design.md, Page store, "Checkpoint and merge"): on `bop up` over a small
//! tmpfs the first snapshot's checkpoint could not write its generation file (ENOSPC), the snapshot build
//! failed, and Raft stopped on all three nodes. Lack of space is not a failure of the page store: the
//! checkpoint is held with the Manager's space alarm raised and retried until it is written; a failed try
//! removes its partial file, so it keeps no space.

use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bop_storage::io::{Io, SimDisk};
use bop_storage::page_store::{Manager, ManagerConfig, PAGE_SIZE};
use bop_storage::wal::WalConfig;

const HELD_FOR: Duration = Duration::from_millis(300);
const WAIT: Duration = Duration::from_secs(20);

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

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_checkpoint_without_space_is_held_and_written_once_space_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SimDisk::new(7);
    let (manager, db) = one_mib_database(dir.path(), &disk);
    // Room for part of the generation file (written 256 KiB at a time), not for all of it.
    let used = disk.used_bytes();
    disk.set_capacity_bytes(Some(used + (600 << 10)));

    std::thread::scope(|scope| {
        let (done, result) = mpsc::channel();
        let manager = &manager;
        scope.spawn(move || done.send(manager.checkpoint_all().map(|(target, _)| target)).expect("send"));
        match result.recv_timeout(HELD_FOR) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            other => panic!("a checkpoint without space returned instead of being held: {other:?}"),
        }
        assert!(manager.space_alarm(), "the Manager's space alarm is raised");

        disk.set_capacity_bytes(None);
        let target = result.recv_timeout(WAIT).expect("returns once space is back").expect("checkpoint");
        assert!(target >= 1, "the commit is in the generation");
        assert!(!manager.space_alarm(), "the alarm clears");
    });
    assert_eq!(db.generation_chain().len(), 1, "one generation written");
    let view = db.snapshot().expect("snapshot");
    assert_eq!(view.read_page(PAGES).expect("read").map(|p| p.to_vec()), Some(page(PAGES)));
    drop(view);
    manager.close().expect("close");
}

#[test]
fn stop_waiting_for_space_fails_a_held_checkpoint_leaving_no_partial_file_and_no_poison() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SimDisk::new(8);
    let (manager, db) = one_mib_database(dir.path(), &disk);
    let used = disk.used_bytes();
    disk.set_capacity_bytes(Some(used + (600 << 10)));

    std::thread::scope(|scope| {
        let (done, result) = mpsc::channel();
        let manager = &manager;
        scope.spawn(move || done.send(manager.checkpoint_all().map(|(target, _)| target)).expect("send"));
        wait_until("the alarm is raised", || manager.space_alarm());
        manager.stop_waiting_for_space();
        let result = result.recv_timeout(WAIT).expect("the held checkpoint returns at once");
        let error = result.expect_err("not written");
        assert!(error.is_no_space(), "{error}");
        assert!(!manager.space_alarm(), "no checkpoint is held any more");
    });
    // The failed try's partial generation file (512 KiB were written) is gone: it keeps no space.
    assert_eq!(disk.used_bytes(), used, "the partial generation file was removed");
    // Not poisoned: with space back a checkpoint succeeds.
    disk.set_capacity_bytes(None);
    manager.checkpoint_all().expect("checkpoint with space");
    assert_eq!(db.generation_chain().len(), 1);
    manager.close().expect("close");
}
