//! Typed errors of the manifest layer.
//!
//! Errors are split by what the caller can do about them:
//! - rejections of one batch or cursor operation ([`ManifestError::is_rejection`]): the manifest is
//!   fine, the request was wrong (duplicate name, unknown id, ...); other batches in the same group
//!   commit normally;
//! - back-pressure ([`ManifestError::Backpressure`]): retry later;
//! - lack of space: a commit that meets a full file system is held and retried until space returns,
//!   so callers see [`ManifestError::NoSpace`] only once the manifest stopped waiting (shutdown);
//! - environment errors (I/O, LMDB, map full past the maximum, poisoned handle): not retryable on
//!   this handle.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use super::records::{DatabaseId, SegmentState};

/// The LMDB table (named database) a record lives in; used to name the place of a decode error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// `meta`: format version and counters.
    Meta,
    /// `runtime`: the shutdown sentinel.
    Runtime,
    /// `databases`: database id -> name and config.
    Databases,
    /// `database_names`: database name -> database id.
    DatabaseNames,
    /// `raft`: vote, committed, purged, membership.
    Raft,
    /// `segments`: log segment sequence -> index range and state.
    Segments,
    /// `generations`: (database id, generation) -> page generation.
    Generations,
    /// `snapshots`: snapshot id -> metadata and generations.
    Snapshots,
    /// `feed`: change-feed sequence -> description of one committed batch.
    Feed,
    /// `feed_cursors`: cursor name -> acknowledged sequence.
    FeedCursors,
}

impl Table {
    /// Every table, in the order they are created.
    pub const ALL: [Table; 10] = [
        Table::Meta,
        Table::Runtime,
        Table::Databases,
        Table::DatabaseNames,
        Table::Raft,
        Table::Segments,
        Table::Generations,
        Table::Snapshots,
        Table::Feed,
        Table::FeedCursors,
    ];

    /// The LMDB name of the table.
    pub fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Runtime => "runtime",
            Table::Databases => "databases",
            Table::DatabaseNames => "database_names",
            Table::Raft => "raft",
            Table::Segments => "segments",
            Table::Generations => "generations",
            Table::Snapshots => "snapshots",
            Table::Feed => "feed",
            Table::FeedCursors => "feed_cursors",
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What kind of name failed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// A database name.
    Database,
    /// A change-feed cursor name.
    Cursor,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameKind::Database => f.write_str("database"),
            NameKind::Cursor => f.write_str("cursor"),
        }
    }
}

