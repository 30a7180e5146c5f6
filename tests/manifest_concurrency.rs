//! Concurrent committers: every commit is present, and concurrency turns into batching.

mod manifest_support;

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};

use bop_storage::manifest::{DatabaseId, Manifest, Vote};
use manifest_support::{create, small_config};

const COMMITTERS: usize = 16;
const COMMITS_PER_COMMITTER: usize = 40;

#[test]
fn sixteen_committers_are_batched_and_all_commits_are_present() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = Arc::new(Manifest::open(dir.path(), small_config()).unwrap());
    let start = Arc::new(Barrier::new(COMMITTERS));

    // Each committer creates its own databases and saves a vote in the same batch.
    let committers: Vec<_> = (0..COMMITTERS)
        .map(|committer| {
            let manifest = Arc::clone(&manifest);
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                start.wait();
                let mut seqs = Vec::new();
                for index in 0..COMMITS_PER_COMMITTER {
                    let mut batch = create(&format!("t{committer}-{index}"));
                    batch.set_vote(Vote { term: index as u64, node_id: committer as u64, committed: false });
                    let outcome = manifest.commit(batch).expect("commit");
                    assert_eq!(outcome.created_databases.len(), 1);
                    seqs.push(outcome.seq);
                }
                seqs
            })
        })
        .collect();
    let mut all_seqs = BTreeSet::new();
    for committer in committers {
        for seq in committer.join().unwrap() {
            assert!(all_seqs.insert(seq), "sequence {seq} handed out twice");
        }
    }

    // Every acknowledged commit is present, with contiguous sequences and ids.
    let total = COMMITTERS * COMMITS_PER_COMMITTER;
    assert_eq!(all_seqs, (1..=total as u64).collect::<BTreeSet<_>>());
    let count = manifest.read(|r| r.database_count()).unwrap();
    assert_eq!(count, total as u64);
    for committer in 0..COMMITTERS {
        for index in 0..COMMITS_PER_COMMITTER {
            let name = format!("t{committer}-{index}");
            let found = manifest.read(|r| r.database_by_name(&name)).unwrap();
            assert!(found.is_some(), "{name} missing");
        }
    }
    assert_eq!(manifest.read(|r| r.next_database_id()).unwrap(), DatabaseId(total as u64 + 1));

    // Batching: fewer LMDB commits than batches.
    let metrics = manifest.metrics();
    assert_eq!(metrics.batches, total as u64);
    assert!(
        metrics.commits < metrics.batches,
        "no batching: {} commits for {} batches",
        metrics.commits,
        metrics.batches
    );
    eprintln!(
        "{} batches in {} LMDB commits ({:.2} batches per commit)",
        metrics.batches, metrics.commits, metrics.batches_per_commit
    );
}

#[test]
fn concurrent_duplicates_create_exactly_one_database() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = Arc::new(Manifest::open(dir.path(), small_config()).unwrap());
    let start = Arc::new(Barrier::new(COMMITTERS));

    // Sixteen committers race to create the same name.
    let committers: Vec<_> = (0..COMMITTERS)
        .map(|_| {
            let manifest = Arc::clone(&manifest);
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                start.wait();
                manifest.commit(create("contested"))
            })
        })
        .collect();
    let results: Vec<_> = committers.into_iter().map(|c| c.join().unwrap()).collect();

    // Exactly one wins; every other gets the typed conflict.
    let winners = results.iter().filter(|result| result.is_ok()).count();
    assert_eq!(winners, 1);
    for result in &results {
        if let Err(error) = result {
            assert!(
                matches!(error, bop_storage::manifest::ManifestError::DatabaseExists { name } if name == "contested"),
                "{error}"
            );
        }
    }
    assert_eq!(manifest.read(|r| r.database_count()).unwrap(), 1);
}
