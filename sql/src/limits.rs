//! Bounds on the work of one call on a [`crate::Connection`]: a time limit, an answer bound, and
//! cancellation from another thread (a client gone, the node shutting down).
//!
//! A call is one `query`, `execute`, `request_batch`, `request_each` or `execute_batch` (a batch is one
//! call, its answer bounded over all its statements; `backup_to` is only refused at shutdown). In a
//! `request_group` each request is bounded on its own: its own limits and its own [`InterruptHandle`],
//! checked only while its statements run. The
//! time limit and cancellation are enforced by SQLite's progress handler, which SQLite calls every
//! [`PROGRESS_OPS`] virtual-machine instructions of a running statement and which stops the statement
//! (`SQLITE_INTERRUPT`, with SQLite's usual rollback) once the call's deadline has passed, its connection's
//! [`InterruptHandle`] was used, or its engine interrupts everything. The connection's busy handler checks
//! the same conditions while it waits for another connection's write lock.

use std::cell::{Cell, RefCell};
use std::ffi::{c_int, c_void};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::SqlError;

/// SQLite virtual-machine instructions between two checks of a running statement's limits (a few
/// microseconds of work; the check reads two atomics and the clock).
pub(crate) const PROGRESS_OPS: c_int = 1_000;

/// Bytes counted for every value of an answer on top of its payload (see [`crate::Value::answer_bytes`]).
pub const VALUE_OVERHEAD_BYTES: u64 = 8;

/// Bounds of each call on a connection (see [`crate::Connection::set_limits`]). `None` is "no bound".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Longest one call may run, counted from its start; past it the call fails with
    /// [`SqlError::Timeout`] (and a write it made is rolled back).
    pub time_max: Option<Duration>,
    /// An instant by which every call must have ended (e.g. a request's deadline, spanning several calls);
    /// combined with `time_max`, the earlier of the two applies.
    pub deadline: Option<Instant>,
    /// Most rows one call may return, over all its statements; one more fails the call with
    /// [`SqlError::AnswerTooLarge`] as soon as it is read.
    pub rows_max: Option<u64>,
    /// Most bytes one call's answer may hold, over all its statements, counted as
    /// [`crate::Value::answer_bytes`] summed over its values; past it the call fails with
    /// [`SqlError::AnswerTooLarge`] before the row that crosses it is copied.
    pub bytes_max: Option<u64>,
}

impl Limits {
    /// No bound at all (what connections from [`crate::Connection::open_stock`] start with).
    pub const NONE: Limits = Limits { time_max: None, deadline: None, rows_max: None, bytes_max: None };
}

/// What an answer bound counts, in [`SqlError::AnswerTooLarge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerUnit {
    /// Rows.
    Rows,
    /// Bytes (see [`crate::Value::answer_bytes`]).
    Bytes,
}

impl std::fmt::Display for AnswerUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AnswerUnit::Rows => "rows",
            AnswerUnit::Bytes => "bytes",
        })
    }
}

/// Cancels the work of one connection from any thread: the statement running on it now stops with
/// [`SqlError::Interrupted`], and so does every later call on it until
/// [`crate::Connection::clear_interrupt`] (so an interrupt that comes before the call starts is not lost).
///
/// The handle holds only a shared flag, never the SQLite handle: using it after the connection is closed
/// or dropped is safe and does nothing.
#[derive(Debug, Clone, Default)]
pub struct InterruptHandle {
    flag: Arc<AtomicBool>,
}

impl InterruptHandle {
    /// A handle of its own, not tied to a connection: given with a request to
    /// [`crate::Connection::request_group`], it stops that request only.
    pub fn new() -> InterruptHandle {
        InterruptHandle::default()
    }

    /// Interrupts the connection's running statement and its later calls.
    pub fn interrupt(&self) {
        self.flag.store(true, Ordering::SeqCst);
    }

    /// Whether [`InterruptHandle::interrupt`] was called (and not cleared since).
    pub fn is_interrupted(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

/// What an engine tells all its connections.
#[derive(Debug, Default)]
pub(crate) struct EngineSignals {
    /// Set once by `SqlEngine::shutdown`: running statements stop, new calls are refused.
    pub shutdown: AtomicBool,
    /// Bumped by `SqlEngine::interrupt_all`: a call that started at an older epoch stops.
    pub epoch: AtomicU64,
}

/// Why a call was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The deadline passed (in a group: the running request's).
    Timeout(Duration),
    /// The connection's handle or the engine's `interrupt_all`: the whole call stops.
    Interrupted,
    /// The running request's own handle (in a group): that request stops.
    RequestInterrupted,
    /// The engine shuts down: the whole call stops.
    ShuttingDown,
}

impl Stop {
    pub(crate) fn error(self) -> SqlError {
        match self {
            Stop::Timeout(limit) => SqlError::Timeout { limit },
            Stop::Interrupted | Stop::RequestInterrupted => SqlError::Interrupted,
            Stop::ShuttingDown => SqlError::ShuttingDown,
        }
    }

