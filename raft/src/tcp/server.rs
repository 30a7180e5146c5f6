//! The server side: connections served by a request reader and a reply writer each, and snapshots
//! received into the inbox.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use bop_storage::io::{IoFile, OpenMode};
use openraft::async_runtime::WatchReceiver;
use openraft::base::BoxStream;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendError, StreamAppendResult,
};
use openraft::storage::RaftStateMachine;
use openraft::type_config::alias::{SnapshotMetaOf, VoteOf};
use openraft::{Raft, RaftTypeConfig};

use super::frame::{read_frame, write_frame};
use super::handshake::{welcome, ClusterIdentity};
use super::{
    decode, encode, LeaderContact, Reply, Request, ServerTimeouts, SnapshotInbox, WireFile, WireSnapshot,
    CONNECTIONS_MAX, SNAPSHOT_FILES_MAX,
};

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
    identity: Arc<ClusterIdentity>,
) -> io::Result<()>
where
    C: RaftTypeConfig<NodeId = u64>,
    SM: RaftStateMachine<C>,
    SM::SnapshotData: WireSnapshot,
{
    serve_with(listener, raft, inbox, contact, identity, ServerTimeouts::default()).await
}

/// [`serve`] with the given deadlines. A failed `accept` (out of descriptors, a connection aborted before
/// it was accepted) never ends the server: it pauses briefly (backing off) and accepts again.
pub async fn serve_with<C, SM>(
    mut listener: Box<dyn crate::net::Listener>,
    raft: Raft<C, SM>,
    inbox: SnapshotInbox,
    contact: LeaderContact,
    identity: Arc<ClusterIdentity>,
    timeouts: ServerTimeouts,
) -> io::Result<()>
where
    C: RaftTypeConfig<NodeId = u64>,
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
        let identity = Arc::clone(&identity);
        connections.spawn(async move {
            let _permit = permit;
            // TLS (when on) and the hello come first, within the first frame's deadline; nothing else is
            // read before the hello was accepted.
            let opened = tokio::time::timeout(timeouts.first_frame, async {
                let (mut stream, cert) = match identity.tls() {
                    Some(tls) => {
                        let (stream, cert) = tls.accept(stream).await?;
                        (Box::new(stream) as crate::net::BoxStream, Some(cert))
                    }
                    None => (stream, None),
                };
                let verdict = welcome(&mut stream, &identity, inbox.blocking, cert.as_ref()).await?;
                Ok::<_, io::Error>((stream, verdict))
            })
            .await;
            let (stream, from) = match opened {
                Ok(Ok((stream, Ok(from)))) => (stream, from),
                Ok(Ok((_, Err(reason)))) => {
                    tracing::warn!(%peer, %reason, "refused a Raft connection");
                    return;
                }
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "Raft connection ended before its hello");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "no hello within {:?}; closing", timeouts.first_frame);
                    return;
                }
            };
            let peer = format!("{peer} (node {from})");
            let (read, write) = tokio::io::split(stream);
            let (slots_tx, slots_rx) = tokio::sync::mpsc::channel(REPLY_SLOTS_MAX);
            let server = ConnectionServer {
                raft,
                inbox,
                contact: contact.clone(),
                snapshot_lock,
                peer,
                from,
                timeouts,
            };
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
    /// The node id the connection's hello named (proven by its certificate when TLS is on).
    from: u64,
    timeouts: ServerTimeouts,
}

impl<C, SM> ConnectionServer<C, SM>
where
    C: RaftTypeConfig<NodeId = u64>,
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
        loop {
            let deadline = if incoming.is_some() { self.timeouts.snapshot_frame } else { self.timeouts.idle };
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
                Ok(Request::TransferLeader(rpc)) => {
                    use openraft::vote::{RaftLeaderId, RaftVote};
                    let leader = *rpc.from_leader().leader_id().node_id();
                    if leader == self.from {
                        Reply::TransferLeader(
                            raft.handle_transfer_leader(rpc).await.map_err(|e| e.to_string()),
                        )
                    } else {
                        tracing::warn!(%peer, leader, "refused a leadership transfer sent for another leader");
                        Reply::TransferLeader(Err(format!(
                            "node {} sent a leadership transfer under node {leader}'s vote",
                            self.from
                        )))
                    }
                }
                Ok(Request::Vote(rpc)) => Reply::Vote(raft.vote(rpc).await.map_err(|e| e.to_string())),
                Ok(Request::PreVote(rpc)) => Reply::Vote(raft.pre_vote(rpc).await.map_err(|e| e.to_string())),
                Ok(Request::SnapshotBegin { vote, meta, files }) => {
                    let current = raft.metrics().borrow_watched().vote.clone();
                    if let Err(e) = may_send_snapshot::<C>(&vote, &current, self.from) {
                        tracing::warn!(%peer, reason = %e, "refused a snapshot");
                        if slots.send(Slot::Ready(Reply::Ack(Err(e)))).await.is_err() {
                            return;
                        }
                        continue;
                    }
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

/// Whether node `from` may send this node a snapshot under `vote` (this node holding `current`): only as
/// the leader that vote names, with the vote granted by a quorum, and not from a leader this node has
/// already seen superseded. Checked before anything is staged, so a stray or stale sender cannot fill the
/// inbox (openraft's install would refuse a stale vote too, but only after the whole snapshot arrived).
fn may_send_snapshot<C>(vote: &VoteOf<C>, current: &VoteOf<C>, from: u64) -> Result<(), String>
where
    C: RaftTypeConfig<NodeId = u64>,
{
    use openraft::vote::{RaftLeaderId, RaftVote};
    if !vote.is_committed() {
        return Err(format!("a snapshot under {vote}, a vote no quorum granted"));
    }
    let leader = *vote.leader_id().node_id();
    if leader != from {
        return Err(format!("node {from} sent a snapshot under node {leader}'s leadership ({vote})"));
    }
    if vote.partial_cmp(current) == Some(std::cmp::Ordering::Less) {
        return Err(format!(
            "a snapshot from a superseded leader: {vote} is older than this node's {current}"
        ));
    }
    Ok(())
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
    C: RaftTypeConfig<NodeId = u64>,
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
