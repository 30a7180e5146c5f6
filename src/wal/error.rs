//! Errors of the WAL chunk store.

use std::path::PathBuf;
use std::sync::Arc;

use crate::format::DecodeError;
use crate::io::IoError;
use crate::panic::PanicContext;

/// Why the store was poisoned: the first permanent failure of its write path.
#[derive(Debug)]
pub enum PoisonCause {
    /// An I/O call failed (permanently, when it poisons; a failed fsync is always permanent).
    Io {
        /// What the store was doing.
        during: &'static str,
        /// The segment file involved.
        path: PathBuf,
        /// The error.
        error: IoError,
    },
    /// The writer thread panicked.
    Panic(PanicContext),
}

impl std::fmt::Display for PoisonCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoisonCause::Io { during, path, error } => {
                write!(f, "{during} failed on {}: {error}", path.display())
            }
            PoisonCause::Panic(ctx) => write!(f, "{ctx}"),
        }
    }
}

impl PoisonCause {
    /// True when the cause is a full device (ENOSPC, EDQUOT). Such a failure of a segment creation or
    /// preparation or of a batch write does not poison the store (see [`WalError::NoSpace`]); a failed
    /// fsync or fdatasync does, whatever its errno.
    pub fn is_no_space(&self) -> bool {
        matches!(self, PoisonCause::Io { error, .. } if error.is_no_space())
    }
}

/// Errors of the WAL chunk store.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// The queue of not-yet-durable records is full; the caller may retry later. Retryable.
    #[error("backpressure: {queued_records} records / {queued_bytes} bytes in flight (limits {records_max} / {bytes_max})")]
    Backpressure {
        /// Records in flight now.
        queued_records: usize,
        /// Payload bytes in flight now.
        queued_bytes: usize,
        /// The configured record bound.
        records_max: usize,
        /// The configured byte bound.
        bytes_max: usize,
    },
    /// A permanent write-path failure poisoned the store; nothing more is accepted until it is reopened,
    /// which runs recovery.
    #[error("store poisoned: {0}")]
    Poisoned(Arc<PoisonCause>),
    /// The WAL could not get disk space (ENOSPC or EDQUOT) for the operation — creating, reserving or
    /// preparing a segment, or writing a batch — and it was not made durable. The store is not poisoned.
    /// Returned to operations still waiting for space when the store closes, and by
    /// [`super::Durable::wait`] under [`super::WriterMode::Inline`] while their batch is held for space
    /// (the operation then stays queued and completes at a later retry). Retryable once space is freed.
    #[error("no space for the log (not poisoned, not durable): {0}")]
    NoSpace(Arc<PoisonCause>),
    /// The store is closed.
    #[error("store is closed")]
    Closed,
    /// A record larger than a segment can hold, or an append larger than the in-flight bound.
    #[error("append of {size_bytes} bytes exceeds the limit of {max_bytes} bytes")]
    TooLarge {
        /// Size asked for.
        size_bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// Entries must be appended with consecutive indexes.
    #[error("non-contiguous append: expected index {expected}, got {got}")]
    NonContiguous {
        /// The next index the log expects.
        expected: u64,
        /// The index given.
        got: u64,
    },
    /// A truncation point below what was already purged.
    #[error("cannot truncate after {index}: entries up to {purged} are purged")]
    TruncateBelowPurged {
        /// Index asked for.
        index: u64,
        /// Last purged index.
        purged: u64,
    },
    /// Damaged bytes in the log, anywhere but a torn tail (or a torn tail under absolute consistency).
    #[error("corrupt log segment {segment} at offset {offset}: {reason}")]
    Corruption {
        /// Segment sequence number.
        segment: u64,
        /// Byte offset within the segment.
        offset: u64,
        /// What is wrong.
        reason: CorruptionReason,
    },
    /// An I/O error outside the write path (open, recovery, read, purge).
    #[error("{during} failed on {}: {error}", path.display())]
    Io {
        /// What the store was doing.
        during: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The error.
        #[source]
        error: IoError,
    },
    /// A read of a payload range that does not lie within the entry's payload.
    #[error("payload range {offset}+{len_bytes} outside entry {index}'s {payload_len}-byte payload")]
    PayloadRange {
        /// The entry.
        index: u64,
        /// Offset asked for.
        offset: usize,
        /// Length asked for.
        len_bytes: usize,
        /// The payload's length.
        payload_len: usize,
    },
    /// A configuration the store cannot use.
    #[error("invalid WAL configuration: {reason}")]
    InvalidConfig {
        /// What is wrong and what is allowed.
        reason: String,
    },
}

/// What is wrong with damaged log bytes.
#[derive(Debug, thiserror::Error)]
pub enum CorruptionReason {
    /// A record or header that does not decode.
    #[error("{0}")]
    Decode(#[from] DecodeError),
    /// A torn tail found under [`super::RecoveryMode::AbsoluteConsistency`].
    #[error("torn tail ({0})")]
    TornTail(DecodeError),
    /// An entry whose index does not follow the previous one.
    #[error("entry index {got} does not follow {expected}")]
    IndexGap {
        /// The index expected.
        expected: u64,
        /// The index found.
        got: u64,
    },
    /// A record read back is not the one the index points at (stale or misdirected read).
    #[error("expected entry {index} (term {term}), found {found_index} (term {found_term})")]
    WrongRecord {
        /// Index expected.
        index: u64,
        /// Term expected.
        term: u64,
        /// Index found.
        found_index: u64,
        /// Term found.
        found_term: u64,
    },
    /// A segment file from another store, or with another sequence than its name.
    #[error("segment header mismatch: {0}")]
    ForeignSegment(String),
    /// A segment is missing from the middle of the sequence.
    #[error("segment {missing} is missing")]
    MissingSegment {
        /// Sequence number of the missing segment.
        missing: u64,
    },
}

impl WalError {
    /// True when the same call may succeed later: backpressure without intervention, no space once space
    /// is freed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, WalError::Backpressure { .. } | WalError::NoSpace(_))
    }

    /// True for [`WalError::NoSpace`], and for a poisoning whose cause was a full device.
    pub fn is_no_space(&self) -> bool {
        match self {
            WalError::NoSpace(_) => true,
            WalError::Poisoned(cause) => cause.is_no_space(),
            WalError::Io { error, .. } => error.is_no_space(),
            _ => false,
        }
    }

    pub(crate) fn io(during: &'static str, path: impl Into<PathBuf>, error: IoError) -> Self {
        WalError::Io { during, path: path.into(), error }
    }
}
