//! Errors of the page store and the Manager.

use std::path::PathBuf;

use crate::format::DecodeError;
use crate::io::IoError;
use crate::manifest::ManifestError;
use crate::wal::WalError;

/// Errors of the page store, its checkpoints and the [`super::Manager`].
#[derive(Debug, thiserror::Error)]
pub enum PageStoreError {
    /// A page read from disk (log frame or generation slot) does not match its checksum.
    #[error("page {page_no} of database {db} at {location}: checksum mismatch (stored {expected:#010x}, computed {got:#010x})")]
    PageChecksum {
        /// Database id.
        db: u64,
        /// Page number.
        page_no: u32,
        /// Where the page was read from, e.g. `log entry 17 frame 3` or `generation 4 slot 9`.
        location: String,
        /// Checksum stored with the page.
        expected: u32,
        /// Checksum computed over the bytes read.
        got: u32,
    },
    /// A page size other than 4096 bytes.
    #[error("page size {got} is not supported: bop stores 4096-byte pages")]
    UnsupportedPageSize {
        /// The size asked for.
        got: usize,
    },
    /// A commit that breaks a rule (page number 0 or past the page count, too many frames, duplicates).
    #[error("invalid commit: {reason}")]
    InvalidCommit {
        /// What is wrong.
        reason: String,
    },
    /// A replicated commit whose transaction read the database before a commit it did not see: applying
    /// it would undo that commit. Refused the same way on every node; the transaction can be retried.
    #[error(
        "stale transaction: database {db} changed at log index {last_commit}, after the transaction read it at index {read_index}; retry it"
    )]
    StaleCommit {
        /// Database id.
        db: u64,
        /// The applied index the transaction read at.
        read_index: u64,
        /// The newer commit it did not see.
        last_commit: u64,
    },
    /// A replicated commit built on a commit (at log index `base`) that is not the database's newest: that
    /// commit was refused or never applied, or another came after it, so the record's pages rest on a view
    /// the database never had. Refused the same way on every node.
    #[error(
        "transaction built on a commit that did not become the database's newest: database {db} was built on at log index {base}, its newest commit is at {last_commit}"
    )]
    WrongBase {
        /// Database id.
        db: u64,
        /// The commit the transaction was built on.
        base: u64,
        /// The database's newest commit when this one was applied.
        last_commit: u64,
    },
    /// A log entry or generation file that does not decode.
    #[error("corrupt {what}: {reason}")]
    Corrupt {
        /// What was being decoded (`log entry 12`, `generation file …`).
        what: String,
        /// Why it does not decode.
        reason: String,
    },
    /// A chunk header that does not decode.
    #[error("generation {path}: {source}")]
    GenerationHeader {
        /// The file.
        path: PathBuf,
        /// The decode error.
        #[source]
        source: DecodeError,
    },
    /// No database of that name or id.
    #[error("no database named {name:?}")]
    NoSuchDatabase {
        /// The name asked for.
        name: String,
    },
    /// The Manager or the database was closed (or dropped).
    #[error("closed")]
    Closed,
    /// A previous failure poisoned the Manager; reopen it to recover.
    #[error("manager poisoned: {reason}")]
    Poisoned {
        /// The first failure.
        reason: String,
    },
    /// An error of the WAL.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// An error of the manifest.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// An I/O error on a generation file or the data directory.
    #[error("{during} {}: {error}", path.display())]
    Io {
        /// What was being done.
        during: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        error: IoError,
    },
}

impl PageStoreError {
    pub(crate) fn io(during: &'static str, path: impl Into<PathBuf>, error: IoError) -> Self {
        PageStoreError::Io { during, path: path.into(), error }
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        PageStoreError::InvalidCommit { reason: reason.into() }
    }

    /// True when the file system had no space (ENOSPC, EDQUOT) for a generation file, or the manifest
    /// stopped waiting for space for a commit ([`ManifestError::NoSpace`]): nothing was published.
    pub fn is_no_space(&self) -> bool {
        match self {
            PageStoreError::Io { error, .. } => error.is_no_space(),
            PageStoreError::Manifest(ManifestError::NoSpace { .. }) => true,
            _ => false,
        }
    }
}
