//! The LMDB environment, the transaction gate, and map growth.
//!
//! `mdb_env_set_mapsize` may only be called while this process has no transaction open. Every
//! transaction of the manifest is therefore opened through [`Store::begin_read`] or
//! [`Store::begin_write`], which hold a shared lock on the gate for the transaction's lifetime;
//! [`Store::grow`] takes the gate exclusively, so it runs exactly when no transaction is open.

use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{RwLock, RwLockReadGuard};

use heed::{RoTxn, RwTxn, WithoutTls};

use super::error::{ManifestError, Result};
use super::metrics::Metrics;
use super::tables::Tables;

/// The environment and what guards it.
pub(crate) struct Store {
    pub(crate) env: heed::Env<WithoutTls>,
    pub(crate) tables: Tables,
    gate: RwLock<()>,
    map_size_max_bytes: usize,
    pub(crate) metrics: Metrics,
    pub(crate) path: PathBuf,
}

/// A write transaction holding the gate; fields drop in order, so the transaction ends before
/// the gate is released.
pub(crate) struct WriteTxn<'s> {
    txn: RwTxn<'s>,
    _gate: RwLockReadGuard<'s, ()>,
}

impl<'s> WriteTxn<'s> {
    /// Commits (LMDB commit = write + fsync of data and meta page).
    pub(crate) fn commit(self) -> Result<()> {
        let WriteTxn { txn, _gate } = self;
        txn.commit().map_err(ManifestError::lmdb("commit"))
    }
}

impl<'s> Deref for WriteTxn<'s> {
    type Target = RwTxn<'s>;
    fn deref(&self) -> &RwTxn<'s> {
        &self.txn
    }
}

impl<'s> DerefMut for WriteTxn<'s> {
    fn deref_mut(&mut self) -> &mut RwTxn<'s> {
        &mut self.txn
    }
}

/// A read transaction holding the gate.
pub(crate) struct ReadTxn<'s> {
    txn: RoTxn<'s, WithoutTls>,
    _gate: RwLockReadGuard<'s, ()>,
}

impl<'s> Deref for ReadTxn<'s> {
    type Target = RoTxn<'s, WithoutTls>;
    fn deref(&self) -> &RoTxn<'s, WithoutTls> {
        &self.txn
    }
}

impl Store {
    pub(crate) fn new(
        env: heed::Env<WithoutTls>,
        tables: Tables,
        map_size_max_bytes: usize,
        path: PathBuf,
    ) -> Store {
        let store = Store {
            env,
            tables,
            gate: RwLock::new(()),
            map_size_max_bytes,
            metrics: Metrics::default(),
            path,
        };
        store.publish_map_size();
        store
    }

    fn publish_map_size(&self) {
        let map_size_bytes = self.env.info().map_size as u64;
        self.metrics.map_size_bytes.store(map_size_bytes, Ordering::Relaxed);
    }

    fn gate_shared(&self) -> RwLockReadGuard<'_, ()> {
        // The gate guards no data; a panic while holding it leaves nothing inconsistent.
        self.gate.read().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Opens a read transaction.
    pub(crate) fn begin_read(&self) -> Result<ReadTxn<'_>> {
        let gate = self.gate_shared();
        let txn = self.env.read_txn().map_err(ManifestError::lmdb("begin read transaction"))?;
        Ok(ReadTxn { txn, _gate: gate })
    }

    /// Opens the write transaction (LMDB allows one at a time; this blocks for it).
    pub(crate) fn begin_write(&self) -> Result<WriteTxn<'_>> {
        let gate = self.gate_shared();
        let txn = self.env.write_txn().map_err(ManifestError::lmdb("begin write transaction"))?;
        Ok(WriteTxn { txn, _gate: gate })
    }

    /// Runs `body` in a write transaction and commits, growing the map and retrying the whole
    /// transaction when LMDB reports the map full. The number of retries is bounded by the
    /// number of doublings up to `map_size_max_bytes`.
    pub(crate) fn write<T>(&self, mut body: impl FnMut(&mut RwTxn<'_>) -> Result<T>) -> Result<T> {
        loop {
            let mut txn = self.begin_write()?;
            let attempt = body(&mut txn).and_then(|value| txn.commit().map(|()| value));
            match attempt {
                Err(error) if error.is_lmdb_map_full() => self.grow()?,
                other => return other,
            }
        }
    }

    /// Doubles the map, up to `map_size_max_bytes`. Must be called with no transaction open on
    /// this thread (the gate would deadlock otherwise).
    pub(crate) fn grow(&self) -> Result<()> {
        let _exclusive = self.gate.write().unwrap_or_else(|poison| poison.into_inner());
        let current = self.env.info().map_size;
        if current >= self.map_size_max_bytes {
            return Err(ManifestError::MapFull {
                map_size_bytes: current as u64,
                map_size_max_bytes: self.map_size_max_bytes as u64,
            });
        }
        let grown = current.saturating_mul(2).min(self.map_size_max_bytes);
        // SAFETY: LMDB requires that no transaction of this process is open during
        // mdb_env_set_mapsize. Every transaction is opened through begin_read/begin_write and
        // holds the gate shared for its whole life; we hold the gate exclusively here.
        // `grown` is a multiple of the OS page size: `current` is (LMDB sizes the map in pages)
        // and so is the max (aligned to MAP_SIZE_ALIGN_BYTES by ManifestConfig::validated).
        unsafe { self.env.resize(grown) }.map_err(ManifestError::lmdb("resize map"))?;
        self.metrics.map_grows.fetch_add(1, Ordering::Relaxed);
        self.publish_map_size();
        tracing::info!(
            from_bytes = current,
            to_bytes = grown,
            max_bytes = self.map_size_max_bytes,
            "manifest map grown"
        );
        Ok(())
    }
}
