//! The LMDB tables (named databases) of the manifest and typed access to them.
//!
//! All tables are `Database<Bytes, Bytes>`: keys are built by `keys.rs`, values by `codec.rs`.

use std::ops::Bound;

use heed::types::Bytes;
use heed::{RoTxn, RwTxn, WithoutTls};

use super::codec::{self, Record};
use super::error::{key_hex, ManifestError, Result, Table};
use super::records::CounterRecord;

type Raw = heed::Database<Bytes, Bytes>;

/// Handles of every table; cheap to copy.
#[derive(Clone, Copy)]
pub(crate) struct Tables {
    meta: Raw,
    runtime: Raw,
    databases: Raw,
    database_names: Raw,
    raft: Raw,
    segments: Raw,
    generations: Raw,
    snapshots: Raw,
    feed: Raw,
    feed_cursors: Raw,
}

impl Tables {
    /// Opens every table, creating the missing ones.
    pub(crate) fn create(env: &heed::Env<WithoutTls>, txn: &mut RwTxn<'_>) -> Result<Tables> {
        let mut create = |table: Table| -> Result<Raw> {
            env.create_database::<Bytes, Bytes>(txn, Some(table.name()))
                .map_err(ManifestError::lmdb("create table"))
        };
        Ok(Tables {
            meta: create(Table::Meta)?,
            runtime: create(Table::Runtime)?,
            databases: create(Table::Databases)?,
            database_names: create(Table::DatabaseNames)?,
            raft: create(Table::Raft)?,
            segments: create(Table::Segments)?,
            generations: create(Table::Generations)?,
            snapshots: create(Table::Snapshots)?,
            feed: create(Table::Feed)?,
            feed_cursors: create(Table::FeedCursors)?,
        })
    }

    fn raw(&self, table: Table) -> &Raw {
        match table {
            Table::Meta => &self.meta,
            Table::Runtime => &self.runtime,
            Table::Databases => &self.databases,
            Table::DatabaseNames => &self.database_names,
            Table::Raft => &self.raft,
            Table::Segments => &self.segments,
            Table::Generations => &self.generations,
            Table::Snapshots => &self.snapshots,
            Table::Feed => &self.feed,
            Table::FeedCursors => &self.feed_cursors,
        }
    }

    /// Reads and decodes one value.
    pub(crate) fn get<T: Record>(&self, txn: &RoTxn<'_>, table: Table, key: &[u8]) -> Result<Option<T>> {
        let bytes = self.raw(table).get(txn, key).map_err(ManifestError::lmdb("get"))?;
        bytes.map(|bytes| codec::decode(table, key, bytes)).transpose()
    }

    /// True when the key exists (the value is not decoded).
    pub(crate) fn contains(&self, txn: &RoTxn<'_>, table: Table, key: &[u8]) -> Result<bool> {
        let bytes = self.raw(table).get(txn, key).map_err(ManifestError::lmdb("get"))?;
        Ok(bytes.is_some())
    }

    /// Encodes and writes one value.
    pub(crate) fn put<T: Record>(
        &self,
        txn: &mut RwTxn<'_>,
        table: Table,
        key: &[u8],
        value: &T,
    ) -> Result<()> {
        let bytes = codec::encode(table, value)?;
        self.raw(table).put(txn, key, &bytes).map_err(ManifestError::lmdb("put"))
    }

    /// Deletes one key; returns whether it existed.
    pub(crate) fn delete(&self, txn: &mut RwTxn<'_>, table: Table, key: &[u8]) -> Result<bool> {
        self.raw(table).delete(txn, key).map_err(ManifestError::lmdb("delete"))
    }

    /// Number of entries in a table (O(1) in LMDB).
    pub(crate) fn len(&self, txn: &RoTxn<'_>, table: Table) -> Result<u64> {
        self.raw(table).len(txn).map_err(ManifestError::lmdb("table length"))
    }

    /// The first key of a table.
    pub(crate) fn first_key(&self, txn: &RoTxn<'_>, table: Table) -> Result<Option<Vec<u8>>> {
        let first = self.raw(table).first(txn).map_err(ManifestError::lmdb("first"))?;
        Ok(first.map(|(key, _)| key.to_vec()))
    }

    /// Calls `visit` with decoded values for keys in `[start, end]` in key order, at most
    /// `limit` times; `visit` returns false to stop early.
    pub(crate) fn scan<T: Record>(
        &self,
        txn: &RoTxn<'_>,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        mut visit: impl FnMut(&[u8], T) -> Result<bool>,
    ) -> Result<()> {
        let upper = match end {
            Some(end) => Bound::Included(end),
            None => Bound::Unbounded,
        };
        // LMDB rejects zero-length keys, so an empty start means "from the first key".
        let lower = if start.is_empty() { Bound::Unbounded } else { Bound::Included(start) };
        let range = (lower, upper);
        let iter = self.raw(table).range(txn, &range).map_err(ManifestError::lmdb("range"))?;
        for item in iter.take(limit) {
            let (key, bytes) = item.map_err(ManifestError::lmdb("range next"))?;
            let value = codec::decode(table, key, bytes)?;
            if !visit(key, value)? {
                break;
            }
        }
        Ok(())
    }

    /// Collects up to `limit` keys in `[start, end]` without decoding values.
    pub(crate) fn keys(
        &self,
        txn: &RoTxn<'_>,
        table: Table,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<Vec<u8>>> {
        let range = (Bound::Included(start), Bound::Included(end));
        let iter = self.raw(table).range(txn, &range).map_err(ManifestError::lmdb("range"))?;
        let mut keys = Vec::new();
        for item in iter.take(limit) {
            let (key, _) = item.map_err(ManifestError::lmdb("range next"))?;
            keys.push(key.to_vec());
        }
        Ok(keys)
    }

    /// The last key in `[start, end]`.
    pub(crate) fn last_key_in(
        &self,
        txn: &RoTxn<'_>,
        table: Table,
        start: &[u8],
        end: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        let range = (Bound::Included(start), Bound::Included(end));
        let mut iter =
            self.raw(table).rev_range(txn, &range).map_err(ManifestError::lmdb("reverse range"))?;
        match iter.next() {
            Some(item) => {
                let (key, _) = item.map_err(ManifestError::lmdb("reverse range next"))?;
                Ok(Some(key.to_vec()))
            }
            None => Ok(None),
        }
    }

    /// Reads a counter of the `meta` table; counters are written at creation, so a missing one
    /// is corruption.
    pub(crate) fn counter(&self, txn: &RoTxn<'_>, key: &[u8]) -> Result<u64> {
        match self.get::<CounterRecord>(txn, Table::Meta, key)? {
            Some(record) => Ok(record.value),
            None => Err(ManifestError::Decode {
                table: Table::Meta,
                key: key_hex(key),
                reason: "counter record is missing".into(),
            }),
        }
    }

    /// Writes a counter of the `meta` table.
    pub(crate) fn set_counter(&self, txn: &mut RwTxn<'_>, key: &[u8], value: u64) -> Result<()> {
        self.put(txn, Table::Meta, key, &CounterRecord { value })
    }
}
