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
        let node = start(dir, id, env(id)).await;
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
    leads_and_applied(leader_of(&nodes)).await;
    nodes
}

/// Node 1 alone as a cluster of one, with its data under `dir`, in the environment `env`; once it leads and
/// has applied its log.
#[allow(dead_code)] // not every test that includes this file uses it
pub async fn one_node_in(dir: &Path, env: bop_raft::node::NodeEnv) -> Node {
    let node = start(dir, 1, env).await;
    node.initialize_if_new([(1, node.member_addr())].into()).await.expect("initialize");
    leads_and_applied(&node).await;
    node
}

/// Node `id` on loopback ports the OS picks, its data in `dir/node-ID`.
async fn start(dir: &Path, id: u64, env: bop_raft::node::NodeEnv) -> Node {
    let config = NodeConfig {
        id,
        data_dir: dir.join(format!("node-{id}")),
        raft_addr: "127.0.0.1:0".into(),
        http_addr: "127.0.0.1:0".into(),
    };
    Node::start_in(config, env).await.expect("start")
}

/// Waits (at most 30 s) until `leader` leads and has applied everything in its log.
async fn leads_and_applied(leader: &Node) {
    leader
        .raft()
        .wait(Some(Duration::from_secs(30)))
        .metrics(|m| m.state.is_leader() && m.last_applied.map(|l| l.index) == m.last_log_index, "ready")
        .await
        .expect("the leader applied its log");
}

/// The node that `nodes[0]` knows as leader.
pub fn leader_of(nodes: &[Node]) -> &Node {
    use openraft::async_runtime::WatchReceiver;
    let id = nodes[0].raft().metrics().borrow_watched().current_leader.expect("a leader");
    nodes.iter().find(|n| n.id() == id).expect("the leader is one of the nodes")
}
