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
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bop_storage::io::{Io, IoFile, OpenMode};
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::impls::BasicNode;
use openraft::network::v2::RaftNetworkV2;
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendError, StreamAppendResult,
    VoteRequest, VoteResponse,
};
use openraft::storage::RaftStateMachine;
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::{OptionalSend, Raft, RaftNetworkFactory, RaftTypeConfig};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

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
enum Request<C: RaftTypeConfig> {
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
}

#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
enum Reply<C: RaftTypeConfig> {
    Append(Result<AppendEntriesResponse<C>, String>),
    Vote(Result<VoteResponse<C>, String>),
    Ack(Result<(), String>),
    Snapshot(Result<SnapshotResponse<C>, String>),
    /// The outcome of one `Request::StreamAppend`; after an error outcome the server closes the connection.
    StreamAppend(Result<StreamAppendResult<C>, String>),
}

fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(io::Error::other)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if used != bytes.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "trailing bytes in frame"));
    }
    Ok(value)
}

/// Writes one frame.
pub async fn write_frame(stream: &mut (impl AsyncWrite + Unpin), body: &[u8]) -> io::Result<()> {
    if body.len() > FRAME_BYTES_MAX {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("frame of {} bytes", body.len())));
    }
    let mut head = [0u8; 8];
    head[..4].copy_from_slice(&(body.len() as u32).to_le_bytes());
    head[4..].copy_from_slice(&crc32c::crc32c(body).to_le_bytes());
    stream.write_all(&head).await?;
    stream.write_all(body).await?;
    stream.flush().await
}

/// Reads one frame, refusing oversized or corrupt ones with `InvalidData`.
pub async fn read_frame(stream: &mut (impl AsyncRead + Unpin)) -> io::Result<Vec<u8>> {
    let mut head = [0u8; 8];
    stream.read_exact(&mut head).await?;
    let (len, expected) = frame_head(&head)?;
    // Grown as the bytes arrive: a head alone makes nobody allocate its claimed length.
    let mut body = Vec::with_capacity(len.min(FRAME_GROW_BYTES));
    (&mut *stream).take(len as u64).read_to_end(&mut body).await?;
    if body.len() < len {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
    }
    check_body(&body, expected)?;
    Ok(body)
}

/// A frame head's body length and checksum; an oversized length is `InvalidData`.
fn frame_head(head: &[u8; 8]) -> io::Result<(usize, u32)> {
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let expected = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len > FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds {FRAME_BYTES_MAX}"),
        ));
    }
    Ok((len, expected))
}

/// A body whose checksum is not the head's is `InvalidData`.
fn check_body(body: &[u8], expected: u32) -> io::Result<()> {
    let got = crc32c::crc32c(body);
    if got != expected {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame checksum {got:#010x} != {expected:#010x}"),
        ));
    }
    Ok(())
}

/// The Raft address in a node's `BasicNode::addr`, which is `RAFT_ADDR` or `RAFT_ADDR http=HTTP_ADDR`.
pub fn raft_addr_of(addr: &str) -> &str {
    addr.split_whitespace().next().unwrap_or("")
}

/// The HTTP address in a node's `BasicNode::addr`, if it carries one (`RAFT_ADDR http=HTTP_ADDR`).
pub fn http_addr_of(addr: &str) -> Option<&str> {
    addr.split_whitespace().find_map(|part| part.strip_prefix("http="))
}

/// The network factory of one node: connections to peers at the Raft address of their `BasicNode::addr`.
pub struct TcpNetwork<C, SD, K: Connector> {
    connector: Arc<K>,
    timeout: Duration,
    append_timeout: Duration,
    _types: PhantomData<fn() -> (C, SD)>,
}

impl<C, SD, K: Connector> TcpNetwork<C, SD, K> {
    /// Connections made by `connector`, each call bounded by `timeout`.
    pub fn new(connector: K, timeout: Duration) -> Self {
        TcpNetwork { connector: Arc::new(connector), timeout, append_timeout: timeout, _types: PhantomData }
    }

    /// Bounds append and vote calls by `append_timeout` instead (at most `timeout`). A node sets it to its
    /// election timeout: a connection that stalls (a partition that dropped segments) is then abandoned
    /// before the follower would give up on the leader, instead of holding replication to that peer up for
    /// the whole network timeout. (openraft's own deadline for appends, three quarters of a heartbeat
    /// interval, is too short for a reconnect plus a large batch: calls would time out over and over.)
    pub fn with_append_timeout(mut self, append_timeout: Duration) -> Self {
        self.append_timeout = append_timeout.min(self.timeout);
        self
    }
}

/// A connection to one peer, re-established after any error.
pub struct TcpConnection<C, SD, K: Connector> {
    connector: Arc<K>,
    addr: String,
    timeout: Duration,
    append_timeout: Duration,
    /// The pooled connection and when it was last used.
    stream: Option<(K::Stream, std::time::Instant)>,
    _types: PhantomData<fn() -> (C, SD)>,
}

impl<C, SD, K: Connector> TcpConnection<C, SD, K> {
    /// The pooled connection, unless it sat idle so long that the server may be closing it.
    fn pooled(&mut self) -> Option<K::Stream> {
        self.stream.take().filter(|(_, used)| used.elapsed() < POOLED_IDLE_MAX).map(|(stream, _)| stream)
    }

    /// Keeps `stream` for the next call.
    fn pool(&mut self, stream: K::Stream) {
        self.stream = Some((stream, std::time::Instant::now()));
    }
}

