//! A SQLite connection: batches in one transaction, queries returning typed rows.

mod cache;
mod group;
mod load;

use std::ffi::{c_char, c_int, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use libsql_sys::ffi;

use crate::error::SqlError;
use crate::limits::{
    self, AnswerUnit, EngineSignals, Guard, GuardPtr, InterruptHandle, Limits, VALUE_OVERHEAD_BYTES,
};
use crate::wal::ConnShared;

pub use group::{GroupRequest, RequestOutcome};
pub use load::ScriptOutcome;

/// A SQLite value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A 64-bit signed integer.
    Integer(i64),
    /// A 64-bit float.
    Real(f64),
    /// UTF-8 text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

impl Value {
    /// What this value counts towards an answer's byte bound ([`Limits::bytes_max`]): its text or blob
    /// length, 8 for a number, 0 for NULL, plus [`VALUE_OVERHEAD_BYTES`].
    pub fn answer_bytes(&self) -> u64 {
        VALUE_OVERHEAD_BYTES
            + match self {
                Value::Null => 0,
                Value::Integer(_) | Value::Real(_) => 8,
                Value::Text(text) => text.len() as u64,
                Value::Blob(blob) => blob.len() as u64,
            }
    }
}

/// Parameters of one statement.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Params {
    /// No parameters.
    #[default]
    None,
    /// `?` / `?NNN` parameters, 1-based in order.
    Positional(Vec<Value>),
    /// `:name`, `@name` or `$name` parameters; a name given without its prefix is looked up as `:name`.
    Named(Vec<(String, Value)>),
}

/// One statement of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    /// The SQL text (one statement when it has parameters; any number otherwise).
    pub sql: String,
    /// Its parameters.
    pub params: Params,
}

impl Statement {
    /// A statement without parameters.
    pub fn new(sql: impl Into<String>) -> Self {
        Statement { sql: sql.into(), params: Params::None }
    }

    /// A statement with parameters.
    pub fn with_params(sql: impl Into<String>, params: Params) -> Self {
        Statement { sql: sql.into(), params }
    }
}

/// A result column: its name and declared type (`None` for expressions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Column name as SQLite reports it.
    pub name: String,
    /// Declared type of the table column it comes from.
    pub decl_type: Option<String>,
    /// The table it comes from (`sqlite3_column_table_name`; `None` for an expression).
    pub table: Option<String>,
}

/// The result of a query.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rows {
    /// Columns of the last statement that returned columns.
    pub columns: Vec<Column>,
    /// Its rows.
    pub rows: Vec<Vec<Value>>,
}

impl Rows {
    /// What these rows count towards an answer's bounds: their number and the sum of
    /// [`Value::answer_bytes`] over their values (for a caller spreading one budget over several calls).
    pub fn answer_size(&self) -> (u64, u64) {
        let bytes = self.rows.iter().flatten().map(Value::answer_bytes).sum();
        (self.rows.len() as u64, bytes)
    }
}

/// What one executed statement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecOutcome {
    /// Rows inserted, updated or deleted by the last statement of its SQL text.
    pub rows_affected: u64,
    /// The connection's last inserted rowid afterwards.
    pub last_insert_rowid: i64,
}

/// What one statement of a batch did: its rows (when it returned columns) and outcome, or its error.
pub type StatementResult = Result<(Option<Rows>, ExecOutcome), SqlError>;

/// What a connection was opened on, so that it can be opened again with a fresh session
/// ([`Connection::request_group`] gives a request that changes the session's state one of its own).
#[derive(Clone)]
pub(crate) enum Origin {
    /// An ordinary SQLite file.
    Stock(PathBuf),
    /// A bop database (this also keeps the database's shared state, and its page-store handle, alive as
    /// long as the connection).
    Bop(Arc<crate::engine::BopOrigin>),
}

/// A database's pipelined commits, as their owner settles them ([`Connection::set_pipelined`]).
#[derive(Clone)]
pub struct Pipeline(Arc<crate::wal::DbShared>);

impl Pipeline {
    /// The commit at `index` (proposed through the pipeline) was applied: it and those before it are the
    /// page store's now.
    pub fn applied(&self, index: u64) {
        self.0.pipeline.lock().applied(index);
    }

    /// A commit of the pipeline was refused, lost, or its fate is unknown: nothing proposed and not
    /// applied may be built on any more.
    pub fn failed(&self) {
        self.0.pipeline.lock().fail();
    }

    /// Page bytes the commits proposed and not applied hold.
    pub fn bytes(&self) -> usize {
        self.0.pipeline.lock().bytes
    }

    /// Commits proposed and not applied (as far as the pipeline knows).
    pub fn len(&self) -> usize {
        self.0.pipeline.lock().entries.len()
    }

