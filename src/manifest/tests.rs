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

// A full file system under LMDB (docs/design.md, Manifest, "Lack of space"), injected where heed reports
// it: `heed::Error::Io` with the errno, at `begin_write` or `commit` (the transaction is aborted).

use std::sync::mpsc;

use store::{Injected, Point};

const ENOSPC: i32 = 28;
const EDQUOT: i32 = 122;
const EIO: i32 = 5;

/// Long enough that a commit which was going to fail has failed: not returning within it shows it is held.
const HELD_FOR: Duration = Duration::from_millis(300);

fn inject(manifest: &Manifest, faults: &[(Point, Injected)]) {
    manifest.store.faults.queue.lock().unwrap().extend(faults.iter().copied());
}

fn fail_every_commit(manifest: &Manifest, with: Option<Injected>) {
    *manifest.store.faults.every_commit.lock().unwrap() = with;
}

/// Commits `batch` on another thread; the receiver gets its result.
fn commit_in_thread(manifest: &Arc<Manifest>, batch: Batch) -> mpsc::Receiver<Result<CommitOutcome>> {
    let (done, result) = mpsc::channel();
    let manifest = Arc::clone(manifest);
    std::thread::spawn(move || done.send(manifest.commit(batch)).unwrap());
    result
}

fn assert_held(result: &mpsc::Receiver<Result<CommitOutcome>>) {
    match result.recv_timeout(HELD_FOR) {
        Err(mpsc::RecvTimeoutError::Timeout) => {}
        other => panic!("the commit returned instead of being held: {other:?}"),
    }
}

#[test]
fn a_commit_failing_for_lack_of_space_is_held_not_poisoned_and_made_once_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = Arc::new(Manifest::open(dir.path(), config()).unwrap());
    manifest.commit(create("before")).unwrap();
    fail_every_commit(&manifest, Some(Injected::Errno(ENOSPC)));

    let first = commit_in_thread(&manifest, create("held-1"));
    wait_until(|| manifest.metrics().no_space_retries >= 2);
    let second = commit_in_thread(&manifest, create("held-2"));
    assert_held(&first);
    assert_held(&second);
    assert!(manifest.space_alarm(), "the space alarm is raised");
    assert!(manifest.metrics().space_alarm);
    assert_eq!(manifest.pipeline.poisoned(), None, "lack of space does not poison");
    assert!(manifest.read(|r| r.database_by_name("held-1")).unwrap().is_none(), "nothing committed yet");

    fail_every_commit(&manifest, None);
    let first = first.recv_timeout(Duration::from_secs(5)).expect("returns once space is back").unwrap();
    let second = second.recv_timeout(Duration::from_secs(5)).expect("returns once space is back").unwrap();
    assert_eq!((first.seq, second.seq), (2, 3), "each applied once, in order");
    assert!(!manifest.space_alarm(), "the first successful commit clears the alarm");
    manifest.commit(create("after")).unwrap();

    let manifest = Arc::into_inner(manifest).unwrap();
    manifest.close().unwrap();
    let reopened = Manifest::open(dir.path(), config()).unwrap();
    for name in ["before", "held-1", "held-2", "after"] {
        assert!(reopened.read(|r| r.database_by_name(name)).unwrap().is_some(), "{name} is durable");
    }
    assert_eq!(reopened.read(|r| r.database_count()).unwrap(), 4);
}

#[test]
fn edquot_and_lack_of_space_at_begin_are_retried_like_enospc_at_commit() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = Manifest::open(dir.path(), config()).unwrap();
    inject(
        &manifest,
        &[
            (Point::Begin, Injected::Errno(ENOSPC)),
            (Point::Commit, Injected::Errno(EDQUOT)),
            (Point::Commit, Injected::Errno(ENOSPC)),
        ],
    );

    let outcome = manifest.commit(create("retried")).unwrap();

    assert_eq!(outcome.seq, 1, "one sequence: the aborted attempts assigned none");
    let metrics = manifest.metrics();
    assert_eq!((metrics.no_space_retries, metrics.commits, metrics.space_alarm), (3, 1, false));
    assert_eq!(manifest.pipeline.poisoned(), None);
}

#[test]
fn an_eio_from_commit_still_poisons() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = Manifest::open(dir.path(), config()).unwrap();
    inject(&manifest, &[(Point::Commit, Injected::Errno(EIO))]);

    let failed = manifest.commit(create("eio"));

    assert!(matches!(&failed, Err(ManifestError::Lmdb { op: "commit", .. })), "{failed:?}");
    assert!(matches!(manifest.commit(create("later")), Err(ManifestError::Poisoned { .. })));
    assert!(!manifest.space_alarm());
}

/// A meta page write that fails (for lack of space or anything else) makes LMDB mark the environment fatal;
/// the retry's `begin` then reports MDB_PANIC, which poisons.
#[test]
fn lack_of_space_followed_by_mdb_panic_poisons() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = Manifest::open(dir.path(), config()).unwrap();
    inject(&manifest, &[(Point::Commit, Injected::Errno(ENOSPC)), (Point::Begin, Injected::Panic)]);

    let failed = manifest.commit(create("panicked"));

    assert!(matches!(&failed, Err(ManifestError::Lmdb { op: "begin write transaction", .. })), "{failed:?}");
    assert!(manifest.pipeline.poisoned().is_some(), "MDB_PANIC poisons");
    assert!(matches!(manifest.commit(create("later")), Err(ManifestError::Poisoned { .. })));
}

#[test]
fn stop_waiting_for_space_fails_a_held_commit_at_once_without_poisoning() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = Arc::new(Manifest::open(dir.path(), config()).unwrap());
    fail_every_commit(&manifest, Some(Injected::Errno(ENOSPC)));
    let held = commit_in_thread(&manifest, create("held"));
    wait_until(|| manifest.space_alarm());
    assert_held(&held);

    manifest.stop_waiting_for_space();

    let result = held.recv_timeout(Duration::from_secs(5)).expect("the held commit returns at once");
    assert!(matches!(&result, Err(ManifestError::NoSpace { .. })), "{result:?}");
    assert_eq!(manifest.pipeline.poisoned(), None);
    // A later commit meeting a full disk fails at once too; one that finds space succeeds.
    assert!(matches!(manifest.commit(create("refused")), Err(ManifestError::NoSpace { .. })));
    fail_every_commit(&manifest, None);
    manifest.commit(create("made")).unwrap();
    let manifest = Arc::into_inner(manifest).unwrap();
    manifest.close().unwrap();
    let reopened = Manifest::open(dir.path(), config()).unwrap();
    assert_eq!(reopened.previous_shutdown(), PreviousShutdown::Clean);
    assert!(reopened.read(|r| r.database_by_name("held")).unwrap().is_none());
    assert!(reopened.read(|r| r.database_by_name("made")).unwrap().is_some());
}
