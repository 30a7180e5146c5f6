//! A batch: typed operations that change several facts atomically in one LMDB transaction.

use super::config::ManifestConfig;
use super::error::{ManifestError, NameKind, Result};
use super::names::{validate_file_name, validate_name};
use super::records::{
    DatabaseConfig, DatabaseId, Generation, LogId, Membership, RaftBlob, Segment, Snapshot, Vote,
};

/// One operation of a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    CreateDatabase { id: Option<DatabaseId>, name: String, config: DatabaseConfig },
    UpdateDatabaseConfig { id: DatabaseId, config: DatabaseConfig },
    DropDatabase { id: DatabaseId },
    SetVote(Vote),
    SetCommitted(Option<LogId>),
    SetPurged(LogId),
    SetMembership(Membership),
    SetRaftBlob(RaftBlob, Vec<u8>),
    PutSegment { sequence: u64, segment: Segment },
    RemoveSegment { sequence: u64 },
    AddGeneration { database_id: DatabaseId, generation: u64, record: Generation },
    RemoveGeneration { database_id: DatabaseId, generation: u64 },
    PutSnapshot { id: u64, snapshot: Snapshot },
    RemoveSnapshot { id: u64 },
}

/// Operations applied all-or-nothing, in order, by `Manifest::commit`.
///
/// Later operations see the effects of earlier ones (create a database, then add its first
/// generation). If any operation is rejected, none of the batch is applied and only this batch's
/// caller gets the error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub(crate) ops: Vec<Op>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Creates a database; its id is allocated at commit and reported in
    /// `CommitOutcome::created_databases`. Fails with `DatabaseExists` if the exact name exists.
    pub fn create_database(&mut self, name: impl Into<String>, config: DatabaseConfig) -> &mut Self {
        self.ops.push(Op::CreateDatabase { id: None, name: name.into(), config });
        self
    }

    /// Creates a database with a chosen id (the Raft layer uses the index of the entry that created it, so
    /// that every node agrees). Fails with `DatabaseExists` if the name exists and `DatabaseIdTaken` if the
    /// id does; the allocator then continues above it.
    pub fn create_database_with_id(
        &mut self,
        id: DatabaseId,
        name: impl Into<String>,
        config: DatabaseConfig,
    ) -> &mut Self {
        self.ops.push(Op::CreateDatabase { id: Some(id), name: name.into(), config });
        self
    }

    /// Replaces a database's config.
    pub fn update_database_config(&mut self, id: DatabaseId, config: DatabaseConfig) -> &mut Self {
        self.ops.push(Op::UpdateDatabaseConfig { id, config });
        self
    }

    /// Drops a database; it must have no generation left.
    pub fn drop_database(&mut self, id: DatabaseId) -> &mut Self {
        self.ops.push(Op::DropDatabase { id });
        self
    }

    /// Saves an opaque Raft fact (the generic Raft log store's vote or committed log id).
    pub fn set_raft_blob(&mut self, which: RaftBlob, bytes: Vec<u8>) -> &mut Self {
        self.ops.push(Op::SetRaftBlob(which, bytes));
        self
    }

    /// Saves the Raft vote.
    pub fn set_vote(&mut self, vote: Vote) -> &mut Self {
        self.ops.push(Op::SetVote(vote));
        self
    }

    /// Saves (or clears) the committed log id.
    pub fn set_committed(&mut self, committed: Option<LogId>) -> &mut Self {
        self.ops.push(Op::SetCommitted(committed));
        self
    }

    /// Saves the last purged log id.
    pub fn set_purged(&mut self, purged: LogId) -> &mut Self {
        self.ops.push(Op::SetPurged(purged));
        self
    }

    /// Saves the membership.
    pub fn set_membership(&mut self, membership: Membership) -> &mut Self {
        self.ops.push(Op::SetMembership(membership));
        self
    }

    /// Inserts or updates a log segment; its state may only move forward.
    pub fn put_segment(&mut self, sequence: u64, segment: Segment) -> &mut Self {
        self.ops.push(Op::PutSegment { sequence, segment });
        self
    }

    /// Removes a log segment record.
    pub fn remove_segment(&mut self, sequence: u64) -> &mut Self {
        self.ops.push(Op::RemoveSegment { sequence });
        self
    }

    /// Adds a page generation; the database must exist and the generation must be newer than
    /// its existing ones.
    pub fn add_generation(
        &mut self,
        database_id: DatabaseId,
        generation: u64,
        record: Generation,
    ) -> &mut Self {
        self.ops.push(Op::AddGeneration { database_id, generation, record });
        self
    }

    /// Removes a page generation; no snapshot may refer to it.
    pub fn remove_generation(&mut self, database_id: DatabaseId, generation: u64) -> &mut Self {
        self.ops.push(Op::RemoveGeneration { database_id, generation });
        self
    }

    /// Stores a new snapshot; every generation it names must exist.
    pub fn put_snapshot(&mut self, id: u64, snapshot: Snapshot) -> &mut Self {
        self.ops.push(Op::PutSnapshot { id, snapshot });
        self
    }

    /// Removes a snapshot.
    pub fn remove_snapshot(&mut self, id: u64) -> &mut Self {
        self.ops.push(Op::RemoveSnapshot { id });
        self
    }

    /// Checks everything that does not depend on the stored state: size bounds and names.
    pub(crate) fn validate_static(&self, config: &ManifestConfig) -> Result<()> {
        if self.ops.is_empty() {
            return Err(ManifestError::EmptyBatch);
        }
        if self.ops.len() > config.batch_ops_max {
            return Err(ManifestError::BatchTooLarge { ops: self.ops.len(), ops_max: config.batch_ops_max });
        }
        let blob = |what: &'static str, size_bytes: usize| {
            if size_bytes > config.blob_bytes_max {
                Err(ManifestError::BlobTooLarge { what, size_bytes, size_bytes_max: config.blob_bytes_max })
            } else {
                Ok(())
            }
        };
        for op in &self.ops {
            match op {
                Op::CreateDatabase { name, config, .. } => {
                    validate_name(NameKind::Database, name)?;
                    blob("database options", config.options.len())?;
                }
                Op::UpdateDatabaseConfig { config, .. } => {
                    blob("database options", config.options.len())?;
                }
                Op::SetMembership(membership) => blob("membership", membership.config.len())?,
                Op::SetRaftBlob(_, bytes) => blob("raft blob", bytes.len())?,
                Op::AddGeneration { record, .. } => validate_file_name(&record.file_name)?,
                Op::PutSnapshot { snapshot, .. } => {
                    blob("snapshot metadata", snapshot.metadata.len())?;
                    // Each reference is 16 bytes on disk; bound the list like a blob.
                    blob("snapshot generation list", snapshot.generations.len().saturating_mul(16))?;
                }
                Op::DropDatabase { .. }
                | Op::SetVote(_)
                | Op::SetCommitted(_)
                | Op::SetPurged(_)
                | Op::PutSegment { .. }
                | Op::RemoveSegment { .. }
                | Op::RemoveGeneration { .. }
                | Op::RemoveSnapshot { .. } => {}
            }
        }
        Ok(())
    }
}

/// What a committed batch produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitOutcome {
    /// The batch's change-feed sequence number.
    pub seq: u64,
    /// Ids allocated to the batch's `create_database` operations, in order.
    pub created_databases: Vec<DatabaseId>,
}