/// Errors of the manifest.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The configuration is inconsistent.
    #[error("invalid manifest config: {field}: {reason}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A file system operation failed.
    #[error("I/O error during {op} on {path}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The path it was applied to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The manifest path exists but is not a directory.
    #[error("manifest path {path} exists and is not a directory")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// The manifest directory holds a `data.mdb` that is not an LMDB environment. It was not modified.
    #[error("{path} is not an LMDB environment ({reason}); the file was left unmodified")]
    NotAnLmdbEnvironment {
        /// The offending file.
        path: PathBuf,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The directory holds an LMDB environment that is not a bop manifest. It was not modified.
    #[error("{path} is an LMDB environment but not a bop manifest; it was left unmodified")]
    NotAManifest {
        /// The environment directory.
        path: PathBuf,
    },
    /// The manifest was written by a newer format version. It was not modified.
    #[error("manifest {path} has format version {found}, this build reads up to {supported_max}; it was left unmodified")]
    FormatTooNew {
        /// The environment directory.
        path: PathBuf,
        /// The version found in the `meta` table.
        found: u32,
        /// The newest version this build understands.
        supported_max: u32,
    },
    /// The environment is already open in this process.
    #[error("manifest {path} is already open in this process")]
    AlreadyOpen {
        /// The environment directory.
        path: PathBuf,
    },
    /// LMDB reported an error.
    #[error("LMDB error during {op}: {source}")]
    Lmdb {
        /// The operation.
        op: &'static str,
        /// The LMDB error.
        #[source]
        source: Arc<heed::Error>,
    },
    /// The LMDB map is full and already at its configured maximum size.
    #[error("manifest map full: {map_size_bytes} bytes in use of a maximum of {map_size_max_bytes} bytes")]
    MapFull {
        /// The current map size.
        map_size_bytes: u64,
        /// The configured maximum.
        map_size_max_bytes: u64,
    },
    /// A stored value could not be decoded.
    #[error("cannot decode value in table {table} at key {key}: {reason}")]
    Decode {
        /// The table.
        table: Table,
        /// The key, hex encoded.
        key: String,
        /// What went wrong.
        reason: String,
    },
    /// A stored key has the wrong width or shape.
    #[error("malformed key in table {table}: {key} ({reason})")]
    MalformedKey {
        /// The table.
        table: Table,
        /// The key, hex encoded.
        key: String,
        /// What went wrong.
        reason: &'static str,
    },
    /// A stored value has a record version newer than this build understands.
    #[error("value in table {table} at key {key} has record version {version}, this build reads up to {supported_max}")]
    UnsupportedRecordVersion {
        /// The table.
        table: Table,
        /// The key, hex encoded.
        key: String,
        /// The version found.
        version: u16,
        /// The newest version understood.
        supported_max: u16,
    },
    /// A value could not be encoded.
    #[error("cannot encode value for table {table}: {reason}")]
    Encode {
        /// The table.
        table: Table,
        /// What went wrong.
        reason: String,
    },
    /// A name failed validation.
    #[error("invalid {kind} name {name:?}: {reason}; allowed: 1 to 128 bytes of [A-Za-z0-9_.-], not starting with '.'")]
    InvalidName {
        /// Database or cursor.
        kind: NameKind,
        /// The rejected name (lossy, cut to 160 bytes).
        name: String,
        /// The rule it broke.
        reason: &'static str,
    },
    /// A generation file name failed validation.
    #[error("invalid generation file name {name:?}: {reason}; allowed: 1 to 255 bytes, no '/' and no NUL")]
    InvalidFileName {
        /// The rejected name (lossy, cut to 300 bytes).
        name: String,
        /// The rule it broke.
        reason: &'static str,
    },
    /// An opaque byte blob is larger than `blob_bytes_max`.
    #[error("{what} is {size_bytes} bytes, more than the maximum of {size_bytes_max}")]
    BlobTooLarge {
        /// Which blob.
        what: &'static str,
        /// Its size.
        size_bytes: usize,
        /// The configured maximum.
        size_bytes_max: usize,
    },
    /// The batch holds no operation.
    #[error("empty batch")]
    EmptyBatch,
    /// The batch holds more operations than `batch_ops_max`, or a submission more batches than
    /// the commit queue can hold.
    #[error("batch has {ops} operations, more than the maximum of {ops_max}")]
    BatchTooLarge {
        /// The number submitted.
        ops: usize,
        /// The maximum.
        ops_max: usize,
    },
    /// The file system had no space for this commit (ENOSPC or EDQUOT) and the manifest no longer waits
    /// for space ([`super::Manifest::stop_waiting_for_space`], for shutdown). Nothing of it was committed;
    /// the manifest is not poisoned.
    #[error("no space for the manifest commit, and the manifest stopped waiting for space (shutting down); the commit was not made: {cause}")]
    NoSpace {
        /// The last error LMDB reported.
        cause: String,
    },
    /// The commit queue is full (`try_commit` only).
    #[error("commit queue full ({queue_batches_max} batches); retry later")]
    Backpressure {
        /// The queue bound.
        queue_batches_max: usize,
    },
    /// A previous LMDB commit failed (e.g. fsync error) or a commit leader panicked; this handle
    /// refuses all further writes. Reopen to recover.
    #[error("manifest is poisoned and refuses writes: {reason}")]
    Poisoned {
        /// What poisoned it.
        reason: String,
    },
    /// A database with this exact name exists.
    #[error("database {name:?} already exists")]
    DatabaseExists {
        /// The name.
        name: String,
    },
    /// A chosen database id is 0 or already in use.
    #[error("database id {id} is 0 or already in use")]
    DatabaseIdTaken {
        /// The id.
        id: DatabaseId,
    },
    /// No database with this id.
    #[error("database {id} not found")]
    DatabaseNotFound {
        /// The id.
        id: DatabaseId,
    },
    /// The database still has page generations and cannot be dropped.
    #[error("database {id} still has page generations; remove them first")]
    DatabaseHasGenerations {
        /// The id.
        id: DatabaseId,
    },
    /// `databases_max` reached.
    #[error("too many databases (maximum {databases_max})")]
    TooManyDatabases {
        /// The bound.
        databases_max: u64,
    },
    /// The generation exists already.
    #[error("generation {generation} of database {database_id} already exists")]
    GenerationExists {
        /// The database.
        database_id: DatabaseId,
        /// The generation.
        generation: u64,
    },
    /// A new generation must be newer than every existing one of the same database.
    #[error("generation {generation} of database {database_id} is not newer than the newest {newest}")]
    GenerationNotNewer {
        /// The database.
        database_id: DatabaseId,
        /// The generation submitted.
        generation: u64,
        /// The newest existing generation.
        newest: u64,
    },
    /// No such generation.
    #[error("generation {generation} of database {database_id} not found")]
    GenerationNotFound {
        /// The database.
        database_id: DatabaseId,
        /// The generation.
        generation: u64,
    },
    /// The generation is part of a snapshot and cannot be removed.
    #[error("generation {generation} of database {database_id} is used by snapshot {snapshot_id}")]
    GenerationInUse {
        /// The database.
        database_id: DatabaseId,
        /// The generation.
        generation: u64,
        /// A snapshot that refers to it.
        snapshot_id: u64,
    },
    /// The snapshot exists already.
    #[error("snapshot {id} already exists")]
    SnapshotExists {
        /// The id.
        id: u64,
    },
    /// `snapshots_max` reached.
    #[error("too many snapshots (maximum {snapshots_max})")]
    TooManySnapshots {
        /// The bound.
        snapshots_max: u64,
    },
    /// No such snapshot.
    #[error("snapshot {id} not found")]
    SnapshotNotFound {
        /// The id.
        id: u64,
    },
    /// No such segment.
    #[error("log segment {sequence} not found")]
    SegmentNotFound {
        /// The segment sequence.
        sequence: u64,
    },
    /// Segment states only move forward: active -> sealed -> purged.
    #[error("log segment {sequence} cannot go from {from:?} to {to:?}")]
    SegmentStateRegression {
        /// The segment sequence.
        sequence: u64,
        /// The stored state.
        from: SegmentState,
        /// The requested state.
        to: SegmentState,
    },
    /// A cursor with this name exists.
    #[error("change-feed cursor {name:?} already exists")]
    CursorExists {
        /// The name.
        name: String,
    },
    /// No cursor with this name.
    #[error("change-feed cursor {name:?} not found")]
    CursorNotFound {
        /// The name.
        name: String,
    },
    /// `cursors_max` reached.
    #[error("too many change-feed cursors (maximum {cursors_max})")]
    TooManyCursors {
        /// The bound.
        cursors_max: usize,
    },
    /// The cursor lagged more than `feed_cursor_lag_entries_max` behind the head and was marked
    /// stale; the entries after `acked` may be gone. Remove and re-register it.
    #[error(
        "change-feed cursor {name:?} is stale: acknowledged {acked}, oldest available {oldest_available}"
    )]
    CursorStale {
        /// The name.
        name: String,
        /// Its acknowledged sequence.
        acked: u64,
        /// The oldest sequence still in the feed.
        oldest_available: u64,
    },
    /// A cursor acknowledged a sequence the feed has not reached.
    #[error("change-feed cursor {name:?} acknowledged {seq} beyond the head {head}")]
    CursorAckBeyondHead {
        /// The name.
        name: String,
        /// The acknowledged sequence.
        seq: u64,
        /// The newest sequence.
        head: u64,
    },
    /// A cursor was asked to start at a sequence not in `[oldest_available, head + 1]`.
    #[error("change-feed cursor {name:?} cannot start at {seq}: available {oldest_available}..={head} (or head + 1)")]
    CursorStartOutOfRange {
        /// The name.
        name: String,
        /// The requested start.
        seq: u64,
        /// The oldest sequence still in the feed.
        oldest_available: u64,
        /// The newest sequence.
        head: u64,
    },
}

