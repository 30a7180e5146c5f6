//! Property test: random batches, committed in groups with `commit_all`, give the same per-batch
//! results and the same final state as a simple in-memory model applying them one by one.

mod manifest_support;

use std::collections::BTreeMap;

use bop_storage::manifest::{
    Batch, DatabaseConfig, DatabaseId, Generation, GenerationRef, LogId, Manifest, ManifestError, Segment,
    SegmentState, Snapshot,
};
use manifest_support::{dump, small_config};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Create(u8),
    Drop(u64),
    AddGeneration(u64, u64),
    RemoveGeneration(u64, u64),
    PutSnapshot(u64, u64, u64),
    RemoveSnapshot(u64),
    PutSegment(u64, u8),
    RemoveSegment(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..4).prop_map(Op::Create),
        (1u64..6).prop_map(Op::Drop),
        (1u64..6, 0u64..5).prop_map(|(db, generation)| Op::AddGeneration(db, generation)),
        (1u64..6, 0u64..5).prop_map(|(db, generation)| Op::RemoveGeneration(db, generation)),
        (0u64..3, 1u64..6, 0u64..5).prop_map(|(id, db, generation)| Op::PutSnapshot(id, db, generation)),
        (0u64..3).prop_map(Op::RemoveSnapshot),
        (0u64..3, 0u8..3).prop_map(|(seq, state)| Op::PutSegment(seq, state)),
        (0u64..3).prop_map(Op::RemoveSegment),
    ]
}

fn state_of(code: u8) -> SegmentState {
    match code {
        0 => SegmentState::Active,
        1 => SegmentState::Sealed,
        _ => SegmentState::Purged,
    }
}

fn generation(db: u64, generation: u64) -> Generation {
    Generation {
        log_id: LogId { term: db, index: generation },
        file_name: format!("g-{db}-{generation}"),
        page_count: generation,
        checksum: 0,
    }
}

fn segment(seq: u64, code: u8) -> Segment {
    Segment { first_index: seq * 100, last_index: None, state: state_of(code) }
}

fn config() -> DatabaseConfig {
    DatabaseConfig { page_size_bytes: 4096, options: vec![] }
}

fn to_batch(ops: &[Op]) -> Batch {
    let mut batch = Batch::new();
    for op in ops {
        match *op {
            Op::Create(name) => batch.create_database(format!("n{name}"), config()),
            Op::Drop(db) => batch.drop_database(DatabaseId(db)),
            Op::AddGeneration(db, g) => batch.add_generation(DatabaseId(db), g, generation(db, g)),
            Op::RemoveGeneration(db, g) => batch.remove_generation(DatabaseId(db), g),
            Op::PutSnapshot(id, db, g) => batch.put_snapshot(
                id,
                Snapshot {
                    metadata: vec![id as u8],
                    generations: vec![GenerationRef { database_id: DatabaseId(db), generation: g }],
                },
            ),
            Op::RemoveSnapshot(id) => batch.remove_snapshot(id),
            Op::PutSegment(seq, code) => batch.put_segment(seq, segment(seq, code)),
            Op::RemoveSegment(seq) => batch.remove_segment(seq),
        };
    }
    batch
}

/// The reference model: plain maps, rules written out directly.
#[derive(Debug, Clone, Default)]
struct Model {
    databases: BTreeMap<u64, String>,
    next_id: u64,
    generations: BTreeMap<(u64, u64), ()>,
    snapshots: BTreeMap<u64, (u64, u64)>,
    segments: BTreeMap<u64, u8>,
    head: u64,
}

