//! Raft over TCP: length- and checksum-framed bincode messages, one request at a time per connection,
//! a connection reused per peer and re-established after any error, every call bounded by a timeout.
//!
//! Frame: `len: u32 LE | crc32c(body): u32 LE | body[len]`, `len <= FRAME_BYTES_MAX`; the body is the bincode
//! (serde, standard config) encoding of a request or reply. Connections are made through a [`Connector`], so
//! the simulation can run the same code over its own network.
//!
//! Snapshots are not yet streamed over TCP: `full_snapshot` answers "unreachable", and a peer that needs one
//! cannot catch up through this transport yet (the in-process network ships them).

use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::impls::BasicNode;
use openraft::network::v2::RaftNetworkV2;
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::storage::RaftStateMachine;
use openraft::type_config::alias::{SnapshotOf, VoteOf};
use openraft::{OptionalSend, Raft, RaftNetworkFactory, RaftTypeConfig};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest frame body accepted (a bound on what one message can make a peer allocate).
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// Connections a server serves at once; more wait in the accept queue.
pub const CONNECTIONS_MAX: usize = 256;

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
}

#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
enum Reply<C: RaftTypeConfig> {
    Append(Result<AppendEntriesResponse<C>, String>),
    Vote(Result<VoteResponse<C>, String>),
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

/// The network factory of one node: connections to peers at their `BasicNode::addr`.
pub struct TcpNetwork<C, SD, K: Connector> {
    connector: Arc<K>,
    timeout: Duration,
    _types: PhantomData<fn() -> (C, SD)>,
}

impl<C, SD, K: Connector> TcpNetwork<C, SD, K> {
    /// Connections made by `connector`, each call bounded by `timeout`.
    pub fn new(connector: K, timeout: Duration) -> Self {
        TcpNetwork { connector: Arc::new(connector), timeout, _types: PhantomData }
    }
}

/// A connection to one peer, re-established after any error.
pub struct TcpConnection<C, SD, K: Connector> {
    connector: Arc<K>,
    addr: String,
    timeout: Duration,
    stream: Option<K::Stream>,
    _types: PhantomData<fn() -> (C, SD)>,
}

impl<C, SD, K> RaftNetworkFactory<C> for TcpNetwork<C, SD, K>
where
    C: RaftTypeConfig<Node = BasicNode>,
    SD: OptionalSend + 'static,
    K: Connector,
{
    type Network = TcpConnection<C, SD, K>;

    async fn new_client(&mut self, _target: C::NodeId, node: &BasicNode) -> Self::Network {
        TcpConnection {
            connector: Arc::clone(&self.connector),
            addr: node.addr.clone(),
            timeout: self.timeout,
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
    /// The peer answered with an error (it may be shutting down or restarting) or the wrong reply: drop the
    /// connection so that the next call connects afresh.
    fn failed(&mut self, reply: Reply<C>) -> Unreachable<C> {
        self.stream = None;
        match reply {
            Reply::Append(Err(e)) | Reply::Vote(Err(e)) => {
                Unreachable::from_string(format!("{}: {e}", self.addr))
            }
            _ => Unreachable::from_string(format!("{}: mismatched reply", self.addr)),
        }
    }

    async fn call(&mut self, request: &Request<C>) -> Result<Reply<C>, Unreachable<C>> {
        let body = encode(request).map_err(|e| Unreachable::new(&e))?;
        let outcome = tokio::time::timeout(self.timeout, async {
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
                Err(Unreachable::from_string(format!(
                    "{} did not answer within {:?}",
                    self.addr, self.timeout
                )))
            }
        }
    }
}

impl<C, SD, K> RaftNetworkV2<C> for TcpConnection<C, SD, K>
where
    C: RaftTypeConfig<Node = BasicNode>,
    SD: OptionalSend + 'static,
    K: Connector,
{
    type SnapshotData = SD;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        match self.call(&Request::Append(rpc)).await? {
            Reply::Append(Ok(response)) => Ok(response),
            other => Err(RPCError::Unreachable(self.failed(other))),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<C>,
        _option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        match self.call(&Request::Vote(rpc)).await? {
            Reply::Vote(Ok(response)) => Ok(response),
            other => Err(RPCError::Unreachable(self.failed(other))),
        }
    }

    async fn full_snapshot(
        &mut self,
        _vote: VoteOf<C>,
        _snapshot: SnapshotOf<C, SD>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        Err(StreamingError::Unreachable(Unreachable::from_string("snapshots over TCP are not built yet")))
    }
}

/// Serves Raft RPCs for `raft` on `listener` until the listener fails or this future is dropped (which
/// ends every connection it serves). Each connection is served by its own task, one request at a time; at
/// most [`CONNECTIONS_MAX`] at once.
pub async fn serve<C, SM>(listener: TcpListener, raft: Raft<C, SM>) -> io::Result<()>
where
    C: RaftTypeConfig,
    SM: RaftStateMachine<C>,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        // Reap finished connection tasks so the set stays bounded.
        while connections.try_join_next().is_some() {}
        let permit = Arc::clone(&slots).acquire_owned().await.map_err(io::Error::other)?;
        let (mut stream, peer) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let raft = raft.clone();
        connections.spawn(async move {
            let _permit = permit;
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
                        Reply::Append(raft.append_entries(rpc).await.map_err(|e| e.to_string()))
                    }
                    Ok(Request::Vote(rpc)) => Reply::Vote(raft.vote(rpc).await.map_err(|e| e.to_string())),
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
