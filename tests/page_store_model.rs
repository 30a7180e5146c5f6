//! Model-based property test of the page store: random commits to two databases, reads at pinned
//! snapshots, checkpoints, crashes (torn or not) and reopens, against an in-memory model of page versions.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bop_storage::io::{CrashMode, Io, SimDisk};
use bop_storage::page_store::{Db, Manager, ManagerConfig, ReadSnapshot, PAGE_SIZE};
use proptest::prelude::*;

const PAGES_MAX: u32 = 12;

fn page(db: usize, page_no: u32, version: u64) -> Vec<u8> {
    let mut p = vec![(version % 251) as u8; PAGE_SIZE];
    p[0] = db as u8;
    p[1..5].copy_from_slice(&page_no.to_le_bytes());
    p[5..13].copy_from_slice(&version.to_le_bytes());
    p
}

#[derive(Debug, Clone)]
enum Step {
    Commit { db: usize, pages: Vec<u32>, count: u32 },
    Pin { db: usize },
    Unpin,
    Checkpoint { db: usize },
    Crash { torn: bool },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0usize..2, proptest::collection::vec(1u32..=PAGES_MAX, 1..6), 1u32..=PAGES_MAX)
            .prop_map(|(db, pages, count)| Step::Commit { db, pages, count }),
        2 => (0usize..2).prop_map(|db| Step::Pin { db }),
        1 => Just(Step::Unpin),
        2 => (0usize..2).prop_map(|db| Step::Checkpoint { db }),
        1 => any::<bool>().prop_map(|torn| Step::Crash { torn }),
    ]
}

/// A database's contents: its size and the version of each page.
#[derive(Debug, Clone, Default, PartialEq)]
struct DbModel {
    count: u32,
    pages: BTreeMap<u32, u64>,
}

fn config(dir: &Path, disk: &SimDisk) -> ManagerConfig {
    let mut config = ManagerConfig::new(dir);
    config.io = Arc::new(disk.clone()) as Arc<dyn Io>;
    config.wal.segment_size_bytes = 128 * 1024;
    config.generation_chain_max = 3;
    config.cache.capacity_bytes = 8 * PAGE_SIZE;
    config.manifest.map_size_initial_bytes = 1 << 20;
    config
}

fn check(view: &ReadSnapshot, db: usize, model: &DbModel) {
    assert_eq!(view.page_count(), model.count, "size of db {db} at {}", view.index());
    for page_no in 1..=PAGES_MAX {
        let got = view.read_page(page_no).expect("read");
        let want =
            model.pages.get(&page_no).filter(|_| page_no <= model.count).map(|v| page(db, page_no, *v));
        assert!(
            got.as_deref() == want.as_deref(),
            "db {db} page {page_no} at {}: wrong version",
            view.index()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn page_store_matches_the_model(seed in any::<u64>(), steps in proptest::collection::vec(step(), 1..40)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut disk = SimDisk::new(seed);
        let mut manager = Manager::open(config(dir.path(), &disk)).expect("open");
        let mut dbs: Vec<Db> = ["a", "b"].iter().map(|n| manager.create_database(n).expect("create")).collect();
        let mut models = [DbModel::default(), DbModel::default()];
        let mut pinned: Vec<(usize, ReadSnapshot, DbModel)> = Vec::new();
        let mut version = 0u64;
        for step in steps {
            match step {
                Step::Commit { db, mut pages, count } => {
                    pages.retain(|p| *p <= count);
                    pages.sort_unstable();
                    pages.dedup();
                    version += 1;
                    let images: Vec<Vec<u8>> = pages.iter().map(|&p| page(db, p, version)).collect();
                    let frames: Vec<(u32, &[u8])> = pages.iter().zip(&images).map(|(&p, i)| (p, &i[..])).collect();
                    dbs[db].commit(&frames, count).expect("commit");
                    let model = &mut models[db];
                    model.count = count;
                    model.pages.retain(|p, _| *p <= count);
                    for p in pages {
                        model.pages.insert(p, version);
                    }
                }
                Step::Pin { db } => {
                    pinned.push((db, dbs[db].snapshot().expect("pin"), models[db].clone()));
                    if pinned.len() > 4 {
                        pinned.remove(0);
                    }
                }
                Step::Unpin => {
                    if !pinned.is_empty() {
                        pinned.remove(pinned.len() / 2);
                    }
                }
                Step::Checkpoint { db } => {
                    dbs[db].checkpoint().expect("checkpoint");
                }
                Step::Crash { torn } => {
                    pinned.clear();
                    let mode = if torn { CrashMode::TornSectors } else { CrashMode::LoseUnsynced };
                    disk = disk.crash(mode);
                    drop(dbs);
                    drop(manager);
                    manager = Manager::open(config(dir.path(), &disk)).expect("reopen");
                    dbs = ["a", "b"].iter().map(|n| manager.open_database(n).expect("open db")).collect();
                }
            }
            for (db, view, model) in &pinned {
                check(view, *db, model);
            }
            for (db, handle) in dbs.iter().enumerate() {
                check(&handle.snapshot().expect("pin"), db, &models[db]);
            }
        }
    }
}
