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
use super::handshake::{self, ClusterId, ClusterIdentity};
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
    let mut network = TcpNetwork::<C, BopSnapshot, Pipes>::new(pipes, timeout, peer_identity(1));
    let conn = network.new_client(2, &BasicNode::new("peer")).await;
    (conn, accepted, connects)
}

/// The cluster the tests' nodes belong to.
const CLUSTER: ClusterId = ClusterId([7; 16]);

/// Node `id` of [`CLUSTER`].
fn peer_identity(id: u64) -> Arc<ClusterIdentity> {
    Arc::new(ClusterIdentity::new(id, Some(CLUSTER)))
}

/// The next connection the client made, its hello answered as a server of node 2 would.
async fn accept(accepted: &mut tokio::sync::mpsc::UnboundedReceiver<DuplexStream>) -> DuplexStream {
    let mut server = accepted.recv().await.expect("a connection");
    let hello: handshake::Hello =
        decode(&read_frame(&mut server).await.expect("hello frame")).expect("hello");
    assert_eq!(
        (hello.cluster, hello.from, hello.to),
        (Some(CLUSTER), 1, 2),
        "the hello names who calls whom"
    );
    write_frame(&mut server, &encode(&handshake::Welcome::Accepted).expect("encode")).await.expect("welcome");
    server
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
        let mut server = accept(&mut accepted).await;
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
        let mut server = accept(&mut accepted).await;
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
        let mut server = accept(&mut accepted).await;
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
    // The server takes the connection and the request but never answers it.
    let server = tokio::spawn(async move {
        let mut server = accept(&mut accepted).await;
        read_request(&mut server).await;
        (server, accepted)
    });
    // The caller gives up (as openraft's heartbeat timeout does) after the request went out.
    let cancelled = tokio::time::timeout(
        Duration::from_millis(200),
        conn.append_entries(request(1), RPCOption::new(Duration::from_secs(1))),
    )
    .await;
    assert!(cancelled.is_err(), "the server never answered");
    let (mut old_server, mut accepted) = server.await.expect("server");
    // The late reply to the first request cannot be taken as the answer to the second: the client closed
    // that connection.
    let late = encode(&Reply::<C>::Append(Ok(AppendEntriesResponse::Conflict))).expect("encode");
    assert!(write_frame(&mut old_server, &late).await.is_err(), "the old connection is closed");
    let next = tokio::spawn(async move {
        let mut server = accept(&mut accepted).await;
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
    identity: Arc<ClusterIdentity>,
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
    let network =
        TcpNetwork::<C, BopSnapshot, _>::new(TcpConnector, Duration::from_secs(1), Arc::clone(&identity));
    let raft = Raft::new(1, config, network, store, sm).await.expect("raft");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let inbox = SnapshotInbox { io, dir: dir.join("snapshot-inbox"), blocking: Default::default() };
    let server = tokio::spawn(serve_with(
        crate::net::tcp_listener(listener),
        raft.clone(),
        inbox,
        LeaderContact::default(),
        identity,
        timeouts,
    ));
    (addr, raft, server)
}

/// A connection to the served node 1, greeted as node 2 of [`CLUSTER`].
async fn greeted(addr: &str) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    handshake::greet(&mut stream, &peer_identity(2), 1).await.expect("welcomed");
    stream
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
    let (addr, raft, server) = served(dir.path(), short(), peer_identity(1)).await;
    let mut a = greeted(&addr).await;
    write_frame(&mut a, &begin()).await.expect("send");
    assert!(matches!(ack(&mut a, Duration::from_secs(5)).await, Reply::Ack(Ok(()))));
    write_frame(&mut a, &begin()).await.expect("send");
    assert!(
        matches!(ack(&mut a, Duration::from_secs(5)).await, Reply::Ack(Ok(()))),
        "a new beginning on the same connection abandons the old one"
    );
    // `a` now goes silent holding the inbox; `b` begins and is answered once `a` lost it.
    let mut b = greeted(&addr).await;
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
    let (addr, raft, server) = served(dir.path(), short(), peer_identity(1)).await;
    let mut idle = Vec::new();
    for _ in 0..CONNECTIONS_MAX + 8 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.expect("connect"));
    }
    // A real request on a fresh connection is served once the idle ones were closed.
    let mut peer = greeted(&addr).await;
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

