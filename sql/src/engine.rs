//! Opening connections to bop databases.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bop_storage::page_store::{Db, Manager, PageStoreError, PAGE_SIZE};
use libsql_sys::wal::make_wal_manager;
use parking_lot::Mutex;

use crate::connection::{Connection, Origin, Params, Value};
use crate::error::SqlError;
use crate::limits::{EngineSignals, Limits};
use crate::page_one::empty_database_page_one;
use crate::pool::ReadPool;
use crate::sink::{FrameSink, LocalSink};
use crate::wal::{BopWalManager, ConnShared, DbShared, WriterState, PAGE_NO_MAX, SPILL_PREFIX};

/// Settings of the SQL layer.
#[derive(Debug, Clone)]
pub struct SqlConfig {
    /// Directory of the placeholder main-database files SQLite opens (one zero-filled 4096-byte file per
    /// database; never a source of data).
    pub placeholder_dir: PathBuf,
    /// Most bytes of page frames one write transaction may hold in memory; past it the transaction fails
    /// with `SQLITE_FULL` and rolls back. Also bounded by what one page-store commit may carry.
    pub pending_bytes_max: usize,
    /// Most bytes of a write transaction's held frames kept in memory; frames past it are spilled to an
    /// unlinked file in `placeholder_dir` until the commit reads them back.
    pub held_memory_bytes_max: usize,
    /// How long a connection waits for another connection's write lock before `SQLITE_BUSY`.
    pub busy_timeout_ms: u32,
    /// Longest one call on a connection (a query, or a whole batch) may run before it is stopped with
    /// [`SqlError::Timeout`], unless the caller sets other [`Limits`]; `None`: no limit. Default 60 s: far
    /// more than any legitimate statement on a node whose transactions are bounded by `pending_bytes_max`,
    /// and short enough that a runaway query gives its core back.
    pub statement_time_max: Option<Duration>,
    /// Most rows of one call's answer, unless the caller sets other [`Limits`]; `None`: no bound. Default
    /// 1,000,000.
    pub answer_rows_max: Option<u64>,
    /// Most bytes of one call's answer ([`crate::Value::answer_bytes`] summed), unless the caller sets
    /// other [`Limits`]; `None`: no bound. Default 64 MiB.
    pub answer_bytes_max: Option<u64>,
    /// Most read connections kept idle between reads, over all databases ([`SqlEngine::reader`]). Default
    /// 64: one per client of a busy node; each holds its prepared statements and at most 1 MiB of SQLite's
    /// own page cache.
    pub read_pool_max: usize,
}

impl SqlConfig {
    /// Defaults with placeholders under `placeholder_dir`.
    pub fn new(placeholder_dir: impl Into<PathBuf>) -> Self {
        SqlConfig {
            placeholder_dir: placeholder_dir.into(),
            pending_bytes_max: 64 << 20,
            held_memory_bytes_max: 8 << 20,
            busy_timeout_ms: 5_000,
            statement_time_max: Some(Duration::from_secs(60)),
            answer_rows_max: Some(1_000_000),
            answer_bytes_max: Some(64 << 20),
            read_pool_max: 64,
        }
    }

    /// The [`Limits`] these settings give a connection (no deadline of its own).
    pub fn default_limits(&self) -> Limits {
        Limits {
            time_max: self.statement_time_max,
            deadline: None,
            rows_max: self.answer_rows_max,
            bytes_max: self.answer_bytes_max,
        }
    }
}

/// Whether [`SqlEngine::open`] may create the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// The database must exist.
    Existing,
    /// Create it (empty) when it does not exist.
    CreateIfMissing,
}

/// The SQL layer over one page-store [`Manager`]: opens libSQL connections whose pages live in the page
/// store and whose commits go to a [`FrameSink`].
pub struct SqlEngine {
    manager: Manager,
    sink: Arc<dyn FrameSink>,
    config: SqlConfig,
    dbs: Mutex<HashMap<u64, Arc<DbShared>>>,
    signals: Arc<EngineSignals>,
    read_pool: Arc<ReadPool>,
}

impl SqlEngine {
    /// An engine committing through `sink`.
    pub fn new(manager: Manager, sink: Arc<dyn FrameSink>, config: SqlConfig) -> Result<SqlEngine, SqlError> {
        std::fs::create_dir_all(&config.placeholder_dir).map_err(|source| SqlError::Io {
            during: "creating",
            path: config.placeholder_dir.clone(),
            source,
        })?;
        remove_stale_spill_files(&config.placeholder_dir);
        Ok(SqlEngine {
            read_pool: ReadPool::new(&config),
            manager,
            sink,
            config,
            dbs: Mutex::new(HashMap::new()),
            signals: Arc::new(EngineSignals::default()),
        })
    }

