//! Regression tests for a full, stalled or failing disk under a node (docs/design.md, "Hardening", findings
//! 14 and 15): each asserts what the node does and that nothing acknowledged is lost.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bop_raft::node::Node;
use common::hardening::*;
use openraft::async_runtime::WatchReceiver;
use serde_json::json;

/// Finding 15: a full disk poisoned the leader's log, stopped its Raft and even its local reads. Now the log
/// holds the work and raises an alarm: the node refuses writes ("disk full", 507), reports it in `/readyz`,
/// hands leadership to a peer, keeps serving reads, and once space is freed it catches up by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_moves_leadership_away_and_the_node_recovers_when_space_returns() {
    use bop_storage::io::SimDisk;
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nodes = Vec::new();
    let mut disks = Vec::new();
    let mut members = BTreeMap::new();
    for id in 1..=3u64 {
        let disk = SimDisk::new(id);
        let (config, env) = on_sim_disk(dir.path(), id, &disk, Default::default());
        let node = Node::start_in(config, env).await.expect("start");
        members.insert(id, node.member_addr());
        nodes.push(node);
        disks.push(disk);
    }
    nodes[0].initialize_if_new(members).await.expect("initialize");
    let cluster = Cluster { _dir: dir, nodes };
    let full = cluster.leader().await.id();
    let full_addr = cluster.nodes[full as usize - 1].http_addr().to_owned();
    let (status, out) =
        http(&full_addr, "POST", "/db/execute", json!(["CREATE TABLE t (b)"]).to_string().as_bytes()).await;
    assert_eq!(status, 200, "{out}");
    // The leader's disk fills: a little room, then none for the next segment.
    let disk = &disks[full as usize - 1];
    disk.set_capacity_bytes(Some(disk.used_bytes() + (256 << 10)));
    let row = json!([["INSERT INTO t VALUES (randomblob(20000))"]]).to_string();
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, out) = http(&full_addr, "POST", "/db/execute", row.as_bytes()).await;
        let ready = http(&full_addr, "GET", "/readyz", b"").await;
        if ready.0 == 503 && ready.1.to_string().contains("disk full") {
            break;
        }
        assert!(status == 200 || status == 507 || status == 503, "{status} {out}");
        assert!(std::time::Instant::now() < until, "no disk-full alarm within 30 s: {ready:?}");
    }
    // Leadership moves to a peer, and writes go on through every node (the full one forwards them).
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while cluster.leader().await.id() == full {
        assert!(std::time::Instant::now() < until, "the full node still leads after 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(raft_running(&cluster.nodes[full as usize - 1]), "its Raft still runs");
    let leader_addr = cluster.leader().await.http_addr().to_owned();
    for _ in 0..5 {
        let (status, out) = http(&leader_addr, "POST", "/db/execute", row.as_bytes()).await;
        assert_eq!(status, 200, "{out}");
        assert!(out["results"][0].get("error").is_none(), "{out}");
    }
    // Local reads on the full node still work.
    let (status, out) =
        http(&full_addr, "GET", &format!("/db/query?level=none&q={}", encode("SELECT count(*) FROM t")), b"")
            .await;
    assert_eq!(status, 200, "{out}");
    assert!(out["results"][0]["values"][0][0].is_number(), "{out}");
    // Space returns: the alarm clears and the node catches up with the leader.
    disk.set_capacity_bytes(None);
    let expected = count(&leader_addr, "t").await;
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready = http(&full_addr, "GET", "/readyz", b"").await.0;
        let (_, out) = http(
            &full_addr,
            "GET",
            &format!("/db/query?level=none&q={}", encode("SELECT count(*) FROM t")),
            b"",
        )
        .await;
        if ready == 200 && out["results"][0]["values"][0][0] == expected {
            break;
        }
        assert!(std::time::Instant::now() < until, "not recovered within 30 s: ready {ready}, {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Finding 14: nothing bounded how long a log write or fdatasync may take. One slower than
/// `disk_stall_max` now makes the node report unhealthy (and, leading a cluster, hand leadership to a peer
/// through the same watch as a full disk, tested above); when the disk answers again it recovers and the
/// write that waited on the disk is acknowledged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_disk_is_reported_and_the_node_recovers_losing_nothing() {
    use bop_raft::node::NodeLimits;
    use bop_storage::io::SimDisk;
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SimDisk::new(11);
    let limits = NodeLimits { disk_stall_max: Duration::from_millis(500), ..NodeLimits::default() };
    let node = single_node_on_sim_disk(dir.path(), &disk, limits).await;
    let addr = node.http_addr().to_owned();
    let (status, out) =
        http(&addr, "POST", "/db/execute", json!(["CREATE TABLE t (x)"]).to_string().as_bytes()).await;
    assert_eq!(status, 200, "{out}");
    disk.pause_syncs();
    let pending = {
        let addr = addr.clone();
        tokio::spawn(async move {
            http(&addr, "POST", "/db/execute", json!([["INSERT INTO t VALUES (1)"]]).to_string().as_bytes())
                .await
        })
    };
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready = http(&addr, "GET", "/readyz", b"").await;
        if ready.0 == 503 && ready.1.to_string().contains("disk stalled") {
            break;
        }
        assert!(std::time::Instant::now() < until, "no stall reported within 30 s: {ready:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, text) = http(&addr, "GET", "/metrics", b"").await;
    let stalled = text
        .as_str()
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("bop_wal_io_stalled_seconds "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(stalled >= 0.5, "the stall shows in /metrics: {stalled}");
    disk.resume_syncs();
    let (status, out) = pending.await.expect("task");
    assert_eq!((status, out["results"][0]["rows_affected"].clone()), (200, json!(1)), "{out}");
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while http(&addr, "GET", "/readyz", b"").await.0 != 200 {
        assert!(std::time::Instant::now() < until, "not ready again within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count(&addr, "t").await, json!(1), "the write is there once");
    node.shutdown().await;
}

/// Finding 14 in a cluster: a leader whose disk stalls past `disk_stall_max` hands leadership to a peer,
/// writes go on through the new leader, and once its disk answers again it catches up; the write that waited
/// on the stalled disk is either acknowledged and present once, or not acknowledged and present at most once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_disk_under_the_leader_moves_leadership_away_and_loses_nothing() {
    use bop_raft::node::NodeLimits;
    use bop_storage::io::SimDisk;
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = NodeLimits { disk_stall_max: Duration::from_millis(500), ..NodeLimits::default() };
    let mut nodes = Vec::new();
    let mut disks = Vec::new();
    let mut members = BTreeMap::new();
    for id in 1..=3u64 {
        let disk = SimDisk::new(20 + id);
        let (config, env) = on_sim_disk(dir.path(), id, &disk, limits);
        let node = Node::start_in(config, env).await.expect("start");
        members.insert(id, node.member_addr());
        nodes.push(node);
        disks.push(disk);
    }
    nodes[0].initialize_if_new(members).await.expect("initialize");
    let cluster = Cluster { _dir: dir, nodes };
    let stalled = cluster.leader().await.id();
    let stalled_addr = cluster.nodes[stalled as usize - 1].http_addr().to_owned();
    let (status, out) =
        http(&stalled_addr, "POST", "/db/execute", json!(["CREATE TABLE t (x)"]).to_string().as_bytes())
            .await;
    assert_eq!(status, 200, "{out}");
    let disk = &disks[stalled as usize - 1];
    disk.pause_syncs();
    let pending = {
        let addr = stalled_addr.clone();
        tokio::spawn(async move {
            http(&addr, "POST", "/db/execute", json!([["INSERT INTO t VALUES (1)"]]).to_string().as_bytes())
                .await
        })
    };
    // A peer leads (as its own metrics say: the stalled node cannot apply, so it is never "ready").
    let until = std::time::Instant::now() + Duration::from_secs(30);
    let new_leader = loop {
        let led_by_peer = cluster
            .nodes
            .iter()
            .find(|n| n.id() != stalled && n.raft().metrics().borrow_watched().state.is_leader());
        if let Some(node) = led_by_peer {
            break node;
        }
        assert!(std::time::Instant::now() < until, "no peer leads 30 s after the stall");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ready = http(&stalled_addr, "GET", "/readyz", b"").await;
    assert_eq!(ready.0, 503, "the stalled node is not ready: {ready:?}");
    let leader_addr = new_leader.http_addr().to_owned();
    for _ in 0..5 {
        let (status, out) = http(
            &leader_addr,
            "POST",
            "/db/execute",
            json!([["INSERT INTO t VALUES (2)"]]).to_string().as_bytes(),
        )
        .await;
        assert_eq!(status, 200, "{out}");
        assert!(out["results"][0].get("error").is_none(), "{out}");
    }
    disk.resume_syncs();
    let (status, out) = tokio::time::timeout(Duration::from_secs(60), pending)
        .await
        .expect("the waiting write is answered once the disk answers")
        .expect("task");
    let acknowledged = status == 200 && out["results"][0]["rows_affected"] == json!(1);
    let q = |sql: &str| format!("/db/query?level=strong&q={}", encode(sql));
    let (_, out) = http(&leader_addr, "GET", &q("SELECT count(*) FROM t WHERE x = 1"), b"").await;
    let ones = out["results"][0]["values"][0][0].as_u64().expect("a count");
    assert!(ones <= 1, "the waiting write is applied at most once: {ones}");
    if acknowledged {
        assert_eq!(ones, 1, "an acknowledged write is present");
    }
    let (_, out) = http(&leader_addr, "GET", &q("SELECT count(*) FROM t WHERE x = 2"), b"").await;
    assert_eq!(out["results"][0]["values"][0][0], json!(5), "every write through the new leader is there");
    // The stalled node catches up and is ready again.
    let expected = count(&leader_addr, "t").await;
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready = http(&stalled_addr, "GET", "/readyz", b"").await.0;
        let (_, out) = http(
            &stalled_addr,
            "GET",
            &format!("/db/query?level=none&q={}", encode("SELECT count(*) FROM t")),
            b"",
        )
        .await;
        if ready == 200 && out["results"][0]["values"][0][0] == expected {
            break;
        }
        assert!(std::time::Instant::now() < until, "not recovered within 30 s: ready {ready}, {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Finding 15, at shutdown: Ctrl-C of `bop up` on a full 480 MiB tmpfs hung in "stopping" (until SIGKILL)
/// after the manifest's ENOSPC had stopped one node's Raft. This checks the part that is the log's: a node
/// whose disk is full while its log holds writes waiting for space stops promptly, and no held write hangs.
/// (It passed before too: the hang needs the stopped Raft, see the manifest's ENOSPC handling.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_is_full_stops_promptly() {
    use bop_storage::io::SimDisk;
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SimDisk::new(31);
    let node = single_node_on_sim_disk(dir.path(), &disk, Default::default()).await;
    disk.set_capacity_bytes(Some(disk.used_bytes() + (256 << 10)));
    // Entries proposed straight to Raft (the HTTP API refuses writes once the alarm is up, so it cannot
    // be made to hold one), more than the space left takes: the log holds those it has no room for. Their
    // records do not decode, so applying one changes nothing (finding 11).
    let writes: Vec<_> = (0..16)
        .map(|_| {
            let raft = node.raft().clone();
            tokio::spawn(async move {
                raft.client_write(bop_raft::Command::Commit { read_index: 0, record: vec![0xab; 100_000] })
                    .await
            })
        })
        .collect();
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while !node.wal().space_alarm() || writes.iter().all(|w| w.is_finished()) {
        assert!(std::time::Instant::now() < until, "no held entry under a space alarm within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopped = tokio::time::timeout(Duration::from_secs(20), node.shutdown()).await;
    assert!(stopped.is_ok(), "the node did not stop within 20 s of shutdown with its disk full");
    // Every held entry's proposer gets an answer (an error: it was never applied) instead of a hang.
    for write in writes {
        tokio::time::timeout(Duration::from_secs(20), write).await.expect("answered").expect("task").ok();
    }
}

/// A node whose Raft stopped on a fatal storage error (here: a failed fdatasync poisons its log) still
/// stops promptly when asked: `bop up` hung in "stopping" after a storage error had stopped one node's Raft.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_raft_stopped_on_a_storage_error_stops_promptly() {
    use bop_storage::io::SimDisk;
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SimDisk::new(41);
    let node = single_node_on_sim_disk(dir.path(), &disk, Default::default()).await;
    let addr = node.http_addr().to_owned();
    disk.fail_sync_after(0);
    let _ =
        try_http(&addr, "POST", "/db/execute", json!(["CREATE TABLE t (b)"]).to_string().as_bytes()).await;
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while raft_running(&node) {
        assert!(std::time::Instant::now() < until, "Raft still runs 30 s after its log was poisoned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopped = tokio::time::timeout(Duration::from_secs(20), node.shutdown()).await;
    assert!(stopped.is_ok(), "the node did not stop within 20 s after its Raft had stopped");
}