    /// Whether the stop ends the whole call rather than the request running in it.
    pub(crate) fn is_call_wide(self) -> bool {
        matches!(self, Stop::Interrupted | Stop::ShuttingDown)
    }
}

/// The state SQLite's progress and busy handlers read. Owned (boxed, so that its address is stable) by
/// its connection and only touched on the thread running that connection's call — by the connection's
/// code between SQLite calls and by the handlers inside them — so plain `Cell`s suffice; only the interrupt
/// flag and the engine's signals are shared with other threads.
pub(crate) struct Guard {
    /// Replaced by [`Guard::renew_interrupt_flag`] (only between calls).
    interrupted: RefCell<Arc<AtomicBool>>,
    engine: Option<Arc<EngineSignals>>,
    busy_timeout: Duration,
    /// Limits are checked (a call is running).
    armed: Cell<bool>,
    deadline: Cell<Option<Instant>>,
    /// The time limit the deadline stands for (reported on a timeout).
    limit: Cell<Duration>,
    epoch: Cell<u64>,
    /// Why a handler stopped the current call.
    stopped: Cell<Option<Stop>>,
    busy_since: Cell<Option<Instant>>,
    /// The handle of the request running in a group call (checked with the others).
    request: RefCell<Option<InterruptHandle>>,
    /// Set by the authorizer when a statement it is asked about touches the connection's own state
    /// (transaction control, savepoints, pragmas, the temp schema, attached databases).
    session_touched: Cell<bool>,
    /// The authorizer refuses what bop connections may not do (see `authorize`).
    guarded: Cell<bool>,
}

impl Guard {
    /// A guard whose connection-wide interrupt flag is `interrupted` (a fresh one when `None`).
    pub(crate) fn new(
        engine: Option<Arc<EngineSignals>>,
        busy_timeout_ms: u32,
        interrupted: Option<Arc<AtomicBool>>,
    ) -> Guard {
        Guard {
            interrupted: RefCell::new(interrupted.unwrap_or_default()),
            engine,
            busy_timeout: Duration::from_millis(busy_timeout_ms.into()),
            armed: Cell::new(false),
            deadline: Cell::new(None),
            limit: Cell::new(Duration::ZERO),
            epoch: Cell::new(0),
            stopped: Cell::new(None),
            busy_since: Cell::new(None),
            request: RefCell::new(None),
            session_touched: Cell::new(false),
            guarded: Cell::new(false),
        }
    }

    /// The connection-wide interrupt flag (kept when the connection is opened again).
    pub(crate) fn interrupt_flag(&self) -> Arc<AtomicBool> {
        self.interrupted.borrow().clone()
    }

    /// A new connection-wide interrupt flag, not set: handles taken before no longer reach this connection.
    pub(crate) fn renew_interrupt_flag(&self) {
        *self.interrupted.borrow_mut() = Arc::default();
    }

    /// Within an armed call: from now on, the deadline is `deadline` (standing for the time limit
    /// `limit`) and `handle` stops the call too, until [`Guard::clear_request`]. Forgets an earlier stop.
    pub(crate) fn set_request(
        &self,
        deadline: Option<Instant>,
        limit: Duration,
        handle: Option<InterruptHandle>,
    ) {
        self.deadline.set(deadline);
        self.limit.set(limit);
        *self.request.borrow_mut() = handle;
        self.stopped.set(None);
    }

    pub(crate) fn clear_request(&self) {
        self.set_request(None, Duration::ZERO, None);
    }

    /// Checks the limits now (as the handlers do), recording and returning why the call must stop.
    pub(crate) fn check_now(&self) -> Option<Stop> {
        self.check()
    }

    /// Clears the authorizer's mark and returns whether it was set.
    pub(crate) fn take_session_touched(&self) -> bool {
        self.session_touched.replace(false)
    }

    pub(crate) fn set_guarded(&self, guarded: bool) {
        self.guarded.set(guarded);
    }

    pub(crate) fn handle(&self) -> InterruptHandle {
        InterruptHandle { flag: self.interrupted.borrow().clone() }
    }

    pub(crate) fn clear_interrupt(&self) {
        self.interrupted.borrow().store(false, Ordering::SeqCst);
    }

    pub(crate) fn is_armed(&self) -> bool {
        self.armed.get()
    }

    /// Whether the engine this connection belongs to is shutting down.
    pub(crate) fn shutting_down(&self) -> bool {
        self.engine.as_ref().is_some_and(|engine| engine.shutdown.load(Ordering::SeqCst))
    }

