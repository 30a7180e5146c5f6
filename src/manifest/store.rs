//! The LMDB environment, the transaction gate, and map growth.
//!
//! `mdb_env_set_mapsize` may only be called while this process has no transaction open. Every
//! transaction of the manifest is therefore opened through [`Store::begin_read`] or
//! [`Store::begin_write`], which hold a shared lock on the gate for the transaction's lifetime;
//! [`Store::grow`] takes the gate exclusively, so it runs exactly when no transaction is open.
//!
//! [`Store::reserve_map_space`] asks the file system for the data file's blocks up to the map size
//! ahead of use, so that LMDB's writes land in allocated space and rarely meet a full file system.

use std::ops::{Deref, DerefMut};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{RwLock, RwLockReadGuard};

use heed::{RoTxn, RwTxn, WithoutTls};

use super::error::{ManifestError, Result};
use super::metrics::Metrics;
use super::open::DATA_FILE_NAME;
use super::tables::Tables;

/// The environment and what guards it.
pub(crate) struct Store {
    pub(crate) env: heed::Env<WithoutTls>,
    pub(crate) tables: Tables,
    gate: RwLock<()>,
    map_size_max_bytes: usize,
    reserve: bool,
    pub(crate) metrics: Metrics,
    pub(crate) path: PathBuf,
    /// Errors the next transactions fail with instead of running (unit tests only).
    #[cfg(test)]
    pub(crate) faults: Faults,
}

/// An error a unit test makes the next `begin_write` or `commit` return (the transaction is aborted).
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub(crate) enum Injected {
    /// An errno, as heed reports one from LMDB (`heed::Error::Io`).
    Errno(i32),
    /// `MDB_PANIC`.
    Panic,
}

#[cfg(test)]
impl Injected {
    fn error(self) -> heed::Error {
        match self {
            Injected::Errno(errno) => heed::Error::Io(std::io::Error::from_raw_os_error(errno)),
            Injected::Panic => heed::Error::Mdb(heed::MdbError::Panic),
        }
    }
}

/// Where an injected error strikes.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Point {
    Begin,
    Commit,
}

/// Injected errors: a queue consumed in order (the front entry strikes when its point is reached),
/// then an error every commit returns while it is set.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct Faults {
    pub(crate) queue: std::sync::Mutex<std::collections::VecDeque<(Point, Injected)>>,
    pub(crate) every_commit: std::sync::Mutex<Option<Injected>>,
}

#[cfg(test)]
impl Faults {
    fn take(&self, point: Point) -> Option<Injected> {
        let mut queue = self.queue.lock().unwrap();
        if queue.front().is_some_and(|(at, _)| *at == point) {
            return queue.pop_front().map(|(_, injected)| injected);
        }
        drop(queue);
        if point == Point::Commit {
            return *self.every_commit.lock().unwrap();
        }
        None
    }
}

/// A write transaction holding the gate; fields drop in order, so the transaction ends before
/// the gate is released.
pub(crate) struct WriteTxn<'s> {
    txn: RwTxn<'s>,
    _gate: RwLockReadGuard<'s, ()>,
    #[cfg(test)]
    faults: &'s Faults,
}

impl<'s> WriteTxn<'s> {
    /// Commits (LMDB commit = write + fsync of data and meta page). On failure LMDB has aborted
    /// the transaction.
    pub(crate) fn commit(self) -> Result<()> {
        #[cfg(test)]
        if let Some(injected) = self.faults.take(Point::Commit) {
            drop(self);
            return Err(ManifestError::lmdb("commit")(injected.error()));
        }
        let WriteTxn { txn, _gate, .. } = self;
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
        reserve: bool,
        path: PathBuf,
    ) -> Store {
        let store = Store {
            env,
            tables,
            gate: RwLock::new(()),
            map_size_max_bytes,
            reserve,
            metrics: Metrics::default(),
            path,
            #[cfg(test)]
            faults: Faults::default(),
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
        #[cfg(test)]
        if let Some(injected) = self.faults.take(Point::Begin) {
            return Err(ManifestError::lmdb("begin write transaction")(injected.error()));
        }
        let gate = self.gate_shared();
        let txn = self.env.write_txn().map_err(ManifestError::lmdb("begin write transaction"))?;
        Ok(WriteTxn {
            txn,
            _gate: gate,
            #[cfg(test)]
            faults: &self.faults,
        })
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
        self.grow_map()?;
        self.reserve_map_space();
        Ok(())
    }

    fn grow_map(&self) -> Result<()> {
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

    /// Reserves the data file's blocks from offset 0 up to the map size (`fallocate` with
    /// `FALLOC_FL_KEEP_SIZE`): neither the file's size nor any byte of it changes (a reserved range
    /// reads as zeros, as the hole or unwritten end it was), but LMDB's later writes of pages inside the
    /// map land in allocated blocks, so on a file system that overwrites in place (ext4, XFS, tmpfs)
    /// they cannot fail for lack of space. Best effort: a file system without the call, or without
    /// the space, is logged and the commit path's handling of a full disk remains.
    pub(crate) fn reserve_map_space(&self) {
        if !self.reserve {
            return;
        }
        let map_size_bytes = self.env.info().map_size as u64;
        let path = self.path.join(DATA_FILE_NAME);
        let reserved = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|error| rustix::io::Errno::from_io_error(&error).unwrap_or(rustix::io::Errno::IO))
            .and_then(|file| {
                rustix::fs::fallocate(file.as_fd(), rustix::fs::FallocateFlags::KEEP_SIZE, 0, map_size_bytes)
            });
        match reserved {
            Ok(()) => {
                self.metrics.space_reserved_bytes.store(map_size_bytes, Ordering::Relaxed);
            }
            Err(errno) if errno == rustix::io::Errno::OPNOTSUPP || errno == rustix::io::Errno::NOSYS => {
                tracing::debug!(path = %path.display(), "the file system cannot reserve space (fallocate)");
            }
            Err(errno) => {
                tracing::warn!(
                    path = %path.display(),
                    bytes = map_size_bytes,
                    error = %std::io::Error::from(errno),
                    "cannot reserve space for the manifest's map; a commit may meet a full disk"
                );
            }
        }
    }
}
