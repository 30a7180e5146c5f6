//! How the HTTP layer bounds the SQL it runs: a statement time limit (the node's default, or rqlite's
//! `db_timeout` per request), and statements stopped when the client goes away.

use std::collections::HashMap;
use std::sync::Arc;

use bop_sql::{Connection, InterruptHandle, Limits, SqlEngine};

/// The limits of one request's SQL: the engine's defaults, with `db_timeout` (a duration such as `2s`)
/// as the request's time limit when given. An unparsable `db_timeout` is the error message.
pub(super) fn request_limits(engine: &SqlEngine, params: &HashMap<String, String>) -> Result<Limits, String> {
    let mut limits = engine.default_limits();
    if let Some(text) = params.get("db_timeout") {
        let limit = super::http::parse_duration(text)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("db_timeout {text:?} is not a duration (e.g. 500ms, 2s)"))?;
        limits.time_max = Some(limit);
    }
    Ok(limits)
}

/// Stops a request's SQL when the request is dropped (hyper drops a request's future when its client
/// disconnects): hold the guard in the async handler, [`Cancel::attach`] the connection in the blocking
/// task. Whichever comes second, the interrupt reaches the statement.
#[derive(Clone, Default)]
pub(super) struct Cancel(Arc<parking_lot::Mutex<(bool, Option<InterruptHandle>)>>);

impl Cancel {
    /// Ties `conn` to this request: interrupted at once if the request is already gone.
    pub(super) fn attach(&self, conn: &Connection) {
        let handle = conn.interrupt_handle();
        let mut state = self.0.lock();
        if state.0 {
            handle.interrupt();
        }
        state.1 = Some(handle);
    }

    /// A guard that interrupts the attached connection when dropped. Dropped after a finished request it
    /// does nothing harmful: the handle only flags a connection that is no longer used.
    pub(super) fn on_drop(&self) -> CancelOnDrop {
        CancelOnDrop(self.clone())
    }
}

/// See [`Cancel::on_drop`].
pub(super) struct CancelOnDrop(Cancel);

/// Interrupts a request's own handle when dropped (hyper drops a request's future when its client
/// disconnects): a write waiting for or running in its database's writer then fails alone. Dropped after
/// the request was answered it does nothing harmful.
pub(super) struct InterruptOnDrop(pub(super) InterruptHandle);

impl Drop for InterruptOnDrop {
    fn drop(&mut self) {
        self.0.interrupt();
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let mut state = (self.0).0.lock();
        state.0 = true;
        if let Some(handle) = &state.1 {
            handle.interrupt();
        }
    }
}

/// Write requests waiting for their database's writer or in the group it runs, over the whole node: each
/// holds a [`Queued`] until it is answered.
#[derive(Debug, Default)]
pub(super) struct WriterQueue {
    requests: std::sync::atomic::AtomicUsize,
    bytes: std::sync::atomic::AtomicUsize,
}

/// A place in the [`WriterQueue`], given back when dropped.
pub(super) struct Queued {
    queue: Arc<WriterQueue>,
    bytes: usize,
}

impl Queued {
    /// The request's body size, as counted.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.queue.requests.fetch_sub(1, Relaxed);
        self.queue.bytes.fetch_sub(self.bytes, Relaxed);
    }
}

impl WriterQueue {
    /// A place for a request of `bytes`, or why there is none (the queue holds `requests_max` requests
    /// or `bytes_max` bytes already).
    pub(super) fn enter(
        self: &Arc<Self>,
        bytes: usize,
        requests_max: usize,
        bytes_max: usize,
    ) -> Result<Queued, String> {
        use std::sync::atomic::Ordering::Relaxed;
        let requests = self.requests.fetch_add(1, Relaxed) + 1;
        let queued = self.bytes.fetch_add(bytes, Relaxed) + bytes;
        let place = Queued { queue: Arc::clone(self), bytes };
        if requests > requests_max || queued > bytes_max {
            drop(place);
            return Err(format!(
                "write queue full: {} requests / {} bytes waiting (limits {requests_max} / {bytes_max}); retry",
                requests - 1,
                queued - bytes
            ));
        }
        Ok(place)
    }

    /// Requests in the queue now (for metrics).
    pub(super) fn depth(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Whether a new database may be created: a name of 1 to 128 bytes without control characters or
/// slashes, and fewer than `databases_max` databases so far.
pub(super) fn may_create_database(
    manager: &bop_storage::page_store::Manager,
    name: &str,
    databases_max: usize,
) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 || name.chars().any(|c| c.is_control() || c == '/' || c == '\\') {
        return Err(format!("database name {name:?}: 1 to 128 bytes, no control characters or slashes"));
    }
    match manager.open_database(name) {
        Ok(_) => Ok(()),
        Err(_) => {
            let count = manager.list_databases().map(|l| l.len()).unwrap_or(0);
            if count >= databases_max {
                Err(format!("database limit reached: {count} databases exist (at most {databases_max})"))
            } else {
                Ok(())
            }
        }
    }
}

/// Whether the data directory's file system has room for a backup copy of `db_bytes` bytes plus
/// `reserve_bytes` left free for the log (a full disk stops the log taking writes). The error says how much.
pub(super) fn backup_space(dir: &std::path::Path, db_bytes: u64, reserve_bytes: u64) -> Result<(), String> {
    let stat = rustix::fs::statvfs(dir).map_err(|e| format!("free space of {}: {e}", dir.display()))?;
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    let needed = db_bytes.saturating_add(reserve_bytes);
    if free < needed {
        return Err(format!(
            "not enough free space for a backup: {free} bytes free, {needed} needed ({db_bytes} for the copy, \
             {reserve_bytes} kept free for the log)"
        ));
    }
    Ok(())
}