    /// Starts a call under `limits`; an error (and nothing armed) if it may not even start.
    pub(crate) fn arm(&self, limits: &Limits) -> Result<(), SqlError> {
        let now = Instant::now();
        let (deadline, limit) = deadline_of(limits, now);
        self.deadline.set(deadline);
        self.limit.set(limit);
        self.epoch.set(self.engine.as_ref().map_or(0, |engine| engine.epoch.load(Ordering::SeqCst)));
        self.stopped.set(None);
        if let Some(stop) = self.check_at(now) {
            return Err(stop.error());
        }
        self.armed.set(true);
        Ok(())
    }

    pub(crate) fn disarm(&self) {
        self.armed.set(false);
    }

    /// Makes this (new) guard go on with the call `other` runs: armed alike, at the same engine epoch,
    /// with the same deadline and request.
    pub(crate) fn continue_call_of(&self, other: &Guard) {
        self.armed.set(other.armed.get());
        self.epoch.set(other.epoch.get());
        self.deadline.set(other.deadline.get());
        self.limit.set(other.limit.get());
        *self.request.borrow_mut() = other.request.borrow().clone();
    }

    /// Stops checking the limits until [`Guard::resume`] (a rollback after a failed call must not itself
    /// be stopped); returns whether they were checked.
    pub(crate) fn suspend(&self) -> bool {
        self.armed.replace(false)
    }

    pub(crate) fn resume(&self, armed: bool) {
        self.armed.set(armed);
    }

    /// Why a handler stopped the current call, if it did.
    pub(crate) fn stopped(&self) -> Option<Stop> {
        self.stopped.get()
    }

    fn check_at(&self, now: Instant) -> Option<Stop> {
        if let Some(engine) = &self.engine {
            if engine.shutdown.load(Ordering::SeqCst) {
                return Some(Stop::ShuttingDown);
            }
            if engine.epoch.load(Ordering::SeqCst) != self.epoch.get() {
                return Some(Stop::Interrupted);
            }
        }
        if self.interrupted.borrow().load(Ordering::SeqCst) {
            return Some(Stop::Interrupted);
        }
        if self.request.borrow().as_ref().is_some_and(InterruptHandle::is_interrupted) {
            return Some(Stop::RequestInterrupted);
        }
        match self.deadline.get() {
            Some(deadline) if now >= deadline => Some(Stop::Timeout(self.limit.get())),
            _ => None,
        }
    }

    /// The handlers' check: records and returns why the call must stop.
    fn check(&self) -> Option<Stop> {
        if !self.armed.get() {
            return None;
        }
        let stop = self.check_at(Instant::now());
        if stop.is_some() {
            self.stopped.set(stop);
        }
        stop
    }
}

/// The deadline `limits` give a call starting at `now` (the earlier of `time_max` from now and `deadline`),
/// and the time limit it stands for (what a timeout reports).
pub(crate) fn deadline_of(limits: &Limits, now: Instant) -> (Option<Instant>, Duration) {
    let (mut deadline, mut limit) = (None, Duration::ZERO);
    if let Some(at) = limits.time_max.and_then(|max| now.checked_add(max)) {
        deadline = Some(at);
        limit = at - now;
    }
    if let Some(at) = limits.deadline {
        if deadline.is_none_or(|earlier| at < earlier) {
            deadline = Some(at);
            limit = at.saturating_duration_since(now);
        }
    }
    (deadline, limit)
}

/// Owns a [`Guard`] at a fixed address that SQLite's handlers point at. Unlike a `Box`, it never asserts
/// unique access: the connection's code and the handlers (inside SQLite calls made by that code) only
/// ever take shared references to the guard.
pub(crate) struct GuardPtr(NonNull<Guard>);

impl GuardPtr {
    pub(crate) fn new(guard: Guard) -> GuardPtr {
        GuardPtr(NonNull::from(Box::leak(Box::new(guard))))
    }

    /// The handlers' argument.
    pub(crate) fn as_arg(&self) -> *mut c_void {
        self.0.as_ptr() as *mut c_void
    }
}

impl std::ops::Deref for GuardPtr {
    type Target = Guard;

