//! Shared by the hardening tests (`hardening.rs`, `hardening_disk.rs`) and `coalescing.rs`: one-shot HTTP
//! calls, a single-node cluster, a three-node loopback cluster, and a node on the simulated disk.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use bop_raft::node::{Node, NodeConfig};
use openraft::async_runtime::WatchReceiver;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The tests of this file run one at a time: several three-node clusters doing heavy SQL at once on a
/// two-core machine miss election timeouts, and a test that expects one leader throughout would flake.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One request per connection: (status, body as JSON or string).
pub async fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    try_http(addr, method, path, body).await.expect("an answer")
}

/// [`http`], or why no answer came (the connection failed or was closed before a whole head arrived).
pub async fn try_http(addr: &str, method: &str, path: &str, body: &[u8]) -> Result<(u16, Value), String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.map_err(|e| format!("send head: {e}"))?;
    // A server may answer before it read the whole body (a declared length past its limit) and close: the
    // answer is read even when sending the rest failed.
    let sent = stream.write_all(body).await.map_err(|e| format!("send body: {e}"));
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(120), stream.read_to_end(&mut raw))
        .await
        .expect("an answer within 120 s");
    if raw.is_empty() {
        sent?;
        read.map_err(|e| format!("read: {e}"))?;
    }
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("closed before the end of a head")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or("no status line")?;
    let body = String::from_utf8_lossy(&raw[split + 4..]).into_owned();
    Ok((status, serde_json::from_str(&body).unwrap_or(Value::String(body))))
}

/// One node, its own cluster, with `limits`, once it leads and applied everything it logged.
pub async fn single_node(dir: &std::path::Path, limits: bop_raft::node::NodeLimits) -> Node {
    use bop_raft::node::NodeEnv;
    let config = NodeConfig {
        id: 1,
        data_dir: dir.join("node-1"),
        raft_addr: "127.0.0.1:0".into(),
        http_addr: "127.0.0.1:0".into(),
    };
    let node = Node::start_in(config, NodeEnv { limits, ..NodeEnv::default() }).await.expect("start");
    node.initialize_if_new(BTreeMap::from([(1, node.member_addr())])).await.expect("init");
    node.raft()
        .wait(Some(Duration::from_secs(30)))
        .metrics(|m| m.state.is_leader() && m.last_applied.map(|l| l.index) == m.last_log_index, "leader")
        .await
        .expect("leader");
    node
}

pub fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// Three nodes on loopback, initialised, with a leader that applied an entry of its term.
pub struct Cluster {
    pub _dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
}

impl Cluster {
    pub async fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut nodes = Vec::new();
        let mut members = BTreeMap::new();
        for id in 1..=3u64 {
            let config = NodeConfig {
                id,
                data_dir: dir.path().join(format!("node-{id}")),
                raft_addr: "127.0.0.1:0".into(),
                http_addr: "127.0.0.1:0".into(),
            };
            let node = Node::start(config).await.expect("start");
            members.insert(id, node.member_addr());
            nodes.push(node);
        }
        nodes[0].initialize_if_new(members).await.expect("initialize");
        let cluster = Cluster { _dir: dir, nodes };
        cluster.leader().await;
        cluster
    }

    /// The leader, once it leads and applied everything it logged.
    pub async fn leader(&self) -> &Node {
        let m = self.nodes[0]
            .raft()
            .wait(Some(Duration::from_secs(30)))
            .metrics(|m| m.current_leader.is_some(), "leader")
            .await
            .expect("leader");
        let id = m.current_leader.expect("leader id");
        let leader = self.nodes.iter().find(|n| n.id() == id).expect("leader node");
        leader
            .raft()
            .wait(Some(Duration::from_secs(30)))
            .metrics(|m| m.state.is_leader() && m.last_applied.map(|l| l.index) == m.last_log_index, "ready")
            .await
            .expect("ready");
        leader
    }

    pub async fn follower(&self) -> &Node {
        let leader = self.leader().await.id();
        self.nodes.iter().find(|n| n.id() != leader).expect("a follower")
    }
}

pub fn raft_running(node: &Node) -> bool {
    node.raft().metrics().borrow_watched().running_state.is_ok()
}

pub async fn count(addr: &str, table: &str) -> Value {
    let (status, out) = http(
        addr,
        "GET",
        &format!("/db/query?level=linearizable&q={}", encode(&format!("SELECT count(*) FROM {table}"))),
        b"",
    )
    .await;
    assert_eq!(status, 200, "{out}");
    out["results"][0]["values"][0][0].clone()
}

/// Node `id`'s configuration in `dir`, on `disk` with 1 MiB log segments and `limits`.
pub fn on_sim_disk(
    dir: &std::path::Path,
    id: u64,
    disk: &bop_storage::io::SimDisk,
    limits: bop_raft::node::NodeLimits,
) -> (NodeConfig, bop_raft::node::NodeEnv) {
    let config = NodeConfig {
        id,
        data_dir: dir.join(format!("node-{id}")),
        raft_addr: "127.0.0.1:0".into(),
        http_addr: "127.0.0.1:0".into(),
    };
    let env = bop_raft::node::NodeEnv {
        io: std::sync::Arc::new(disk.clone()),
        wal_segment_bytes: 1 << 20,
        wal_preallocate: bop_storage::wal::Preallocate::Allocate,
        limits,
        ..bop_raft::node::NodeEnv::default()
    };
    (config, env)
}

/// Node 1 on `disk` (as [`on_sim_disk`]), its own cluster, once it leads.
pub async fn single_node_on_sim_disk(
    dir: &std::path::Path,
    disk: &bop_storage::io::SimDisk,
    limits: bop_raft::node::NodeLimits,
) -> Node {
    let (config, env) = on_sim_disk(dir, 1, disk, limits);
    let node = Node::start_in(config, env).await.expect("start");
    node.initialize_if_new(BTreeMap::from([(1, node.member_addr())])).await.expect("init");
    node.raft()
        .wait(Some(Duration::from_secs(30)))
        .metrics(|m| m.state.is_leader(), "leader")
        .await
        .expect("leader");
    node
}
