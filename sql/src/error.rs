//! Errors of the SQL layer.

use bop_storage::page_store::PageStoreError;

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
}

impl SqlError {
    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        SqlError::Invalid { reason: reason.into() }
    }
}