    fn deref(&self) -> &Guard {
        // SAFETY: the pointer came from a leaked box, freed only in `drop`; only shared references exist.
        unsafe { self.0.as_ref() }
    }
}

impl Drop for GuardPtr {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `Box::leak` and is freed once; the connection removes the handlers
        // that point at it before its fields (this one among them) are dropped.
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

/// SQLite's progress handler: non-zero stops the running statement with `SQLITE_INTERRUPT`.
///
/// # Safety
/// `arg` is the `Guard` of the connection the handler is installed on, alive while it is installed.
pub(crate) unsafe extern "C" fn progress_handler(arg: *mut c_void) -> c_int {
    // SAFETY: see the function's contract; only shared references to the guard exist during SQLite calls.
    let guard = unsafe { &*(arg as *const Guard) };
    c_int::from(guard.check().is_some())
}

/// Waits between attempts to take a lock another connection holds, as SQLite's own busy timeout does.
const BUSY_DELAYS_MS: [u64; 8] = [1, 2, 5, 10, 15, 20, 25, 25];

/// SQLite's busy handler: waits for the lock up to the connection's busy timeout, giving up early (0) when
/// the call's limits say stop.
///
/// # Safety
/// As [`progress_handler`].
pub(crate) unsafe extern "C" fn busy_handler(arg: *mut c_void, count: c_int) -> c_int {
    // SAFETY: as in `progress_handler`.
    let guard = unsafe { &*(arg as *const Guard) };
    if guard.check().is_some() {
        return 0;
    }
    let now = Instant::now();
    if count <= 0 || guard.busy_since.get().is_none() {
        guard.busy_since.set(Some(now));
    }
    let waited = now.saturating_duration_since(guard.busy_since.get().unwrap_or(now));
    if waited >= guard.busy_timeout {
        return 0;
    }
    let step = BUSY_DELAYS_MS[(count.max(0) as usize).min(BUSY_DELAYS_MS.len() - 1)];
    let mut nap = Duration::from_millis(step).min(guard.busy_timeout - waited);
    if let (true, Some(deadline)) = (guard.armed.get(), guard.deadline.get()) {
        nap = nap.min(deadline.saturating_duration_since(now));
    }
    std::thread::sleep(nap);
    1
}

/// SQLite's authorizer, on every connection: marks statements that touch the connection's own state
/// (see [`crate::Connection::request_group`], which runs requests holding such statements on a session of
/// their own), and on bop connections (`guarded`) denies `ATTACH` of a file (VACUUM's temporary attach is
/// allowed) and any `PRAGMA journal_mode` or `locking_mode` that sets a value (reading them is fine).
/// Everything else is allowed.
///
/// # Safety
/// As [`progress_handler`]; the strings are SQLite's, valid for the call (or null).
pub(crate) unsafe extern "C" fn authorize(
    arg: *mut c_void,
    action: c_int,
    arg1: *const std::ffi::c_char,
    arg2: *const std::ffi::c_char,
    database: *const std::ffi::c_char,
    _trigger: *const std::ffi::c_char,
) -> c_int {
    use libsql_sys::ffi;
    // SAFETY: as in `progress_handler`.
    let guard = unsafe { &*(arg as *const Guard) };
    // SAFETY: SQLite passes NUL-terminated strings (or null) valid for this call.
    let text =
        |ptr: *const std::ffi::c_char| (!ptr.is_null()).then(|| unsafe { std::ffi::CStr::from_ptr(ptr) });
    let touches_session = match action {
        ffi::SQLITE_TRANSACTION
        | ffi::SQLITE_SAVEPOINT
        | ffi::SQLITE_PRAGMA
        | ffi::SQLITE_ATTACH
        | ffi::SQLITE_DETACH
        | ffi::SQLITE_CREATE_TEMP_INDEX
        | ffi::SQLITE_CREATE_TEMP_TABLE
        | ffi::SQLITE_CREATE_TEMP_TRIGGER
        | ffi::SQLITE_CREATE_TEMP_VIEW
        | ffi::SQLITE_DROP_TEMP_INDEX
        | ffi::SQLITE_DROP_TEMP_TABLE
        | ffi::SQLITE_DROP_TEMP_TRIGGER
        | ffi::SQLITE_DROP_TEMP_VIEW => true,
        // Writing the temp schema's tables (bop keeps one of its own there).
        ffi::SQLITE_INSERT | ffi::SQLITE_UPDATE | ffi::SQLITE_DELETE => {
            text(database).is_some_and(|db| db.to_bytes() == b"temp")
        }
        _ => false,
    };
    if touches_session {
        guard.session_touched.set(true);
    }
    if !guard.guarded.get() {
        return ffi::SQLITE_OK;
    }
    match action {
        // VACUUM attaches a temporary database (empty file name) internally; a named file is refused.
        ffi::SQLITE_ATTACH => {
            if text(arg1).is_none_or(|name| name.is_empty()) {
                ffi::SQLITE_OK
            } else {
                ffi::SQLITE_DENY
            }
        }
        ffi::SQLITE_PRAGMA if text(arg2).is_some() => {
            let name = text(arg1).map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
            match name.as_str() {
                // max_page_count bounds the database (a bop database by the page store's largest page
                // number, a load's scratch database by what one commit can carry).
                "journal_mode" | "locking_mode" | "max_page_count" => ffi::SQLITE_DENY,
                _ => ffi::SQLITE_OK,
            }
        }
        _ => ffi::SQLITE_OK,
    }
}