impl<C, SD, K> RaftNetworkFactory<C> for TcpNetwork<C, SD, K>
where
    C: RaftTypeConfig<Node = BasicNode>,
    SD: WireSnapshot,
    K: Connector,
{
    type Network = TcpConnection<C, SD, K>;

    async fn new_client(&mut self, _target: C::NodeId, node: &BasicNode) -> Self::Network {
        TcpConnection {
            connector: Arc::clone(&self.connector),
            addr: raft_addr_of(&node.addr).to_owned(),
            timeout: self.timeout,
            append_timeout: self.append_timeout,
            stream: None,
            _types: PhantomData,
        }
    }
}

impl<C, SD, K> TcpConnection<C, SD, K>
where
    C: RaftTypeConfig<Node = BasicNode>,
    K: Connector,
{
    async fn expect_ack(&mut self, request: &Request<C>) -> Result<(), Unreachable<C>> {
        match self.call(request, self.timeout).await? {
            Reply::Ack(Ok(())) => Ok(()),
            other => Err(self.failed(other)),
        }
    }

    /// The peer answered with an error (it may be shutting down or restarting) or the wrong reply: drop the
    /// connection so that the next call connects afresh.
    fn failed(&mut self, reply: Reply<C>) -> Unreachable<C> {
        self.stream = None;
        match reply {
            Reply::Append(Err(e))
            | Reply::Vote(Err(e))
            | Reply::Ack(Err(e))
            | Reply::Snapshot(Err(e))
            | Reply::StreamAppend(Err(e)) => Unreachable::from_string(format!("{}: {e}", self.addr)),
            _ => Unreachable::from_string(format!("{}: mismatched reply", self.addr)),
        }
    }

    /// One request and its reply, bounded by `timeout`; after a timeout the connection is abandoned and the
    /// next call reconnects.
    /// A vote or pre-vote request, answered with a vote response.
    async fn ask_vote(&mut self, request: &Request<C>) -> Result<VoteResponse<C>, RPCError<C>> {
        match self.call(request, self.append_timeout).await? {
            Reply::Vote(Ok(response)) => Ok(response),
            other => Err(RPCError::Unreachable(self.failed(other))),
        }
    }

    async fn call(&mut self, request: &Request<C>, timeout: Duration) -> Result<Reply<C>, Unreachable<C>> {
        let body = encode(request).map_err(|e| Unreachable::new(&e))?;
        // The stream is out of `self` while the call runs and goes back only after a whole reply was read:
        // a call cancelled half-way (openraft bounds heartbeats by its own timeout) drops the connection
        // instead of leaving a reply in it that the next call would take for its own.
        let taken = self.pooled();
        let outcome = tokio::time::timeout(timeout, async {
            let mut stream = match taken {
                Some(stream) => stream,
                None => self.connector.connect(&self.addr).await?,
            };
            write_frame(&mut stream, &body).await?;
            let reply = read_frame(&mut stream).await?;
            Ok::<_, io::Error>((stream, decode::<Reply<C>>(&reply)?))
        })
        .await;
        match outcome {
            Ok(Ok((stream, reply))) => {
                self.pool(stream);
                Ok(reply)
            }
            Ok(Err(e)) => Err(Unreachable::new(&e)),
            Err(_) => {
                Err(Unreachable::from_string(format!("{} did not answer within {timeout:?}", self.addr)))
            }
        }
    }
}

/// Append requests one pipelined session keeps in flight on its connection before it waits for a reply.
pub const APPEND_PIPELINE_DEPTH: usize = 16;

/// A pipelined append session on a peer's connection: requests are written as openraft produces them
/// (at most [`APPEND_PIPELINE_DEPTH`] unanswered), replies are read in order. The connection goes back to
/// the [`TcpConnection`] only when the session ends cleanly (input exhausted, every reply read, no error);
/// a session that fails or is dropped half-way drops it, so no stale reply can be read by a later call.
struct AppendSession<'s, C, SD, K: Connector, S> {
    conn: &'s mut TcpConnection<C, SD, K>,
    input: S,
    input_done: bool,
    /// The connection, split; made at the first request if the session started without one.
    io: Option<SplitStream<K::Stream>>,
    frames: FrameReader,
    /// When each unanswered request was written, oldest first.
    in_flight: std::collections::VecDeque<tokio::time::Instant>,
    ended: bool,
}

type SplitStream<S> = (tokio::io::ReadHalf<S>, tokio::io::WriteHalf<S>);

enum SessionEvent<C: RaftTypeConfig> {
    Input(Option<AppendEntriesRequest<C>>),
    Reply(Result<io::Result<Vec<u8>>, tokio::time::error::Elapsed>),
}

type SessionItem<C> = Result<StreamAppendResult<C>, RPCError<C>>;

