//! Read connections kept between reads.
//!
//! Opening a connection is most of what a point read costs when each read opens its own (measured at 64
//! clients: the open, the schema read on its first statement and the close were over 40 % of a node's CPU).
//! [`SqlEngine::reader`] lends a read-only connection to one database from the engine's idle ones, or opens
//! one; the [`Reader`] gives it back when dropped. A connection is given back only if nothing it ran touched
//! the session's own state (pragmas, the temp schema: the authorizer says so), no transaction is left open,
//! and the engine is not shutting down; otherwise it is closed. At most [`SqlConfig::read_pool_max`]
//! connections are idle, over all databases (the least recently returned goes first), so connections to a
//! dropped database age out.
//!
//! A connection is lent with a fresh interrupt flag, the engine's default limits and its prepared
//! statements (see `connection::cache`): an interrupt handle taken by an earlier borrower does not reach
//! the next one. Each read transaction pins the database's newest applied commit as on a new connection,
//! and SQLite keeps its own page cache only while that commit stays the same.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::connection::{Connection, Params};
use crate::engine::{OpenMode, SqlConfig, SqlEngine};
use crate::error::SqlError;
use crate::limits::EngineSignals;

/// SQLite's own page cache of a pooled reader, in KiB (`PRAGMA cache_size=-N`): small, as the page store
/// caches pages for every connection and a commit empties SQLite's cache anyway.
const READER_CACHE_KIB: u32 = 1024;

/// The engine's idle read connections (see the module documentation).
pub(crate) struct ReadPool {
    /// Most recently returned last: (database id, connection).
    idle: Mutex<Vec<(u64, Connection)>>,
    max: usize,
}

impl ReadPool {
    pub(crate) fn new(config: &SqlConfig) -> Arc<ReadPool> {
        Arc::new(ReadPool { idle: Mutex::new(Vec::new()), max: config.read_pool_max })
    }

    fn take(&self, db_id: u64) -> Option<Connection> {
        let mut idle = self.idle.lock();
        let at = idle.iter().rposition(|(id, _)| *id == db_id)?;
        Some(idle.remove(at).1)
    }

    fn give_back(&self, db_id: u64, conn: Connection) {
        let closed = {
            let mut idle = self.idle.lock();
            idle.push((db_id, conn));
            (idle.len() > self.max).then(|| idle.remove(0))
        };
        // Closed outside the lock.
        drop(closed);
    }

    /// Idle connections now.
    pub(crate) fn idle(&self) -> usize {
        self.idle.lock().len()
    }

    /// Closes every idle connection.
    pub(crate) fn clear(&self) {
        let idle = std::mem::take(&mut *self.idle.lock());
        drop(idle);
    }
}

/// A read-only connection lent by [`SqlEngine::reader`], given back when dropped.
pub struct Reader {
    conn: Option<Connection>,
    db_id: u64,
    pool: Arc<ReadPool>,
    signals: Arc<EngineSignals>,
    reused: bool,
}

impl Reader {
    /// Whether this connection was lent from the idle ones (not opened for this read).
    pub fn reused(&self) -> bool {
        self.reused
    }
}

impl Deref for Reader {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("a reader's connection is there until it is dropped")
    }
}

impl DerefMut for Reader {
    fn deref_mut(&mut self) -> &mut Connection {
        self.conn.as_mut().expect("a reader's connection is there until it is dropped")
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else { return };
        if !conn.take_session_changed()
            && conn.is_autocommit()
            && !self.signals.shutdown.load(Ordering::SeqCst)
        {
            self.pool.give_back(self.db_id, conn);
        }
    }
}

impl SqlEngine {
    /// A read-only connection (`PRAGMA query_only`) to the existing database `name`: one of the idle ones
    /// when there is one, else a new one (see the module documentation).
    pub fn reader(&self, name: &str) -> Result<Reader, SqlError> {
        if self.is_shutting_down() {
            return Err(SqlError::ShuttingDown);
        }
        let db_id = self.manager().open_database(name)?.id();
        if let Some(reader) = self.lend(db_id) {
            return Ok(reader);
        }
        let (pool, signals) = (Arc::clone(self.read_pool()), Arc::clone(self.signals()));
        let mut conn = self.open(name, OpenMode::Existing)?;
        conn.execute(
            &format!("PRAGMA query_only = 1; PRAGMA cache_size = -{READER_CACHE_KIB}"),
            &Params::None,
        )?;
        conn.take_session_changed();
        Ok(Reader { conn: Some(conn), db_id, pool, signals, reused: false })
    }

    /// An idle read connection to the database `name`, if there is one: [`SqlEngine::reader`] without
    /// opening anything (cheap enough for a caller that must not wait, e.g. an async task).
    pub fn idle_reader(&self, name: &str) -> Option<Reader> {
        if self.is_shutting_down() {
            return None;
        }
        self.lend(self.manager().open_database(name).ok()?.id())
    }

    fn lend(&self, db_id: u64) -> Option<Reader> {
        let pool = Arc::clone(self.read_pool());
        let mut conn = pool.take(db_id)?;
        conn.renew_interrupt_flag();
        conn.set_limits(self.default_limits());
        let signals = Arc::clone(self.signals());
        Some(Reader { conn: Some(conn), db_id, pool, signals, reused: true })
    }

    /// Read connections idle in the engine's pool now.
    pub fn readers_idle(&self) -> usize {
        self.read_pool().idle()
    }
}