    /// Whether no commit is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// See [`Connection::commit_index`].
#[derive(Clone)]
pub struct CommitIndex(Arc<crate::engine::BopOrigin>);

impl CommitIndex {
    /// The log index of the newest commit made through the database's sink here (0: none yet).
    pub fn last(&self) -> u64 {
        self.0.last_commit_index()
    }
}

/// A connection: to a bop database (opened through [`crate::SqlEngine`]), or to an ordinary SQLite file
/// (a baseline for tests and benchmarks).
pub struct Connection {
    raw: *mut ffi::sqlite3,
    conn: Option<Arc<ConnShared>>,
    origin: Origin,
    /// What the progress, busy and authorizer callbacks read, at the address SQLite holds.
    guard: GuardPtr,
    limits: Limits,
    /// Rows and bytes of the current call's answer so far.
    answer_rows: u64,
    answer_bytes: u64,
    /// A request of a group ran on this session: `changes()` and `last_insert_rowid()` must be reset
    /// before the next one, and a request that needs a session of its own must open a new one.
    session_used: bool,
    /// A request that changes the session's state (pragmas, the temp schema, …) ran on this session: no
    /// other request may run on it.
    session_tainted: bool,
    /// bop's own temp table (see `group`) exists on this session.
    reset_table: bool,
    /// Prepared statements kept between calls (see `cache`).
    cache: cache::StmtCache,
    /// A statement prepared since [`Connection::take_session_changed`] touched the session's own state
    /// (see `limits::authorize`): what a pool must know before it lends the connection to someone else.
    session_changed: bool,
}

/// Why a statement of a group's request did not run.
pub(crate) enum Failure {
    /// It failed.
    Sql(SqlError),
    /// It would change the session's state, so its request must run in a session of its own (it was
    /// prepared, not run).
    NeedsOwnSession,
}

impl From<SqlError> for Failure {
    fn from(e: SqlError) -> Self {
        Failure::Sql(e)
    }
}

// SAFETY: libSQL is built threadsafe (serialized) by default, checked in `open_raw`; a `Connection` is used
// by one thread at a time (`&mut self`), and its WAL's state and its limits guard (`Cell`s) are only
// touched by that thread, from inside SQLite calls or between them; the guard's cross-thread parts are
// atomics.
unsafe impl Send for Connection {}

impl Drop for Connection {
    fn drop(&mut self) {
        // Kept statements first: a connection closes only once all its statements are finalised.
        self.cache.clear();
        // SAFETY: `raw` came from a successful open and is closed exactly once; close_v2 defers the close
        // until unfinalised statements are gone (we finalise all of ours before returning). The handlers
        // are removed first, so that nothing in SQLite points at the guard once it is dropped.
        unsafe {
            ffi::sqlite3_progress_handler(self.raw, 0, None, std::ptr::null_mut());
            ffi::sqlite3_busy_handler(self.raw, None, std::ptr::null_mut());
            ffi::sqlite3_set_authorizer(self.raw, None, std::ptr::null_mut());
            ffi::sqlite3_close_v2(self.raw);
        }
    }
}

/// SQLite's `SQLITE_TRANSIENT` destructor: SQLite copies the bound bytes before the bind call returns.
fn transient() -> ffi::sqlite3_destructor_type {
    // SAFETY: SQLite defines SQLITE_TRANSIENT as the destructor pointer value -1, which it compares against
    // and never calls.
    Some(unsafe { std::mem::transmute::<isize, unsafe extern "C" fn(*mut std::ffi::c_void)>(-1isize) })
}

struct Stmt(*mut ffi::sqlite3_stmt);

impl Drop for Stmt {
    fn drop(&mut self) {
        // SAFETY: the statement came from sqlite3_prepare_v2 and is finalised once.
        unsafe {
            ffi::sqlite3_finalize(self.0);
        }
    }
}

fn path_cstring(path: &Path) -> Result<CString, SqlError> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes()).map_err(|_| SqlError::invalid("path contains a NUL byte"))
}

fn result(raw: *mut ffi::sqlite3, rc: c_int, conn: Option<&ConnShared>) -> Result<(), SqlError> {
    if rc == ffi::SQLITE_OK || rc == ffi::SQLITE_DONE || rc == ffi::SQLITE_ROW {
        return Ok(());
    }
    Err(sqlite_error(raw, rc, conn))
}

