//! The page store and the Manager: commits, pinned snapshots, checkpoints (delta and full generations),
//! log purge, reopen, many databases, corruption, closing.

use std::path::Path;
use std::sync::Arc;

use bop_storage::io::{CrashMode, Io, SimDisk};
use bop_storage::page_store::{Manager, ManagerConfig, PageStoreError, PAGE_SIZE};
use bop_storage::wal::WalConfig;

fn page(db_tag: u8, page_no: u32, version: u64) -> Vec<u8> {
    let mut p = vec![0u8; PAGE_SIZE];
    p[0] = db_tag;
    p[1..5].copy_from_slice(&page_no.to_le_bytes());
    p[5..13].copy_from_slice(&version.to_le_bytes());
    for (i, b) in p[13..].iter_mut().enumerate() {
        *b = (i as u64 ^ version ^ u64::from(page_no)) as u8;
    }
    p
}

fn config(dir: &Path, disk: &SimDisk) -> ManagerConfig {
    let mut config = ManagerConfig::new(dir);
    config.io = Arc::new(disk.clone()) as Arc<dyn Io>;
    config.wal = WalConfig::new(dir.join("wal"));
    config.wal.segment_size_bytes = 1024 * 1024;
    config.manifest.map_size_initial_bytes = 1 << 20;
    config
}

fn commit(db: &bop_storage::page_store::Db, tag: u8, pages: &[u32], version: u64, count: u32) -> u64 {
    let images: Vec<Vec<u8>> = pages.iter().map(|&p| page(tag, p, version)).collect();
    let frames: Vec<(u32, &[u8])> = pages.iter().zip(&images).map(|(&p, i)| (p, &i[..])).collect();
    db.commit(&frames, count).expect("commit").index
}

fn read(snapshot: &bop_storage::page_store::ReadSnapshot, page_no: u32) -> Option<Vec<u8>> {
    snapshot.read_page(page_no).expect("read").map(|p| p.to_vec())
}

#[test]
fn commits_are_readable_at_pinned_snapshots_and_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SimDisk::new(1);
    let manager = Manager::open(config(dir.path(), &disk)).expect("open");
    let db = manager.create_database("main").expect("create");
    commit(&db, 1, &[1, 2, 3], 10, 3);
    let before = db.snapshot().expect("snapshot");
    commit(&db, 1, &[2], 20, 4);
    commit(&db, 1, &[4], 21, 4);

    // A pinned view sees exactly what was committed up to it.
    assert_eq!(read(&before, 2), Some(page(1, 2, 10)));
    assert_eq!(read(&before, 4), None, "page 4 did not exist yet");
    assert_eq!(before.page_count(), 3);
    let after = db.snapshot().expect("snapshot");
    assert_eq!(read(&after, 2), Some(page(1, 2, 20)));
    assert_eq!(read(&after, 4), Some(page(1, 4, 21)));
    drop((before, after));

    // After a crash that loses nothing acknowledged, the log replay rebuilds the index.
    manager.close().expect("close");
    drop((db, manager));
    let disk = disk.crash(CrashMode::TornSectors);
    let manager = Manager::open(config(dir.path(), &disk)).expect("reopen");
    let db = manager.open_database("main").expect("open db");
    let view = db.snapshot().expect("snapshot");
    assert_eq!(read(&view, 1), Some(page(1, 1, 10)));
    assert_eq!(read(&view, 2), Some(page(1, 2, 20)));
    assert_eq!(read(&view, 4), Some(page(1, 4, 21)));
}

