//! In-process Raft clusters whose nodes use `LogStore` (with the kv example's state machine): every node
//! applies the same writes; a node restarted from its log directory catches up; a new node whose log the
//! leader has purged catches up through a snapshot.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bop_raft::{LocalRouter, LogStore};
use bop_storage::io::BufferedIo;
use common::{open_store, KvConfig, KvStateMachine, Put};
use openraft::async_runtime::WatchReceiver;
use openraft::Raft;

type KvRaft = Raft<KvConfig, KvStateMachine>;
const WAIT: Option<Duration> = Some(Duration::from_secs(20));

struct Node {
    raft: KvRaft,
    store: LogStore<KvConfig>,
    sm: KvStateMachine,
}

async fn start(router: &LocalRouter<KvConfig, KvStateMachine>, dir: &Path, id: u64) -> Node {
    let store = open_store(&dir.join(format!("node-{id}")), Arc::new(BufferedIo::new()));
    let sm = KvStateMachine::default();
    let raft = Raft::new(id, common::fast_config(), router.network(id), store.clone(), sm.clone())
        .await
        .expect("raft");
    router.add(id, raft.clone());
    Node { raft, store, sm }
}

async fn leader_of(nodes: &[&Node]) -> KvRaft {
    let m = nodes[0].raft.wait(WAIT).metrics(|m| m.current_leader.is_some(), "leader").await.expect("leader");
    let id = m.current_leader.expect("leader id");
    let leader =
        nodes.iter().find(|n| n.raft.metrics().borrow_watched().id == id).expect("leader node").raft.clone();
    leader
        .wait(WAIT)
        .metrics(
            |m| m.state.is_leader() && m.last_applied.map(|l| l.index) == m.last_log_index,
            "leader ready",
        )
        .await
        .expect("leader ready");
    leader
}

async fn write(leader: &KvRaft, from: u64, to: u64) -> u64 {
    let mut last = 0;
    for i in from..to {
        let put = Put { key: format!("k{}", i % 50), value: format!("v{i}") };
        // On two busy cores a leader may miss its quorum's acks for a lease and refuse writes for a moment
        // (`LeaseExpired`) while it stays leader: such a refusal is retried, within a bound.
        let mut tries = 0;
        last = loop {
            match leader.client_write(put.clone()).await {
                Ok(written) => break written.log_id.index,
                Err(openraft::error::RaftError::APIError(
                    openraft::error::ClientWriteError::ForwardToLeader(f),
                )) if f.leader_id.is_none() && tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("write: {e:?}"),
            }
        };
    }
    last
}

fn map(node: &Node) -> std::collections::BTreeMap<String, String> {
    node.sm.state.lock().map.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_apply_the_same_writes_and_a_restarted_node_catches_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let router = LocalRouter::new();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start(&router, dir.path(), id).await);
    }
    nodes[0].raft.initialize(BTreeSet::from([1u64, 2, 3])).await.expect("initialize");
    let leader = leader_of(&nodes.iter().collect::<Vec<_>>()).await;
    let last = write(&leader, 0, 200).await;
    for node in &nodes {
        node.raft.wait(WAIT).applied_index_at_least(Some(last), "applied").await.expect("applied");
    }
    let expected = map(&nodes[0]);
    assert_eq!(expected.len(), 50);
    assert!(nodes.iter().all(|n| map(n) == expected), "every node holds the same data");

    // Restart a follower from its directories: its log and vote come back, it catches up on new writes.
    let leader_id = leader.metrics().borrow_watched().id;
    let follower =
        nodes.iter().position(|n| n.raft.metrics().borrow_watched().id != leader_id).expect("a follower");
    let follower_id = follower as u64 + 1;
    let old = nodes.remove(follower);
    router.remove(&follower_id);
    old.raft.shutdown().await.expect("shutdown");
    let log_before = old.store.wal().state();
    old.store.close().expect("close");
    drop(old);
    let restarted = start(&router, dir.path(), follower_id).await;
    assert_eq!(restarted.store.wal().state().last, log_before.last, "the log survived the restart");
    let last = write(&leader, 200, 260).await;
    restarted
        .raft
        .wait(WAIT)
        .applied_index_at_least(Some(last), "restarted caught up")
        .await
        .expect("caught up");
    nodes.push(restarted);
    for node in &nodes {
        node.raft.wait(WAIT).applied_index_at_least(Some(last), "applied").await.expect("applied");
    }
    let expected = map(&nodes[0]);
    assert!(nodes.iter().all(|n| map(n) == expected), "the restarted node holds the same data");
    for node in &nodes {
        node.raft.shutdown().await.expect("shutdown");
        node.store.close().expect("close");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_catches_up_through_a_snapshot_once_the_log_is_purged() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let router = LocalRouter::new();
    let node1 = start(&router, dir.path(), 1).await;
    node1.raft.initialize(BTreeSet::from([1u64])).await.expect("initialize");
    let leader = leader_of(&[&node1]).await;
    let last = write(&leader, 0, 300).await;

    // Snapshot and purge the leader's log, so a newcomer cannot be sent entries from the start.
    leader.wait(WAIT).applied_index_at_least(Some(last), "applied").await.expect("applied");
    leader.trigger().snapshot().await.expect("snapshot");
    leader
        .wait(WAIT)
        .metrics(|m| m.snapshot.is_some_and(|s| s.index >= last), "snapshot built")
        .await
        .expect("snapshot built");
    leader.trigger().purge_log(last).await.expect("purge");
    leader.wait(WAIT).metrics(|m| m.purged.map(|p| p.index) == Some(last), "purged").await.expect("purged");
    let first = node1.store.wal().state().first_index;
    assert!(first.is_none_or(|f| f > last), "the log is purged up to {last}, first index now {first:?}");

    let node2 = start(&router, dir.path(), 2).await;
    leader.add_learner(2, (), true).await.expect("add learner");
    node2
        .raft
        .wait(WAIT)
        .applied_index_at_least(Some(last), "learner caught up")
        .await
        .expect("learner caught up");
    assert_eq!(map(&node2), map(&node1), "the learner holds the leader's data, received as a snapshot");
    // (A metrics borrow must not live across an await: it holds the watch channel's lock.)
    let installed = node2.raft.metrics().borrow_watched().snapshot;
    assert!(installed.is_some(), "it installed a snapshot");
    for node in [&node1, &node2] {
        node.raft.shutdown().await.expect("shutdown");
        node.store.close().expect("close");
    }
}
