//! Typed reads inside one LMDB read transaction (a consistent snapshot of the manifest).

use heed::RoTxn;

use super::change_feed;
use super::error::{ManifestError, Result, Table};
use super::keys::{self, generation_key, u64_key};
use super::records::{
    CommittedRecord, CursorInfo, CursorRecord, DatabaseId, DatabaseInfo, DatabaseRecord, FeedEntry,
    FeedRecord, Generation, LogId, Membership, NameRecord, RaftBlob, RaftBlobRecord, RaftState, Segment,
    Snapshot, Vote,
};
use super::tables::Tables;

/// A consistent view of the manifest, valid for the duration of `Manifest::read`.
pub struct ManifestReader<'t> {
    pub(crate) tables: &'t Tables,
    pub(crate) txn: &'t RoTxn<'t>,
}

impl ManifestReader<'_> {
    /// The database with this id.
    pub fn database(&self, id: DatabaseId) -> Result<Option<DatabaseInfo>> {
        let record = self.tables.get::<DatabaseRecord>(self.txn, Table::Databases, &u64_key(id.0))?;
        Ok(record.map(|record| DatabaseInfo { id, name: record.name, config: record.config }))
    }

    /// The database with exactly this name (byte-for-byte).
    pub fn database_by_name(&self, name: &str) -> Result<Option<DatabaseInfo>> {
        let Some(entry) = self.tables.get::<NameRecord>(self.txn, Table::DatabaseNames, name.as_bytes())?
        else {
            return Ok(None);
        };
        match self.database(entry.id)? {
            Some(info) if info.name == name => Ok(Some(info)),
            _ => Err(ManifestError::Decode {
                table: Table::DatabaseNames,
                key: super::error::key_hex(name.as_bytes()),
                reason: format!("name index points at database {} which does not carry this name", entry.id),
            }),
        }
    }

    /// Up to `limit` databases with id >= `start`, in id order.
    pub fn databases(&self, start: DatabaseId, limit: usize) -> Result<Vec<DatabaseInfo>> {
        let mut out = Vec::new();
        self.tables.scan::<DatabaseRecord>(
            self.txn,
            Table::Databases,
            &u64_key(start.0),
            None,
            limit,
            |key, record| {
                out.push(DatabaseInfo {
                    id: DatabaseId(keys::decode_u64_key(Table::Databases, key)?),
                    name: record.name,
                    config: record.config,
                });
                Ok(true)
            },
        )?;
        Ok(out)
    }

    /// Number of databases.
    pub fn database_count(&self) -> Result<u64> {
        self.tables.len(self.txn, Table::Databases)
    }

    /// The id the next created database will get (ids are never reused).
    pub fn next_database_id(&self) -> Result<DatabaseId> {
        Ok(DatabaseId(self.tables.counter(self.txn, &keys::META_NEXT_DATABASE_ID)?))
    }

    /// Vote, committed, purged and membership.
    pub fn raft_state(&self) -> Result<RaftState> {
        let tables = self.tables;
        let committed = tables.get::<CommittedRecord>(self.txn, Table::Raft, &keys::RAFT_COMMITTED)?;
        Ok(RaftState {
            vote: tables.get::<Vote>(self.txn, Table::Raft, &keys::RAFT_VOTE)?,
            committed: committed.and_then(|record| record.log_id),
            purged: tables.get::<LogId>(self.txn, Table::Raft, &keys::RAFT_PURGED)?,
            membership: tables.get::<Membership>(self.txn, Table::Raft, &keys::RAFT_MEMBERSHIP)?,
        })
    }

    /// An opaque Raft fact saved with [`crate::manifest::Batch::set_raft_blob`].
    pub fn raft_blob(&self, which: RaftBlob) -> Result<Option<Vec<u8>>> {
        let key = keys::raft_blob(which);
        Ok(self.tables.get::<RaftBlobRecord>(self.txn, Table::Raft, &key)?.map(|r| r.bytes))
    }

    /// One log segment.
    pub fn segment(&self, sequence: u64) -> Result<Option<Segment>> {
        self.tables.get::<Segment>(self.txn, Table::Segments, &u64_key(sequence))
    }

    /// Up to `limit` segments with sequence >= `start`, in sequence order.
    pub fn segments(&self, start: u64, limit: usize) -> Result<Vec<(u64, Segment)>> {
        let mut out = Vec::new();
        self.tables.scan::<Segment>(
            self.txn,
            Table::Segments,
            &u64_key(start),
            None,
            limit,
            |key, segment| {
                out.push((keys::decode_u64_key(Table::Segments, key)?, segment));
                Ok(true)
            },
        )?;
        Ok(out)
    }

    /// One generation.
    pub fn generation(&self, database_id: DatabaseId, generation: u64) -> Result<Option<Generation>> {
        self.tables.get::<Generation>(self.txn, Table::Generations, &generation_key(database_id, generation))
    }

    /// Up to `limit` generations of one database, oldest first.
    pub fn generations(&self, database_id: DatabaseId, limit: usize) -> Result<Vec<(u64, Generation)>> {
        let mut out = Vec::new();
        self.tables.scan::<Generation>(
            self.txn,
            Table::Generations,
            &generation_key(database_id, 0),
            Some(&generation_key(database_id, u64::MAX)),
            limit,
            |key, record| {
                out.push((keys::decode_generation_key(key)?.generation, record));
                Ok(true)
            },
        )?;
        Ok(out)
    }

    /// The newest generation of one database.
    pub fn newest_generation(&self, database_id: DatabaseId) -> Result<Option<(u64, Generation)>> {
        let key = self.tables.last_key_in(
            self.txn,
            Table::Generations,
            &generation_key(database_id, 0),
            &generation_key(database_id, u64::MAX),
        )?;
        let Some(key) = key else { return Ok(None) };
        let generation = keys::decode_generation_key(&key)?.generation;
        Ok(self.generation(database_id, generation)?.map(|record| (generation, record)))
    }

    /// One snapshot.
    pub fn snapshot(&self, id: u64) -> Result<Option<Snapshot>> {
        self.tables.get::<Snapshot>(self.txn, Table::Snapshots, &u64_key(id))
    }

    /// Up to `limit` snapshots with id >= `start`, in id order.
    pub fn snapshots(&self, start: u64, limit: usize) -> Result<Vec<(u64, Snapshot)>> {
        let mut out = Vec::new();
        self.tables.scan::<Snapshot>(
            self.txn,
            Table::Snapshots,
            &u64_key(start),
            None,
            limit,
            |key, snapshot| {
                out.push((keys::decode_u64_key(Table::Snapshots, key)?, snapshot));
                Ok(true)
            },
        )?;
        Ok(out)
    }

    /// One change-feed cursor.
    pub fn cursor(&self, name: &str) -> Result<Option<CursorInfo>> {
        change_feed::cursor_info(self.tables, self.txn, name)
    }

    /// Up to `limit` cursors in name order.
    pub fn cursors(&self, limit: usize) -> Result<Vec<CursorInfo>> {
        let mut out = Vec::new();
        self.tables.scan::<CursorRecord>(self.txn, Table::FeedCursors, &[], None, limit, |key, record| {
            out.push(CursorInfo {
                name: String::from_utf8_lossy(key).into_owned(),
                acked_seq: record.acked_seq,
                stale: record.stale,
            });
            Ok(true)
        })?;
        Ok(out)
    }

    /// `(oldest available, head)` of the change feed; `oldest == head + 1` when it is empty.
    pub fn feed_bounds(&self) -> Result<(u64, u64)> {
        change_feed::bounds(self.tables, self.txn)
    }

    /// Up to `limit` feed entries with sequence >= `start`, without a cursor.
    pub fn feed_entries(&self, start: u64, limit: usize) -> Result<Vec<FeedEntry>> {
        let mut out = Vec::new();
        self.tables.scan::<FeedRecord>(
            self.txn,
            Table::Feed,
            &u64_key(start),
            None,
            limit,
            |key, record| {
                out.push(FeedEntry { seq: keys::decode_u64_key(Table::Feed, key)?, changes: record.changes });
                Ok(true)
            },
        )?;
        Ok(out)
    }
}