#[test]
fn checkpoints_write_deltas_then_a_full_generation_and_purge_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SimDisk::new(2);
    let mut cfg = config(dir.path(), &disk);
    cfg.generation_chain_max = 3;
    let manager = Manager::open(cfg.clone()).expect("open");
    let db = manager.create_database("big").expect("create");
    let all: Vec<u32> = (1..=100).collect();
    commit(&db, 2, &all, 1, 100);

    let first = db.checkpoint().expect("checkpoint").expect("something to do");
    assert!(first.full && first.pages == 100, "{first:?}");
    // Only changed pages go into a delta.
    commit(&db, 2, &[5, 50], 2, 100);
    let delta = db.checkpoint().expect("checkpoint").expect("something to do");
    assert!(!delta.full && delta.pages == 2, "{delta:?}");
    commit(&db, 2, &[7], 3, 100);
    let delta2 = db.checkpoint().expect("checkpoint").expect("something to do");
    assert!(!delta2.full && delta2.pages == 1, "{delta2:?}");
    // The chain is at its bound: the next checkpoint merges everything into a full generation.
    commit(&db, 2, &[9], 4, 100);
    let merged = db.checkpoint().expect("checkpoint").expect("something to do");
    assert!(merged.full && merged.pages == 100, "{merged:?}");
    assert_eq!(db.diagnostics().generations.len(), 1);
    assert!(merged.log_purged_upto.is_some(), "the log is purged once every database has checkpointed");
    assert_eq!(db.checkpoint().expect("checkpoint"), None, "nothing newer");

    let check = |db: &bop_storage::page_store::Db| {
        let view = db.snapshot().expect("snapshot");
        for p in 1..=100u32 {
            let version = match p {
                5 | 50 => 2,
                7 => 3,
                9 => 4,
                _ => 1,
            };
            assert_eq!(read(&view, p), Some(page(2, p, version)), "page {p}");
        }
    };
    check(&db);
    manager.close().expect("close");
    drop((db, manager));
    let disk = disk.crash(CrashMode::LoseUnsynced);
    let manager = Manager::open(config(dir.path(), &disk)).expect("reopen");
    check(&manager.open_database("big").expect("db"));
}

#[test]
fn a_checkpoint_stops_at_the_oldest_pinned_reader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SimDisk::new(3);
    let manager = Manager::open(config(dir.path(), &disk)).expect("open");
    let db = manager.create_database("pinned").expect("create");
    commit(&db, 3, &[1], 1, 1);
    let reader = db.snapshot().expect("pin");
    commit(&db, 3, &[1], 2, 1);
    commit(&db, 3, &[1], 3, 1);

    let outcome = db.checkpoint().expect("checkpoint").expect("something to do");
    assert_eq!(outcome.log_index, reader.index(), "merged only up to the pinned reader");
    // The reader still sees its version; a new reader sees the newest.
    assert_eq!(read(&reader, 1), Some(page(3, 1, 1)));
    assert_eq!(read(&db.snapshot().expect("pin"), 1), Some(page(3, 1, 3)));
    drop(reader);
    let outcome = db.checkpoint().expect("checkpoint").expect("something to do");
    assert_eq!(outcome.log_index, manager.applied_index());
    assert_eq!(read(&db.snapshot().expect("pin"), 1), Some(page(3, 1, 3)));
}

#[test]
fn shrinking_a_database_hides_pages_past_its_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SimDisk::new(4);
    let manager = Manager::open(config(dir.path(), &disk)).expect("open");
    let db = manager.create_database("shrink").expect("create");
    commit(&db, 4, &[1, 2, 3, 4], 1, 4);
    db.checkpoint().expect("checkpoint");
    commit(&db, 4, &[1], 2, 2);
    let view = db.snapshot().expect("pin");
    assert_eq!(view.page_count(), 2);
    assert_eq!(read(&view, 3), None);
    db.checkpoint().expect("checkpoint");
    assert_eq!(read(&db.snapshot().expect("pin"), 4), None, "the delta's size cuts the chain's pages");
}

#[test]
fn databases_are_separate_exactly_named_and_droppable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SimDisk::new(5);
    let manager = Manager::open(config(dir.path(), &disk)).expect("open");
    let dash = manager.create_database("my-db").expect("create");
    let under = manager.create_database("my_db").expect("a different name is a different database");
    assert!(manager.create_database("my-db").is_err(), "duplicate names are refused");
    commit(&dash, 5, &[1], 1, 1);
    commit(&under, 6, &[1], 1, 1);
    under.checkpoint().expect("checkpoint");
    assert_eq!(read(&dash.snapshot().expect("pin"), 1), Some(page(5, 1, 1)));
    assert_eq!(read(&under.snapshot().expect("pin"), 1), Some(page(6, 1, 1)));
    assert_eq!(manager.list_databases().expect("list").len(), 2);

    manager.drop_database("my_db").expect("drop");
    assert!(
        matches!(under.snapshot(), Err(PageStoreError::NoSuchDatabase { .. })),
        "dropped handles stop working"
    );
    assert!(manager.open_database("my_db").is_err());
    manager.close().expect("close");
    drop((dash, under, manager));
    let disk = disk.crash(CrashMode::LoseUnsynced);
    let manager = Manager::open(config(dir.path(), &disk)).expect("reopen");
    assert_eq!(manager.list_databases().expect("list"), vec![("my-db".to_string(), 1)]);
    assert_eq!(
        read(&manager.open_database("my-db").expect("db").snapshot().expect("pin"), 1),
        Some(page(5, 1, 1))
    );
}

