//! A generation file is written in whole blocks whatever its size (docs/design.md, Page store, "Generation
//! file"). Found on `bop up` over a tmpfs: the first snapshot of a 97 MB database panicked in the generation
//! writer ("generation writes are whole blocks": 960 bytes over), because the directory's bytes, appended
//! after the pages, could make the buffer reach its write batch in the middle of a block; a release build
//! would have written the rest at an unaligned offset. 574 pages leave 63 blocks buffered before the
//! directory (header + 574 pages = 575 blocks = 8 batches of 64 + 63), and the 4,592 directory bytes then
//! pass the 64-block batch.

use std::path::Path;
use std::sync::Arc;

use bop_storage::io::{Io, SimDisk};
use bop_storage::page_store::{Manager, ManagerConfig, PAGE_SIZE};
use bop_storage::wal::WalConfig;

fn config(dir: &Path, disk: &SimDisk) -> ManagerConfig {
    let mut config = ManagerConfig::new(dir);
    config.io = Arc::new(disk.clone()) as Arc<dyn Io>;
    config.wal = WalConfig::new(dir.join("wal"));
    config.wal.segment_size_bytes = 8 << 20;
    config.manifest.map_size_initial_bytes = 1 << 20;
    config
}

fn page(page_no: u32) -> Vec<u8> {
    let mut p = vec![0u8; PAGE_SIZE];
    p[..4].copy_from_slice(&page_no.to_le_bytes());
    p[PAGE_SIZE - 1] = 0xa5;
    p
}

#[test]
fn generations_whose_directory_crosses_a_write_batch_are_written_whole_and_read_back() {
    for pages in [574u32, 638, 1000] {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = SimDisk::new(u64::from(pages));
        let manager = Manager::open(config(dir.path(), &disk)).expect("open");
        let db = manager.create_database("main").expect("create");
        let images: Vec<Vec<u8>> = (1..=pages).map(page).collect();
        let frames: Vec<(u32, &[u8])> = (1..=pages).zip(&images).map(|(n, i)| (n, &i[..])).collect();
        db.commit(&frames, pages).expect("commit");
        manager.checkpoint_all().expect("checkpoint");
        let chain = db.generation_chain();
        assert_eq!(chain.len(), 1, "{pages} pages: one generation");
        assert_eq!(chain[0].size_bytes % 4096, 0, "{pages} pages: the file is whole blocks");
        drop(chain);
        manager.close().expect("close");
        drop((db, manager));

        let manager = Manager::open(config(dir.path(), &disk)).expect("reopen");
        let db = manager.open_database("main").expect("open db");
        let view = db.snapshot().expect("snapshot");
        for n in [1, pages / 2, pages] {
            assert_eq!(
                view.read_page(n).expect("read").map(|p| p.to_vec()),
                Some(page(n)),
                "{pages}: page {n}"
            );
        }
    }
}
