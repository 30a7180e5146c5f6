//! The facts the manifest stores, as typed values.
//!
//! Every struct here is the current (version 1) layout of a stored value. A value on disk is
//! `u16 LE record version` followed by the bincode encoding of the struct (see `codec.rs` and
//! docs/design.md (Manifest)). When a layout changes, the old struct is kept under a `V1` name and
//! `codec::Record::decode_version` converts it.

use serde::{Deserialize, Serialize};

/// Identifier of a database, allocated by the manifest (1, 2, 3, ...; never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DatabaseId(pub u64);

impl std::fmt::Display for DatabaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Per-database configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseConfig {
    /// SQLite page size of the database.
    pub page_size_bytes: u32,
    /// Opaque settings owned by the layer above (bounded by `blob_bytes_max`).
    pub options: Vec<u8>,
}

/// A database as read back from the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseInfo {
    /// Its id.
    pub id: DatabaseId,
    /// Its exact, unique name.
    pub name: String,
    /// Its configuration.
    pub config: DatabaseConfig,
}

/// Stored value of the `databases` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DatabaseRecord {
    pub(crate) name: String,
    pub(crate) config: DatabaseConfig,
}

/// A Raft log id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LogId {
    /// The leader term that wrote the entry.
    pub term: u64,
    /// The log index.
    pub index: u64,
}

/// A Raft vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Vote {
    /// The term.
    pub term: u64,
    /// The node voted for.
    pub node_id: u64,
    /// Whether the vote is committed (granted by a quorum).
    pub committed: bool,
}

/// The Raft membership config, opaque to the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Membership {
    /// The log id of the entry that carried this membership, if any.
    pub log_id: Option<LogId>,
    /// The encoded membership, owned by the Raft layer (bounded by `blob_bytes_max`).
    pub config: Vec<u8>,
}

/// All Raft facts of the node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftState {
    /// The last saved vote.
    pub vote: Option<Vote>,
    /// The last saved committed log id.
    pub committed: Option<LogId>,
    /// The last purged log id.
    pub purged: Option<LogId>,
    /// The last saved membership.
    pub membership: Option<Membership>,
}

/// Opaque Raft facts kept for the generic Raft log store, in the embedder's own encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RaftBlob {
    /// The vote (`save_vote`).
    LogStoreVote,
    /// The committed log id (`save_committed`).
    LogStoreCommitted,
    /// The id of the cluster this node belongs to (its transport's handshake names it).
    ClusterId,
}

/// Stored value of an opaque Raft fact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RaftBlobRecord {
    pub(crate) bytes: Vec<u8>,
}

/// Stored value of the `raft` table for the committed log id (it may be cleared to `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CommittedRecord {
    pub(crate) log_id: Option<LogId>,
}

/// Life cycle of a log segment. States only move forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SegmentState {
    /// Being appended to.
    Active,
    /// Complete and immutable.
    Sealed,
    /// Its entries are purged; the file may be deleted.
    Purged,
}

/// A log segment of the WAL chunk store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Segment {
    /// First log index the segment holds.
    pub first_index: u64,
    /// Last log index the segment holds; `None` while it holds no entry.
    pub last_index: Option<u64>,
    /// Its state.
    pub state: SegmentState,
}

/// A page generation: a base image of one database, reflecting the log up to `log_id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Generation {
    /// The log id whose effects the generation includes.
    pub log_id: LogId,
    /// File name of the generation, relative to the database directory.
    pub file_name: String,
    /// Number of pages in the file.
    pub page_count: u64,
    /// crc32c of the file contents.
    pub checksum: u32,
}

/// Names one generation of one database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GenerationRef {
    /// The database.
    pub database_id: DatabaseId,
    /// The generation.
    pub generation: u64,
}

/// A Raft snapshot: opaque metadata and the generations it consists of.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Snapshot {
    /// Metadata owned by the Raft layer (bounded by `blob_bytes_max`).
    pub metadata: Vec<u8>,
    /// The generations of the snapshot; each must exist when the snapshot is stored.
    pub generations: Vec<GenerationRef>,
}

/// One fact changed by a committed batch, as recorded in the change feed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Change {
    /// A database was created.
    DatabaseCreated {
        /// Its id.
        id: DatabaseId,
    },
    /// A database's config was replaced.
    DatabaseConfigUpdated {
        /// Its id.
        id: DatabaseId,
    },
    /// A database was dropped.
    DatabaseDropped {
        /// Its id.
        id: DatabaseId,
    },
    /// The vote was saved.
    VoteSet,
    /// The committed log id was saved.
    CommittedSet,
    /// The purged log id was saved.
    PurgedSet,
    /// The membership was saved.
    MembershipSet,
    /// A segment was inserted or updated.
    SegmentPut {
        /// The segment sequence.
        sequence: u64,
    },
    /// A segment was removed.
    SegmentRemoved {
        /// The segment sequence.
        sequence: u64,
    },
    /// A generation was added.
    GenerationAdded(GenerationRef),
    /// A generation was removed.
    GenerationRemoved(GenerationRef),
    /// A snapshot was stored.
    SnapshotPut {
        /// The snapshot id.
        id: u64,
    },
    /// A snapshot was removed.
    SnapshotRemoved {
        /// The snapshot id.
        id: u64,
    },
    /// An opaque Raft fact (the generic log store's vote or committed id) was saved.
    RaftBlobSet {
        /// Which one.
        which: RaftBlob,
    },
}

/// Stored value of the `feed` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FeedRecord {
    pub(crate) changes: Vec<Change>,
}

/// One committed batch as seen through the change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEntry {
    /// The batch's sequence number (1, 2, 3, ... in commit order).
    pub seq: u64,
    /// What the batch changed, in the order of its operations.
    pub changes: Vec<Change>,
}

/// Stored value of the `feed_cursors` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CursorRecord {
    pub(crate) acked_seq: u64,
    pub(crate) stale: bool,
}

/// A change-feed cursor as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorInfo {
    /// Its name.
    pub name: String,
    /// Every entry up to and including this sequence is acknowledged.
    pub acked_seq: u64,
    /// Whether it fell too far behind and no longer holds truncation back.
    pub stale: bool,
}

/// Process state recorded in the `runtime` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum RunState {
    /// A process has the manifest open.
    Running,
    /// The last process closed it with `Manifest::close`.
    Clean,
}

/// Stored value of the runtime sentinel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Sentinel {
    pub(crate) state: RunState,
    /// Number of opens, this one included.
    pub(crate) open_count: u64,
}

/// How the previous process left the manifest, as found at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreviousShutdown {
    /// The manifest was created by this open.
    FirstOpen,
    /// The previous process called `Manifest::close`.
    Clean,
    /// The previous process ended without `Manifest::close` (crash, kill, or plain drop).
    Unclean,
}

/// Stored value of the format-version record in `meta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FormatRecord {
    pub(crate) format_version: u32,
}

/// Stored value of a counter in `meta` (next database id, feed head).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CounterRecord {
    pub(crate) value: u64,
}

/// Stored value of the `database_names` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NameRecord {
    pub(crate) id: DatabaseId,
}