impl<'s, C, SD, K, S> AppendSession<'s, C, SD, K, S>
where
    C: RaftTypeConfig<Node = BasicNode>,
    K: Connector,
    S: futures_util::Stream<Item = AppendEntriesRequest<C>> + Unpin,
{
    fn fail(mut self, reason: String) -> Option<(SessionItem<C>, Self)> {
        self.ended = true;
        let error = Unreachable::from_string(format!("{}: {reason}", self.conn.addr));
        Some((Err(RPCError::Unreachable(error)), self))
    }

    /// The next reply of the session, sending requests while waiting for it.
    async fn next(mut self) -> Option<(SessionItem<C>, Self)> {
        use futures_util::StreamExt;
        if self.ended {
            return None;
        }
        let timeout = self.conn.append_timeout;
        loop {
            if self.input_done && self.in_flight.is_empty() {
                // A clean end: the connection is reusable.
                if let Some((read, write)) = self.io.take() {
                    self.conn.pool(read.unsplit(write));
                }
                return None;
            }
            let can_send = !self.input_done && self.in_flight.len() < APPEND_PIPELINE_DEPTH;
            let deadline = self.in_flight.front().map(|sent| *sent + timeout);
            let event = match (deadline, self.io.as_mut()) {
                (Some(deadline), Some((read, _))) if can_send => {
                    // Both branches are cancel-safe: a frame read so far stays in `frames`.
                    tokio::select! {
                        biased;
                        reply = tokio::time::timeout_at(deadline, self.frames.next(read)) => {
                            SessionEvent::Reply(reply)
                        }
                        request = self.input.next() => SessionEvent::Input(request),
                    }
                }
                (Some(deadline), Some((read, _))) => {
                    SessionEvent::Reply(tokio::time::timeout_at(deadline, self.frames.next(read)).await)
                }
                _ => SessionEvent::Input(self.input.next().await),
            };
            match event {
                SessionEvent::Input(None) => self.input_done = true,
                SessionEvent::Input(Some(request)) => {
                    let body = match encode(&Request::StreamAppend(request)) {
                        Ok(body) => body,
                        Err(e) => return self.fail(e.to_string()),
                    };
                    if self.io.is_none() {
                        match tokio::time::timeout(timeout, self.conn.connector.connect(&self.conn.addr))
                            .await
                        {
                            Ok(Ok(stream)) => self.io = Some(tokio::io::split(stream)),
                            Ok(Err(e)) => return self.fail(e.to_string()),
                            Err(_) => return self.fail(format!("no connection within {timeout:?}")),
                        }
                    }
                    let Some((_, write)) = self.io.as_mut() else { return self.fail("not connected".into()) };
                    match tokio::time::timeout(timeout, write_frame(write, &body)).await {
                        Ok(Ok(())) => self.in_flight.push_back(tokio::time::Instant::now()),
                        Ok(Err(e)) => return self.fail(e.to_string()),
                        Err(_) => return self.fail(format!("could not send within {timeout:?}")),
                    }
                }
                SessionEvent::Reply(Err(_)) => {
                    return self.fail(format!("did not answer within {timeout:?}"))
                }
                SessionEvent::Reply(Ok(Err(e))) => return self.fail(e.to_string()),
                SessionEvent::Reply(Ok(Ok(body))) => {
                    self.in_flight.pop_front();
                    return match decode::<Reply<C>>(&body) {
                        Ok(Reply::StreamAppend(Ok(result))) => {
                            // After a conflict or a higher vote the server closes the connection.
                            self.ended = result.is_err();
                            Some((Ok(result), self))
                        }
                        Ok(Reply::StreamAppend(Err(e))) => self.fail(e),
                        Ok(_) => self.fail("mismatched reply".into()),
                        Err(e) => self.fail(e.to_string()),
                    };
                }
            }
        }
    }
}

/// Reads frames from a stream in a cancel-safe way: bytes read before a cancellation stay buffered.
#[derive(Default)]
struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    async fn next(&mut self, stream: &mut (impl AsyncRead + Unpin)) -> io::Result<Vec<u8>> {
        loop {
            if let Some(frame) = self.take_frame()? {
                return Ok(frame);
            }
            // `read_buf` is cancel-safe: it either read into the buffer or did nothing.
            if stream.read_buf(&mut self.buf).await? == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
        }
    }

    fn take_frame(&mut self) -> io::Result<Option<Vec<u8>>> {
        let Some(head) = self.buf.first_chunk::<8>() else {
            self.buf.reserve(8 << 10);
            return Ok(None);
        };
        let (len, expected) = frame_head(head)?;
        if self.buf.len() < 8 + len {
            self.buf.reserve((8 + len - self.buf.len()).min(FRAME_GROW_BYTES));
            return Ok(None);
        }
        let body = self.buf[8..8 + len].to_vec();
        self.buf.drain(..8 + len);
        check_body(&body, expected)?;
        Ok(Some(body))
    }
}

