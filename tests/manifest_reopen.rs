//! Reopening the manifest after every kind of change shows the same state.

mod manifest_support;

use bop_storage::manifest::{
    Batch, DatabaseConfig, DatabaseId, FeedStart, Generation, GenerationRef, LogId, Manifest, Membership,
    PreviousShutdown, Segment, SegmentState, Snapshot, Vote,
};
use manifest_support::{create, dump, open, State};

/// Commits `batch`, closes, reopens, and checks the state survived; returns the reopened handle.
fn commit_and_reopen(dir: &std::path::Path, manifest: Manifest, batch: Batch) -> Manifest {
    manifest.commit(batch).expect("commit");
    reopen(dir, manifest)
}

fn reopen(dir: &std::path::Path, manifest: Manifest) -> Manifest {
    let before: State = dump(&manifest);
    manifest.close().expect("close");
    let reopened = open(dir);
    assert_eq!(reopened.previous_shutdown(), PreviousShutdown::Clean);
    assert_eq!(dump(&reopened), before, "state changed across reopen");
    reopened
}

fn generation(index: u64) -> Generation {
    Generation {
        log_id: LogId { term: 2, index },
        file_name: format!("gen-{index:08}.pages"),
        page_count: 10 + index,
        checksum: 0xdead_0000 + index as u32,
    }
}

#[test]
fn every_kind_of_change_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut manifest = open(dir.path());
    assert_eq!(manifest.previous_shutdown(), PreviousShutdown::FirstOpen);

    // Databases: create, two names differing only in '-' vs '_', config update.
    manifest = commit_and_reopen(dir.path(), manifest, create("my-db"));
    manifest = commit_and_reopen(dir.path(), manifest, create("my_db"));
    let mut batch = Batch::new();
    batch.update_database_config(
        DatabaseId(1),
        DatabaseConfig { page_size_bytes: 8192, options: vec![7; 100] },
    );
    manifest = commit_and_reopen(dir.path(), manifest, batch);

    // Raft state, one fact per batch.
    let mut batch = Batch::new();
    batch.set_vote(Vote { term: 5, node_id: 2, committed: true });
    manifest = commit_and_reopen(dir.path(), manifest, batch);
    let mut batch = Batch::new();
    batch.set_committed(Some(LogId { term: 5, index: 40 }));
    manifest = commit_and_reopen(dir.path(), manifest, batch);
    let mut batch = Batch::new();
    batch.set_purged(LogId { term: 4, index: 10 });
    manifest = commit_and_reopen(dir.path(), manifest, batch);
    let mut batch = Batch::new();
    batch.set_membership(Membership {
        log_id: Some(LogId { term: 1, index: 1 }),
        config: b"{1,2,3}".to_vec(),
    });
    manifest = commit_and_reopen(dir.path(), manifest, batch);

    // Segments: active, then sealed, then a second one.
    let mut batch = Batch::new();
    batch.put_segment(1, Segment { first_index: 1, last_index: None, state: SegmentState::Active });
    manifest = commit_and_reopen(dir.path(), manifest, batch);
    let mut batch = Batch::new();
    batch
        .put_segment(1, Segment { first_index: 1, last_index: Some(30), state: SegmentState::Sealed })
        .put_segment(2, Segment { first_index: 31, last_index: None, state: SegmentState::Active });
    manifest = commit_and_reopen(dir.path(), manifest, batch);

    // Generations and a snapshot made of them.
    let mut batch = Batch::new();
    batch.add_generation(DatabaseId(1), 1, generation(1)).add_generation(DatabaseId(2), 1, generation(2));
    manifest = commit_and_reopen(dir.path(), manifest, batch);
    let mut batch = Batch::new();
    batch.add_generation(DatabaseId(1), 2, generation(3));
    manifest = commit_and_reopen(dir.path(), manifest, batch);
    let mut batch = Batch::new();
    batch.put_snapshot(
        9,
        Snapshot {
            metadata: b"snapshot-meta".to_vec(),
            generations: vec![
                GenerationRef { database_id: DatabaseId(1), generation: 2 },
                GenerationRef { database_id: DatabaseId(2), generation: 1 },
            ],
        },
    );
    manifest = commit_and_reopen(dir.path(), manifest, batch);

    // Cursors: register, acknowledge.
    manifest.register_cursor("replicator", FeedStart::Oldest).unwrap();
    manifest = reopen(dir.path(), manifest);
    manifest.ack_cursor("replicator", 3).unwrap();
    manifest = reopen(dir.path(), manifest);
    manifest.register_cursor("audit", FeedStart::Latest).unwrap();
    manifest = reopen(dir.path(), manifest);

    // Removals: snapshot, generations, database, segment, cursor; committed cleared.
    let mut batch = Batch::new();
    batch.remove_snapshot(9).remove_generation(DatabaseId(1), 1);
    manifest = commit_and_reopen(dir.path(), manifest, batch);
    let mut batch = Batch::new();
    batch.remove_generation(DatabaseId(2), 1).drop_database(DatabaseId(2));
    manifest = commit_and_reopen(dir.path(), manifest, batch);
    let mut batch = Batch::new();
    batch.remove_segment(1).set_committed(None);
    manifest = commit_and_reopen(dir.path(), manifest, batch);
    manifest.remove_cursor("audit").unwrap();
    manifest = reopen(dir.path(), manifest);

    // The final state is what the sequence of changes implies.
    let state = dump(&manifest);
    let names: Vec<&str> = state.databases.iter().map(|db| db.name.as_str()).collect();
    assert_eq!(names, vec!["my-db"]);
    assert_eq!(state.databases[0].config.page_size_bytes, 8192);
    assert_eq!(state.next_database_id, DatabaseId(3), "ids are never reused");
    assert_eq!(state.raft.committed, None);
    assert_eq!(state.raft.purged, Some(LogId { term: 4, index: 10 }));
    assert_eq!(state.raft.vote.map(|vote| vote.term), Some(5));
    assert_eq!(state.segments.len(), 1);
    assert_eq!(state.segments[0].0, 2);
    assert_eq!(state.generations, vec![(DatabaseId(1), vec![(2, generation(3))])]);
    assert!(state.snapshots.is_empty());
    assert_eq!(state.cursors.len(), 1);
    assert_eq!(state.cursors[0].name, "replicator");
    assert_eq!(state.cursors[0].acked_seq, 3);
    manifest.close().unwrap();
}

#[test]
fn drop_without_close_reports_an_unclean_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = open(dir.path());
    manifest.commit(create("a")).unwrap();

    drop(manifest);
    let manifest = open(dir.path());

    assert_eq!(manifest.previous_shutdown(), PreviousShutdown::Unclean);
    assert!(manifest.read(|r| r.database_by_name("a")).unwrap().is_some());
    manifest.close().unwrap();
    assert_eq!(open(dir.path()).previous_shutdown(), PreviousShutdown::Clean);
}