/// The vote the served node holds, through its metrics.
fn term_of(raft: &Raft<C, crate::BopStateMachine>) -> u64 {
    use openraft::async_runtime::WatchReceiver;
    raft.metrics().borrow_watched().current_term
}

/// Waits (bounded) until the served node's metrics show `term`: a served vote request reaches the metrics
/// a moment after its reply.
async fn wait_term(raft: &Raft<C, crate::BopStateMachine>, term: u64) {
    raft.wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.current_term == term, "the vote request's term")
        .await
        .expect("the accepted peer's vote request was served");
}

fn vote_frame(term: u64) -> Vec<u8> {
    encode(&Request::<C>::Vote(VoteRequest::<C>::new(VoteOf::<C>::new(term, 2), None))).expect("encode")
}

/// Hardening finding 8 (the handshake): a Raft message on a connection that did not begin with an
/// accepted hello is never served — here a vote request with a high term, which a served vote would
/// have made the node adopt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raft_message_before_the_hello_is_not_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, raft, server) = served(dir.path(), short(), peer_identity(1)).await;
    let mut raw = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    write_frame(&mut raw, &vote_frame(1000)).await.expect("send");
    let answer = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut raw)).await.expect("bounded");
    let refused = answer.ok().map(|frame| decode::<handshake::Welcome>(&frame));
    assert!(
        matches!(refused, None | Some(Ok(handshake::Welcome::Refused(_)))),
        "a refusal or a closed connection, not a vote reply: {refused:?}"
    );
    let mut buf = [0u8; 1];
    let closed =
        tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf)).await.expect("closed in time");
    assert!(matches!(closed, Ok(0) | Err(_)), "the server closed the connection: {closed:?}");
    assert_eq!(term_of(&raft), 0, "the vote request was not served");
    // A greeted vote request of term 3 is served and its term shows: had the first one been served, the
    // node's term would be 1000 and stay so.
    let mut peer = greeted(&addr).await;
    write_frame(&mut peer, &vote_frame(3)).await.expect("send");
    assert!(matches!(ack(&mut peer, Duration::from_secs(5)).await, Reply::Vote(Ok(_))));
    wait_term(&raft, 3).await;
    server.abort();
    raft.shutdown().await.expect("shutdown");
}

/// A hello from another cluster, from a peer with no cluster, or meant for another node id is refused
/// with its reason, and nothing sent after it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hellos_of_another_cluster_or_for_another_node_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, raft, server) = served(dir.path(), short(), peer_identity(1)).await;
    let cases = [
        (ClusterIdentity::new(2, Some(ClusterId([8; 16]))), 1, "is of cluster"),
        (ClusterIdentity::new(2, None), 1, "names no cluster"),
        (ClusterIdentity::new(2, Some(CLUSTER)), 9, "this is node 1, not node 9"),
    ];
    for (identity, to, reason) in cases {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        let refused = handshake::greet(&mut stream, &identity, to).await.expect_err("refused");
        assert_eq!(refused.kind(), io::ErrorKind::PermissionDenied);
        assert!(refused.to_string().contains(reason), "{refused} names {reason:?}");
        let _ = write_frame(&mut stream, &vote_frame(1000)).await;
        let mut buf = [0u8; 1];
        let closed =
            tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.expect("closed");
        assert!(matches!(closed, Ok(0) | Err(_)), "closed after the refusal: {closed:?}");
    }
    // The right hello is accepted and its requests are served.
    let mut peer = greeted(&addr).await;
    write_frame(&mut peer, &vote_frame(3)).await.expect("send");
    assert!(matches!(ack(&mut peer, Duration::from_secs(5)).await, Reply::Vote(Ok(_))));
    wait_term(&raft, 3).await;
    server.abort();
    raft.shutdown().await.expect("shutdown");
}