impl<C, SD, K> RaftNetworkV2<C> for TcpConnection<C, SD, K>
where
    C: RaftTypeConfig<Node = BasicNode>,
    SD: WireSnapshot,
    K: Connector,
{
    type SnapshotData = SD;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        match self.call(&Request::Append(rpc), self.append_timeout).await? {
            Reply::Append(Ok(response)) => Ok(response),
            other => Err(RPCError::Unreachable(self.failed(other))),
        }
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        _option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, SessionItem<C>>, RPCError<C>>>
    where
        S: futures_util::Stream<Item = AppendEntriesRequest<C>> + OptionalSend + Unpin + 'static,
    {
        Box::pin(async move {
            // Connecting waits for the first request: openraft's backoff after a failure happens while the
            // request stream produces it, so a peer that is down is not redialled in a tight loop.
            let io = self.pooled().map(tokio::io::split);
            let session = AppendSession {
                conn: self,
                input,
                input_done: false,
                io,
                frames: FrameReader::default(),
                in_flight: std::collections::VecDeque::new(),
                ended: false,
            };
            let replies: BoxStream<'s, SessionItem<C>> =
                Box::pin(futures_util::stream::unfold(session, AppendSession::next));
            Ok(replies)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<C>,
        _option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        self.ask_vote(&Request::Vote(rpc)).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<C>,
        _option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        self.ask_vote(&Request::PreVote(rpc)).await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<C>,
        snapshot: SnapshotOf<C, SD>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let files = snapshot.snapshot.files();
        let begin = Request::SnapshotBegin { vote, meta: snapshot.meta.clone(), files: files.clone() };
        self.expect_ack(&begin).await?;
        let mut sent_bytes = 0u64;
        let started = std::time::Instant::now();
        for (i, file) in files.iter().enumerate() {
            let mut offset = 0u64;
            while offset < file.size_bytes {
                let len = (file.size_bytes - offset).min(SNAPSHOT_CHUNK_BYTES as u64) as usize;
                let bytes = snapshot.snapshot.read(i, offset, len).map_err(|e| Unreachable::new(&e))?;
                self.expect_ack(&Request::SnapshotChunk { file: i as u32, offset, bytes }).await?;
                offset += len as u64;
                sent_bytes += len as u64;
            }
        }
        let reply = self.call(&Request::SnapshotEnd, self.timeout).await?;
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        tracing::info!(
            to = %self.addr,
            files = files.len(),
            bytes = sent_bytes,
            mib_per_s = sent_bytes as f64 / secs / (1 << 20) as f64,
            "snapshot sent"
        );
        match reply {
            Reply::Snapshot(Ok(response)) => Ok(response),
            other => Err(StreamingError::Unreachable(self.failed(other))),
        }
    }
}

/// A snapshot being received on one connection.
struct Incoming<C: RaftTypeConfig> {
    vote: VoteOf<C>,
    meta: SnapshotMetaOf<C>,
    files: Vec<(WireFile, PathBuf, Arc<dyn IoFile>)>,
    progress: bop_storage::progress::Progress,
}

fn staging_err(e: impl std::fmt::Display) -> String {
    format!("snapshot staging: {e}")
}

/// Replies a connection owes, in request order.
enum Slot<C: RaftTypeConfig> {
    /// A reply made by the reader.
    Ready(Reply<C>),
    /// The connection's append pipeline (sent once, before its first `Appended`).
    Pipeline(BoxStream<'static, Result<StreamAppendResult<C>, openraft::error::Fatal<C>>>),
    /// The next outcome of the append pipeline.
    Appended,
}

/// Replies one connection may owe before its reader stops reading requests.
const REPLY_SLOTS_MAX: usize = 64;

/// Serves Raft RPCs for `raft` on `listener` until the listener fails or this future is dropped (which
/// ends every connection it serves). Each connection is served by its own task, at most
/// [`CONNECTIONS_MAX`] at once: a reader that handles requests in order and a writer that sends the
/// replies in the same order. Pipelined appends (`StreamAppend`) go to openraft's `Raft::stream_append`,
/// so the reader hands on the next one while earlier ones are still being made durable; every other
/// request is handled by the reader before it reads the next. Received snapshots are staged in `inbox`,
/// one at a time.
pub async fn serve<C, SM>(
    listener: Box<dyn crate::net::Listener>,
    raft: Raft<C, SM>,
    inbox: SnapshotInbox,
    contact: LeaderContact,
) -> io::Result<()>
where
    C: RaftTypeConfig,
    SM: RaftStateMachine<C>,
    SM::SnapshotData: WireSnapshot,
{
    serve_with(listener, raft, inbox, contact, ServerTimeouts::default()).await
}

/// [`serve`] with the given deadlines. A failed `accept` (out of descriptors, a connection aborted before
/// it was accepted) never ends the server: it pauses briefly (backing off) and accepts again.
pub async fn serve_with<C, SM>(
    mut listener: Box<dyn crate::net::Listener>,
    raft: Raft<C, SM>,
    inbox: SnapshotInbox,
    contact: LeaderContact,
    timeouts: ServerTimeouts,
) -> io::Result<()>
where
    C: RaftTypeConfig,
    SM: RaftStateMachine<C>,
    SM::SnapshotData: WireSnapshot,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    let mut connections = tokio::task::JoinSet::new();
    let one_snapshot_at_a_time = Arc::new(tokio::sync::Mutex::new(()));
    let mut backoff = None;
    loop {
        // Reap finished connection tasks so the set stays bounded.
        while connections.try_join_next().is_some() {}
        let permit = Arc::clone(&slots).acquire_owned().await.map_err(io::Error::other)?;
        let (stream, peer) = crate::net::accept_retrying(listener.as_mut(), &mut backoff, "raft").await;
        let raft = raft.clone();
        let inbox = inbox.clone();
        let contact = contact.clone();
        let snapshot_lock = Arc::clone(&one_snapshot_at_a_time);
        connections.spawn(async move {
            let _permit = permit;
            let (read, write) = tokio::io::split(stream);
            let (slots_tx, slots_rx) = tokio::sync::mpsc::channel(REPLY_SLOTS_MAX);
            let server =
                ConnectionServer { raft, inbox, contact: contact.clone(), snapshot_lock, peer, timeouts };
            // Whichever side ends first ends the connection.
            tokio::select! {
                () = server.read_requests(read, slots_tx) => {}
                () = write_replies(write, slots_rx, contact) => {}
            }
        });
    }
}

struct ConnectionServer<C: RaftTypeConfig, SM: RaftStateMachine<C>> {
    raft: Raft<C, SM>,
    inbox: SnapshotInbox,
    contact: LeaderContact,
    snapshot_lock: Arc<tokio::sync::Mutex<()>>,
    peer: String,
    timeouts: ServerTimeouts,
}

impl<C, SM> ConnectionServer<C, SM>
where
    C: RaftTypeConfig,
    SM: RaftStateMachine<C>,
    SM::SnapshotData: WireSnapshot,
{
    async fn read_requests(
        self,
        mut read: tokio::io::ReadHalf<crate::net::BoxStream>,
        slots: tokio::sync::mpsc::Sender<Slot<C>>,
    ) {
        let (raft, inbox, peer) = (&self.raft, &self.inbox, &self.peer);
        let mut incoming: Option<(Incoming<C>, tokio::sync::OwnedMutexGuard<()>)> = None;
        let mut pipeline: Option<tokio::sync::mpsc::Sender<AppendEntriesRequest<C>>> = None;
        let mut first = true;
        loop {
            let deadline = if first {
                self.timeouts.first_frame
            } else if incoming.is_some() {
                self.timeouts.snapshot_frame
            } else {
                self.timeouts.idle
            };
            first = false;
            let body = match tokio::time::timeout(deadline, read_frame(&mut read)).await {
                Ok(Ok(body)) => body,
                Ok(Err(e)) => {
                    if e.kind() != io::ErrorKind::UnexpectedEof {
                        tracing::debug!(%peer, error = %e, "closing Raft connection");
                    }
                    return;
                }
                Err(_) => {
                    // Dropping `incoming` here releases the snapshot inbox a stalled sender held.
                    tracing::debug!(%peer, ?deadline, snapshot = incoming.is_some(), "Raft connection idle; closing");
                    return;
                }
            };
            let reply = match decode::<Request<C>>(&body) {
                Ok(Request::StreamAppend(rpc)) => {
                    if pipeline.is_none() {
                        let (tx, rx) = tokio::sync::mpsc::channel(REPLY_SLOTS_MAX);
                        let input = futures_util::stream::unfold(rx, |mut rx| async move {
                            rx.recv().await.map(|request| (request, rx))
                        });
                        if slots.send(Slot::Pipeline(Box::pin(raft.stream_append(input)))).await.is_err() {
                            return;
                        }
                        pipeline = Some(tx);
                    }
                    let Some(tx) = &pipeline else { return };
                    if tx.send(rpc).await.is_err() || slots.send(Slot::Appended).await.is_err() {
                        return;
                    }
                    continue;
                }
                Ok(Request::Append(rpc)) => {
                    let answer = raft.append_entries(rpc).await;
                    if matches!(&answer, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
                        self.contact.touch();
                    }
                    Reply::Append(answer.map_err(|e| e.to_string()))
                }
                Ok(Request::Vote(rpc)) => Reply::Vote(raft.vote(rpc).await.map_err(|e| e.to_string())),
                Ok(Request::PreVote(rpc)) => Reply::Vote(raft.pre_vote(rpc).await.map_err(|e| e.to_string())),
                Ok(Request::SnapshotBegin { vote, meta, files }) => {
                    // A new beginning on this connection abandons its unfinished snapshot (and the inbox
                    // lock it holds) instead of waiting for that lock itself.
                    let guard = match incoming.take() {
                        Some((_, guard)) => Ok(guard),
                        None => tokio::time::timeout(
                            self.timeouts.snapshot_wait,
                            Arc::clone(&self.snapshot_lock).lock_owned(),
                        )
                        .await
                        .map_err(|_| {
                            format!(
                                "another snapshot is being received; none ended within {:?}",
                                self.timeouts.snapshot_wait
                            )
                        }),
                    };
                    let begun = match guard {
                        Ok(guard) => {
                            let staging = inbox.clone();
                            // Clearing the inbox and creating the files fsync the directory.
                            let staged = inbox
                                .blocking
                                .run(move || begin_snapshot::<C>(&staging, vote, meta, files))
                                .await
                                .map_err(staging_err);
                            staged.and_then(|state| state).map(|state| (state, guard))
                        }
                        Err(e) => Err(e),
                    };
                    match begun {
                        Ok(state) => {
                            incoming = Some(state);
                            Reply::Ack(Ok(()))
                        }
                        Err(e) => Reply::Ack(Err(e)),
                    }
                }
                Ok(Request::SnapshotChunk { file, offset, bytes }) => {
                    Reply::Ack(receive_chunk(incoming.as_mut().map(|(s, _)| s), file, offset, &bytes))
                }
                Ok(Request::SnapshotEnd) => match incoming.take() {
                    Some((state, _guard)) => {
                        let result = finish_snapshot::<C, SM>(raft, inbox, state).await;
                        let _ = clear_inbox(inbox);
                        Reply::Snapshot(result)
                    }
                    None => Reply::Snapshot(Err("snapshot end without a beginning".into())),
                },
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "malformed Raft request; closing the connection");
                    return;
                }
            };
            if slots.send(Slot::Ready(reply)).await.is_err() {
                return;
            }
        }
    }
}

