//! Errors of the SQL layer.

use std::time::Duration;

use bop_storage::page_store::PageStoreError;

use crate::limits::AnswerUnit;

/// What went wrong with a SQL call.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// SQLite refused or failed the statement; `message` is SQLite's own message (with the virtual WAL's
    /// reason appended when the failure came from it, e.g. a failed commit).
    #[error("SQLite error {code}: {message}")]
    Sqlite {
        /// SQLite's extended result code.
        code: i32,
        /// SQLite's error message.
        message: String,
    },
    /// The page store failed outside a SQLite call (opening, creating, initialising a database).
    #[error("page store: {0}")]
    PageStore(#[from] PageStoreError),
    /// The caller asked for something bop does not do (e.g. a page size other than 4096, bad parameters).
    #[error("invalid request: {reason}")]
    Invalid {
        /// Why.
        reason: String,
    },
    /// A file the SQL layer keeps (the placeholder main database file) could not be written.
    #[error("{during} {path}: {source}")]
    Io {
        /// What was being done.
        during: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The call ran past its time limit ([`crate::Limits::time_max`] or [`crate::Limits::deadline`]) and
    /// was stopped; what it wrote is rolled back (a write inside an explicit transaction rolls back the
    /// whole transaction, as SQLite does for an interrupted write).
    #[error("statement time limit of {limit:?} exceeded")]
    Timeout {
        /// The limit that was passed (for a deadline: the time from the call's start to it).
        limit: Duration,
    },
    /// The call was stopped by its connection's [`crate::InterruptHandle`] or by
    /// [`crate::SqlEngine::interrupt_all`]; what it wrote is rolled back as for [`SqlError::Timeout`].
    #[error("statement interrupted (client gone or node shutting down)")]
    Interrupted,
    /// The engine is shutting down ([`crate::SqlEngine::shutdown`]): the call was stopped, or refused.
    #[error("node shutting down: SQL statements are no longer run")]
    ShuttingDown,
    /// The call's answer passed [`crate::Limits::rows_max`] or [`crate::Limits::bytes_max`]; it stopped
    /// reading rows there.
    #[error("answer too large: more than {limit} {unit}")]
    AnswerTooLarge {
        /// The bound that was passed.
        limit: u64,
        /// What it counts.
        unit: AnswerUnit,
    },
}

impl SqlError {
    /// Whether this error ends a whole call rather than one statement of it: the call ran out of time, was
    /// interrupted, or the engine is shutting down ([`crate::Connection::request_each`] does not go on to
    /// the next statement after one of these).
    pub fn stops_call(&self) -> bool {
        matches!(self, SqlError::Timeout { .. } | SqlError::Interrupted | SqlError::ShuttingDown)
    }

    /// The same error again, for another request that failed with it (an error that cannot be copied —
    /// a page-store or file error — becomes [`SqlError::Invalid`] with its message).
    pub fn duplicate(&self) -> SqlError {
        match self {
            SqlError::Sqlite { code, message } => SqlError::Sqlite { code: *code, message: message.clone() },
            SqlError::Invalid { reason } => SqlError::Invalid { reason: reason.clone() },
            SqlError::Timeout { limit } => SqlError::Timeout { limit: *limit },
            SqlError::Interrupted => SqlError::Interrupted,
            SqlError::ShuttingDown => SqlError::ShuttingDown,
            SqlError::AnswerTooLarge { limit, unit } => {
                SqlError::AnswerTooLarge { limit: *limit, unit: *unit }
            }
            SqlError::PageStore(_) | SqlError::Io { .. } => SqlError::Invalid { reason: self.to_string() },
        }
    }

    /// Whether SQLite refused the statement for lack of room (`SQLITE_FULL`: bop's transaction bound).
    pub(crate) fn is_full(&self) -> bool {
        matches!(self, SqlError::Sqlite { code, .. } if code & 0xff == libsql_sys::ffi::SQLITE_FULL)
    }

    /// A commit that failed after SQLite was told it succeeded (a pipelined commit refused or lost, or
    /// one built on such a commit): the error SQLite itself gives for a commit the WAL failed.
    pub fn commit_failed(reason: impl std::fmt::Display) -> Self {
        SqlError::Sqlite {
            code: libsql_sys::ffi::SQLITE_IOERR_WRITE,
            message: format!("disk I/O error (commit failed: {reason})"),
        }
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        SqlError::Invalid { reason: reason.into() }
    }
}
