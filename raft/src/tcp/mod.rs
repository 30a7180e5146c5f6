//! Raft over TCP: length- and checksum-framed bincode messages, one request at a time per connection,
//! a connection reused per peer and re-established after any error, every call bounded by a timeout.
//!
//! Frame: `len: u32 LE | crc32c(body): u32 LE | body[len]`, `len <= FRAME_BYTES_MAX`; the body is the bincode
//! (serde, standard config) encoding of a request or reply. Connections are made through a [`Connector`], so
//! the simulation can run the same code over its own network.
//!
//! Snapshots stream over the same connection as files in chunks of at most [`SNAPSHOT_CHUNK_BYTES`]: a
//! `SnapshotBegin` (vote, metadata, file list), the chunks in order, and a `SnapshotEnd`. The receiver writes
//! each chunk straight into a staging file (memory bounded by one chunk), then hands the staged files to
//! the state machine's install, which verifies them before anything changes.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bop_storage::io::Io;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotMetaOf, VoteOf};
use openraft::{OptionalSend, RaftTypeConfig};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

mod client;
pub(crate) mod frame;
pub mod handshake;
mod server;
#[cfg(test)]
mod tests;
pub mod tls;

pub use client::{TcpConnection, TcpNetwork, APPEND_PIPELINE_DEPTH};
pub use frame::{read_frame, write_frame};
pub use handshake::{ClusterId, ClusterIdentity};
pub use server::{serve, serve_with};

/// Largest frame body accepted. It fits the largest entry a [`crate::LogStore`] with the default WAL
/// configuration accepts (64 MiB less a record header) in an append request alone, with room for the
/// request's own fields; a replication batch is at most max(4 MiB, one entry) (`limited_get_log_entries`),
/// so every legal batch travels. A frame's buffer grows as its bytes arrive, never from the head alone.
pub const FRAME_BYTES_MAX: usize = 65 << 20;
/// How much a frame's buffer grows at a time while its bytes arrive.
const FRAME_GROW_BYTES: usize = 64 << 10;
/// Connections a server serves at once; more wait in the accept queue.
pub const CONNECTIONS_MAX: usize = 256;

/// How long a server waits for frames before it closes a connection ([`serve_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerTimeouts {
    /// For the first frame of a new connection: one that sends nothing is closed soon, so idle sockets
    /// cannot hold the [`CONNECTIONS_MAX`] slots that real peers need.
    pub first_frame: Duration,
    /// Between later frames. Peers' pooled connections carry heartbeats many times a second; a client
    /// drops a pooled connection idle for half of this before using it again ([`POOLED_IDLE_MAX`]).
    pub idle: Duration,
    /// Between the frames of a snapshot being received, which holds the node's one snapshot inbox: a
    /// sender that stalls or vanishes loses it, and the next sender may begin.
    pub snapshot_frame: Duration,
    /// Longest a `SnapshotBegin` waits for another connection's snapshot to end or stall.
    pub snapshot_wait: Duration,
}

impl Default for ServerTimeouts {
    fn default() -> Self {
        ServerTimeouts {
            first_frame: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            snapshot_frame: Duration::from_secs(30),
            snapshot_wait: Duration::from_secs(60),
        }
    }
}

/// A client reconnects instead of reusing a pooled connection idle this long (half the server's default
/// idle deadline, so the server never closes a connection just as a request is sent on it).
pub const POOLED_IDLE_MAX: Duration = Duration::from_secs(30);

/// Largest snapshot chunk sent in one frame.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Most files one snapshot may consist of.
pub const SNAPSHOT_FILES_MAX: usize = 1 << 16;

/// One file of a snapshot as it travels: an opaque descriptor the snapshot type interprets, and its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireFile {
    /// Opaque to the transport.
    pub descriptor: Vec<u8>,
    /// Bytes in the file.
    pub size_bytes: u64,
}

/// Snapshot data that can travel as files: what the TCP transport needs of a state machine's `SnapshotData`.
pub trait WireSnapshot: Sized + OptionalSend + 'static {
    /// The files, in the order they are sent.
    fn files(&self) -> Vec<WireFile>;
    /// `len` bytes of file `file` at `offset` (offsets are multiples of [`SNAPSHOT_CHUNK_BYTES`]).
    fn read(&self, file: usize, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Builds the snapshot data from files received into `staged` (same order as `files`), through `io`.
    fn assemble(io: &dyn Io, staged: Vec<(WireFile, PathBuf)>) -> io::Result<Self>;
}