/// Sends a connection's replies in request order; returns when the reader is done and every reply is
/// sent, when sending fails, or after an append pipeline reported an error (the pipeline has ended; the
/// connection closes and the client reconnects).
async fn write_replies<C: RaftTypeConfig>(
    mut write: tokio::io::WriteHalf<crate::net::BoxStream>,
    mut slots: tokio::sync::mpsc::Receiver<Slot<C>>,
    contact: LeaderContact,
) {
    use futures_util::StreamExt;
    let mut pipeline = None;
    while let Some(slot) = slots.recv().await {
        let (reply, last) = match slot {
            Slot::Ready(reply) => (reply, false),
            Slot::Pipeline(stream) => {
                pipeline = Some(stream);
                continue;
            }
            Slot::Appended => {
                let Some(stream) = pipeline.as_mut() else { return };
                match stream.next().await {
                    Some(Ok(result)) => {
                        if !matches!(result, Err(StreamAppendError::HigherVote(_))) {
                            contact.touch();
                        }
                        let last = result.is_err();
                        (Reply::StreamAppend(Ok(result)), last)
                    }
                    Some(Err(fatal)) => (Reply::StreamAppend(Err(fatal.to_string())), true),
                    None => return,
                }
            }
        };
        let sent = match encode(&reply) {
            Ok(bytes) => write_frame(&mut write, &bytes).await,
            Err(e) => Err(e),
        };
        if sent.is_err() || last {
            return;
        }
    }
}

fn clear_inbox(inbox: &SnapshotInbox) -> io::Result<()> {
    let Ok(names) = inbox.io.list_dir(&inbox.dir) else { return Ok(()) };
    for name in names {
        let _ = inbox.io.remove_file(&inbox.dir.join(name));
    }
    inbox.io.sync_dir(&inbox.dir).map_err(io::Error::other)
}

