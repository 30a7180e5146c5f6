//! Removal of dead members (`NodeEnv::remove_dead_after`, `bop node --remove-dead-after`): on a three-node
//! cluster with it set, a follower that stops is removed from the membership by the leader within a
//! bounded wait, and the two that remain go on taking writes; a running follower is never removed; without
//! the setting a dead member stays.

#[path = "common/loopback.rs"]
mod loopback;

use std::time::{Duration, Instant};

use bop_raft::node::{Node, NodeEnv};
use openraft::async_runtime::WatchReceiver;

fn members(node: &Node) -> Vec<u64> {
    node.raft().metrics().borrow_watched().membership_config.membership().nodes().map(|(id, _)| *id).collect()
}

async fn write(node: &Node, sql: &str) -> u16 {
    let mut conn = bop_raft::http_client::HttpConn::connect(node.http_addr(), Duration::from_secs(5))
        .await
        .expect("connect");
    let body = serde_json::json!([sql]).to_string();
    conn.call(hyper::Method::POST, "/db/execute", body.into(), 1 << 20).await.expect("answer").0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_silent_past_the_timeout_is_removed_and_the_rest_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let after = Duration::from_secs(2);
    let mut nodes = loopback::three_nodes_in(dir.path(), |_| NodeEnv {
        remove_dead_after: Some(after),
        ..NodeEnv::default()
    })
    .await;
    let leader_id = loopback::leader_of(&nodes).id();
    assert_eq!(write(loopback::leader_of(&nodes), "CREATE TABLE t (x)").await, 200);
    // Running followers are heard from all the time: nobody is removed in three timeouts.
    tokio::time::sleep(after * 3).await;
    assert_eq!(members(loopback::leader_of(&nodes)).len(), 3, "a running follower was removed");

    let gone = nodes.iter().position(|n| n.id() != leader_id).expect("a follower");
    let gone_id = nodes[gone].id();
    let stopped = Instant::now();
    nodes.remove(gone).shutdown().await;
    let leader = nodes.iter().find(|n| n.id() == leader_id).expect("the leader");
    while members(leader).contains(&gone_id) {
        assert!(stopped.elapsed() < Duration::from_secs(30), "the dead follower was not removed within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its last acknowledgement came at most a heartbeat (100 ms) before it began to stop.
    let heard_last = Duration::from_millis(250);
    assert!(stopped.elapsed() + heard_last >= after, "removed {:?} after it stopped", stopped.elapsed());
    assert_eq!(members(leader).len(), 2);
    assert_eq!(write(leader, "INSERT INTO t VALUES (1)").await, 200, "the two that remain commit");
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_setting_a_dead_member_stays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nodes = loopback::three_nodes(dir.path()).await;
    let leader_id = loopback::leader_of(&nodes).id();
    let gone = nodes.iter().position(|n| n.id() != leader_id).expect("a follower");
    nodes.remove(gone).shutdown().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let leader = nodes.iter().find(|n| n.id() == leader_id).expect("the leader");
    assert_eq!(members(leader).len(), 3);
    for node in nodes {
        node.shutdown().await;
    }
}