/// When this server last accepted entries or a heartbeat from a leader (an `AppendEntries` not refused for
/// a higher vote): what `level=none&freshness=` reads are judged by. Cheap to clone; clones share the time.
#[derive(Debug, Clone)]
pub struct LeaderContact {
    origin: std::time::Instant,
    /// Milliseconds since `origin` plus one at the last contact; 0 for never.
    last_ms_plus_one: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for LeaderContact {
    fn default() -> Self {
        LeaderContact { origin: std::time::Instant::now(), last_ms_plus_one: Arc::default() }
    }
}

impl LeaderContact {
    /// Records a contact now.
    pub fn touch(&self) {
        let ms = self.origin.elapsed().as_millis() as u64 + 1;
        self.last_ms_plus_one.fetch_max(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Time since the last contact; `None` if there was none.
    pub fn since(&self) -> Option<std::time::Duration> {
        match self.last_ms_plus_one.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            ms => Some(self.origin.elapsed().saturating_sub(std::time::Duration::from_millis(ms - 1))),
        }
    }
}

/// Where a server stages snapshot files it receives.
#[derive(Debug, Clone)]
pub struct SnapshotInbox {
    /// File access for the staged files.
    pub io: Arc<dyn Io>,
    /// A directory of their own (emptied before and after each snapshot).
    pub dir: PathBuf,
    /// Where the staging's fsyncs and the check of the received files run (off the async workers).
    pub blocking: crate::blocking::Blocking,
}

/// How connections to peers are made (TCP in a real node; the simulation substitutes its own).
pub trait Connector: Send + Sync + 'static {
    /// The stream type.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static;
    /// Connects to `addr`.
    fn connect(&self, addr: &str) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// Plain TCP.
#[derive(Debug, Default, Clone, Copy)]
pub struct TcpConnector;

impl Connector for TcpConnector {
    type Stream = TcpStream;

    async fn connect(&self, addr: &str) -> io::Result<TcpStream> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub(crate) enum Request<C: RaftTypeConfig> {
    Append(AppendEntriesRequest<C>),
    Vote(VoteRequest<C>),
    SnapshotBegin {
        vote: VoteOf<C>,
        meta: SnapshotMetaOf<C>,
        files: Vec<WireFile>,
    },
    SnapshotChunk {
        file: u32,
        offset: u64,
        bytes: Vec<u8>,
    },
    SnapshotEnd,
    /// Would the peer vote for this candidate (openraft's Pre-Vote; changes nothing on the peer)?
    PreVote(VoteRequest<C>),
    /// One request of a pipelined append session: answered in order by `Reply::StreamAppend`, without
    /// waiting for the replies to earlier ones.
    StreamAppend(AppendEntriesRequest<C>),
    /// The leader hands leadership to the receiver (or tells the others it does): accepted only from the
    /// leader the request's vote names. (Variants are appended: bincode numbers them in order.)
    TransferLeader(TransferLeaderRequest<C>),
}

#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub(crate) enum Reply<C: RaftTypeConfig> {
    Append(Result<AppendEntriesResponse<C>, String>),
    Vote(Result<VoteResponse<C>, String>),
    Ack(Result<(), String>),
    Snapshot(Result<SnapshotResponse<C>, String>),
    /// The outcome of one `Request::StreamAppend`; after an error outcome the server closes the connection.
    StreamAppend(Result<StreamAppendResult<C>, String>),
    TransferLeader(Result<TransferLeaderResponse<C>, String>),
}

pub(crate) fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(io::Error::other)
}

/// The bytes a frame's decoding may claim (bincode's limit): twice a frame. bincode counts what it
/// allocates for strings and byte buffers, and every number at its in-memory size (a `u64` sent as one
/// varint byte counts 8), so a real frame, whose bulk is commit records and snapshot chunks counted byte
/// for byte, stays well below it.
const DECODE_CLAIM_MAX: usize = 2 * FRAME_BYTES_MAX;

/// Decodes a frame's body. bincode allocates a string's claimed length before it reads the bytes, so the
/// decoder is limited to [`DECODE_CLAIM_MAX`]: without the limit, a claimed length past `isize::MAX`
/// panicked ("capacity overflow") and one of a terabyte aborted the process on a failed allocation (found
/// by fuzzing, `fuzz/run`).
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    let config = bincode::config::standard().with_limit::<DECODE_CLAIM_MAX>();
    let (value, used) = bincode::serde::decode_from_slice(bytes, config)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if used != bytes.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "trailing bytes in frame"));
    }
    Ok(value)
}

/// The Raft address in a node's `BasicNode::addr`, which is `RAFT_ADDR` or `RAFT_ADDR http=HTTP_ADDR`.
pub fn raft_addr_of(addr: &str) -> &str {
    addr.split_whitespace().next().unwrap_or("")
}

/// The HTTP address in a node's `BasicNode::addr`, if it carries one (`RAFT_ADDR http=HTTP_ADDR`).
pub fn http_addr_of(addr: &str) -> Option<&str> {
    addr.split_whitespace().find_map(|part| part.strip_prefix("http="))
}