fn sqlite_error(raw: *mut ffi::sqlite3, rc: c_int, conn: Option<&ConnShared>) -> SqlError {
    // SAFETY: `raw` is an open connection; errmsg returns a NUL-terminated string owned by SQLite, copied
    // before any other call on the connection.
    let (code, mut message) = unsafe {
        let code = ffi::sqlite3_extended_errcode(raw);
        let msg = ffi::sqlite3_errmsg(raw);
        let message =
            if msg.is_null() { String::new() } else { CStr::from_ptr(msg).to_string_lossy().into_owned() };
        (code, message)
    };
    let code = if code == 0 { rc } else { code };
    if let Some(reason) = conn.and_then(|conn| conn.last_error.lock().take()) {
        message = format!("{message} ({reason})");
    }
    SqlError::Sqlite { code, message }
}

impl Connection {
    /// Opens `path`: through bop's virtual WAL when `wal_manager` is given, else as an ordinary SQLite file
    /// (stock WAL and VFS). Its calls are bounded by `limits` and stopped by `engine`'s signals and by
    /// `interrupted` (the connection-wide flag; a new one when `None`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn open_raw(
        path: &Path,
        wal_manager: Option<ffi::libsql_wal_manager>,
        conn: Option<Arc<ConnShared>>,
        origin: Origin,
        busy_timeout_ms: u32,
        engine: Option<Arc<EngineSignals>>,
        limits: Limits,
        interrupted: Option<Arc<AtomicBool>>,
    ) -> Result<Connection, SqlError> {
        // SAFETY: plain query of a compile-time setting.
        if unsafe { ffi::sqlite3_threadsafe() } == 0 {
            return Err(SqlError::invalid("libSQL was built without thread safety"));
        }
        // libsql_open_v3 allocates before it initialises the library; initialising is idempotent.
        // SAFETY: no arguments; safe to call from any thread at any time.
        let rc = unsafe { ffi::sqlite3_initialize() };
        if rc != ffi::SQLITE_OK {
            return Err(SqlError::Sqlite { code: rc, message: "sqlite3_initialize failed".into() });
        }
        let path = path_cstring(path)?;
        let flags = ffi::SQLITE_OPEN_READWRITE | ffi::SQLITE_OPEN_CREATE;
        let mut raw: *mut ffi::sqlite3 = std::ptr::null_mut();
        // SAFETY: `path` is NUL-terminated and outlives the call; `raw` receives the handle (or null). The
        // WAL manager is moved into SQLite, which destroys it when the connection closes.
        let rc = unsafe {
            match wal_manager {
                Some(manager) => {
                    ffi::libsql_open_v3(path.as_ptr(), &mut raw, flags, std::ptr::null(), manager)
                }
                None => ffi::sqlite3_open_v2(path.as_ptr(), &mut raw, flags, std::ptr::null()),
            }
        };
        if raw.is_null() {
            return Err(SqlError::Sqlite { code: rc, message: "out of memory opening a connection".into() });
        }
        let connection = Connection {
            raw,
            conn,
            origin,
            guard: GuardPtr::new(Guard::new(engine, busy_timeout_ms, interrupted)),
            limits,
            answer_rows: 0,
            answer_bytes: 0,
            session_used: false,
            session_tainted: false,
            reset_table: false,
            cache: cache::StmtCache::default(),
            session_changed: false,
        };
        result(raw, rc, None)?;
        let guard = connection.guard.as_arg();
        // SAFETY: `raw` is open. The guard stays put, lives as long as the connection, and the callbacks
        // are removed in `drop` before the close; they only take shared references to it.
        unsafe {
            ffi::sqlite3_extended_result_codes(raw, 1);
            ffi::sqlite3_busy_handler(raw, Some(limits::busy_handler), guard);
            ffi::sqlite3_progress_handler(raw, limits::PROGRESS_OPS, Some(limits::progress_handler), guard);
            ffi::sqlite3_set_authorizer(raw, Some(limits::authorize), guard);
        }
        Ok(connection)
    }

    /// Opens an ordinary file-backed SQLite database (stock WAL and VFS): the baseline bop is compared to.
    pub fn open_stock(path: impl AsRef<Path>) -> Result<Connection, SqlError> {
        let path = path.as_ref();
        let origin = Origin::Stock(path.to_owned());
        Connection::open_raw(path, None, None, origin, 5_000, None, Limits::NONE, None)
    }

    /// From now on the authorizer refuses what a bop connection may not do (see `limits::authorize`).
    pub(crate) fn guard_sql(&self) {
        self.guard.set_guarded(true);
    }

    /// Replaces this connection by a new one to the same database (a fresh session: no temp schema,
    /// pragmas at their defaults), with the same limits and interrupt flag. Only between transactions.
    fn reopen(&mut self) -> Result<(), SqlError> {
        let flag = Some(self.guard.interrupt_flag());
        let fresh = match &self.origin {
            Origin::Stock(path) => {
                let origin = Origin::Stock(path.clone());
                Connection::open_raw(path, None, None, origin, 5_000, None, self.limits, flag)?
            }
            Origin::Bop(origin) => crate::engine::connect(origin, self.limits, flag)?,
        };
        fresh.guard.continue_call_of(&self.guard);
        let pipelined = self.is_pipelined();
        *self = fresh;
        if pipelined {
            self.set_pipelined(true)?;
        }
        Ok(())
    }

    /// Makes this connection its database's pipelined writer (or not): each commit returns once the sink
    /// proposed it ([`crate::FrameSink::propose_after`]), and this connection's later transactions run on
    /// top of the commits proposed and not yet applied, which no other connection sees. Whoever uses it
    /// must wait for each commit's fate before telling anyone (see [`Pipeline`]). At most one connection
    /// per database should be pipelined. Refused for a sink that does not pipeline and for a stock file.
    pub fn set_pipelined(&mut self, on: bool) -> Result<Pipeline, SqlError> {
        let (Origin::Bop(origin), Some(conn)) = (&self.origin, &self.conn) else {
            return Err(SqlError::invalid("only a bop database's connection can pipeline"));
        };
        if on && !origin.sink_pipelines() {
            return Err(SqlError::invalid("this engine's sink does not pipeline commits"));
        }
        conn.pipelined.store(on, std::sync::atomic::Ordering::Relaxed);
        Ok(Pipeline(Arc::clone(origin.shared())))
    }

    /// Whether [`Connection::set_pipelined`] is on.
    pub fn is_pipelined(&self) -> bool {
        self.conn.as_ref().is_some_and(|conn| conn.pipelined.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Sets the bounds of this connection's later calls (a connection from [`crate::SqlEngine::open`]
    /// starts with [`crate::SqlEngine::default_limits`], one from [`Connection::open_stock`] with
    /// [`Limits::NONE`]).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// The bounds of this connection's calls.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// A handle that interrupts this connection's work from any thread (see [`InterruptHandle`]).
    pub fn interrupt_handle(&self) -> InterruptHandle {
        self.guard.handle()
    }

    /// Gives this connection a new interrupt flag, not set: handles taken before (by an earlier borrower of
    /// a pooled connection) no longer reach it. Only between calls.
    pub fn renew_interrupt_flag(&mut self) {
        self.guard.renew_interrupt_flag();
    }

    /// Lets calls run again after [`InterruptHandle::interrupt`].
    pub fn clear_interrupt(&mut self) {
        self.guard.clear_interrupt();
    }

    /// Runs `f` as one call: under this connection's limits, with a fresh answer budget. A call made
    /// inside another (e.g. `execute_batch` through `request_batch`) is part of the outer one.
    fn call<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, SqlError>) -> Result<T, SqlError> {
        if self.guard.is_armed() {
            return f(self);
        }
        self.guard.arm(&self.limits)?;
        self.answer_rows = 0;
        self.answer_bytes = 0;
        let result = f(self);
        self.guard.disarm();
        result
    }

    /// Counts a row of `stmt` (just stepped to) into the call's answer, failing once a bound is passed.
    fn count_row(&mut self, stmt: &Stmt, column_count: c_int) -> Result<(), SqlError> {
        let rows = self.answer_rows + 1;
        if let Some(max) = self.limits.rows_max.filter(|max| rows > *max) {
            return Err(SqlError::AnswerTooLarge { limit: max, unit: AnswerUnit::Rows });
        }
        let bytes = self.answer_bytes + (0..column_count).map(|i| column_answer_bytes(stmt, i)).sum::<u64>();
        if let Some(max) = self.limits.bytes_max.filter(|max| bytes > *max) {
            return Err(SqlError::AnswerTooLarge { limit: max, unit: AnswerUnit::Bytes });
        }
        self.answer_rows = rows;
        self.answer_bytes = bytes;
        Ok(())
    }

    pub(crate) fn raw(&self) -> *mut ffi::sqlite3 {
        self.raw
    }

    fn error(&self, rc: c_int) -> SqlError {
        let error = sqlite_error(self.raw, rc, self.conn.as_deref());
        // A handler that stopped the call makes SQLite fail with SQLITE_INTERRUPT (or SQLITE_BUSY, when
        // it stopped waiting for a lock): report why.
        match self.guard.stopped() {
            Some(stop) if self.guard.is_armed() => stop.error(),
            _ if rc & 0xff == ffi::SQLITE_INTERRUPT => SqlError::Interrupted,
            _ => error,
        }
    }

    /// Runs every statement of `sql` (binding `params` to each statement that has parameters), returning
    /// the rows of the last statement that returned columns and the outcome of the last statement.
    fn run(&mut self, sql: &str, params: &Params) -> Result<(Rows, ExecOutcome), SqlError> {
        self.run_in(sql, params, false).map_err(|failure| match failure {
            Failure::Sql(e) => e,
            Failure::NeedsOwnSession => SqlError::invalid("statement needs a session of its own"),
        })
    }

    /// [`Connection::run`]; with `grouped`, a statement that would change the session's state is not run
    /// ([`Failure::NeedsOwnSession`]).
    fn run_in(&mut self, sql: &str, params: &Params, grouped: bool) -> Result<(Rows, ExecOutcome), Failure> {
        if let Some(conn) = &self.conn {
            conn.last_error.lock().take();
            conn.commit_failure.lock().take();
        }
        let mut rows = Rows::default();
        if let Some(stmt) = self.cache.take(sql) {
            let ran = self.run_stmt(&stmt, params, &mut rows);
            self.cache.keep(sql, stmt);
            return Ok((rows, ran?));
        }
        let mut rest = sql.as_bytes();
        let mut outcome = ExecOutcome { rows_affected: 0, last_insert_rowid: 0 };
        let mut first = true;
        loop {
            self.guard.take_session_touched();
            let Some(stmt) = self.prepare_next(&mut rest)? else { break };
            let touched = self.guard.take_session_touched();
            self.session_changed |= touched;
            if grouped && touched {
                return Err(Failure::NeedsOwnSession);
            }
            let ran = self.run_stmt(&stmt, params, &mut rows);
            if first && !touched && cache::only_one_statement(rest) {
                self.cache.keep(sql, stmt);
            }
            outcome = ran?;
            first = false;
        }
        Ok((rows, outcome))
    }

    /// Binds `params` to `stmt` and steps it to its end, its rows (if it returns columns) replacing those in
    /// `rows`. Leaves the statement for its owner to reset or finalise.
    fn run_stmt(&mut self, stmt: &Stmt, params: &Params, rows: &mut Rows) -> Result<ExecOutcome, SqlError> {
        self.bind(stmt, params)?;
        // The columns are read after the first step: a statement prepared before a schema change (a kept
        // one) is prepared again inside that step, and may have other columns since.
        let mut column_count = None;
        loop {
            // SAFETY: `stmt` is a prepared statement of this connection.
            let rc = unsafe { ffi::sqlite3_step(stmt.0) };
            if rc != ffi::SQLITE_ROW && rc != ffi::SQLITE_DONE {
                return Err(self.error(rc));
            }
            let count = *column_count.get_or_insert_with(|| {
                // SAFETY: as above.
                let count = unsafe { ffi::sqlite3_column_count(stmt.0) };
                if count > 0 {
                    *rows = Rows { columns: columns(stmt, count), rows: Vec::new() };
                }
                count
            });
            if rc == ffi::SQLITE_DONE {
                break;
            }
            self.count_row(stmt, count)?;
            rows.rows.push((0..count).map(|i| column_value(stmt, i)).collect());
        }
        // SAFETY: `raw` is open.
        Ok(unsafe {
            ExecOutcome {
                rows_affected: ffi::sqlite3_changes64(self.raw) as u64,
                last_insert_rowid: ffi::sqlite3_last_insert_rowid(self.raw),
            }
        })
    }

    /// Prepares the next statement of `rest` and advances it past that statement; `None` once only
    /// whitespace or comments are left.
    fn prepare_next(&self, rest: &mut &[u8]) -> Result<Option<Stmt>, SqlError> {
        while !rest.is_empty() {
            let mut stmt: *mut ffi::sqlite3_stmt = std::ptr::null_mut();
            let mut tail: *const c_char = std::ptr::null();
            if rest.len() > c_int::MAX as usize {
                return Err(SqlError::invalid("SQL text too long"));
            }
            // SAFETY: `rest` is valid for its length; SQLite sets `tail` inside it (or to its end).
            let rc = unsafe {
                ffi::sqlite3_prepare_v2(
                    self.raw,
                    rest.as_ptr() as *const c_char,
                    rest.len() as c_int,
                    &mut stmt,
                    &mut tail,
                )
            };
            if rc != ffi::SQLITE_OK {
                if !stmt.is_null() {
                    drop(Stmt(stmt));
                }
                return Err(self.error(rc));
            }
            let consumed = if tail.is_null() { rest.len() } else { tail as usize - rest.as_ptr() as usize };
            *rest = &rest[consumed..];
            if !stmt.is_null() {
                return Ok(Some(Stmt(stmt)));
            }
        }
        Ok(None)
    }

    /// Whether every statement of `sql` only reads the database (SQLite's `sqlite3_stmt_readonly`); an
    /// error if `sql` does not prepare.
    pub fn is_read_only(&mut self, sql: &str) -> Result<bool, SqlError> {
        let read_only = |stmt: &Stmt| {
            // SAFETY: `stmt` is a prepared statement of this connection.
            unsafe { ffi::sqlite3_stmt_readonly(stmt.0) != 0 }
        };
        if let Some(stmt) = self.cache.take(sql) {
            let answer = read_only(&stmt);
            self.cache.keep(sql, stmt);
            return Ok(answer);
        }
        let mut rest = sql.as_bytes();
        let mut first = true;
        loop {
            self.guard.take_session_touched();
            let Some(stmt) = self.prepare_next(&mut rest)? else { return Ok(true) };
            let touched = self.guard.take_session_touched();
            self.session_changed |= touched;
            let answer = read_only(&stmt);
            if first && !touched && cache::only_one_statement(rest) {
                self.cache.keep(sql, stmt);
            }
            if !answer {
                return Ok(false);
            }
            first = false;
        }
    }

    /// Whether a statement prepared since the last call (or since the connection opened) touched the
    /// session's own state — pragmas, transaction control, savepoints, the temp schema — and forgets it.
    pub fn take_session_changed(&mut self) -> bool {
        std::mem::take(&mut self.session_changed)
    }

    /// Statements this connection found prepared in its cache so far, and how many it keeps now.
    pub fn statement_cache_use(&self) -> (u64, usize) {
        (self.cache.hits, self.cache.len())
    }

    fn bind(&self, stmt: &Stmt, params: &Params) -> Result<(), SqlError> {
        // SAFETY: `stmt` is a prepared statement of this connection.
        let count = unsafe { ffi::sqlite3_bind_parameter_count(stmt.0) };
        match params {
            Params::None => Ok(()),
            Params::Positional(values) => {
                if values.len() != count as usize {
                    return Err(SqlError::invalid(format!(
                        "statement has {count} parameters, {} values given",
                        values.len()
                    )));
                }
                for (i, value) in values.iter().enumerate() {
                    self.bind_value(stmt, i as c_int + 1, value)?;
                }
                Ok(())
            }
            Params::Named(values) => {
                for (name, value) in values {
                    let index = named_index(stmt, name)?;
                    self.bind_value(stmt, index, value)?;
                }
                Ok(())
            }
        }
    }

    fn bind_value(&self, stmt: &Stmt, index: c_int, value: &Value) -> Result<(), SqlError> {
        // SAFETY: `stmt` is prepared; SQLITE_TRANSIENT makes SQLite copy text and blobs before returning.
        let rc = unsafe {
            match value {
                Value::Null => ffi::sqlite3_bind_null(stmt.0, index),
                Value::Integer(v) => ffi::sqlite3_bind_int64(stmt.0, index, *v),
                Value::Real(v) => ffi::sqlite3_bind_double(stmt.0, index, *v),
                Value::Text(v) => ffi::sqlite3_bind_text64(
                    stmt.0,
                    index,
                    v.as_ptr() as *const c_char,
                    v.len() as u64,
                    transient(),
                    ffi::SQLITE_UTF8 as u8,
                ),
                Value::Blob(v) => ffi::sqlite3_bind_blob64(
                    stmt.0,
                    index,
                    v.as_ptr() as *const std::ffi::c_void,
                    v.len() as u64,
                    transient(),
                ),
            }
        };
        result(self.raw, rc, None)
    }

    /// Runs `statements` in one transaction (`BEGIN IMMEDIATE` … `COMMIT`): all of them commit, or — on the
    /// first error, whose SQLite message is returned — none.
    pub fn execute_batch(&mut self, statements: &[Statement]) -> Result<Vec<ExecOutcome>, SqlError> {
        Ok(self.request_batch(statements)?.into_iter().map(|(_, outcome)| outcome).collect())
    }

    /// Runs `statements` in one transaction like [`Connection::execute_batch`], also returning the rows of
    /// each statement that returned columns (rqlite's unified request, where reads and writes mix).
    pub fn request_batch(
        &mut self,
        statements: &[Statement],
    ) -> Result<Vec<(Option<Rows>, ExecOutcome)>, SqlError> {
        self.call(|conn| conn.batch(statements, false)?.into_iter().collect())
    }

    /// Runs `statements` in one transaction where each statement stands alone: a statement that fails is
    /// undone (by a savepoint around it) and reported in its place, and the others still commit — rqlite's
    /// semantics for a batch sent without `transaction`, committed as one unit. The outer error is for a
    /// failure of the batch itself (the commit, or a savepoint that could not be rolled back).
    ///
    /// A statement's rows count towards the call's answer bounds only if it succeeds. A statement that runs
    /// out of time or is interrupted ([`SqlError::stops_call`]) ends the whole batch, rolled back, with
    /// that error.
    pub fn request_each(&mut self, statements: &[Statement]) -> Result<Vec<StatementResult>, SqlError> {
        self.call(|conn| conn.batch(statements, true))
    }

    fn batch(&mut self, statements: &[Statement], each: bool) -> Result<Vec<StatementResult>, SqlError> {
        self.run("BEGIN IMMEDIATE", &Params::None)?;
        let mut outcomes = Vec::with_capacity(statements.len());
        for statement in statements {
            if each {
                if let Err(e) = self.run("SAVEPOINT bop_statement", &Params::None) {
                    self.rollback_if_open();
                    return Err(e);
                }
            }
            let answer_before = (self.answer_rows, self.answer_bytes);
            match self.run(&statement.sql, &statement.params) {
                Ok((rows, outcome)) => {
                    outcomes.push(Ok(((!rows.columns.is_empty()).then_some(rows), outcome)));
                    if each {
                        if let Err(e) = self.run("RELEASE bop_statement", &Params::None) {
                            self.rollback_if_open();
                            return Err(e);
                        }
                    }
                }
                Err(e) if each && !e.stops_call() && !self.is_autocommit() => {
                    (self.answer_rows, self.answer_bytes) = answer_before;
                    outcomes.push(Err(e));
                    let undone = self
                        .run("ROLLBACK TO bop_statement", &Params::None)
                        .and_then(|_| self.run("RELEASE bop_statement", &Params::None));
                    if let Err(e) = undone {
                        self.rollback_if_open();
                        return Err(e);
                    }
                }
                Err(e) => {
                    self.rollback_if_open();
                    return Err(e);
                }
            }
        }
        if let Err(e) = self.run("COMMIT", &Params::None) {
            self.rollback_if_open();
            return Err(e);
        }
        Ok(outcomes)
    }

    /// Runs `sql` (in autocommit mode unless a transaction is open) and returns what it did.
    pub fn execute(&mut self, sql: &str, params: &Params) -> Result<ExecOutcome, SqlError> {
        self.call(|conn| Ok(conn.run(sql, params)?.1))
    }

    /// Runs `sql` and returns the columns and rows of its last statement that returned columns.
    pub fn query(&mut self, sql: &str, params: &Params) -> Result<Rows, SqlError> {
        self.call(|conn| Ok(conn.run(sql, params)?.0))
    }

    /// Writes a consistent copy of this database (the snapshot one read transaction sees) to `path` as an
    /// ordinary SQLite file in rollback-journal mode, with SQLite's online backup API. `path` must not
    /// exist yet.
    ///
    /// The backup is refused once the engine is shutting down, but not bounded in time once it runs.
    pub fn backup_to(&mut self, path: impl AsRef<Path>) -> Result<(), SqlError> {
        let path = path.as_ref();
        if self.guard.shutting_down() {
            return Err(SqlError::ShuttingDown);
        }
        if path.exists() {
            return Err(SqlError::invalid(format!("backup target {} already exists", path.display())));
        }
        let mut dest = Connection::open_stock(path)?;
        let main = c"main";
        // SAFETY: both handles are open, distinct and used only by this thread for the backup's duration.
        let backup = unsafe { ffi::sqlite3_backup_init(dest.raw, main.as_ptr(), self.raw, main.as_ptr()) };
        if backup.is_null() {
            // SAFETY: `dest.raw` is open; the error of a failed init is left on the destination.
            return Err(dest.error(unsafe { ffi::sqlite3_errcode(dest.raw) }));
        }
        // SAFETY: `backup` is live until `sqlite3_backup_finish`, which is called exactly once.
        let (step, finish) = unsafe {
            let step = ffi::sqlite3_backup_step(backup, -1);
            (step, ffi::sqlite3_backup_finish(backup))
        };
        if step != ffi::SQLITE_DONE {
            return Err(if step == ffi::SQLITE_OK { self.error(finish) } else { self.error(step) });
        }
        result(dest.raw, finish, None)?;
        // The copy carries the source's WAL-mode header; an exported file should open without one.
        dest.run("PRAGMA journal_mode=DELETE", &Params::None)?;
        Ok(())
    }

    /// Reads the log index of the newest commit made through this database's sink in this process (for
    /// a caller that must name the commit an answer came from, e.g. rqlite's `raft_index`, while the
    /// connection is busy); `None` for an ordinary SQLite file.
    pub fn commit_index(&self) -> Option<CommitIndex> {
        match &self.origin {
            Origin::Bop(origin) => Some(CommitIndex(Arc::clone(origin))),
            Origin::Stock(_) => None,
        }
    }

    /// Whether no transaction is open.
    pub fn is_autocommit(&self) -> bool {
        // SAFETY: `raw` is open.
        unsafe { ffi::sqlite3_get_autocommit(self.raw) != 0 }
    }

    /// Rolls back an open transaction, with the limits not checked (it undoes a call that failed, maybe
    /// because it ran out of time).
    fn rollback_if_open(&mut self) {
        if !self.is_autocommit() {
            let armed = self.guard.suspend();
            let rolled_back = self.run("ROLLBACK", &Params::None);
            self.guard.resume(armed);
            if let Err(e) = rolled_back {
                tracing::warn!(error = %e, "rollback after a failed batch failed");
            }
        }
    }
}

