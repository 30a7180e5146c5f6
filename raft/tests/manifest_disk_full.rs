//! A full disk under the manifest (docs/design.md, "The disk under the log" and Manifest, "Lack of space"):
//! on `bop up` over a small tmpfs the manifest's LMDB commit met ENOSPC first, poisoned the manifest, and
//! the node's Raft stopped. Now the manifest holds the commit and raises its space alarm; the node refuses
//! writes with 507 "disk full", `/readyz` says so, Raft keeps running, and once space returns the node goes
//! on by itself. The node's data directory is a tmpfs the test mounts (skipped loudly where mounting is not
//! permitted); its log and page store are on the simulated disk, so only the manifest meets the full disk.

mod common;
#[path = "../../tests/common/tmpfs.rs"]
mod tmpfs;

use std::time::{Duration, Instant};

use bop_raft::node::Node;
use bop_storage::io::SimDisk;
use common::hardening::*;
use serde_json::json;
use tmpfs::Tmpfs;

/// Free space left when the node starts: enough for it to start, too little for the manifest to reserve
/// its 8 MiB map ahead, so that the manifest's file grows into the last free pages like on a file system
/// without `fallocate`.
const ROOM_AT_START: u64 = 2 << 20;

/// A single-node cluster on a tmpfs data directory whose file system is then filled; the table `t` exists.
async fn node_on_a_full_tmpfs(test: &str, seed: u64) -> Option<(Tmpfs, std::path::PathBuf, Node)> {
    let fs = Tmpfs::mount(test, "64m")?;
    let ballast = fs.fill_leaving(ROOM_AT_START);
    let disk = SimDisk::new(seed);
    let node = single_node_on_sim_disk(fs.path(), &disk, Default::default()).await;
    let manifest = node.manager().manifest().expect("manifest");
    assert_eq!(manifest.metrics().space_reserved_bytes, 0, "the test needs the reservation to fail");
    let (status, out) =
        http(node.http_addr(), "POST", "/db/execute", json!(["CREATE TABLE t (x)"]).to_string().as_bytes())
            .await;
    assert_eq!(status, 200, "{out}");
    fs.fill();
    assert_eq!(fs.free_bytes(), 0, "the file system is full");
    Some((fs, ballast, node))
}

/// Writes one row at a time until the manifest raises its space alarm; returns the rows acknowledged.
async fn write_until_the_manifest_is_held(node: &Node) -> u64 {
    let manifest = node.manager().manifest().expect("manifest");
    let row = json!([["INSERT INTO t VALUES (1)"]]).to_string();
    let mut acknowledged = 0;
    let until = Instant::now() + Duration::from_secs(60);
    while !manifest.space_alarm() {
        let addr = node.http_addr().to_owned();
        let row = row.clone();
        let write = tokio::spawn(async move { try_http(&addr, "POST", "/db/execute", row.as_bytes()).await });
        // A write held behind the manifest does not return; the alarm ends the loop.
        let deadline = tokio::time::sleep(Duration::from_secs(2));
        tokio::pin!(deadline);
        tokio::pin!(write);
        tokio::select! {
            answer = &mut write => {
                let (status, out) = answer.expect("task").expect("an answer");
                if status == 200 && out["results"][0].get("error").is_none() {
                    acknowledged += 1;
                } else {
                    assert_eq!(status, 507, "only a full disk refuses a write: {out}");
                }
            }
            _ = &mut deadline => {}
        }
        assert!(Instant::now() < until, "no manifest space alarm within 60 s ({acknowledged} rows written)");
    }
    acknowledged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_manifest_holds_writes_and_the_node_recovers_when_space_returns() {
    let _serial = SERIAL.lock().await;
    let Some((fs, ballast, node)) =
        node_on_a_full_tmpfs("a_full_disk_under_the_manifest_holds_writes_and_the_node_recovers", 51).await
    else {
        return;
    };
    let addr = node.http_addr().to_owned();
    let acknowledged = write_until_the_manifest_is_held(&node).await;

    // The node says why, refuses writes before proposing them, and its Raft still runs.
    let (status, out) = http(&addr, "GET", "/readyz", b"").await;
    assert!(status == 503 && out.to_string().contains("disk full: the manifest"), "{status} {out}");
    let (status, out) =
        http(&addr, "POST", "/db/execute", json!([["INSERT INTO t VALUES (2)"]]).to_string().as_bytes())
            .await;
    assert!(status == 507 && out.to_string().contains("disk full"), "{status} {out}");
    assert!(raft_running(&node), "Raft still runs");
    let (status, out) =
        http(&addr, "GET", &format!("/db/query?level=none&q={}", encode("SELECT count(*) FROM t")), b"")
            .await;
    assert_eq!(status, 200, "local reads go on: {out}");

    // Space returns: the held work completes, the alarm clears, writes go on.
    std::fs::remove_file(&ballast).expect("remove ballast");
    let until = Instant::now() + Duration::from_secs(30);
    while http(&addr, "GET", "/readyz", b"").await.0 != 200 {
        assert!(Instant::now() < until, "not ready within 30 s of space returning");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, out) =
        http(&addr, "POST", "/db/execute", json!([["INSERT INTO t VALUES (3)"]]).to_string().as_bytes())
            .await;
    assert!(status == 200 && out["results"][0].get("error").is_none(), "{status} {out}");
    let rows = count(&addr, "t").await.as_u64().expect("a count");
    // Every acknowledged row is there, plus the one written now, plus at most the one that was held.
    assert!(rows == acknowledged + 1 || rows == acknowledged + 2, "{rows} rows, {acknowledged} acknowledged");
    assert!(raft_running(&node));
    node.shutdown().await;
    drop(fs);
}

/// Shutting down with a manifest commit held for space does not wait for space: the held commit fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_manifest_waits_for_space_stops_promptly() {
    let _serial = SERIAL.lock().await;
    let Some((fs, _ballast, node)) =
        node_on_a_full_tmpfs("a_node_whose_manifest_waits_for_space_stops_promptly", 52).await
    else {
        return;
    };
    write_until_the_manifest_is_held(&node).await;
    let stopped = tokio::time::timeout(Duration::from_secs(20), node.shutdown()).await;
    assert!(stopped.is_ok(), "the node did not stop within 20 s with a manifest commit held for space");
    drop(fs);
}
