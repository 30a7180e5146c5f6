//! A full file system under the manifest (docs/design.md, Manifest, "Lack of space"): an LMDB commit that
//! fails with ENOSPC does not poison the manifest or fail its committers. The group is held (the caller
//! stays blocked), the space alarm is raised, and once space returns the same commit succeeds and is
//! durable. With the map's space reserved ahead (the default), commits inside the map do not meet the full
//! file system at all. On a real tmpfs mounted by the test (skipped loudly where mounting is not permitted).

#[path = "common/tmpfs.rs"]
mod tmpfs;

use std::sync::mpsc;
use std::time::Duration;

use bop_storage::manifest::{Batch, DatabaseConfig, Manifest, ManifestConfig};
use tmpfs::Tmpfs;

/// Long enough that a commit which was going to fail has failed (an LMDB commit on tmpfs takes
/// microseconds): not returning within it shows the commit is held.
const HELD_FOR: Duration = Duration::from_millis(500);
const WAIT: Duration = Duration::from_secs(20);

/// Without the reservation, so that a commit meets the full file system.
fn unreserved() -> ManifestConfig {
    ManifestConfig { map_size_initial_bytes: 1 << 20, reserve_map_space: false, ..ManifestConfig::default() }
}

/// A database whose options take 64 KiB: the commit needs fresh pages at the end of the data file.
fn big_database(name: &str) -> Batch {
    let mut batch = Batch::new();
    batch.create_database(name, DatabaseConfig { page_size_bytes: 4096, options: vec![7; 64 << 10] });
    batch
}

#[test]
fn a_commit_on_a_full_file_system_is_held_until_space_returns_then_made_durable() {
    let Some(fs) = Tmpfs::mount("a_commit_on_a_full_file_system_is_held_until_space_returns", "4m") else {
        return;
    };
    let data_dir = fs.path().join("node");
    let manifest = Manifest::open(&data_dir, unreserved()).expect("open");
    manifest.commit(big_database("before")).expect("commit with space");
    let ballast = fs.fill();
    assert_eq!(fs.free_bytes(), 0, "the file system is full");

    std::thread::scope(|scope| {
        let (done, outcome) = mpsc::channel();
        let manifest = &manifest;
        scope.spawn(move || done.send(manifest.commit(big_database("held"))).expect("send"));

        match outcome.recv_timeout(HELD_FOR) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            other => panic!("a commit on a full file system returned instead of being held: {other:?}"),
        }
        assert!(manifest.space_alarm(), "the space alarm is raised while the commit is held");
        let metrics = manifest.metrics();
        assert!(metrics.space_alarm && metrics.no_space_retries >= 1, "{metrics:?}");
        // Reads go on while the commit is held, and nothing else was committed.
        assert!(manifest.read(|r| r.database_by_name("before")).expect("read").is_some());
        assert!(manifest.read(|r| r.database_by_name("held")).expect("read").is_none());
        assert_eq!(manifest.metrics().commits, 1);

        std::fs::remove_file(&ballast).expect("remove ballast");
        let committed = outcome.recv_timeout(WAIT).expect("the held commit returns once space is back");
        let committed = committed.expect("the held commit succeeds");
        assert_eq!(committed.created_databases.len(), 1);
        assert!(!manifest.space_alarm(), "the first successful commit clears the alarm");
        // The manifest was not poisoned: later commits go on.
        manifest.commit(big_database("after")).expect("commit after space returned");
    });
    manifest.close().expect("close");

    let reopened = Manifest::open(&data_dir, unreserved()).expect("reopen");
    for name in ["before", "held", "after"] {
        let info = reopened.read(|r| r.database_by_name(name)).expect("read").expect(name);
        assert_eq!(info.config.options, vec![7; 64 << 10], "{name} is durable with its options");
    }
    reopened.close().expect("close");
}

/// The reservation: after open the data file's blocks up to the map size are allocated, so commits that fit
/// in the map succeed on a file system with no free byte left, without waiting.
#[test]
fn with_the_map_reserved_commits_inside_it_succeed_on_a_full_file_system() {
    let Some(fs) = Tmpfs::mount("with_the_map_reserved_commits_inside_it_succeed", "8m") else {
        return;
    };
    let data_dir = fs.path().join("node");
    let config = ManifestConfig { map_size_initial_bytes: 2 << 20, ..ManifestConfig::default() };
    let manifest = Manifest::open(&data_dir, config.clone()).expect("open");
    assert_eq!(manifest.metrics().space_reserved_bytes, 2 << 20, "the map is reserved");
    fs.fill();
    assert_eq!(fs.free_bytes(), 0, "the file system is full");
    // Ten databases of 64 KiB options: 640 KiB of overflow pages, well inside the 2 MiB map.
    for n in 0..10 {
        manifest.commit(big_database(&format!("db{n}"))).expect("a commit inside the reserved map");
    }
    let metrics = manifest.metrics();
    assert!(
        !metrics.space_alarm && metrics.no_space_retries == 0,
        "no commit met the full disk: {metrics:?}"
    );
    manifest.close().expect("close");
    let reopened = Manifest::open(&data_dir, config).expect("reopen");
    assert_eq!(reopened.read(|r| r.database_count()).expect("count"), 10);
    reopened.close().expect("close");
}
