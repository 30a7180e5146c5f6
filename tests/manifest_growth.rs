//! Map growth: a tiny map grows on MDB_MAP_FULL and the failed transaction is retried; past the
//! configured maximum, commits fail with a typed error and the manifest stays readable.

mod manifest_support;

use bop_storage::manifest::{
    Batch, DatabaseConfig, Manifest, ManifestConfig, ManifestError, PreviousShutdown,
};

const MAP_INITIAL_BYTES: usize = 64 * 1024;
const MAP_MAX_BYTES: usize = 1024 * 1024;
const COMMITS_MAX: usize = 5_000;

fn config() -> ManifestConfig {
    ManifestConfig {
        map_size_initial_bytes: MAP_INITIAL_BYTES,
        map_size_max_bytes: MAP_MAX_BYTES,
        ..ManifestConfig::default()
    }
}

fn big_database(index: usize) -> Batch {
    let mut batch = Batch::new();
    batch.create_database(
        format!("db-{index}"),
        DatabaseConfig { page_size_bytes: 4096, options: vec![index as u8; 1500] },
    );
    batch
}

#[test]
fn the_map_grows_from_64_kib_then_stops_at_the_maximum() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = Manifest::open(dir.path(), config()).unwrap();
    assert_eq!(manifest.metrics().map_size_bytes, MAP_INITIAL_BYTES as u64);

    // Commit until the map is full at its maximum; every commit before that succeeds.
    let mut committed = 0;
    let failure = loop {
        assert!(committed < COMMITS_MAX, "the map never filled up");
        match manifest.commit(big_database(committed)) {
            Ok(_) => committed += 1,
            Err(error) => break error,
        }
    };

    // The map doubled up to exactly the maximum, then reported a typed error.
    match failure {
        ManifestError::MapFull { map_size_bytes, map_size_max_bytes } => {
            assert_eq!(map_size_bytes, MAP_MAX_BYTES as u64);
            assert_eq!(map_size_max_bytes, MAP_MAX_BYTES as u64);
        }
        other => panic!("expected MapFull, got {other:?}"),
    }
    let metrics = manifest.metrics();
    assert_eq!(metrics.map_size_bytes, MAP_MAX_BYTES as u64);
    assert_eq!(metrics.map_grows, 4, "64 KiB -> 128 -> 256 -> 512 -> 1024 KiB");
    assert!(committed > 64, "only {committed} commits fit");

    // Everything committed is readable; the failed batch is not there.
    let count = manifest.read(|r| r.database_count()).unwrap();
    assert_eq!(count, committed as u64);
    let failed_name = format!("db-{committed}");
    assert!(manifest.read(|r| r.database_by_name(&failed_name)).unwrap().is_none());

    // After a reopen with a larger maximum the same batch commits.
    drop(manifest);
    let manifest =
        Manifest::open(dir.path(), ManifestConfig { map_size_max_bytes: 4 * MAP_MAX_BYTES, ..config() })
            .unwrap();
    assert_eq!(manifest.previous_shutdown(), PreviousShutdown::Unclean);
    assert_eq!(manifest.read(|r| r.database_count()).unwrap(), committed as u64);
    manifest.commit(big_database(committed)).unwrap();
    let mut index = committed + 1;
    while manifest.metrics().map_size_bytes <= MAP_MAX_BYTES as u64 {
        assert!(index < COMMITS_MAX, "the map never grew past the old maximum");
        manifest.commit(big_database(index)).unwrap();
        index += 1;
    }
}

#[test]
fn reads_in_progress_do_not_block_growth_forever() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = std::sync::Arc::new(Manifest::open(dir.path(), config()).unwrap());

    // A reader thread keeps opening short read transactions while commits force growth.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let manifest = std::sync::Arc::clone(&manifest);
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                manifest.read(|r| r.database_count()).unwrap();
                reads += 1;
            }
            reads
        })
    };
    let mut index = 0;
    while manifest.metrics().map_grows < 2 {
        assert!(index < COMMITS_MAX, "the map never grew twice");
        manifest.commit(big_database(index)).unwrap();
        index += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    assert_eq!(manifest.read(|r| r.database_count()).unwrap(), index as u64);
}