#[test]
#[allow(clippy::err_expect)] // `expect_err` would print a whole page on failure.
fn corrupt_pages_are_typed_errors_naming_database_page_and_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SimDisk::new(6);
    let mut cfg = config(dir.path(), &disk);
    cfg.cache.capacity_bytes = 0;
    let manager = Manager::open(cfg).expect("open");
    let db = manager.create_database("rot").expect("create");
    commit(&db, 7, &[1, 2], 1, 2);
    db.checkpoint().expect("checkpoint");
    commit(&db, 7, &[2], 2, 2);
    // Flip a bit in page 1's slot of the generation, and in page 2's frame in the log.
    let gen_path = dir.path().join("pages").join(format!("{:016x}-{:016x}.gen", db.id(), 1));
    assert!(disk.corrupt(&gen_path, 4096 + 17, 0x01));
    let segments: Vec<_> = disk.list_dir(&dir.path().join("wal")).expect("ls");
    let last = segments.iter().max().expect("a segment");
    let seg_path = dir.path().join("wal").join(last);
    let bytes = disk.file_bytes(&seg_path).expect("segment");
    let needle = page(7, 2, 2);
    let at = bytes.windows(64).rposition(|w| w == &needle[..64]).expect("frame in the log");
    assert!(disk.corrupt(&seg_path, (at + 100) as u64, 0x80));

    let view = db.snapshot().expect("pin");
    let err = view.read_page(1).err().expect("generation page rot is an error");
    assert!(
        matches!(err, PageStoreError::PageChecksum { page_no: 1, ref location, .. } if location.contains("generation")),
        "{err}"
    );
    let err = view.read_page(2).err().expect("log frame rot is an error");
    assert!(
        matches!(err, PageStoreError::PageChecksum { page_no: 2, ref location, .. } if location.contains("log entry")),
        "{err}"
    );
}

#[test]
fn bad_commits_are_refused_and_a_closed_manager_refuses_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SimDisk::new(7);
    let manager = Manager::open(config(dir.path(), &disk)).expect("open");
    let db = manager.create_database("strict").expect("create");
    let p = page(8, 1, 1);
    assert!(matches!(db.commit(&[(1, &p[..100])], 1), Err(PageStoreError::UnsupportedPageSize { got: 100 })));
    assert!(matches!(db.commit(&[(0, &p[..])], 1), Err(PageStoreError::InvalidCommit { .. })));
    assert!(matches!(db.commit(&[(2, &p[..])], 1), Err(PageStoreError::InvalidCommit { .. })));
    assert!(matches!(db.commit(&[(1, &p[..]), (1, &p[..])], 1), Err(PageStoreError::InvalidCommit { .. })));
    let view = db.snapshot().expect("pin");
    manager.close().expect("close");
    assert!(matches!(db.commit(&[(1, &p[..])], 1), Err(PageStoreError::Closed)));
    assert!(matches!(view.read_page(1), Err(PageStoreError::Closed)));
    assert!(matches!(manager.create_database("x"), Err(PageStoreError::Closed)));
}

#[test]
fn concurrent_commits_to_several_databases_apply_in_log_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SimDisk::new(8);
    let manager = Manager::open(config(dir.path(), &disk)).expect("open");
    let dbs: Vec<_> = (0..4).map(|i| manager.create_database(&format!("db{i}")).expect("create")).collect();
    let threads: Vec<_> = dbs
        .iter()
        .enumerate()
        .map(|(i, db)| {
            let db = db.clone();
            std::thread::spawn(move || {
                for version in 1..=50u64 {
                    commit(&db, i as u8, &[1, 2], version, 2);
                    let view = db.snapshot().expect("pin");
                    assert_eq!(read(&view, 1), Some(page(i as u8, 1, version)), "own write visible");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("committer");
    }
    assert_eq!(manager.applied_index(), 200);
    for (i, db) in dbs.iter().enumerate() {
        assert_eq!(read(&db.snapshot().expect("pin"), 2), Some(page(i as u8, 2, 50)));
    }
}
