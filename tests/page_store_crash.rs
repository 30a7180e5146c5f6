//! Crashes around checkpoints: whichever fsync fails and however the disk crashes afterwards, reopening
//! finds either the old generation chain or the new one in force (never a mix), no leftover generation
//! files, and every committed page.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use bop_storage::io::{CrashMode, Io, SimDisk};
use bop_storage::page_store::{Db, Manager, ManagerConfig, PAGE_SIZE};

fn page(tag: u8, page_no: u32, version: u64) -> Vec<u8> {
    let mut p = vec![tag; PAGE_SIZE];
    p[1..5].copy_from_slice(&page_no.to_le_bytes());
    p[5..13].copy_from_slice(&version.to_le_bytes());
    p
}

fn config(dir: &Path, disk: &SimDisk) -> ManagerConfig {
    let mut config = ManagerConfig::new(dir);
    config.io = Arc::new(disk.clone()) as Arc<dyn Io>;
    config.wal.segment_size_bytes = 128 * 1024;
    config.generation_chain_max = 2;
    config.manifest.map_size_initial_bytes = 1 << 20;
    config
}

fn commit(db: &Db, tag: u8, pages: &[u32], version: u64, count: u32) {
    let images: Vec<Vec<u8>> = pages.iter().map(|&p| page(tag, p, version)).collect();
    let frames: Vec<(u32, &[u8])> = pages.iter().zip(&images).map(|(&p, i)| (p, &i[..])).collect();
    db.commit(&frames, count).expect("commit");
}

fn expected(page_no: u32) -> u64 {
    match page_no {
        1..=4 => 3,
        _ => 1,
    }
}

#[test]
fn a_crash_at_any_step_of_a_checkpoint_leaves_the_old_or_the_new_generation() {
    let mut outcomes = BTreeSet::new();
    for fail_at in 0..14u64 {
        for mode in [CrashMode::LoseUnsynced, CrashMode::TornSectors] {
            // Set-up: a database with a full generation and newer commits in the log.
            let dir = tempfile::tempdir().expect("tempdir");
            let disk = SimDisk::new(fail_at * 2 + 1);
            let manager = Manager::open(config(dir.path(), &disk)).expect("open");
            let db = manager.create_database("ckpt").expect("create");
            commit(&db, 9, &(1..=20).collect::<Vec<_>>(), 1, 20);
            db.checkpoint().expect("first checkpoint");
            commit(&db, 9, &[1, 2], 2, 20);
            db.checkpoint().expect("delta");
            commit(&db, 9, &[1, 2, 3, 4], 3, 20);
            let old_chain = db.diagnostics().generations;

            // Action: the next checkpoint (a full merge, the chain being at its bound) meets a failing
            // fsync after `fail_at` successful ones, then the machine crashes.
            disk.fail_sync_after(fail_at);
            let result = db.checkpoint();
            let new_chain = db.diagnostics().generations;
            outcomes.insert(result.is_ok());
            let disk = disk.crash(mode);
            drop((db, manager));

            // Property: old or new chain in force, no stray files, every committed page readable.
            let manager = Manager::open(config(dir.path(), &disk)).expect("reopen");
            let db = manager.open_database("ckpt").expect("db");
            let chain = db.diagnostics().generations;
            assert!(
                chain == old_chain || chain == new_chain,
                "fail_at {fail_at}: chain {chain:?} is neither {old_chain:?} nor {new_chain:?}"
            );
            let files = disk.list_dir(&dir.path().join("pages")).expect("ls");
            assert_eq!(files.len(), chain.len(), "fail_at {fail_at}: files {files:?} for chain {chain:?}");
            let view = db.snapshot().expect("pin");
            for page_no in 1..=20 {
                let got = view.read_page(page_no).expect("read").expect("present");
                assert!(
                    got[..] == page(9, page_no, expected(page_no))[..],
                    "fail_at {fail_at} {mode:?}: page {page_no}"
                );
            }
        }
    }
    assert_eq!(outcomes.len(), 2, "some runs failed the checkpoint and some completed it");
}
