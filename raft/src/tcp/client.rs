//! The client side: a connection per peer, pooled, and pipelined append sessions.

use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::impls::BasicNode;
use openraft::network::v2::RaftNetworkV2;
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotOf, VoteOf};
use openraft::{OptionalSend, RaftNetworkFactory, RaftTypeConfig};

use super::frame::{read_frame, write_frame, FrameReader};
use super::handshake::{greet, ClusterIdentity};
use super::tls::PeerStream;
use super::{
    decode, encode, raft_addr_of, Connector, Reply, Request, WireSnapshot, POOLED_IDLE_MAX,
    SNAPSHOT_CHUNK_BYTES,
};

/// The network factory of one node: connections to peers at the Raft address of their `BasicNode::addr`.
pub struct TcpNetwork<C, SD, K: Connector> {
    connector: Arc<K>,
    identity: Arc<ClusterIdentity>,
    timeout: Duration,
    append_timeout: Duration,
    _types: PhantomData<fn() -> (C, SD)>,
}

impl<C, SD, K: Connector> TcpNetwork<C, SD, K> {
    /// Connections made by `connector`, each call bounded by `timeout`; every new connection begins with
    /// a hello from `identity` ([`super::handshake`]).
    pub fn new(connector: K, timeout: Duration, identity: Arc<ClusterIdentity>) -> Self {
        TcpNetwork {
            connector: Arc::new(connector),
            identity,
            timeout,
            append_timeout: timeout,
            _types: PhantomData,
        }
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
    identity: Arc<ClusterIdentity>,
    /// The peer's node id, as the hello names it.
    target: u64,
    addr: String,
    timeout: Duration,
    append_timeout: Duration,
    /// The pooled connection and when it was last used.
    stream: Option<(PeerStream<K::Stream>, std::time::Instant)>,
    _types: PhantomData<fn() -> (C, SD)>,
}

impl<C, SD, K: Connector> TcpConnection<C, SD, K> {
    /// The pooled connection, unless it sat idle so long that the server may be closing it.
    fn pooled(&mut self) -> Option<PeerStream<K::Stream>> {
        self.stream.take().filter(|(_, used)| used.elapsed() < POOLED_IDLE_MAX).map(|(stream, _)| stream)
    }

    /// A new connection to the peer, greeted: the peer accepted this node's hello.
    /// With TLS on, the peer's certificate must name its node id.
    async fn dial(&self) -> io::Result<PeerStream<K::Stream>> {
        let raw = self.connector.connect(&self.addr).await?;
        let mut stream = match self.identity.tls() {
            Some(tls) => PeerStream::Tls(Box::new(tls.connect(raw, self.target).await?)),
            None => PeerStream::Plain(raw),
        };
        greet(&mut stream, &self.identity, self.target).await?;
        Ok(stream)
    }

    /// Keeps `stream` for the next call.
    fn pool(&mut self, stream: PeerStream<K::Stream>) {
        self.stream = Some((stream, std::time::Instant::now()));
    }
}

impl<C, SD, K> RaftNetworkFactory<C> for TcpNetwork<C, SD, K>
where
    C: RaftTypeConfig<Node = BasicNode, NodeId = u64>,
    SD: WireSnapshot,
    K: Connector,
{
    type Network = TcpConnection<C, SD, K>;

    async fn new_client(&mut self, target: C::NodeId, node: &BasicNode) -> Self::Network {
        TcpConnection {
            connector: Arc::clone(&self.connector),
            identity: Arc::clone(&self.identity),
            target,
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
            | Reply::StreamAppend(Err(e))
            | Reply::TransferLeader(Err(e)) => Unreachable::from_string(format!("{}: {e}", self.addr)),
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
                None => self.dial().await?,
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
    io: Option<SplitStream<PeerStream<K::Stream>>>,
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
                        match tokio::time::timeout(timeout, self.conn.dial()).await {
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

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<C>,
        _option: RPCOption,
    ) -> Result<TransferLeaderResponse<C>, RPCError<C>> {
        match self.call(&Request::TransferLeader(req), self.timeout).await? {
            Reply::TransferLeader(Ok(response)) => Ok(response),
            other => Err(RPCError::Unreachable(self.failed(other))),
        }
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