fn begin_snapshot<C: RaftTypeConfig>(
    inbox: &SnapshotInbox,
    vote: VoteOf<C>,
    meta: SnapshotMetaOf<C>,
    files: Vec<WireFile>,
) -> Result<Incoming<C>, String> {
    if files.len() > SNAPSHOT_FILES_MAX {
        return Err(format!("{} files exceed {SNAPSHOT_FILES_MAX}", files.len()));
    }
    // Durable, parent included: under the simulated disk a new directory is not, until its parent is
    // synced.
    bop_storage::io::create_dir_durable(inbox.io.as_ref(), &inbox.dir).map_err(staging_err)?;
    clear_inbox(inbox).map_err(staging_err)?;
    let mut staged = Vec::with_capacity(files.len());
    for (i, file) in files.into_iter().enumerate() {
        let path = inbox.dir.join(format!("{i:08}.part"));
        let handle = inbox.io.open(&path, OpenMode::CreateNew).map_err(staging_err)?;
        staged.push((file, path, handle));
    }
    let total = staged.iter().map(|(spec, _, _)| spec.size_bytes).sum();
    Ok(Incoming {
        vote,
        meta,
        files: staged,
        progress: bop_storage::progress::Progress::new("snapshot receive", total),
    })
}

fn receive_chunk<C: RaftTypeConfig>(
    incoming: Option<&mut Incoming<C>>,
    file: u32,
    offset: u64,
    bytes: &[u8],
) -> Result<(), String> {
    let state = incoming.ok_or("snapshot chunk without a beginning")?;
    let (spec, _, handle) =
        state.files.get(file as usize).ok_or_else(|| format!("no file {file} in this snapshot"))?;
    if offset.checked_add(bytes.len() as u64).is_none_or(|end| end > spec.size_bytes) {
        return Err(format!(
            "chunk {offset}+{} outside file {file} of {} bytes",
            bytes.len(),
            spec.size_bytes
        ));
    }
    let mut done = 0usize;
    while done < bytes.len() {
        let n = handle.write_at(&bytes[done..], offset + done as u64).map_err(staging_err)?;
        if n == 0 {
            return Err(staging_err("write returned 0 bytes"));
        }
        done += n;
    }
    state.progress.advance(bytes.len() as u64);
    Ok(())
}

