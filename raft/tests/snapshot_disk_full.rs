//! A snapshot on a full disk (docs/design.md, Page store, "Checkpoint and merge"): on `bop up` over a small
//! tmpfs the first snapshot's checkpoint could not write its generation file (ENOSPC), the build failed and
//! Raft stopped, on every node at once. Now the checkpoint is held with the page store's space alarm raised:
//! Raft keeps running, the node reports the full disk, and the snapshot is made once space returns.

mod common;

use std::time::{Duration, Instant};

use bop_storage::io::SimDisk;
use common::hardening::*;
use openraft::async_runtime::WatchReceiver;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_without_space_is_held_and_made_once_space_returns() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SimDisk::new(61);
    let node = single_node_on_sim_disk(dir.path(), &disk, Default::default()).await;
    let addr = node.http_addr().to_owned();
    let (status, out) =
        http(&addr, "POST", "/db/execute", json!(["CREATE TABLE t (b)"]).to_string().as_bytes()).await;
    assert_eq!(status, 200, "{out}");
    let rows = json!([["INSERT INTO t SELECT randomblob(4000) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 128) SELECT x FROM c)"]]);
    let (status, out) = http(&addr, "POST", "/db/execute", rows.to_string().as_bytes()).await;
    assert!(status == 200 && out["results"][0].get("error").is_none(), "{status} {out}");
    // The database's pages (~600 KiB) are in the log; its generation file will not fit.
    disk.set_capacity_bytes(Some(disk.used_bytes() + (64 << 10)));

    node.raft().trigger().snapshot().await.expect("trigger a snapshot");
    let until = Instant::now() + Duration::from_secs(30);
    while !node.manager().space_alarm() {
        assert!(raft_running(&node), "Raft stopped: the snapshot's checkpoint failed instead of waiting");
        assert!(Instant::now() < until, "no page store space alarm within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, out) = http(&addr, "GET", "/readyz", b"").await;
    assert!(status == 503 && out.to_string().contains("disk full"), "{status} {out}");
    assert!(raft_running(&node), "Raft still runs");
    let (status, out) =
        http(&addr, "GET", &format!("/db/query?level=none&q={}", encode("SELECT count(*) FROM t")), b"")
            .await;
    assert_eq!((status, out["results"][0]["values"][0][0].clone()), (200, json!(128)), "{out}");

    disk.set_capacity_bytes(None);
    let until = Instant::now() + Duration::from_secs(30);
    while node.manager().space_alarm() || node.raft().metrics().borrow_watched().snapshot.is_none() {
        assert!(Instant::now() < until, "no snapshot within 30 s of space returning");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(raft_running(&node));
    let (status, out) =
        http(&addr, "POST", "/db/execute", json!([["INSERT INTO t VALUES (1)"]]).to_string().as_bytes())
            .await;
    assert!(status == 200 && out["results"][0].get("error").is_none(), "{status} {out}");
    assert_eq!(count(&addr, "t").await, json!(129));
    node.shutdown().await;
}