/// A node with no cluster id adopts the first one a peer names (kept before it answers) and then refuses
/// every other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_cluster_adopts_the_first_one_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kept = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let sink = Arc::clone(&kept);
    let identity = Arc::new(ClusterIdentity::new(1, None).persisted_by(Box::new(move |id| {
        sink.lock().push(id);
        Ok(())
    })));
    let (addr, raft, server) = served(dir.path(), short(), Arc::clone(&identity)).await;
    let _first = greeted(&addr).await;
    assert_eq!(identity.cluster(), Some(CLUSTER));
    assert_eq!(*kept.lock(), vec![CLUSTER], "kept before the peer was welcomed");
    let mut other = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let refused = handshake::greet(&mut other, &ClusterIdentity::new(3, Some(ClusterId([9; 16]))), 1).await;
    assert!(refused.is_err(), "a second cluster is refused");
    assert_eq!(*kept.lock(), vec![CLUSTER]);
    server.abort();
    raft.shutdown().await.expect("shutdown");
}

/// The throwaway PKI of nodes 1–3, and a second CA's node 2.
fn pki() -> (Vec<super::tls::TransportTls>, super::tls::TransportTls) {
    let (ca, nodes) = super::tls::throwaway_pki(&[1, 2, 3]).expect("pki");
    let tls = nodes
        .iter()
        .map(|(_, cert, key)| {
            super::tls::TransportTls::from_pem(ca.as_bytes(), cert.as_bytes(), key.as_bytes()).expect("tls")
        })
        .collect();
    let (other_ca, other) = super::tls::throwaway_pki(&[2]).expect("pki");
    let stranger =
        super::tls::TransportTls::from_pem(other_ca.as_bytes(), other[0].1.as_bytes(), other[0].2.as_bytes())
            .expect("tls");
    (tls, stranger)
}

/// Issue 16 (mutual TLS on the transport): with TLS on, a peer is served only over TLS, with a certificate
/// of the cluster's CA that names the node id its hello claims; a client accepts only a server whose
/// certificate names the node it dialled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_only_a_peer_certified_for_its_node_id_is_served() {
    let (tls, stranger) = pki();
    let dir = tempfile::tempdir().expect("tempdir");
    let server_identity = Arc::new(ClusterIdentity::new(1, Some(CLUSTER)).with_tls(tls[0].clone()));
    let (addr, raft, server) = served(dir.path(), short(), server_identity).await;
    let closed = |mut stream: tokio::net::TcpStream| async move {
        let mut buf = [0u8; 64];
        loop {
            match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    };
    // Plain TCP to a TLS server: a raw vote is not served, the connection closes.
    let mut raw = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    write_frame(&mut raw, &vote_frame(1000)).await.expect("send");
    assert!(closed(raw).await, "a plain connection is closed");
    // A certificate of another CA: the TLS handshake fails.
    // (Under TLS 1.3 the client may finish its side before the server's refusal arrives: then the hello
    // fails.)
    let raw = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    if let Ok(mut stream) = stranger.connect(raw, 1).await {
        assert!(handshake::greet(&mut stream, &peer_identity(2), 1).await.is_err(), "another CA is refused");
    }
    // Node 3's certificate claiming to be node 2: refused after the hello.
    let raw = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let mut stream = tls[2].connect(raw, 1).await.expect("TLS with a certificate of the CA");
    let refused = handshake::greet(&mut stream, &peer_identity(2), 1).await.expect_err("refused");
    assert!(refused.to_string().contains("not node 2's"), "{refused}");
    // Dialling node 1's address as if it were node 3: the client refuses the server's certificate.
    let raw = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    assert!(tls[1].connect(raw, 3).await.is_err(), "node 1's certificate does not name node 3");
    assert_eq!(term_of(&raft), 0, "nothing was served so far");
    // Node 2 with its own certificate is served.
    let raw = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let mut stream = tls[1].connect(raw, 1).await.expect("TLS");
    handshake::greet(&mut stream, &peer_identity(2), 1).await.expect("welcomed");
    write_frame(&mut stream, &vote_frame(3)).await.expect("send");
    let reply = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut stream)).await.expect("in time");
    assert!(matches!(decode::<Reply<C>>(&reply.expect("reply")).expect("decodes"), Reply::Vote(Ok(_))));
    wait_term(&raft, 3).await;
    server.abort();
    raft.shutdown().await.expect("shutdown");
}

