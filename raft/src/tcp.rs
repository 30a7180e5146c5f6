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
use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::impls::BasicNode;
use openraft::network::v2::RaftNetworkV2;
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::storage::RaftStateMachine;
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::{OptionalSend, Raft, RaftNetworkFactory, RaftTypeConfig};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest frame body accepted (a bound on what one message can make a peer allocate).
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// Connections a server serves at once; more wait in the accept queue.
pub const CONNECTIONS_MAX: usize = 256;
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
}

#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
enum Reply<C: RaftTypeConfig> {
    Append(Result<AppendEntriesResponse<C>, String>),
    Vote(Result<VoteResponse<C>, String>),
    Ack(Result<(), String>),
    Snapshot(Result<SnapshotResponse<C>, String>),
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
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let expected = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len > FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds {FRAME_BYTES_MAX}"),
        ));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    let got = crc32c::crc32c(&body);
    if got != expected {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame checksum {got:#010x} != {expected:#010x}"),
        ));
    }
    Ok(body)
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
    stream: Option<K::Stream>,
    _types: PhantomData<fn() -> (C, SD)>,
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
            Reply::Append(Err(e)) | Reply::Vote(Err(e)) | Reply::Ack(Err(e)) | Reply::Snapshot(Err(e)) => {
                Unreachable::from_string(format!("{}: {e}", self.addr))
            }
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
        let outcome = tokio::time::timeout(timeout, async {
            if self.stream.is_none() {
                self.stream = Some(self.connector.connect(&self.addr).await?);
            }
            let stream = self.stream.as_mut().ok_or_else(|| io::Error::other("not connected"))?;
            write_frame(stream, &body).await?;
            let reply = read_frame(stream).await?;
            decode::<Reply<C>>(&reply)
        })
        .await;
        match outcome {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => {
                self.stream = None;
                Err(Unreachable::new(&e))
            }
            Err(_) => {
                self.stream = None;
                Err(Unreachable::from_string(format!("{} did not answer within {timeout:?}", self.addr)))
            }
        }
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

/// Serves Raft RPCs for `raft` on `listener` until the listener fails or this future is dropped (which
/// ends every connection it serves). Each connection is served by its own task, one request at a time; at
/// most [`CONNECTIONS_MAX`] at once. Received snapshots are staged in `inbox`, one at a time.
pub async fn serve<C, SM>(
    mut listener: Box<dyn crate::net::Listener>,
    raft: Raft<C, SM>,
    inbox: SnapshotInbox,
    contact: LeaderContact,
) -> io::Result<()>
where
    C: RaftTypeConfig,
    SM: RaftStateMachine<C>,
    SM::SnapshotData: WireSnapshot,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    let mut connections = tokio::task::JoinSet::new();
    let one_snapshot_at_a_time = Arc::new(tokio::sync::Mutex::new(()));
    loop {
        // Reap finished connection tasks so the set stays bounded.
        while connections.try_join_next().is_some() {}
        let permit = Arc::clone(&slots).acquire_owned().await.map_err(io::Error::other)?;
        let (mut stream, peer) = listener.accept().await?;
        let raft = raft.clone();
        let inbox = inbox.clone();
        let contact = contact.clone();
        let snapshot_lock = Arc::clone(&one_snapshot_at_a_time);
        connections.spawn(async move {
            let _permit = permit;
            let mut incoming: Option<(Incoming<C>, tokio::sync::OwnedMutexGuard<()>)> = None;
            loop {
                let body = match read_frame(&mut stream).await {
                    Ok(body) => body,
                    Err(e) => {
                        if e.kind() != io::ErrorKind::UnexpectedEof {
                            tracing::debug!(%peer, error = %e, "closing Raft connection");
                        }
                        return;
                    }
                };
                let reply = match decode::<Request<C>>(&body) {
                    Ok(Request::Append(rpc)) => {
                        let answer = raft.append_entries(rpc).await;
                        if matches!(&answer, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
                            contact.touch();
                        }
                        Reply::Append(answer.map_err(|e| e.to_string()))
                    }
                    Ok(Request::Vote(rpc)) => Reply::Vote(raft.vote(rpc).await.map_err(|e| e.to_string())),
                    Ok(Request::PreVote(rpc)) => {
                        Reply::Vote(raft.pre_vote(rpc).await.map_err(|e| e.to_string()))
                    }
                    Ok(Request::SnapshotBegin { vote, meta, files }) => {
                        let guard = Arc::clone(&snapshot_lock).lock_owned().await;
                        match begin_snapshot::<C>(&inbox, vote, meta, files) {
                            Ok(state) => {
                                incoming = Some((state, guard));
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
                            let result = finish_snapshot::<C, SM>(&raft, &inbox, state).await;
                            let _ = clear_inbox(&inbox);
                            Reply::Snapshot(result)
                        }
                        None => Reply::Snapshot(Err("snapshot end without a beginning".into())),
                    },
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "malformed Raft request; closing the connection");
                        return;
                    }
                };
                let sent = match encode(&reply) {
                    Ok(bytes) => write_frame(&mut stream, &bytes).await,
                    Err(e) => Err(e),
                };
                if sent.is_err() {
                    return;
                }
            }
        });
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
    inbox.io.create_dir_all(&inbox.dir).map_err(staging_err)?;
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
    let mut staged = Vec::with_capacity(state.files.len());
    for (spec, path, handle) in state.files {
        handle.sync_all().map_err(staging_err)?;
        staged.push((spec, path));
    }
    let data = SM::SnapshotData::assemble(inbox.io.as_ref(), staged).map_err(staging_err)?;
    let snapshot = openraft::storage::Snapshot { meta: state.meta, snapshot: data };
    raft.install_full_snapshot(state.vote, snapshot).await.map_err(|e| e.to_string())
}