    /// A single-node engine: every transaction is one local page-store commit ([`LocalSink`]).
    pub fn local(manager: Manager, config: SqlConfig) -> Result<SqlEngine, SqlError> {
        SqlEngine::new(manager, Arc::new(LocalSink), config)
    }

    /// The page store underneath.
    pub fn manager(&self) -> &Manager {
        &self.manager
    }

    /// The limits connections start with ([`SqlConfig::default_limits`]).
    pub fn default_limits(&self) -> Limits {
        self.config.default_limits()
    }

    /// Interrupts every call running now on any connection of this engine ([`SqlError::Interrupted`]);
    /// calls that start afterwards run normally.
    pub fn interrupt_all(&self) {
        self.signals.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Begins the engine's shutdown: every call running on any of its connections stops, and every later
    /// call or [`SqlEngine::open`] is refused, with [`SqlError::ShuttingDown`]. Does not wait: a statement
    /// stops at its next progress check (within microseconds of SQLite work), a commit already handed to
    /// the sink completes first. Cannot be undone.
    pub fn shutdown(&self) {
        self.signals.shutdown.store(true, Ordering::SeqCst);
        self.signals.epoch.fetch_add(1, Ordering::SeqCst);
        self.read_pool.clear();
    }

    pub(crate) fn read_pool(&self) -> &Arc<ReadPool> {
        &self.read_pool
    }

    pub(crate) fn signals(&self) -> &Arc<EngineSignals> {
        &self.signals
    }

    /// Whether [`SqlEngine::shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.signals.shutdown.load(Ordering::SeqCst)
    }

    /// Opens a connection to the database `name`, creating it when `mode` allows. Its calls are bounded by
    /// [`SqlEngine::default_limits`] until [`Connection::set_limits`].
    pub fn open(&self, name: &str, mode: OpenMode) -> Result<Connection, SqlError> {
        if self.is_shutting_down() {
            return Err(SqlError::ShuttingDown);
        }
        let db = match self.manager.open_database(name) {
            Ok(db) => db,
            Err(PageStoreError::NoSuchDatabase { .. }) if mode == OpenMode::CreateIfMissing => self
                .sink
                .create_database(&self.manager, name)
                .map_err(|e| SqlError::invalid(format!("creating database {name}: {e}")))?,
            Err(e) => return Err(e.into()),
        };
        let shared = self.shared(db);
        self.initialise(&shared)?;
        let path = self.placeholder(&shared.db)?;
        let origin = Arc::new(BopOrigin {
            path,
            shared,
            busy_timeout_ms: self.config.busy_timeout_ms,
            signals: self.signals.clone(),
        });
        connect(&origin, self.config.default_limits(), None)
    }

    /// Held frames written to spill files so far, over every database of this engine.
    pub fn frames_spilled(&self) -> u64 {
        self.dbs.lock().values().map(|shared| shared.frames_spilled.load(Ordering::Relaxed)).sum()
    }

    fn shared(&self, db: Db) -> Arc<DbShared> {
        let pending_bytes_max = self.config.pending_bytes_max;
        let held_memory_frames_max = self.config.held_memory_bytes_max / PAGE_SIZE;
        self.dbs
            .lock()
            .entry(db.id())
            .or_insert_with(|| {
                Arc::new(DbShared {
                    db,
                    sink: self.sink.clone(),
                    pending_bytes_max,
                    held_memory_frames_max,
                    spill_dir: self.config.placeholder_dir.clone(),
                    frames_spilled: AtomicU64::new(0),
                    writer: Mutex::new(WriterState::default()),
                    pipeline: Mutex::new(Default::default()),
                })
            })
            .clone()
    }

