//! A three-node cluster of real nodes on loopback (the OS picks the ports), for tests that talk to its HTTP
//! API. Included with `#[path = "common/loopback.rs"] mod loopback;`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bop_raft::node::{Node, NodeConfig};

/// Starts nodes 1–3 with their data under `dir`, forms the cluster, and waits (at most 30 s each) until
/// every node knows the leader and the leader has applied everything in its log (its own term's first
/// entry included), so that a request sent now is served, forwarded or redirected at once.
pub async fn three_nodes(dir: &Path) -> Vec<Node> {
    three_nodes_in(dir, |_| bop_raft::node::NodeEnv::default()).await
}

/// [`three_nodes`], each node started in the environment `env(id)` gives it (TLS, users).
pub async fn three_nodes_in(dir: &Path, env: impl Fn(u64) -> bop_raft::node::NodeEnv) -> Vec<Node> {
    let mut nodes = Vec::new();
    let mut members = BTreeMap::new();
    for id in 1..=3u64 {
        let config = NodeConfig {
            id,
            data_dir: dir.join(format!("node-{id}")),
            raft_addr: "127.0.0.1:0".into(),
            http_addr: "127.0.0.1:0".into(),
        };
        let node = Node::start_in(config, env(id)).await.expect("start");
        members.insert(id, node.member_addr());
        nodes.push(node);
    }
    nodes[0].initialize_if_new(members).await.expect("initialize");
    for node in &nodes {
        node.raft()
            .wait(Some(Duration::from_secs(30)))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .expect("every node knows the leader");
    }
    let leader = leader_of(&nodes);
    leader
        .raft()
        .wait(Some(Duration::from_secs(30)))
        .metrics(|m| m.state.is_leader() && m.last_applied.map(|l| l.index) == m.last_log_index, "ready")
        .await
        .expect("the leader applied its log");
    nodes
}

/// The node that `nodes[0]` knows as leader.
pub fn leader_of(nodes: &[Node]) -> &Node {
    use openraft::async_runtime::WatchReceiver;
    let id = nodes[0].raft().metrics().borrow_watched().current_leader.expect("a leader");
    nodes.iter().find(|n| n.id() == id).expect("the leader is one of the nodes")
}
