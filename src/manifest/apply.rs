//! Applying a batch to a write transaction, validating each operation against the state the
//! transaction sees (including the batch's own earlier operations).
//!
//! Every check runs before the write of its operation, but a later operation may still be
//! rejected after earlier ones were written; the group-commit leader therefore aborts the whole
//! transaction on a rejection and retries the group without the rejected batch (see
//! `group_commit.rs`).

use heed::RwTxn;

use super::batch::{Batch, Op};
use super::config::ManifestConfig;
use super::error::{ManifestError, Result, Table};
use super::keys::{self, generation_key, u64_key};
use super::records::{
    Change, CommittedRecord, DatabaseId, DatabaseRecord, GenerationRef, NameRecord, RaftBlobRecord, Segment,
    Snapshot,
};
use super::tables::Tables;

/// The effects of one applied batch.
pub(crate) struct Applied {
    pub(crate) changes: Vec<Change>,
    pub(crate) created_databases: Vec<DatabaseId>,
}

/// Applies every operation of `batch` in order.
pub(crate) fn apply_batch(
    tables: &Tables,
    txn: &mut RwTxn<'_>,
    batch: &Batch,
    config: &ManifestConfig,
) -> Result<Applied> {
    let mut applied = Applied { changes: Vec::with_capacity(batch.ops.len()), created_databases: Vec::new() };
    for op in &batch.ops {
        let change = apply_op(tables, txn, op, config, &mut applied.created_databases)?;
        applied.changes.push(change);
    }
    Ok(applied)
}