    /// Commits page 1 of an empty database if the database has no pages yet (see `page_one`).
    ///
    /// It claims the database's write lock as a write transaction does (`WriterState::active`) but does
    /// not hold the mutex while the sink commits: through Raft that waits for the cluster, and a thread
    /// blocked on the mutex meanwhile could be the one the commit needs (the simulation runs SQL in lockstep
    /// with the runtime, and deadlocked so).
    fn initialise(&self, shared: &DbShared) -> Result<(), SqlError> {
        let read_index = {
            let mut writer = shared.writer.lock();
            let snapshot = shared.db.snapshot()?;
            if snapshot.page_count() > 0 {
                return Ok(());
            }
            if writer.active {
                return Err(SqlError::invalid("database has no pages but a writer is active"));
            }
            writer.active = true;
            snapshot.index()
        };
        /// Gives the write lock back however the commit ends.
        struct Release<'a>(&'a DbShared);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.writer.lock().active = false;
            }
        }
        let release = Release(shared);
        let page = empty_database_page_one();
        let index = shared
            .sink
            .commit(&shared.db, &[(1, &page)], 1, read_index)
            .map_err(|e| SqlError::invalid(format!("initialising database {}: {e}", shared.db.name())))?;
        drop(release);
        let mut writer = shared.writer.lock();
        writer.last_commit_index = writer.last_commit_index.max(index);
        Ok(())
    }

    fn placeholder(&self, db: &Db) -> Result<PathBuf, SqlError> {
        let path = self.config.placeholder_dir.join(format!("{:016x}.db", db.id()));
        let ok = std::fs::metadata(&path).map(|m| m.len() == PAGE_SIZE as u64).unwrap_or(false);
        if !ok {
            // One zero-filled page: non-empty, so that SQLite opens the WAL, and not a database, so that
            // a read from it could never pass for data.
            std::fs::write(&path, vec![0u8; PAGE_SIZE]).map_err(|source| SqlError::Io {
                during: "writing",
                path: path.clone(),
                source,
            })?;
        }
        Ok(path)
    }
}

/// Removes spill files that a crash left between their creation and unlinking (best effort: they hold
/// nothing anyone needs).
fn remove_stale_spill_files(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(SPILL_PREFIX) && name.ends_with(".tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// What a connection to a bop database is made of (kept by the connection, to open it again).
pub(crate) struct BopOrigin {
    /// The placeholder main-database file.
    path: PathBuf,
    shared: Arc<DbShared>,
    busy_timeout_ms: u32,
    signals: Arc<EngineSignals>,
}

impl BopOrigin {
    /// Whether the database's sink takes pipelined commits.
    pub(crate) fn sink_pipelines(&self) -> bool {
        self.shared.sink.pipelines()
    }

    /// The database's shared state.
    pub(crate) fn shared(&self) -> &Arc<DbShared> {
        &self.shared
    }

    /// The log index of the newest commit made through the database's sink in this process.
    pub(crate) fn last_commit_index(&self) -> u64 {
        self.shared.writer.lock().last_commit_index
    }
}

/// Opens a connection to the bop database `origin` names, bounded by `limits`, with `interrupted` as its
/// interrupt flag (a new one when `None`).
pub(crate) fn connect(
    origin: &Arc<BopOrigin>,
    limits: Limits,
    interrupted: Option<Arc<AtomicBool>>,
) -> Result<Connection, SqlError> {
    let conn = Arc::new(ConnShared::default());
    let manager = BopWalManager { shared: origin.shared.clone(), conn: conn.clone() };
    let mut connection = Connection::open_raw(
        &origin.path,
        Some(make_wal_manager(manager)),
        Some(conn),
        Origin::Bop(origin.clone()),
        origin.busy_timeout_ms,
        Some(origin.signals.clone()),
        limits,
        interrupted,
    )?;
    // SAFETY: the connection is open; 0 disables SQLite's automatic checkpoints (bop drives them).
    unsafe {
        libsql_sys::ffi::sqlite3_wal_autocheckpoint(connection.raw(), 0);
    }
    let setup = format!(
        "PRAGMA mmap_size=0; PRAGMA max_page_count={PAGE_NO_MAX}; PRAGMA cache_size=-8192; \
         PRAGMA temp_store=MEMORY;"
    );
    connection.execute(&setup, &Params::None)?;
    let mode = connection.query("PRAGMA journal_mode", &Params::None)?;
    if mode.rows != vec![vec![Value::Text("wal".into())]] {
        return Err(SqlError::invalid(format!("virtual WAL not in use (journal_mode {:?})", mode.rows)));
    }
    let page_size = connection.query("PRAGMA page_size", &Params::None)?;
    if page_size.rows != vec![vec![Value::Integer(PAGE_SIZE as i64)]] {
        return Err(SqlError::invalid(format!(
            "bop databases use {PAGE_SIZE}-byte pages, this one has {:?}",
            page_size.rows
        )));
    }
    // From here on, client SQL may not switch the journal away from bop's WAL (SQLite would then write
    // the placeholder file) nor attach database files.
    connection.guard_sql();
    Ok(connection)
}