/// Issue 16: a snapshot is accepted only from the leader its vote names (the sender's hello, proven by its
/// certificate with TLS), under a vote a quorum granted, and not from a leader this node saw superseded —
/// checked at `SnapshotBegin`, before anything is staged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_accepted_only_from_the_leader_its_vote_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, raft, server) = served(dir.path(), short(), peer_identity(1)).await;
    let begin_with = |vote: VoteOf<C>| {
        encode(&Request::<C>::SnapshotBegin { vote, meta: SnapshotMetaOf::<C>::default(), files: Vec::new() })
            .expect("encode")
    };
    let mut peer = greeted(&addr).await; // node 2
    let cases = [
        (VoteOf::<C>::new_committed(1, 3), "under node 3's leadership"),
        (VoteOf::<C>::new(1, 2), "no quorum granted"),
    ];
    for (vote, reason) in cases {
        write_frame(&mut peer, &begin_with(vote)).await.expect("send");
        match ack(&mut peer, Duration::from_secs(5)).await {
            Reply::Ack(Err(e)) => assert!(e.contains(reason), "{e} names {reason:?}"),
            _ => panic!("a snapshot begun by the wrong sender was accepted"),
        }
    }
    write_frame(&mut peer, &begin_with(VoteOf::<C>::new_committed(1, 2))).await.expect("send");
    assert!(matches!(ack(&mut peer, Duration::from_secs(5)).await, Reply::Ack(Ok(()))), "the leader's own");
    // The node moves on to term 5; node 2's leadership of term 1 is superseded.
    write_frame(&mut peer, &vote_frame(5)).await.expect("send");
    assert!(matches!(ack(&mut peer, Duration::from_secs(5)).await, Reply::Vote(Ok(_))));
    wait_term(&raft, 5).await;
    write_frame(&mut peer, &begin_with(VoteOf::<C>::new_committed(1, 2))).await.expect("send");
    match ack(&mut peer, Duration::from_secs(5)).await {
        Reply::Ack(Err(e)) => assert!(e.contains("superseded"), "{e}"),
        _ => panic!("a superseded leader's snapshot was accepted"),
    }
    server.abort();
    raft.shutdown().await.expect("shutdown");
}

/// A leadership transfer is served only when the vote it carries names the sending peer as the leader: a
/// peer cannot make this node stop or start leading in another leader's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leadership_transfer_is_accepted_only_from_the_leader_its_vote_names() {
    use openraft::raft::TransferLeaderRequest;
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, raft, server) = served(dir.path(), short(), peer_identity(1)).await;
    let mut peer = greeted(&addr).await; // node 2
    let transfer = |leader: u64| {
        encode(&Request::<C>::TransferLeader(TransferLeaderRequest::new(
            VoteOf::<C>::new_committed(1, leader),
            1,
            None,
        )))
        .expect("encode")
    };
    write_frame(&mut peer, &transfer(3)).await.expect("send");
    match ack(&mut peer, Duration::from_secs(5)).await {
        Reply::TransferLeader(Err(e)) => assert!(e.contains("under node 3's vote"), "{e}"),
        _ => panic!("a transfer sent in another leader's name was served"),
    }
    write_frame(&mut peer, &transfer(2)).await.expect("send");
    assert!(
        matches!(ack(&mut peer, Duration::from_secs(5)).await, Reply::TransferLeader(Ok(_))),
        "the leader's own transfer is served"
    );
    server.abort();
    raft.shutdown().await.expect("shutdown");
}

/// A body claiming a string longer than memory (an error reply's message, as a peer could send one) is an
/// error, not a panic ("capacity overflow", u64::MAX bytes) or an abort (a failed allocation of 1 TiB).
/// Found by fuzzing (`fuzz/run raft_message`).
#[test]
fn a_claimed_length_past_the_frame_is_an_error_not_a_crash() {
    let real = encode(&Reply::<C>::Ack(Err("x".into()))).expect("encode");
    let at = real.len() - 2;
    assert_eq!(&real[at..], &[1, b'x'], "the message's length and byte end the body");
    for claimed in [u64::MAX, 1 << 40, DECODE_CLAIM_MAX as u64 + 1] {
        let mut body = real[..at].to_vec();
        body.push(253); // a u64 length follows (bincode's varint)
        body.extend_from_slice(&claimed.to_le_bytes());
        body.push(b'x');
        assert!(decode::<Reply<C>>(&body).is_err(), "a claimed length of {claimed}");
    }
    assert!(decode::<Reply<C>>(&real).is_ok(), "the real reply still decodes");
}
