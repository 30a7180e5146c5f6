use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::StreamExt;
use openraft::testing::{blank_ent, log_id};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use openraft::impls::BasicNode;
use openraft::network::v2::RaftNetworkV2;
use openraft::network::RPCOption;
use openraft::{Raft, RaftNetworkFactory};

use super::client::*;
use super::frame::FrameReader;
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
