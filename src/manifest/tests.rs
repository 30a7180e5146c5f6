//! Unit tests that need access to the pipeline internals.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

fn config() -> ManifestConfig {
    ManifestConfig {
        map_size_initial_bytes: 1024 * 1024,
        map_size_max_bytes: 64 * 1024 * 1024,
        ..ManifestConfig::default()
    }
}

fn db_config() -> DatabaseConfig {
    DatabaseConfig { page_size_bytes: 4096, options: Vec::new() }
}

fn create(name: &str) -> Batch {
    let mut batch = Batch::new();
    batch.create_database(name, db_config());
    batch
}

/// Waits until `condition` holds, polling, for at most five seconds.
fn wait_until(mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "condition not reached within 5 s");
        std::thread::yield_now();
    }
}

#[test]
fn commit_then_read() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = Manifest::open(dir.path(), config()).unwrap();
    assert_eq!(manifest.previous_shutdown(), PreviousShutdown::FirstOpen);

    let outcome = manifest.commit(create("my-db")).unwrap();

    assert_eq!(outcome.seq, 1);
    assert_eq!(outcome.created_databases, vec![DatabaseId(1)]);
    let info = manifest.read(|r| r.database_by_name("my-db")).unwrap().unwrap();
    assert_eq!(info.id, DatabaseId(1));
    assert!(manifest.read(|r| r.database_by_name("my_db")).unwrap().is_none());
}

#[test]
fn a_rejected_batch_fails_alone_inside_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = Manifest::open(dir.path(), config()).unwrap();
    manifest.commit(create("taken")).unwrap();
    let before = manifest.metrics();

    // Three batches share one group; the middle one conflicts with the stored state.
    let results = manifest.commit_all(vec![create("a"), create("taken"), create("b")]).unwrap();

    assert!(results[0].is_ok());
    assert!(matches!(
        &results[1],
        Err(ManifestError::DatabaseExists { name }) if name == "taken"
    ));
    assert!(results[2].is_ok());
    let after = manifest.metrics();
    assert_eq!(after.commits - before.commits, 1, "one LMDB commit for the group");
    assert_eq!(after.batches - before.batches, 2);
    assert_eq!(after.batches_rejected - before.batches_rejected, 1);
    // Sequence numbers are contiguous: the rejected batch got none.
    let seqs: Vec<u64> =
        results.iter().filter_map(|result| result.as_ref().ok().map(|outcome| outcome.seq)).collect();
    assert_eq!(seqs, vec![2, 3]);
}

#[test]
fn a_batch_conflicting_with_itself_is_rejected_whole() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = Manifest::open(dir.path(), config()).unwrap();

    let mut batch = create("x");
    batch.create_database("x", db_config());
    let result = manifest.commit(batch);

    assert!(matches!(result, Err(ManifestError::DatabaseExists { .. })));
    // Nothing of the batch is visible, not even its first operation.
    assert!(manifest.read(|r| r.database_by_name("x")).unwrap().is_none());
    assert_eq!(manifest.read(|r| r.next_database_id()).unwrap(), DatabaseId(1));
}

#[test]
fn try_commit_reports_backpressure_when_the_queue_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let queue_max = 4;
    let manifest = Arc::new(
        Manifest::open(
            dir.path(),
            ManifestConfig { commit_queue_batches_max: queue_max, group_batches_max: 2, ..config() },
        )
        .unwrap(),
    );
    // Pretend a leader is busy so queued batches stay queued.
    manifest.pipeline.set_fake_leader(true);

    // Fill the queue from committer threads; they block waiting for the leader.
    let committers: Vec<_> = (0..queue_max)
        .map(|index| {
            let manifest = Arc::clone(&manifest);
            std::thread::spawn(move || manifest.commit(create(&format!("db-{index}"))))
        })
        .collect();
    wait_until(|| manifest.pipeline.queued_len() == queue_max);

    // A full queue: try_commit fails at once with a typed error.
    let result = manifest.try_commit(create("one-too-many"));
    assert!(matches!(
        result,
        Err(ManifestError::Backpressure { queue_batches_max }) if queue_batches_max == queue_max
    ));

    // Release the fake leader: every queued committer commits.
    manifest.pipeline.set_fake_leader(false);
    for committer in committers {
        committer.join().unwrap().unwrap();
    }
    assert_eq!(manifest.read(|r| r.database_count()).unwrap(), queue_max as u64);
    assert!(manifest.metrics().commits >= 2, "group_batches_max = 2 splits 4 batches");
}
