//! Membership and leadership operations (docs/design.md, "The node and its HTTP API"): `/join` never makes a
//! voter of a node that has not caught up, `POST /leader` hands leadership over, and a leader that shuts
//! down cleanly hands it over first.

mod common;

use std::time::Duration;

use common::hardening::*;
use openraft::async_runtime::WatchReceiver;
use serde_json::json;

fn voters(node: &bop_raft::node::Node) -> Vec<u64> {
    node.raft().metrics().borrow_watched().membership_config.membership().voter_ids().collect()
}

/// `/join` of an address where nothing runs used to be promoted at once (openraft's catch-up wait counts a
/// learner within 5000 entries of the leader as caught up, even one that never answered): four voters,
/// one of them dead, in every quorum from then on. Now the call fails after `timeout` and the node stays
/// a learner; writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_of_an_address_where_nothing_runs_adds_no_voter() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start().await;
    let leader = cluster.leader().await;
    let addr = leader.http_addr().to_owned();
    let body = json!({ "id": 9, "addr": "127.0.0.1:1", "voter": true }).to_string();
    let started = std::time::Instant::now();
    let (status, out) = http(&addr, "POST", "/join?timeout=1s", body.as_bytes()).await;
    assert_eq!(status, 503, "{out}");
    assert!(out["error"].as_str().unwrap_or_default().contains("did not catch up"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(10), "answered at its timeout: {:?}", started.elapsed());
    assert_eq!(voters(leader), vec![1, 2, 3], "no voter was added");
    let (status, out) =
        http(&addr, "POST", "/db/execute", json!(["CREATE TABLE t (x)"]).to_string().as_bytes()).await;
    assert!(status == 200 && out["results"][0].get("error").is_none(), "writes go on: {status} {out}");
    for node in cluster.nodes {
        node.shutdown().await;
    }
}

/// `POST /leader {"id": N}` hands leadership to N and answers once N leads; without a body, from a
/// follower (which passes it on), to the most up-to-date other voter; an id that is not a voter is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_leader_hands_leadership_over() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start().await;
    let first = cluster.leader().await.id();
    let target = cluster.nodes.iter().map(|n| n.id()).find(|id| *id != first).expect("another node");
    let addr = cluster.nodes[0].http_addr().to_owned();
    let (status, out) = http(&addr, "POST", "/leader", json!({ "id": 77 }).to_string().as_bytes()).await;
    assert_eq!(status, 400, "{out}");
    let (status, out) =
        http(&addr, "POST", "/leader", json!({ "id": target.to_string() }).to_string().as_bytes()).await;
    assert_eq!((status, out["leader"].as_u64()), (200, Some(target)), "{out}");
    assert_eq!(cluster.leader().await.id(), target);

    let follower = cluster.follower().await.http_addr().to_owned();
    let (status, out) = http(&follower, "POST", "/leader", b"").await;
    assert_eq!(status, 200, "{out}");
    let moved = out["leader"].as_u64().expect("the new leader");
    assert_ne!(moved, target);
    assert_eq!(cluster.leader().await.id(), moved);
    for node in cluster.nodes {
        node.shutdown().await;
    }
}

/// A leader's clean shutdown hands leadership to a peer before it stops: when `shutdown` returns, another
/// node already leads. (Before, the others noticed only after an election timeout without heartbeats.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_shuts_down_cleanly_hands_leadership_over_first() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start().await;
    let leader = cluster.leader().await.id();
    let mut nodes = cluster.nodes;
    let at = nodes.iter().position(|n| n.id() == leader).expect("leader");
    let stopping = nodes.remove(at);
    stopping.shutdown().await;
    let leading: Vec<u64> = nodes
        .iter()
        .filter(|n| n.raft().metrics().borrow_watched().state.is_leader())
        .map(|n| n.id())
        .collect();
    assert_eq!(leading.len(), 1, "a peer leads as the old leader's shutdown returns: {leading:?}");
    for node in nodes {
        node.shutdown().await;
    }
}

/// A leader whose followers are all gone keeps naming itself leader (openraft does not step it down) and
/// its writes hang; `/readyz` said 200 throughout. Now it says 503 once no quorum acknowledged it within two
/// election timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_quorum_is_not_ready() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start().await;
    let leader = cluster.leader().await.id();
    let mut nodes = cluster.nodes;
    let at = nodes.iter().position(|n| n.id() == leader).expect("leader");
    let leader = nodes.remove(at);
    let addr = leader.http_addr().to_owned();
    assert_eq!(http(&addr, "GET", "/readyz", b"").await.0, 200);
    for node in nodes {
        node.shutdown().await;
    }
    let until = std::time::Instant::now() + Duration::from_secs(15);
    let out = loop {
        let (status, out) = http(&addr, "GET", "/readyz", b"").await;
        if status == 503 {
            break out;
        }
        assert!(std::time::Instant::now() < until, "still ready 15 s after its followers stopped: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(out["error"].as_str().unwrap_or_default().contains("has not heard from a quorum"), "{out}");
    leader.shutdown().await;
}

/// A learner (a node joined with `"voter": false`) is promoted by joining it again as a voter: the second
/// `/join` finds it caught up and makes it a voter, and it then counts in the quorum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_joined_again_as_a_voter_is_promoted() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start().await;
    let leader = cluster.leader().await;
    let addr = leader.http_addr().to_owned();
    let config = bop_raft::node::NodeConfig {
        id: 4,
        data_dir: cluster._dir.path().join("node-4"),
        raft_addr: "127.0.0.1:0".into(),
        http_addr: "127.0.0.1:0".into(),
    };
    let fourth = bop_raft::node::Node::start(config).await.expect("start node 4");
    let learner = json!({ "id": 4, "addr": fourth.member_addr(), "voter": false }).to_string();
    let (status, out) = http(&addr, "POST", "/join", learner.as_bytes()).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(voters(leader), vec![1, 2, 3], "joined as a learner");
    let voter = json!({ "id": 4, "addr": fourth.member_addr(), "voter": true }).to_string();
    let (status, out) = http(&addr, "POST", "/join", voter.as_bytes()).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(voters(leader), vec![1, 2, 3, 4], "promoted");
    let (status, out) =
        http(&addr, "POST", "/db/execute", json!(["CREATE TABLE t (x)"]).to_string().as_bytes()).await;
    assert!(status == 200 && out["results"][0].get("error").is_none(), "{status} {out}");
    fourth.shutdown().await;
    for node in cluster.nodes {
        node.shutdown().await;
    }
}