fn named_index(stmt: &Stmt, name: &str) -> Result<c_int, SqlError> {
    let lookup = |name: &str| -> Result<c_int, SqlError> {
        let c_name =
            CString::new(name).map_err(|_| SqlError::invalid("parameter name contains a NUL byte"))?;
        // SAFETY: `stmt` is prepared and `c_name` NUL-terminated.
        Ok(unsafe { ffi::sqlite3_bind_parameter_index(stmt.0, c_name.as_ptr()) })
    };
    let mut index = lookup(name)?;
    if index == 0 && !name.starts_with([':', '@', '$']) {
        index = lookup(&format!(":{name}"))?;
    }
    if index == 0 {
        return Err(SqlError::invalid(format!("statement has no parameter named {name}")));
    }
    Ok(index)
}

fn columns(stmt: &Stmt, count: c_int) -> Vec<Column> {
    let text = |ptr: *const c_char| {
        // SAFETY: SQLite returns NUL-terminated strings valid until the statement is finalised.
        (!ptr.is_null()).then(|| unsafe { CStr::from_ptr(ptr) }.to_string_lossy().into_owned())
    };
    (0..count)
        .map(|i| {
            // SAFETY: `i` is a valid column index of the prepared statement.
            let (name, decl, table) = unsafe {
                (
                    ffi::sqlite3_column_name(stmt.0, i),
                    ffi::sqlite3_column_decltype(stmt.0, i),
                    ffi::sqlite3_column_table_name(stmt.0, i),
                )
            };
            Column { name: text(name).unwrap_or_default(), decl_type: text(decl), table: text(table) }
        })
        .collect()
}

