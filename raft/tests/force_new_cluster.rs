//! Quorum-loss recovery: with two of three data directories deleted, the survivor alone never elects a
//! leader; restarted with `force_new_cluster` it leads a cluster of one with every acknowledged row, takes
//! writes, and a new node joins it. A later start with the setting still on changes nothing.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use bop_raft::node::{Node, NodeConfig, NodeEnv};
use openraft::async_runtime::WatchReceiver;
use serde_json::{json, Value};

#[path = "common/hardening.rs"]
mod common;
#[path = "common/loopback.rs"]
mod loopback;

async fn start(dir: &Path, id: u64, force_new_cluster: bool) -> Node {
    start_at(dir, id, force_new_cluster, "127.0.0.1:0", "127.0.0.1:0").await
}

/// Node `id` listening at the given addresses (a restart keeps the ones its membership records).
async fn start_at(dir: &Path, id: u64, force_new_cluster: bool, raft_addr: &str, http_addr: &str) -> Node {
    let config = NodeConfig {
        id,
        data_dir: dir.join(format!("node-{id}")),
        raft_addr: raft_addr.into(),
        http_addr: http_addr.into(),
    };
    Node::start_in(config, NodeEnv { force_new_cluster, ..NodeEnv::default() }).await.expect("start")
}

fn voters(node: &Node) -> BTreeSet<u64> {
    node.raft().metrics().borrow_watched().membership_config.membership().voter_ids().collect()
}

async fn write(addr: &str, from: u64, to: u64) {
    let statements: Vec<Value> = (from..to).map(|i| json!(format!("INSERT INTO t VALUES ({i})"))).collect();
    let (status, body) =
        common::http(addr, "POST", "/db/execute", json!(statements).to_string().as_bytes()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["results"].as_array().unwrap().iter().all(|r| r.get("error").is_none()), "{body}");
}

/// `count(*), sum(x)` of `t` read on the node itself, once it equals `expected` (at most 30 s).
async fn holds(node: &Node, expected: Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let path = format!("/db/query?level=none&q={}", common::encode("SELECT count(*), sum(x) FROM t"));
    loop {
        let (_, body) = common::http(node.http_addr(), "GET", &path, b"").await;
        if body["results"][0]["values"] == expected {
            return;
        }
        assert!(Instant::now() < deadline, "node {} holds {body}, not {expected}", node.id());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_survivor_forced_into_a_new_cluster_keeps_its_data_takes_writes_and_new_members() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = loopback::three_nodes(dir.path()).await;
    let leader = loopback::leader_of(&nodes).http_addr().to_owned();
    let (status, _) = common::http(&leader, "POST", "/db/execute", br#"["CREATE TABLE t(x)"]"#).await;
    assert_eq!(status, 200);
    write(&leader, 1, 101).await;
    // Every node applied the rows (the survivor is one of the followers, or the leader).
    for node in &nodes {
        holds(node, json!([[100, 5050]])).await;
    }
    for node in nodes {
        node.shutdown().await;
    }
    std::fs::remove_dir_all(dir.path().join("node-2")).expect("delete node 2's data");
    std::fs::remove_dir_all(dir.path().join("node-3")).expect("delete node 3's data");

    // Alone, the survivor waits for a quorum that never comes.
    let survivor = start(dir.path(), 1, false).await;
    let waited =
        survivor.raft().wait(Some(Duration::from_secs(2))).metrics(|m| m.state.is_leader(), "leads").await;
    assert!(waited.is_err(), "it led without a quorum");
    survivor.shutdown().await;

    let survivor = start(dir.path(), 1, true).await;
    survivor
        .raft()
        .wait(Some(Duration::from_secs(30)))
        .metrics(|m| m.state.is_leader(), "leads")
        .await
        .expect("the forced node leads");
    assert_eq!(voters(&survivor), BTreeSet::from([1]));
    holds(&survivor, json!([[100, 5050]])).await;
    write(survivor.http_addr(), 101, 111).await;
    let path = format!("/db/query?level=linearizable&q={}", common::encode("SELECT count(*) FROM t"));
    let (status, body) = common::http(survivor.http_addr(), "GET", &path, b"").await;
    assert_eq!((status, &body["results"][0]["values"]), (200, &json!([[110]])), "{body}");

    // A new node joins as a voter and gets everything.
    let joiner = start(dir.path(), 4, false).await;
    let join = json!({ "id": 4, "addr": joiner.member_addr() }).to_string();
    let (status, body) = common::http(survivor.http_addr(), "POST", "/join", join.as_bytes()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(voters(&survivor), BTreeSet::from([1, 4]));
    holds(&joiner, json!([[110, 6105]])).await;

    // Restarted with the setting still on, the survivor keeps the members it has.
    let (raft_addr, http_addr) = (survivor.raft_addr().to_owned(), survivor.http_addr().to_owned());
    survivor.shutdown().await;
    let survivor = start_at(dir.path(), 1, true, &raft_addr, &http_addr).await;
    survivor
        .raft()
        .wait(Some(Duration::from_secs(30)))
        .metrics(|m| m.current_leader.is_some() && m.last_applied >= m.local_committed, "a leader, applied")
        .await
        .expect("the two-node cluster has a leader");
    assert_eq!(voters(&survivor), BTreeSet::from([1, 4]), "a second force threw the new member out");
    // (A follower passes the write on to the leader.)
    write(survivor.http_addr(), 111, 112).await;
    holds(&survivor, json!([[111, 6216]])).await;
    holds(&joiner, json!([[111, 6216]])).await;
    survivor.shutdown().await;
    joiner.shutdown().await;

    // A node with no data has nothing to recover.
    let empty = tempfile::tempdir().expect("tempdir");
    let config = NodeConfig {
        id: 7,
        data_dir: empty.path().join("node-7"),
        raft_addr: "127.0.0.1:0".into(),
        http_addr: "127.0.0.1:0".into(),
    };
    let refused = Node::start_in(config, NodeEnv { force_new_cluster: true, ..NodeEnv::default() }).await;
    let error = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("holds no Raft log"), "{error}");
}
