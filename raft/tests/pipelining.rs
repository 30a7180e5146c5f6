//! Pipelined writes on a node (docs/design.md, "Pipelined commits"): a database's writer runs the next group
//! on top of the commits it proposed and that are not applied yet, no reader sees those commits, and no
//! client is answered before its own commit is applied.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bop_raft::node::NodeLimits;
use bop_storage::io::SimDisk;
use common::hardening::{http, single_node_on_sim_disk, SERIAL};
use serde_json::{json, Value};

async fn execute(addr: &str, body: Value) -> Value {
    let (status, out) = http(addr, "POST", "/db/execute", body.to_string().as_bytes()).await;
    assert_eq!(status, 200, "{out}");
    out
}

async fn query(addr: &str, sql: &str) -> Value {
    let body = json!([sql]).to_string();
    let (status, out) = http(addr, "POST", "/db/query?level=none", body.as_bytes()).await;
    assert_eq!(status, 200, "{out}");
    out["results"][0]["values"].clone()
}

async fn metric(addr: &str, name: &str) -> f64 {
    let (status, out) = http(addr, "GET", "/metrics", b"").await;
    assert_eq!(status, 200);
    let text = out.as_str().unwrap_or_default().to_owned();
    let values: HashMap<&str, f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(' ').and_then(|(k, v)| Some((k, v.parse().ok()?))))
        .collect();
    values.get(name).copied().unwrap_or(f64::NAN)
}

/// Polls until `check` holds, for at most 30 s.
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// With the log's fsyncs held, the leader proposes a write (it cannot be applied: its entry is not
/// durable) and runs the next write on top of it: the second write sees the first's row (it updates it), yet
/// a reader sees neither, and neither client is answered. Once the disk syncs again both are applied and
/// answered, in order, each with its own commit's index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_runs_on_top_of_a_proposed_one_that_no_reader_sees_and_nobody_is_answered_early() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SimDisk::new(7);
    let limits =
        NodeLimits { pipeline_depth: 4, disk_stall_max: Duration::from_secs(600), ..NodeLimits::default() };
    let node = single_node_on_sim_disk(dir.path(), &disk, limits).await;
    let addr = node.http_addr().to_owned();
    execute(&addr, json!(["CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)"])).await;

    disk.pause_syncs();
    let first = tokio::spawn({
        let addr = addr.clone();
        async move { execute(&addr, json!(["INSERT INTO t VALUES (1, 10)"])).await }
    });
    until("the first write's group to be proposed", async || {
        metric(&addr, "bop_sql_write_groups_unanswered").await == 1.0
    })
    .await;
    let second = tokio::spawn({
        let addr = addr.clone();
        async move { execute(&addr, json!(["UPDATE t SET v = v + 1 WHERE id = 1"])).await }
    });
    until("the second write's group to be proposed on top", async || {
        metric(&addr, "bop_sql_write_groups_unanswered").await == 2.0
    })
    .await;
    // Neither commit is applied: a reader of this node sees the table empty.
    assert_eq!(query(&addr, "SELECT count(*) FROM t").await, json!([[0]]));
    assert!(
        !first.is_finished() && !second.is_finished(),
        "a write was answered before its commit was applied"
    );

    disk.resume_syncs();
    let first =
        tokio::time::timeout(Duration::from_secs(30), first).await.expect("first answered").expect("task");
    let second =
        tokio::time::timeout(Duration::from_secs(30), second).await.expect("second answered").expect("task");
    assert_eq!(first["results"][0]["rows_affected"], json!(1), "{first}");
    // It ran on top of the first write's proposed commit: the row was there to update.
    assert_eq!(second["results"][0]["rows_affected"], json!(1), "{second}");
    assert_eq!(query(&addr, "SELECT id, v FROM t").await, json!([[1, 11]]));
    assert_eq!(metric(&addr, "bop_sql_pipelined_commits_failed_total").await, 0.0);
    node.shutdown().await;
}

/// With pipelining off (`pipeline_depth` 1) the same two writes run one group at a time (no group is ever
/// handed on unanswered) and both are answered correctly once the disk syncs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_pipelining_off_groups_run_one_at_a_time() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SimDisk::new(8);
    let limits =
        NodeLimits { pipeline_depth: 1, disk_stall_max: Duration::from_secs(600), ..NodeLimits::default() };
    let node = single_node_on_sim_disk(dir.path(), &disk, limits).await;
    let addr = node.http_addr().to_owned();
    execute(&addr, json!(["CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)"])).await;
    disk.pause_syncs();
    let first = tokio::spawn({
        let addr = addr.clone();
        async move { execute(&addr, json!(["INSERT INTO t VALUES (1, 10)"])).await }
    });
    until("the first write's sync to be held", async || disk.syncs_held() > 0).await;
    let second = tokio::spawn({
        let addr = addr.clone();
        async move { execute(&addr, json!(["UPDATE t SET v = v + 1 WHERE id = 1"])).await }
    });
    assert_eq!(metric(&addr, "bop_sql_write_groups_unanswered").await, 0.0);
    assert_eq!(query(&addr, "SELECT count(*) FROM t").await, json!([[0]]));
    disk.resume_syncs();
    let first =
        tokio::time::timeout(Duration::from_secs(30), first).await.expect("first answered").expect("task");
    let second =
        tokio::time::timeout(Duration::from_secs(30), second).await.expect("second answered").expect("task");
    assert_eq!(first["results"][0]["rows_affected"], json!(1), "{first}");
    assert_eq!(second["results"][0]["rows_affected"], json!(1), "{second}");
    assert_eq!(query(&addr, "SELECT id, v FROM t").await, json!([[1, 11]]));
    node.shutdown().await;
}
