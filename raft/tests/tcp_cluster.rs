//! Raft over TCP on loopback: a three-node cluster of bop's state machine agrees on the same pages, a
//! follower that was down catches up, and malformed or corrupt frames are refused without taking a node down.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bop_raft::tcp::tls::{throwaway_pki, TransportTls};
use bop_raft::tcp::{
    read_frame, serve, write_frame, ClusterId, ClusterIdentity, SnapshotInbox, TcpConnector, TcpNetwork,
    FRAME_BYTES_MAX,
};
use bop_raft::{BopSnapshot, LogStore};
use bop_storage::io::BufferedIo;
use common::bop::{commit, contents, create, open_node, BopRaft};
use openraft::async_runtime::WatchReceiver;
use openraft::impls::BasicNode;
use openraft::{Config, Raft};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

const WAIT: Option<Duration> = Some(Duration::from_secs(30));

struct Node {
    raft: BopRaft,
    store: LogStore<bop_raft::BopConfig>,
    sm: bop_raft::BopStateMachine,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(dir: &std::path::Path, id: u64, listener: TcpListener) -> Node {
    start_with(dir, id, listener, None).await
}

/// [`start`], speaking mutual TLS with `tls` when given.
async fn start_with(
    dir: &std::path::Path,
    id: u64,
    listener: TcpListener,
    tls: Option<TransportTls>,
) -> Node {
    let config = Arc::new(
        Config {
            heartbeat_interval: 50,
            election_timeout_min: 300,
            election_timeout_max: 600,
            max_in_snapshot_log_to_keep: 0,
            ..Default::default()
        }
        .validate()
        .expect("config"),
    );
    let node_dir = dir.join(format!("node-{id}"));
    let (store, sm) = open_node(&node_dir);
    let mut identity = ClusterIdentity::new(id, Some(ClusterId([1; 16])));
    if let Some(tls) = tls {
        identity = identity.with_tls(tls);
    }
    let identity = Arc::new(identity);
    let network =
        TcpNetwork::<_, BopSnapshot, _>::new(TcpConnector, Duration::from_secs(2), Arc::clone(&identity));
    let raft = Raft::new(id, config, network, store.clone(), sm.clone()).await.expect("raft");
    let inbox = SnapshotInbox {
        io: Arc::new(BufferedIo::new()),
        dir: node_dir.join("snapshot-inbox"),
        blocking: Default::default(),
    };
    let server = tokio::spawn(serve(
        bop_raft::net::tcp_listener(listener),
        raft.clone(),
        inbox,
        Default::default(),
        identity,
    ));
    Node { raft, store, sm, server }
}

async fn stop(node: Node) {
    node.server.abort();
    node.raft.shutdown().await.expect("shutdown");
    node.store.close().expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_tcp_hold_the_same_pages_and_a_restarted_follower_catches_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut listeners = Vec::new();
    let mut members = BTreeMap::new();
    for id in 1..=3u64 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        members.insert(id, BasicNode::new(listener.local_addr().expect("addr").to_string()));
        listeners.push(listener);
    }
    let mut nodes = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        nodes.push(Some(start(dir.path(), i as u64 + 1, listener).await));
    }
    let first = nodes[0].as_ref().expect("node 1");
    first.raft.initialize(members.clone()).await.expect("initialize");
    let m = first.raft.wait(WAIT).metrics(|m| m.current_leader.is_some(), "leader").await.expect("leader");
    let leader_id = m.current_leader.expect("leader id");
    let leader = nodes[leader_id as usize - 1].as_ref().expect("leader node").raft.clone();
    leader
        .wait(WAIT)
        .metrics(|m| m.state.is_leader() && m.last_applied.map(|l| l.index) == m.last_log_index, "ready")
        .await
        .expect("ready");

    let db = create(&leader, "tcp").await;
    for version in 1..=30u64 {
        commit(&leader, db, &[1, (version % 4 + 2) as u32], version, 6).await;
    }

    // Take a follower down, write more, bring it back on the same address: it catches up from the log.
    let follower_id = (1..=3u64).find(|id| *id != leader_id).expect("a follower");
    let down = nodes[follower_id as usize - 1].take().expect("follower");
    stop(down).await;
    let mut last = 0;
    for version in 31..=40u64 {
        last = commit(&leader, db, &[1, 2], version, 6).await;
    }
    let addr = members[&follower_id].addr.clone();
    let listener = TcpListener::bind(&addr).await.expect("rebind the follower's address");
    nodes[follower_id as usize - 1] = Some(start(dir.path(), follower_id, listener).await);

    for node in nodes.iter().flatten() {
        node.raft.wait(WAIT).applied_index_at_least(Some(last), "applied").await.expect("applied");
    }
    let expected = contents(&nodes[0].as_ref().expect("node").sm);
    assert_eq!(expected.len(), 6);
    for node in nodes.iter().flatten() {
        assert_eq!(contents(&node.sm), expected, "every node holds the same pages");
    }

    // Snapshot and purge on the leader; a fourth node joins over TCP and catches up through the snapshot,
    // streamed in chunks.
    leader.trigger().snapshot().await.expect("snapshot");
    leader
        .wait(WAIT)
        .metrics(|m| m.snapshot.is_some_and(|s| s.index >= last), "snapshot")
        .await
        .expect("snapshot");
    leader.trigger().purge_log(last).await.expect("purge");
    leader.wait(WAIT).metrics(|m| m.purged.is_some_and(|p| p.index >= last), "purged").await.expect("purged");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let node4 = start(dir.path(), 4, listener).await;
    leader.add_learner(4, BasicNode::new(addr), true).await.expect("add learner");
    let last = commit(&leader, db, &[3], 41, 6).await;
    node4.raft.wait(WAIT).applied_index_at_least(Some(last), "learner caught up").await.expect("caught up");
    let installed = node4.raft.metrics().borrow_watched().snapshot;
    assert!(installed.is_some(), "the learner installed a snapshot received over TCP");
    let leader_node = nodes[leader_id as usize - 1].as_ref().expect("leader node");
    leader_node.raft.wait(WAIT).applied_index_at_least(Some(last), "applied").await.expect("applied");
    assert_eq!(contents(&node4.sm), contents(&leader_node.sm), "the learner holds the same pages");
    let inbox = dir.path().join("node-4/snapshot-inbox");
    assert_eq!(std::fs::read_dir(&inbox).map(|d| d.count()).unwrap_or(0), 0, "the staging area is emptied");
    stop(node4).await;
    for node in nodes.into_iter().flatten() {
        stop(node).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_oversized_and_malformed_frames_are_refused_and_the_server_stays_up() {
    // Frames round-trip, and a flipped bit or an oversized length is refused.
    let (mut a, mut b) = tokio::io::duplex(1 << 16);
    write_frame(&mut a, b"hello").await.expect("write");
    assert_eq!(read_frame(&mut b).await.expect("read"), b"hello");
    let mut raw = Vec::new();
    write_frame(&mut raw, b"hello").await.expect("encode");
    raw[9] ^= 1;
    a.write_all(&raw).await.expect("write");
    assert_eq!(read_frame(&mut b).await.expect_err("corrupt").kind(), std::io::ErrorKind::InvalidData);
    let mut huge = ((FRAME_BYTES_MAX + 1) as u32).to_le_bytes().to_vec();
    huge.extend_from_slice(&[0u8; 4]);
    a.write_all(&huge).await.expect("write");
    assert_eq!(read_frame(&mut b).await.expect_err("oversized").kind(), std::io::ErrorKind::InvalidData);

    // A server given garbage closes that connection and keeps serving others.
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let node = start(dir.path(), 1, listener).await;
    let mut garbage = TcpStream::connect(addr).await.expect("connect");
    write_frame(&mut garbage, b"not a raft request").await.expect("send");
    // At most a refusal of the "hello" (the first frame must be one), then the connection is closed.
    let answer =
        tokio::time::timeout(Duration::from_secs(5), read_frame(&mut garbage)).await.expect("answers");
    let closed = match answer {
        Ok(_refusal) => {
            tokio::time::timeout(Duration::from_secs(5), read_frame(&mut garbage)).await.expect("closes")
        }
        Err(e) => Err(e),
    };
    assert!(closed.is_err(), "the malformed connection is closed");
    let mut members = BTreeMap::new();
    members.insert(1u64, BasicNode::new(addr.to_string()));
    node.raft.initialize(members).await.expect("initialize");
    node.raft.wait(WAIT).metrics(|m| m.state.is_leader(), "leader").await.expect("still serving");
    stop(node).await;
}

/// Issue 16: the same cluster over mutual TLS (a throwaway CA; each node's certificate names its id)
/// elects a leader and replicates commits to every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_mutual_tls_replicate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, certs) = throwaway_pki(&[1, 2, 3]).expect("pki");
    let mut members = BTreeMap::new();
    let mut nodes = Vec::new();
    for (id, cert, key) in certs {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        members.insert(id, BasicNode::new(listener.local_addr().expect("addr").to_string()));
        let tls = TransportTls::from_pem(ca.as_bytes(), cert.as_bytes(), key.as_bytes()).expect("tls");
        nodes.push(start_with(dir.path(), id, listener, Some(tls)).await);
    }
    nodes[0].raft.initialize(members).await.expect("initialize");
    let m = nodes[0].raft.wait(WAIT).metrics(|m| m.current_leader.is_some(), "leader").await.expect("leader");
    let leader = &nodes[m.current_leader.expect("leader id") as usize - 1];
    // Leading with an entry of its term applied (so its lease holds for the proposals below).
    leader
        .raft
        .wait(WAIT)
        .metrics(
            |m| {
                m.state.is_leader()
                    && m.last_applied.is_some()
                    && m.last_applied.map(|l| l.index) == m.last_log_index
            },
            "leading",
        )
        .await
        .expect("leading");
    let db = create(&leader.raft, "tls").await;
    let last = commit(&leader.raft, db, &[1, 2], 1, 5).await;
    for node in &nodes {
        node.raft
            .wait(WAIT)
            .applied_index_at_least(Some(last), "replicated")
            .await
            .expect("replicated over TLS");
        assert_eq!(contents(&node.sm), contents(&leader.sm), "node holds the same pages");
    }
    for node in nodes {
        stop(node).await;
    }
}