fn apply_op(
    tables: &Tables,
    txn: &mut RwTxn<'_>,
    op: &Op,
    config: &ManifestConfig,
    created: &mut Vec<DatabaseId>,
) -> Result<Change> {
    match op {
        Op::CreateDatabase { id: chosen, name, config: db_config } => {
            if tables.contains(txn, Table::DatabaseNames, name.as_bytes())? {
                return Err(ManifestError::DatabaseExists { name: name.clone() });
            }
            if tables.len(txn, Table::Databases)? >= config.databases_max {
                return Err(ManifestError::TooManyDatabases { databases_max: config.databases_max });
            }
            let next = tables.counter(txn, &keys::META_NEXT_DATABASE_ID)?;
            let id = match chosen {
                Some(id) => {
                    if id.0 == 0 || tables.contains(txn, Table::Databases, &u64_key(id.0))? {
                        return Err(ManifestError::DatabaseIdTaken { id: *id });
                    }
                    *id
                }
                None => DatabaseId(next),
            };
            let record = DatabaseRecord { name: name.clone(), config: db_config.clone() };
            tables.put(txn, Table::Databases, &u64_key(id.0), &record)?;
            tables.put(txn, Table::DatabaseNames, name.as_bytes(), &NameRecord { id })?;
            tables.set_counter(txn, &keys::META_NEXT_DATABASE_ID, next.max(id.0 + 1))?;
            created.push(id);
            Ok(Change::DatabaseCreated { id })
        }
        Op::UpdateDatabaseConfig { id, config: db_config } => {
            let key = u64_key(id.0);
            let mut record = tables
                .get::<DatabaseRecord>(txn, Table::Databases, &key)?
                .ok_or(ManifestError::DatabaseNotFound { id: *id })?;
            record.config = db_config.clone();
            tables.put(txn, Table::Databases, &key, &record)?;
            Ok(Change::DatabaseConfigUpdated { id: *id })
        }
        Op::DropDatabase { id } => {
            let key = u64_key(id.0);
            let record = tables
                .get::<DatabaseRecord>(txn, Table::Databases, &key)?
                .ok_or(ManifestError::DatabaseNotFound { id: *id })?;
            let any_generation = tables.last_key_in(
                txn,
                Table::Generations,
                &generation_key(*id, 0),
                &generation_key(*id, u64::MAX),
            )?;
            if any_generation.is_some() {
                return Err(ManifestError::DatabaseHasGenerations { id: *id });
            }
            tables.delete(txn, Table::Databases, &key)?;
            tables.delete(txn, Table::DatabaseNames, record.name.as_bytes())?;
            Ok(Change::DatabaseDropped { id: *id })
        }
        Op::SetVote(vote) => {
            tables.put(txn, Table::Raft, &keys::RAFT_VOTE, vote)?;
            Ok(Change::VoteSet)
        }
        Op::SetCommitted(log_id) => {
            let record = CommittedRecord { log_id: *log_id };
            tables.put(txn, Table::Raft, &keys::RAFT_COMMITTED, &record)?;
            Ok(Change::CommittedSet)
        }
        Op::SetPurged(log_id) => {
            tables.put(txn, Table::Raft, &keys::RAFT_PURGED, log_id)?;
            Ok(Change::PurgedSet)
        }
        Op::SetMembership(membership) => {
            tables.put(txn, Table::Raft, &keys::RAFT_MEMBERSHIP, membership)?;
            Ok(Change::MembershipSet)
        }
        Op::SetRaftBlob(which, bytes) => {
            let key = keys::raft_blob(*which);
            tables.put(txn, Table::Raft, &key, &RaftBlobRecord { bytes: bytes.clone() })?;
            Ok(Change::RaftBlobSet { which: *which })
        }
        Op::PutSegment { sequence, segment } => {
            let key = u64_key(*sequence);
            if let Some(stored) = tables.get::<Segment>(txn, Table::Segments, &key)? {
                if stored.state > segment.state {
                    return Err(ManifestError::SegmentStateRegression {
                        sequence: *sequence,
                        from: stored.state,
                        to: segment.state,
                    });
                }
            }
            tables.put(txn, Table::Segments, &key, segment)?;
            Ok(Change::SegmentPut { sequence: *sequence })
        }
        Op::RemoveSegment { sequence } => {
            if !tables.delete(txn, Table::Segments, &u64_key(*sequence))? {
                return Err(ManifestError::SegmentNotFound { sequence: *sequence });
            }
            Ok(Change::SegmentRemoved { sequence: *sequence })
        }
        Op::AddGeneration { database_id, generation, record } => {
            if !tables.contains(txn, Table::Databases, &u64_key(database_id.0))? {
                return Err(ManifestError::DatabaseNotFound { id: *database_id });
            }
            let newest = tables.last_key_in(
                txn,
                Table::Generations,
                &generation_key(*database_id, 0),
                &generation_key(*database_id, u64::MAX),
            )?;
            if let Some(newest) = newest {
                let newest = keys::decode_generation_key(&newest)?.generation;
                if newest == *generation {
                    return Err(ManifestError::GenerationExists {
                        database_id: *database_id,
                        generation: *generation,
                    });
                }
                if newest > *generation {
                    return Err(ManifestError::GenerationNotNewer {
                        database_id: *database_id,
                        generation: *generation,
                        newest,
                    });
                }
            }
            let key = generation_key(*database_id, *generation);
            tables.put(txn, Table::Generations, &key, record)?;
            Ok(Change::GenerationAdded(GenerationRef { database_id: *database_id, generation: *generation }))
        }
        Op::RemoveGeneration { database_id, generation } => {
            let target = GenerationRef { database_id: *database_id, generation: *generation };
            let key = generation_key(*database_id, *generation);
            if !tables.contains(txn, Table::Generations, &key)? {
                return Err(ManifestError::GenerationNotFound {
                    database_id: *database_id,
                    generation: *generation,
                });
            }
            // Bounded: at most `snapshots_max` snapshots exist.
            let mut user = None;
            let limit = usize::try_from(config.snapshots_max).unwrap_or(usize::MAX);
            tables.scan::<Snapshot>(txn, Table::Snapshots, &u64_key(0), None, limit, |key, snapshot| {
                if snapshot.generations.contains(&target) {
                    user = Some(keys::decode_u64_key(Table::Snapshots, key)?);
                    return Ok(false);
                }
                Ok(true)
            })?;
            if let Some(snapshot_id) = user {
                return Err(ManifestError::GenerationInUse {
                    database_id: *database_id,
                    generation: *generation,
                    snapshot_id,
                });
            }
            tables.delete(txn, Table::Generations, &key)?;
            Ok(Change::GenerationRemoved(target))
        }
        Op::PutSnapshot { id, snapshot } => {
            let key = u64_key(*id);
            if tables.contains(txn, Table::Snapshots, &key)? {
                return Err(ManifestError::SnapshotExists { id: *id });
            }
            if tables.len(txn, Table::Snapshots)? >= config.snapshots_max {
                return Err(ManifestError::TooManySnapshots { snapshots_max: config.snapshots_max });
            }
            for part in &snapshot.generations {
                let part_key = generation_key(part.database_id, part.generation);
                if !tables.contains(txn, Table::Generations, &part_key)? {
                    return Err(ManifestError::GenerationNotFound {
                        database_id: part.database_id,
                        generation: part.generation,
                    });
                }
            }
            tables.put(txn, Table::Snapshots, &key, snapshot)?;
            Ok(Change::SnapshotPut { id: *id })
        }
        Op::RemoveSnapshot { id } => {
            if !tables.delete(txn, Table::Snapshots, &u64_key(*id))? {
                return Err(ManifestError::SnapshotNotFound { id: *id });
            }
            Ok(Change::SnapshotRemoved { id: *id })
        }
    }
}
