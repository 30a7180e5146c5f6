//! Prepared statements a connection keeps between calls, keyed by their SQL text.
//!
//! Preparing is most of a point read's cost on a connection that is kept (a pooled reader, see
//! [`crate::ReadPool`]): parsing and planning the SQL, and on a connection's first statement reading the
//! schema. A statement is kept only if its SQL text is exactly one statement, short, and does not touch the
//! session's own state (pragmas, transaction control, the temp schema: the authorizer says so while it is
//! prepared); it is reset and its bindings cleared before it is kept, so a kept statement holds no read
//! transaction. SQLite prepares a kept statement again by itself when the schema changed
//! (`sqlite3_prepare_v2`), running the authorizer again.

use libsql_sys::ffi;

use super::Stmt;

/// Most statements one connection keeps (the least recently used goes first).
pub(crate) const CACHED_STATEMENTS_MAX: usize = 16;

/// Longest SQL text whose statement is kept, in bytes.
pub(crate) const CACHED_SQL_BYTES_MAX: usize = 4096;

#[derive(Default)]
pub(super) struct StmtCache {
    /// Oldest first.
    entries: Vec<(Box<str>, Stmt)>,
    /// Statements found here since the connection opened (for tests and counters).
    pub(super) hits: u64,
}

impl StmtCache {
    /// Takes the kept statement of `sql` out of the cache (to be [`StmtCache::keep`]-ed again after use).
    pub(super) fn take(&mut self, sql: &str) -> Option<Stmt> {
        if sql.len() > CACHED_SQL_BYTES_MAX {
            return None;
        }
        let at = self.entries.iter().rposition(|(text, _)| &**text == sql)?;
        self.hits += 1;
        Some(self.entries.remove(at).1)
    }

    /// Keeps `stmt` as the statement of `sql` (reset, bindings cleared), dropping the least recently used
    /// one past [`CACHED_STATEMENTS_MAX`]; a statement whose SQL is too long is finalised instead.
    pub(super) fn keep(&mut self, sql: &str, stmt: Stmt) {
        // SAFETY: `stmt` is a prepared statement of the connection this cache belongs to. The reset's
        // result repeats the last step's error, which the caller already reported.
        unsafe {
            ffi::sqlite3_reset(stmt.0);
            ffi::sqlite3_clear_bindings(stmt.0);
        }
        if sql.len() > CACHED_SQL_BYTES_MAX {
            return;
        }
        if self.entries.len() >= CACHED_STATEMENTS_MAX {
            self.entries.remove(0);
        }
        self.entries.push((sql.into(), stmt));
    }

    /// Finalises every kept statement (before the connection closes).
    pub(super) fn clear(&mut self) {
        self.entries.clear();
    }

    /// Statements kept now.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Whether what is left of a statement's SQL text after it (`rest`) is only whitespace and semicolons,
/// i.e. the text was one statement (comments make it not count: such a text is simply not kept).
pub(super) fn only_one_statement(rest: &[u8]) -> bool {
    rest.iter().all(|b| b.is_ascii_whitespace() || *b == b';')
}