async fn finish_snapshot<C, SM>(
    raft: &Raft<C, SM>,
    inbox: &SnapshotInbox,
    state: Incoming<C>,
) -> Result<SnapshotResponse<C>, String>
where
    C: RaftTypeConfig,
    SM: RaftStateMachine<C>,
    SM::SnapshotData: WireSnapshot,
{
    state.progress.finish();
    let io = Arc::clone(&inbox.io);
    let files = state.files;
    // fsyncs of every file and the check of their headers and directories: off the async workers.
    let data = inbox
        .blocking
        .run(move || {
            let mut staged = Vec::with_capacity(files.len());
            for (spec, path, handle) in files {
                handle.sync_all().map_err(staging_err)?;
                staged.push((spec, path));
            }
            SM::SnapshotData::assemble(io.as_ref(), staged).map_err(staging_err)
        })
        .await
        .map_err(staging_err)??;
    let snapshot = openraft::storage::Snapshot { meta: state.meta, snapshot: data };
    raft.install_full_snapshot(state.vote, snapshot).await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::StreamExt;
    use openraft::testing::{blank_ent, log_id};
    use tokio::io::DuplexStream;

    use super::*;
    use crate::state_machine::{BopConfig, BopSnapshot};

    type C = BopConfig;

    /// Hands out the client ends of in-memory connections whose server ends the test holds.
    struct Pipes {
        servers: tokio::sync::mpsc::UnboundedSender<DuplexStream>,
        connects: Arc<AtomicUsize>,
    }

    impl Connector for Pipes {
        type Stream = DuplexStream;

        async fn connect(&self, _addr: &str) -> io::Result<DuplexStream> {
            self.connects.fetch_add(1, Ordering::SeqCst);
            let (client, server) = tokio::io::duplex(1 << 20);
            self.servers.send(server).map_err(io::Error::other)?;
            Ok(client)
        }
    }

    async fn connection(
        timeout: Duration,
    ) -> (
        TcpConnection<C, BopSnapshot, Pipes>,
        tokio::sync::mpsc::UnboundedReceiver<DuplexStream>,
        Arc<AtomicUsize>,
    ) {
        let (servers, accepted) = tokio::sync::mpsc::unbounded_channel();
        let connects = Arc::new(AtomicUsize::new(0));
        let pipes = Pipes { servers, connects: Arc::clone(&connects) };
        let mut network = TcpNetwork::<C, BopSnapshot, Pipes>::new(pipes, timeout);
        let conn = network.new_client(2, &BasicNode::new("peer")).await;
        (conn, accepted, connects)
    }

    fn request(index: u64) -> AppendEntriesRequest<C> {
        AppendEntriesRequest {
            vote: VoteOf::<C>::new_committed(1, 1),
            prev_log_id: (index > 1).then(|| log_id::<C>(1, 1, index - 1)),
            entries: vec![blank_ent::<C>(1, 1, index)],
            leader_commit: None,
        }
    }

    async fn read_request(server: &mut DuplexStream) -> Request<C> {
        decode(&read_frame(server).await.expect("request frame")).expect("request")
    }

    async fn reply(server: &mut DuplexStream, reply: Reply<C>) {
        write_frame(server, &encode(&reply).expect("encode")).await.expect("reply frame");
    }

    fn appended(index: u64) -> Reply<C> {
        Reply::StreamAppend(Ok(Ok(Some(log_id::<C>(1, 1, index)))))
    }

    #[tokio::test]
    async fn appends_are_pipelined_and_a_clean_session_keeps_the_connection() {
        let (mut conn, mut accepted, connects) = connection(Duration::from_secs(10)).await;
        let input = futures_util::stream::iter((1..=8).map(request));
        let mut replies =
            conn.stream_append(input, RPCOption::new(Duration::from_secs(1))).await.expect("session");
        // The server reads all eight requests before it answers any: a client that waited for each reply
        // before sending the next would never get here.
        let server = tokio::spawn(async move {
            let mut server = accepted.recv().await.expect("connection");
            let mut indexes = Vec::new();
            for _ in 0..8 {
                match read_request(&mut server).await {
                    Request::StreamAppend(rpc) => indexes.push(rpc.entries[0].log_id.index),
                    _ => panic!("not a pipelined append"),
                }
            }
            for index in &indexes {
                reply(&mut server, appended(*index)).await;
            }
            (indexes, server, accepted)
        });
        let mut got = Vec::new();
        while let Some(item) =
            tokio::time::timeout(Duration::from_secs(10), replies.next()).await.expect("bounded")
        {
            got.push(item.expect("no transport error").expect("appended").expect("a log id").index);
        }
        drop(replies);
        let (indexes, mut server, _accepted) = server.await.expect("server");
        assert_eq!(indexes, (1..=8).collect::<Vec<_>>(), "requests in order");
        assert_eq!(got, (1..=8).collect::<Vec<_>>(), "replies in order");
        // The session ended cleanly, so the next call reuses the connection.
        let next = tokio::spawn(async move {
            let Request::Vote(_) = read_request(&mut server).await else { panic!("not a vote") };
            let vote = VoteOf::<C>::new_committed(1, 1);
            reply(&mut server, Reply::Vote(Ok(VoteResponse::new(vote, None, true)))).await;
        });
        let vote = VoteRequest::new(VoteOf::<C>::new(1, 1), None);
        conn.vote(vote, RPCOption::new(Duration::from_secs(1))).await.expect("vote over the same connection");
        next.await.expect("server");
        assert_eq!(connects.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_session_dropped_with_replies_outstanding_drops_its_connection() {
        let (mut conn, mut accepted, connects) = connection(Duration::from_secs(10)).await;
        let input = futures_util::stream::iter((1..=4).map(request));
        let mut replies =
            conn.stream_append(input, RPCOption::new(Duration::from_secs(1))).await.expect("session");
        // The server reads the four requests but answers only the first.
        let first = tokio::spawn(async move {
            let mut server = accepted.recv().await.expect("connection");
            for _ in 0..4 {
                read_request(&mut server).await;
            }
            reply(&mut server, appended(1)).await;
            (server, accepted)
        });
        let one = tokio::time::timeout(Duration::from_secs(10), replies.next()).await.expect("bounded");
        assert_eq!(one.expect("item").expect("transport").expect("appended").expect("id").index, 1);
        let (mut old_server, mut accepted) = first.await.expect("server");
        drop(replies);
        // The old connection is closed: its three unread replies can never reach a later call.
        let mut buf = [0u8; 1];
        assert_eq!(old_server.read(&mut buf).await.expect("eof"), 0);
        let next = tokio::spawn(async move {
            let mut server = accepted.recv().await.expect("a new connection");
            let Request::Append(rpc) = read_request(&mut server).await else { panic!("not an append") };
            assert_eq!(rpc.entries[0].log_id.index, 9);
            reply(&mut server, Reply::Append(Ok(AppendEntriesResponse::Success))).await;
        });
        let answer = conn.append_entries(request(9), RPCOption::new(Duration::from_secs(1))).await;
        assert!(matches!(answer, Ok(AppendEntriesResponse::Success)), "{answer:?}");
        next.await.expect("server");
        assert_eq!(connects.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_call_cancelled_before_its_reply_drops_its_connection() {
        let (mut conn, mut accepted, connects) = connection(Duration::from_secs(10)).await;
        // The caller gives up (as openraft's heartbeat timeout does) after the request went out.
        let cancelled = tokio::time::timeout(
            Duration::from_millis(50),
            conn.append_entries(request(1), RPCOption::new(Duration::from_secs(1))),
        )
        .await;
        assert!(cancelled.is_err(), "the server never answered");
        let mut old_server = accepted.recv().await.expect("connection");
        read_request(&mut old_server).await;
        // The late reply to the first request cannot be taken as the answer to the second: the client closed
        // that connection.
        let late = encode(&Reply::<C>::Append(Ok(AppendEntriesResponse::Conflict))).expect("encode");
        assert!(write_frame(&mut old_server, &late).await.is_err(), "the old connection is closed");
        let next = tokio::spawn(async move {
            let mut server = accepted.recv().await.expect("a new connection");
            read_request(&mut server).await;
            reply(&mut server, Reply::Append(Ok(AppendEntriesResponse::Success))).await;
        });
        let answer = conn.append_entries(request(2), RPCOption::new(Duration::from_secs(1))).await;
        assert!(matches!(answer, Ok(AppendEntriesResponse::Success)), "{answer:?}");
        next.await.expect("server");
        assert_eq!(connects.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn frame_reader_survives_cancellation_mid_frame() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let mut frames = FrameReader::default();
        let body = encode(&appended(7)).expect("encode");
        let mut framed = Vec::new();
        write_frame(&mut framed, &body).await.expect("frame");
        // Half a frame, then a read that is cancelled; then the rest.
        server.write_all(&framed[..5]).await.expect("write");
        let cancelled = tokio::time::timeout(Duration::from_millis(20), frames.next(&mut client)).await;
        assert!(cancelled.is_err());
        server.write_all(&framed[5..]).await.expect("write");
        let got = tokio::time::timeout(Duration::from_secs(5), frames.next(&mut client)).await;
        assert_eq!(got.expect("bounded").expect("frame"), body);
        // A corrupt frame is refused.
        let mut bad = framed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        server.write_all(&bad).await.expect("write");
        let err = frames.next(&mut client).await.expect_err("checksum");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    /// A Raft node of bop's state machine (not initialised) serving on loopback with `timeouts`.
    async fn served(
        dir: &std::path::Path,
        timeouts: ServerTimeouts,
    ) -> (String, Raft<C, crate::BopStateMachine>, tokio::task::JoinHandle<io::Result<()>>) {
        use bop_storage::manifest::{Manifest, ManifestConfig};
        use bop_storage::page_store::{Manager, ManagerConfig};
        use bop_storage::wal::{WalConfig, WalStore};
        let io: Arc<dyn Io> = Arc::new(bop_storage::io::BufferedIo::new());
        let mut wal_config = WalConfig::new(dir.join("wal"));
        wal_config.segment_size_bytes = 1 << 20;
        let wal = Arc::new(WalStore::open(Arc::clone(&io), wal_config).expect("wal"));
        let manifest = Arc::new(
            Manifest::open(dir, ManifestConfig { map_size_initial_bytes: 1 << 20, ..Default::default() })
                .expect("manifest"),
        );
        let store = crate::LogStore::new(Arc::clone(&wal), Arc::clone(&manifest)).expect("log store");
        let manager =
            Manager::open_replicated(ManagerConfig::new(dir), Arc::clone(&wal), manifest).expect("pages");
        let sm = crate::BopStateMachine::open(manager, wal).expect("state machine");
        let config = Arc::new(openraft::Config::default().validate().expect("config"));
        let network = TcpNetwork::<C, BopSnapshot, _>::new(TcpConnector, Duration::from_secs(1));
        let raft = Raft::new(1, config, network, store, sm).await.expect("raft");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let inbox = SnapshotInbox { io, dir: dir.join("snapshot-inbox"), blocking: Default::default() };
        let server = tokio::spawn(serve_with(
            crate::net::tcp_listener(listener),
            raft.clone(),
            inbox,
            LeaderContact::default(),
            timeouts,
        ));
        (addr, raft, server)
    }

    fn begin() -> Vec<u8> {
        let request = Request::<C>::SnapshotBegin {
            vote: VoteOf::<C>::new_committed(1, 2),
            meta: SnapshotMetaOf::<C>::default(),
            files: Vec::new(),
        };
        encode(&request).expect("encode")
    }

    async fn ack(stream: &mut tokio::net::TcpStream, within: Duration) -> Reply<C> {
        let frame = tokio::time::timeout(within, read_frame(stream)).await.expect("an answer in time");
        decode::<Reply<C>>(&frame.expect("a reply")).expect("decodes")
    }

    fn short() -> ServerTimeouts {
        ServerTimeouts {
            first_frame: Duration::from_millis(300),
            idle: Duration::from_millis(600),
            snapshot_frame: Duration::from_millis(300),
            snapshot_wait: Duration::from_secs(5),
        }
    }

    /// Hardening finding 9: a second `SnapshotBegin` on one connection used to wait for the inbox lock the
    /// connection itself held, for ever; and a sender that went silent mid-snapshot held it for ever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_snapshot_begin_and_a_stalled_sender_do_not_hold_the_inbox() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (addr, raft, server) = served(dir.path(), short()).await;
        let mut a = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        write_frame(&mut a, &begin()).await.expect("send");
        assert!(matches!(ack(&mut a, Duration::from_secs(5)).await, Reply::Ack(Ok(()))));
        write_frame(&mut a, &begin()).await.expect("send");
        assert!(
            matches!(ack(&mut a, Duration::from_secs(5)).await, Reply::Ack(Ok(()))),
            "a new beginning on the same connection abandons the old one"
        );
        // `a` now goes silent holding the inbox; `b` begins and is answered once `a` lost it.
        let mut b = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        let started = std::time::Instant::now();
        write_frame(&mut b, &begin()).await.expect("send");
        assert!(matches!(ack(&mut b, Duration::from_secs(5)).await, Reply::Ack(Ok(()))));
        assert!(started.elapsed() >= Duration::from_millis(200), "b waited for a's deadline");
        server.abort();
        raft.shutdown().await.expect("shutdown");
    }

    /// Hardening finding 8: connections that send nothing are closed after the first-frame deadline, so
    /// idle sockets filling every slot lock real peers out only that long; and the accept loop goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_are_closed_and_do_not_lock_out_a_peer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (addr, raft, server) = served(dir.path(), short()).await;
        let mut idle = Vec::new();
        for _ in 0..CONNECTIONS_MAX + 8 {
            idle.push(tokio::net::TcpStream::connect(&addr).await.expect("connect"));
        }
        // A real request on a fresh connection is served once the idle ones were closed.
        let mut peer = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        let vote = VoteRequest::<C>::new(VoteOf::<C>::new(1, 2), None);
        write_frame(&mut peer, &encode(&Request::<C>::Vote(vote)).expect("encode")).await.expect("send");
        assert!(matches!(ack(&mut peer, Duration::from_secs(5)).await, Reply::Vote(Ok(_))));
        // The first idle connection was closed by the server: reading it ends.
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), idle[0].read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed: {read:?}");
        assert!(!server.is_finished(), "the server still runs");
        server.abort();
        raft.shutdown().await.expect("shutdown");
    }
}
