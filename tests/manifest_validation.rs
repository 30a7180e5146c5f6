//! Batches are validated: names are exact and checked, conflicts are typed errors, and a
//! rejected batch leaves no trace.

mod manifest_support;

use bop_storage::manifest::{
    Batch, DatabaseConfig, DatabaseId, Generation, GenerationRef, LogId, ManifestError, NameKind, Segment,
    SegmentState, Snapshot, NAME_BYTES_MAX,
};
use manifest_support::{create, db_config, dump, open};

fn generation(index: u64) -> Generation {
    Generation {
        log_id: LogId { term: 1, index },
        file_name: format!("gen-{index}"),
        page_count: 1,
        checksum: 0,
    }
}

#[test]
fn names_are_exact_and_duplicates_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = open(dir.path());

    // Names differing in one character, or in case, are different databases.
    for name in ["my-db", "my_db", "My-db", "my.db"] {
        manifest.commit(create(name)).unwrap();
    }
    let ids: Vec<DatabaseId> = ["my-db", "my_db", "My-db", "my.db"]
        .iter()
        .map(|name| manifest.read(|r| r.database_by_name(name)).unwrap().unwrap().id)
        .collect();
    assert_eq!(ids, vec![DatabaseId(1), DatabaseId(2), DatabaseId(3), DatabaseId(4)]);

    // Creating an existing name is a typed error naming it.
    match manifest.commit(create("my_db")) {
        Err(ManifestError::DatabaseExists { name }) => assert_eq!(name, "my_db"),
        other => panic!("expected DatabaseExists, got {other:?}"),
    }
}

#[test]
fn invalid_names_are_rejected_with_the_allowed_set() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = open(dir.path());
    let too_long = "x".repeat(NAME_BYTES_MAX + 1);

    for name in ["", too_long.as_str(), ".hidden", "white space", "slash/name", "ümlaut", "nul\0"] {
        let error = manifest.commit(create(name)).unwrap_err();
        match &error {
            ManifestError::InvalidName { kind, .. } => assert_eq!(*kind, NameKind::Database),
            other => panic!("{name:?}: expected InvalidName, got {other:?}"),
        }
        let message = error.to_string();
        assert!(message.contains("[A-Za-z0-9_.-]"), "{message}");
        assert!(message.contains("128"), "{message}");
    }
    manifest.commit(create(&"x".repeat(NAME_BYTES_MAX))).unwrap();
    assert_eq!(manifest.read(|r| r.database_count()).unwrap(), 1);
}

#[test]
fn conflicts_with_stored_state_are_typed_and_leave_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = open(dir.path());
    let mut batch = create("a");
    batch
        .add_generation(DatabaseId(1), 5, generation(5))
        .put_segment(1, Segment { first_index: 1, last_index: Some(9), state: SegmentState::Sealed })
        .put_snapshot(
            1,
            Snapshot {
                metadata: vec![],
                generations: vec![GenerationRef { database_id: DatabaseId(1), generation: 5 }],
            },
        );
    manifest.commit(batch).unwrap();
    let before = dump(&manifest);

    // Each rejected batch starts with a valid operation that must not persist.
    type Expected = fn(&ManifestError) -> bool;
    let cases: Vec<(Batch, Expected)> = vec![
        (
            {
                let mut b = create("b");
                b.add_generation(DatabaseId(1), 5, generation(5));
                b
            },
            |e| matches!(e, ManifestError::GenerationExists { generation: 5, .. }),
        ),
        (
            {
                let mut b = create("b");
                b.add_generation(DatabaseId(1), 4, generation(4));
                b
            },
            |e| matches!(e, ManifestError::GenerationNotNewer { generation: 4, newest: 5, .. }),
        ),
        (
            {
                let mut b = create("b");
                b.add_generation(DatabaseId(77), 1, generation(1));
                b
            },
            |e| matches!(e, ManifestError::DatabaseNotFound { id: DatabaseId(77) }),
        ),
        (
            {
                let mut b = create("b");
                b.remove_generation(DatabaseId(1), 5);
                b
            },
            |e| matches!(e, ManifestError::GenerationInUse { snapshot_id: 1, .. }),
        ),
        (
            {
                let mut b = create("b");
                b.drop_database(DatabaseId(1));
                b
            },
            |e| matches!(e, ManifestError::DatabaseHasGenerations { id: DatabaseId(1) }),
        ),
        (
            {
                let mut b = create("b");
                b.put_segment(1, Segment { first_index: 1, last_index: None, state: SegmentState::Active });
                b
            },
            |e| {
                matches!(
                    e,
                    ManifestError::SegmentStateRegression {
                        from: SegmentState::Sealed,
                        to: SegmentState::Active,
                        ..
                    }
                )
            },
        ),
        (
            {
                let mut b = create("b");
                b.put_snapshot(1, Snapshot { metadata: vec![], generations: vec![] });
                b
            },
            |e| matches!(e, ManifestError::SnapshotExists { id: 1 }),
        ),
        (
            {
                let mut b = create("b");
                b.put_snapshot(
                    2,
                    Snapshot {
                        metadata: vec![],
                        generations: vec![GenerationRef { database_id: DatabaseId(1), generation: 6 }],
                    },
                );
                b
            },
            |e| matches!(e, ManifestError::GenerationNotFound { generation: 6, .. }),
        ),
        (
            {
                let mut b = create("b");
                b.remove_segment(3);
                b
            },
            |e| matches!(e, ManifestError::SegmentNotFound { sequence: 3 }),
        ),
        (
            {
                let mut b = create("b");
                b.update_database_config(
                    DatabaseId(9),
                    DatabaseConfig { page_size_bytes: 1, options: vec![] },
                );
                b
            },
            |e| matches!(e, ManifestError::DatabaseNotFound { id: DatabaseId(9) }),
        ),
    ];
    for (index, (batch, expected)) in cases.into_iter().enumerate() {
        let error = manifest.commit(batch).unwrap_err();
        assert!(expected(&error), "case {index}: unexpected {error:?}");
        assert!(error.is_rejection(), "case {index}");
        assert_eq!(dump(&manifest), before, "case {index} left a trace");
    }
}

#[test]
fn static_bounds_are_checked_before_queueing() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = open(dir.path());

    assert!(matches!(manifest.commit(Batch::new()), Err(ManifestError::EmptyBatch)));
    let mut huge = Batch::new();
    huge.create_database(
        "big",
        DatabaseConfig { options: vec![0; manifest.config().blob_bytes_max + 1], ..db_config() },
    );
    assert!(matches!(manifest.commit(huge), Err(ManifestError::BlobTooLarge { .. })));
    let mut long = Batch::new();
    for term in 0..=manifest.config().batch_ops_max as u64 {
        long.set_purged(LogId { term, index: 0 });
    }
    assert!(matches!(manifest.commit(long), Err(ManifestError::BatchTooLarge { .. })));
    let mut bad_file = create("f");
    bad_file.add_generation(DatabaseId(1), 1, Generation { file_name: "../escape".into(), ..generation(1) });
    assert!(matches!(manifest.commit(bad_file), Err(ManifestError::InvalidFileName { .. })));
    assert_eq!(manifest.metrics().commits, 0);
}