impl Model {
    fn apply(&mut self, ops: &[Op]) -> Result<(), &'static str> {
        let mut next = self.clone();
        for op in ops {
            next.apply_op(op)?;
        }
        next.head += 1;
        *self = next;
        Ok(())
    }

    fn apply_op(&mut self, op: &Op) -> Result<(), &'static str> {
        match *op {
            Op::Create(name) => {
                let name = format!("n{name}");
                if self.databases.values().any(|existing| *existing == name) {
                    return Err("DatabaseExists");
                }
                self.databases.insert(self.next_id, name);
                self.next_id += 1;
            }
            Op::Drop(db) => {
                if !self.databases.contains_key(&db) {
                    return Err("DatabaseNotFound");
                }
                if self.generations.keys().any(|(d, _)| *d == db) {
                    return Err("DatabaseHasGenerations");
                }
                self.databases.remove(&db);
            }
            Op::AddGeneration(db, g) => {
                if !self.databases.contains_key(&db) {
                    return Err("DatabaseNotFound");
                }
                let newest = self.generations.keys().filter(|(d, _)| *d == db).map(|(_, g)| *g).max();
                match newest {
                    Some(newest) if newest == g => return Err("GenerationExists"),
                    Some(newest) if newest > g => return Err("GenerationNotNewer"),
                    _ => {}
                }
                self.generations.insert((db, g), ());
            }
            Op::RemoveGeneration(db, g) => {
                if !self.generations.contains_key(&(db, g)) {
                    return Err("GenerationNotFound");
                }
                if self.snapshots.values().any(|part| *part == (db, g)) {
                    return Err("GenerationInUse");
                }
                self.generations.remove(&(db, g));
            }
            Op::PutSnapshot(id, db, g) => {
                if self.snapshots.contains_key(&id) {
                    return Err("SnapshotExists");
                }
                if !self.generations.contains_key(&(db, g)) {
                    return Err("GenerationNotFound");
                }
                self.snapshots.insert(id, (db, g));
            }
            Op::RemoveSnapshot(id) => {
                if self.snapshots.remove(&id).is_none() {
                    return Err("SnapshotNotFound");
                }
            }
            Op::PutSegment(seq, code) => {
                if let Some(stored) = self.segments.get(&seq) {
                    if *stored > code {
                        return Err("SegmentStateRegression");
                    }
                }
                self.segments.insert(seq, code);
            }
            Op::RemoveSegment(seq) => {
                if self.segments.remove(&seq).is_none() {
                    return Err("SegmentNotFound");
                }
            }
        }
        Ok(())
    }
}

fn kind(error: &ManifestError) -> &'static str {
    match error {
        ManifestError::DatabaseExists { .. } => "DatabaseExists",
        ManifestError::DatabaseNotFound { .. } => "DatabaseNotFound",
        ManifestError::DatabaseHasGenerations { .. } => "DatabaseHasGenerations",
        ManifestError::GenerationExists { .. } => "GenerationExists",
        ManifestError::GenerationNotNewer { .. } => "GenerationNotNewer",
        ManifestError::GenerationNotFound { .. } => "GenerationNotFound",
        ManifestError::GenerationInUse { .. } => "GenerationInUse",
        ManifestError::SnapshotExists { .. } => "SnapshotExists",
        ManifestError::SnapshotNotFound { .. } => "SnapshotNotFound",
        ManifestError::SegmentStateRegression { .. } => "SegmentStateRegression",
        ManifestError::SegmentNotFound { .. } => "SegmentNotFound",
        other => panic!("unexpected error {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn grouped_commits_match_the_model(
        groups in prop::collection::vec(
            prop::collection::vec(prop::collection::vec(op(), 1..4), 1..6),
            1..10,
        )
    ) {
        let dir = tempfile::tempdir().unwrap();
        let manifest = Manifest::open(dir.path(), small_config()).unwrap();
        let mut model = Model { next_id: 1, ..Model::default() };

        // Each group of batches is submitted together; results must match one-by-one
        // application in the model.
        for group in &groups {
            let batches = group.iter().map(|ops| to_batch(ops)).collect();
            let results = manifest.commit_all(batches).unwrap();
            for (ops, result) in group.iter().zip(results) {
                let expected = model.apply(ops);
                match (result, expected) {
                    (Ok(outcome), Ok(())) => prop_assert_eq!(outcome.seq, model.head),
                    (Err(error), Err(expected)) => prop_assert_eq!(kind(&error), expected),
                    (got, expected) => prop_assert!(false, "{:?}: got {:?}, model {:?}", ops, got, expected),
                }
            }
        }

        // The final state is the model's, also after a reopen.
        drop(manifest);
        let manifest = Manifest::open(dir.path(), small_config()).unwrap();
        let state = dump(&manifest);
        let databases: BTreeMap<u64, String> =
            state.databases.iter().map(|db| (db.id.0, db.name.clone())).collect();
        prop_assert_eq!(databases, model.databases.clone());
        prop_assert_eq!(state.next_database_id, DatabaseId(model.next_id));
        let generations: Vec<(u64, u64)> = state
            .generations
            .iter()
            .flat_map(|(db, list)| list.iter().map(move |(g, _)| (db.0, *g)))
            .collect();
        prop_assert_eq!(generations, model.generations.keys().copied().collect::<Vec<_>>());
        let snapshots: BTreeMap<u64, (u64, u64)> = state
            .snapshots
            .iter()
            .map(|(id, s)| (*id, (s.generations[0].database_id.0, s.generations[0].generation)))
            .collect();
        prop_assert_eq!(snapshots, model.snapshots.clone());
        let segments: BTreeMap<u64, SegmentState> =
            state.segments.iter().map(|(seq, s)| (*seq, s.state)).collect();
        let model_segments: BTreeMap<u64, SegmentState> =
            model.segments.iter().map(|(seq, code)| (*seq, state_of(*code))).collect();
        prop_assert_eq!(segments, model_segments);
        prop_assert_eq!(state.feed_bounds.1, model.head);
    }
}
