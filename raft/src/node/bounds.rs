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

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let mut state = (self.0).0.lock();
        state.0 = true;
        if let Some(handle) = &state.1 {
            handle.interrupt();
        }
    }
}