fn column_value(stmt: &Stmt, i: c_int) -> Value {
    // SAFETY: called right after SQLITE_ROW with a valid column index; text/blob pointers are copied before
    // the next call on the statement, with their length taken after the pointer as SQLite requires.
    unsafe {
        match ffi::sqlite3_column_type(stmt.0, i) {
            ffi::SQLITE_INTEGER => Value::Integer(ffi::sqlite3_column_int64(stmt.0, i)),
            ffi::SQLITE_FLOAT => Value::Real(ffi::sqlite3_column_double(stmt.0, i)),
            ffi::SQLITE_TEXT => {
                let ptr = ffi::sqlite3_column_text(stmt.0, i);
                let len = ffi::sqlite3_column_bytes(stmt.0, i) as usize;
                let bytes = if ptr.is_null() { &[][..] } else { std::slice::from_raw_parts(ptr, len) };
                Value::Text(String::from_utf8_lossy(bytes).into_owned())
            }
            ffi::SQLITE_BLOB => {
                let ptr = ffi::sqlite3_column_blob(stmt.0, i) as *const u8;
                let len = ffi::sqlite3_column_bytes(stmt.0, i) as usize;
                let bytes = if ptr.is_null() { &[][..] } else { std::slice::from_raw_parts(ptr, len) };
                Value::Blob(bytes.to_vec())
            }
            _ => Value::Null,
        }
    }
}

/// What column `i` of the row `stmt` just stepped to counts towards the answer's byte bound, taken
/// before the value is copied (as [`Value::answer_bytes`] will count it).
fn column_answer_bytes(stmt: &Stmt, i: c_int) -> u64 {
    // SAFETY: called right after SQLITE_ROW with a valid column index; no pointer into the row is held.
    let payload = unsafe {
        match ffi::sqlite3_column_type(stmt.0, i) {
            ffi::SQLITE_INTEGER | ffi::SQLITE_FLOAT => 8,
            ffi::SQLITE_TEXT | ffi::SQLITE_BLOB => ffi::sqlite3_column_bytes(stmt.0, i).max(0) as u64,
            _ => 0,
        }
    };
    VALUE_OVERHEAD_BYTES + payload
}