impl ManifestError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        ManifestError::Io { op, path: path.into(), source: Arc::new(source) }
    }

    /// Returns a closure that wraps a heed error with the operation name.
    pub(crate) fn lmdb(op: &'static str) -> impl FnOnce(heed::Error) -> ManifestError {
        move |source| ManifestError::Lmdb { op, source: Arc::new(source) }
    }

    /// True when LMDB reported `MDB_MAP_FULL` (the map can be grown and the transaction retried).
    pub(crate) fn is_lmdb_map_full(&self) -> bool {
        matches!(
            self,
            ManifestError::Lmdb { source, .. }
                if matches!(**source, heed::Error::Mdb(heed::MdbError::MapFull))
        )
    }

    /// True when the file system had no space (ENOSPC, EDQUOT) for an LMDB write. heed reports an errno
    /// from LMDB as `heed::Error::Io` (its `MdbError::Other` is converted); both forms are recognised.
    pub(crate) fn is_no_space(&self) -> bool {
        let ManifestError::Lmdb { source, .. } = self else { return false };
        let errno = match &**source {
            heed::Error::Io(error) => error.raw_os_error(),
            heed::Error::Mdb(heed::MdbError::Other(code)) => Some(*code),
            _ => None,
        };
        errno.is_some_and(|errno| {
            errno == rustix::io::Errno::NOSPC.raw_os_error()
                || errno == rustix::io::Errno::DQUOT.raw_os_error()
        })
    }

    /// True when LMDB reported `MDB_PANIC`: an earlier failure (e.g. of a meta page write) left the
    /// environment unusable until it is reopened.
    pub(crate) fn is_lmdb_panic(&self) -> bool {
        matches!(
            self,
            ManifestError::Lmdb { source, .. } if matches!(**source, heed::Error::Mdb(heed::MdbError::Panic))
        )
    }

    /// True for errors that reject one request (batch or cursor operation) without saying
    /// anything about the health of the manifest: invalid input, a conflict with the stored
    /// state, or an undecodable record met while validating that request.
    pub fn is_rejection(&self) -> bool {
        !matches!(
            self,
            ManifestError::InvalidConfig { .. }
                | ManifestError::Io { .. }
                | ManifestError::NotADirectory { .. }
                | ManifestError::NotAnLmdbEnvironment { .. }
                | ManifestError::NotAManifest { .. }
                | ManifestError::FormatTooNew { .. }
                | ManifestError::AlreadyOpen { .. }
                | ManifestError::Lmdb { .. }
                | ManifestError::MapFull { .. }
                | ManifestError::Backpressure { .. }
                | ManifestError::NoSpace { .. }
                | ManifestError::Poisoned { .. }
        )
    }
}

/// Result alias of the manifest layer.
pub type Result<T, E = ManifestError> = std::result::Result<T, E>;

/// Hex encoding of a key for error messages, cut to 64 bytes.
pub(crate) fn key_hex(key: &[u8]) -> String {
    use fmt::Write as _;
    let shown = key.get(..64).unwrap_or(key);
    let mut out = String::with_capacity(shown.len() * 2 + 3);
    for byte in shown {
        let _ = write!(out, "{byte:02x}");
    }
    if shown.len() < key.len() {
        out.push_str("...");
    }
    out
}

/// A name cut to `bytes_max` bytes (lossy UTF-8) for error messages.
pub(crate) fn shown_name(name: &str, bytes_max: usize) -> String {
    if name.len() <= bytes_max {
        return name.to_owned();
    }
    let mut end = bytes_max;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &name[..end])
}
