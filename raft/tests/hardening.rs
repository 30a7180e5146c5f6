//! Regression tests for requests and starts that used to stop a node (docs/design.md, "Hardening"): each
//! failed on the code before its fix. The disk findings are in `hardening_disk.rs`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bop_raft::node::{Node, NodeConfig};
use bop_raft::Command;
use common::hardening::*;
use openraft::async_runtime::WatchReceiver;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Finding 1: a transaction whose commit entry is larger than the log's largest record used to reach the
/// WAL's append, whose error stopped the leader's Raft. Now it is refused before anything is proposed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_too_large_for_the_log_is_refused_and_the_leader_keeps_leading() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start().await;
    let leader = cluster.leader().await;
    let addr = leader.http_addr().to_owned();
    let (status, out) = http(
        &addr,
        "POST",
        "/db/execute",
        json!(["CREATE TABLE big (id INTEGER PRIMARY KEY, b BLOB)"]).to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    let last_log_before = leader.raft().metrics().borrow_watched().last_log_index;
    let big = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 16330) \
               INSERT INTO big SELECT x, randomblob(4000) FROM c";
    let (status, out) = http(&addr, "POST", "/db/execute", json!([big]).to_string().as_bytes()).await;
    assert_eq!(status, 200, "{out}");
    let message = out["results"][0]["error"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("transaction too large"), "a clear error: {out}");
    assert!(raft_running(leader), "the leader's Raft still runs");
    assert_eq!(
        leader.raft().metrics().borrow_watched().last_log_index,
        last_log_before,
        "nothing was proposed"
    );
    assert_eq!(count(&addr, "big").await, json!(0), "nothing of the transaction is visible");
    // The cluster goes on taking writes through the same leader.
    let (status, out) = http(
        &addr,
        "POST",
        "/db/execute",
        json!([["INSERT INTO big VALUES(1, ?)", "x"]]).to_string().as_bytes(),
    )
    .await;
    assert_eq!((status, out["results"][0]["rows_affected"].clone()), (200, json!(1)), "{out}");
    assert_eq!(cluster.leader().await.id(), leader.id(), "the same node still leads");
}

/// Finding 3: `/db/query` ran whatever it was given, so `GET /db/query?q=DELETE ...` deleted rows (outside
/// the writer queue and the new-leader wait). Now it runs read-only statements only, on every level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_endpoint_refuses_writes_and_changes_nothing() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start().await;
    let leader = cluster.leader().await;
    let addr = leader.http_addr().to_owned();
    let body = json!([
        "CREATE TABLE t (id INTEGER PRIMARY KEY)",
        "INSERT INTO t VALUES(1)",
        "INSERT INTO t VALUES(2)"
    ]);
    let (status, out) = http(&addr, "POST", "/db/execute", body.to_string().as_bytes()).await;
    assert_eq!(status, 200, "{out}");
    let follower = cluster.follower().await.http_addr().to_owned();
    for (node, level) in [(&addr, "weak"), (&addr, "linearizable"), (&addr, "none"), (&follower, "none")] {
        for write in ["DELETE FROM t", "INSERT INTO t VALUES(3)", "DROP TABLE t", "CREATE TABLE u (x)"] {
            let path = format!("/db/query?level={level}&q={}", encode(write));
            let (status, out) = http(node, "GET", &path, b"").await;
            let message = out["results"][0]["error"].as_str().unwrap_or_default().to_owned();
            assert!(
                status == 400 || message.contains("read-only"),
                "{write:?} at level {level}: {status} {out}"
            );
            let (_, out) = http(
                node,
                "POST",
                &format!("/db/query?level={level}"),
                json!([write]).to_string().as_bytes(),
            )
            .await;
            let message = out["results"][0]["error"].as_str().unwrap_or_default().to_owned();
            assert!(message.contains("read-only"), "POST {write:?} at level {level}: {out}");
        }
    }
    assert_eq!(count(&addr, "t").await, json!(2), "no row was deleted or added");
    // Reads still work, and a query mixing a read with a write runs none of it.
    let path = format!("/db/query?q={}", encode("SELECT id FROM t ORDER BY id"));
    let (_, out) = http(&addr, "GET", &path, b"").await;
    assert_eq!(out["results"][0]["values"], json!([[1], [2]]), "{out}");
    let mixed = json!(["SELECT count(*) FROM t", "DELETE FROM t"]);
    let (_, out) = http(&addr, "POST", "/db/query", mixed.to_string().as_bytes()).await;
    assert!(out.to_string().contains("read-only"), "{out}");
    assert_eq!(count(&addr, "t").await, json!(2));
}

/// Finding 11: a `Commit` entry whose record does not decode was an I/O error in apply, fatal on every
/// node that applied it (after every restart too). It is refused like any invalid commit, on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_entry_that_does_not_decode_is_refused_on_every_node() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start().await;
    let leader = cluster.leader().await;
    for record in [
        vec![],
        vec![0xff; 7],
        vec![1, 1, 0, 0, 200, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
    ] {
        let answer = leader
            .raft()
            .client_write(Command::Commit { read_index: 0, record })
            .await
            .expect("the entry commits");
        assert!(
            matches!(answer.data, bop_raft::Response::Refused { .. }),
            "refused, not fatal: {:?}",
            answer.data
        );
        let index = answer.log_id.index;
        for node in &cluster.nodes {
            node.raft()
                .wait(Some(Duration::from_secs(10)))
                .applied_index_at_least(Some(index), "applied the bad entry")
                .await
                .expect("every node applies it");
            assert!(raft_running(node), "node {} still runs", node.id());
        }
    }
    let (status, out) = http(
        leader.http_addr(),
        "POST",
        "/db/execute",
        json!(["CREATE TABLE after (x)"]).to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    assert!(out["results"][0].get("error").is_none(), "{out}");
}

/// Finding 7: after its Raft stopped, a node kept openraft's last metrics, which named itself leader: a
/// write to it was forwarded to its own address over and over (until a 30 s timeout), and `/readyz`
/// answered 200. Leaders now come only from a running Raft, a forwarded request is never forwarded again,
/// and `/readyz` fails once Raft has stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_raft_stopped_does_not_forward_to_itself_and_is_not_ready() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start().await;
    let leader = cluster.leader().await;
    let addr = leader.http_addr().to_owned();
    let (status, _) = http(&addr, "GET", "/readyz", b"").await;
    assert_eq!(status, 200);
    leader.raft().shutdown().await.expect("raft shutdown");
    assert!(!raft_running(leader));
    assert_eq!(leader.raft().metrics().borrow_watched().current_leader, Some(leader.id()), "stale metrics");
    let started = std::time::Instant::now();
    let (status, out) =
        http(&addr, "POST", "/db/execute", json!(["CREATE TABLE t (x)"]).to_string().as_bytes()).await;
    assert_eq!(status, 503, "{out}");
    assert!(started.elapsed() < Duration::from_secs(5), "answered at once, took {:?}", started.elapsed());
    let (status, out) = http(&addr, "GET", "/readyz", b"").await;
    assert_eq!(status, 503, "{out}");
    assert!(out.to_string().contains("raft has stopped"), "{out}");
    // A request marked as forwarded is not forwarded again by a follower that is not the leader either.
    let follower = cluster.nodes.iter().find(|n| n.id() != leader.id()).expect("follower");
    let mut stream = TcpStream::connect(follower.http_addr()).await.expect("connect");
    let body = json!(["CREATE TABLE t (x)"]).to_string();
    let head = format!(
        "POST /db/execute HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nx-bop-forwarded-by: 9\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("answer")
        .expect("read");
    let text = String::from_utf8_lossy(&raw);
    let is_leader_now = follower.raft().metrics().borrow_watched().current_leader == Some(follower.id());
    assert!(text.starts_with("HTTP/1.1 503") || is_leader_now, "{text}");
}

/// Finding 8 (HTTP): connections were unbounded and had no header-read or idle timeout, so idle or slow
/// clients held sockets and tasks for ever. A connection that sends no whole request head within the
/// header timeout (10 s by default) is closed, also when kept alive after a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_http_connections_are_closed() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start().await;
    let addr = cluster.leader().await.http_addr().to_owned();
    let closed_within = |mut stream: TcpStream| async move {
        let started = std::time::Instant::now();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "closed by the server within 20 s");
        started.elapsed()
    };
    let silent = TcpStream::connect(&addr).await.expect("connect");
    let mut slow = TcpStream::connect(&addr).await.expect("connect");
    slow.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n").await.expect("half a head");
    let mut kept = TcpStream::connect(&addr).await.expect("connect");
    kept.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("a request");
    let (a, b, c) = tokio::join!(closed_within(silent), closed_within(slow), closed_within(kept));
    for took in [a, b, c] {
        assert!(took >= Duration::from_secs(5), "not before the timeout: {took:?}");
    }
}

/// Finding 8 (HTTP): past the connection limit a client hears 503 with `Retry-After` at once, and the
/// node serves again once connections close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_refused_with_retry_after() {
    let _serial = SERIAL.lock().await;
    use bop_raft::node::{NodeEnv, NodeLimits};
    let dir = tempfile::tempdir().expect("tempdir");
    let config = NodeConfig {
        id: 1,
        data_dir: dir.path().join("node-1"),
        raft_addr: "127.0.0.1:0".into(),
        http_addr: "127.0.0.1:0".into(),
    };
    let limits = NodeLimits {
        http_connections_max: 4,
        http_header_timeout: Duration::from_millis(500),
        ..NodeLimits::default()
    };
    let node = Node::start_in(config, NodeEnv { limits, ..NodeEnv::default() }).await.expect("start");
    node.initialize_if_new(BTreeMap::from([(1, node.member_addr())])).await.expect("init");
    let addr = node.http_addr().to_owned();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(&addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(100)).await; // let the server accept them
    let mut extra = TcpStream::connect(&addr).await.expect("connect");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), extra.read_to_end(&mut raw))
        .await
        .expect("answer")
        .expect("read");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 503") && text.contains("Retry-After: 1"), "{text}");
    assert!(text.contains("too many connections"), "{text}");
    drop(held);
    // The held connections' slots free as the server notices they closed.
    let mut status = 0;
    for _ in 0..100 {
        status = http(&addr, "GET", "/status", b"").await.0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200);
    node.shutdown().await;
}

const FOREVER: &str = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c";

async fn stopped_calls(addr: &str) -> f64 {
    let (_, out) = http(addr, "GET", "/metrics", b"").await;
    let text = out.as_str().unwrap_or_default().to_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("bop_sql_calls_stopped_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Finding 4: queries were unbounded in time and size. A statement past its time limit (the node's
/// default, or rqlite's `db_timeout`) is stopped with a clear error; an answer past the row bound is an
/// error instead of the node's memory; a statement whose client went away is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_are_bounded_in_time_and_size_and_stop_when_the_client_leaves() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start().await;
    let addr = cluster.leader().await.http_addr().to_owned();
    let (status, out) =
        http(&addr, "POST", "/db/execute", json!(["CREATE TABLE t (x)"]).to_string().as_bytes()).await;
    assert_eq!(status, 200, "{out}");
    for level in ["weak", "none", "linearizable"] {
        let started = std::time::Instant::now();
        let path = format!("/db/query?level={level}&db_timeout=300ms&q={}", encode(FOREVER));
        let (status, out) = http(&addr, "GET", &path, b"").await;
        assert_eq!(status, 200, "{out}");
        assert!(out.to_string().contains("time limit of 300ms exceeded"), "{level}: {out}");
        assert!(started.elapsed() < Duration::from_secs(10), "{level}: took {:?}", started.elapsed());
    }
    let (status, out) =
        http(&addr, "GET", &format!("/db/query?db_timeout=soon&q={}", encode("SELECT 1")), b"").await;
    assert_eq!(status, 400, "{out}");
    // A write is bounded the same way and leaves nothing behind.
    let forever_insert =
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) INSERT INTO t SELECT x FROM c";
    let (_, out) =
        http(&addr, "POST", "/db/execute?db_timeout=300ms", json!([forever_insert]).to_string().as_bytes())
            .await;
    assert!(out.to_string().contains("time limit"), "{out}");
    assert_eq!(count(&addr, "t").await, json!(0));
    // More rows than an answer may carry (1,000,000 by default).
    let many = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c LIMIT 1000001) SELECT x FROM c";
    let (status, out) = http(&addr, "GET", &format!("/db/query?q={}", encode(many)), b"").await;
    assert_eq!(status, 200);
    assert!(out.to_string().contains("answer too large: more than 1000000 rows"), "{out}");
    // A client that gives up: its statement is stopped (counted in /metrics) well before the 60 s limit.
    let before = stopped_calls(&addr).await;
    let mut stream = TcpStream::connect(&addr).await.expect("connect");
    let head = format!("GET /db/query?q={} HTTP/1.1\r\nHost: x\r\n\r\n", encode(FOREVER));
    stream.write_all(head.as_bytes()).await.expect("send");
    tokio::time::sleep(Duration::from_millis(300)).await; // the statement is running
    drop(stream);
    let mut stopped = before;
    for _ in 0..100 {
        stopped = stopped_calls(&addr).await;
        if stopped > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stopped > before, "the gone client's statement was stopped within 10 s");
}

static SLOW_SYNCS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A disk whose fsyncs of whole files (generation files, snapshot files) take 400 ms once armed.
#[derive(Debug)]
struct SlowSyncIo {
    inner: bop_storage::io::BufferedIo,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Debug)]
struct SlowSyncFile {
    inner: std::sync::Arc<dyn bop_storage::io::IoFile>,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl bop_storage::io::Io for SlowSyncIo {
    fn open(
        &self,
        path: &std::path::Path,
        mode: bop_storage::io::OpenMode,
    ) -> bop_storage::io::IoResult<std::sync::Arc<dyn bop_storage::io::IoFile>> {
        let inner = self.inner.open(path, mode)?;
        Ok(std::sync::Arc::new(SlowSyncFile { inner, armed: std::sync::Arc::clone(&self.armed) }))
    }
    fn remove_file(&self, path: &std::path::Path) -> bop_storage::io::IoResult<()> {
        self.inner.remove_file(path)
    }
    fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> bop_storage::io::IoResult<()> {
        self.inner.rename(from, to)
    }
    fn create_dir_all(&self, path: &std::path::Path) -> bop_storage::io::IoResult<()> {
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &std::path::Path) -> bop_storage::io::IoResult<Vec<String>> {
        self.inner.list_dir(path)
    }
    fn sync_dir(&self, path: &std::path::Path) -> bop_storage::io::IoResult<()> {
        self.inner.sync_dir(path)
    }
    fn name(&self) -> &'static str {
        "slow-sync"
    }
}

impl bop_storage::io::IoFile for SlowSyncFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> bop_storage::io::IoResult<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> bop_storage::io::IoResult<usize> {
        self.inner.write_at(buf, offset)
    }
    fn sync_data(&self) -> bop_storage::io::IoResult<()> {
        self.inner.sync_data()
    }
    fn sync_all(&self) -> bop_storage::io::IoResult<()> {
        if self.armed.load(std::sync::atomic::Ordering::Relaxed) {
            SLOW_SYNCS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(400));
        }
        self.inner.sync_all()
    }
    fn allocate(&self, offset: u64, len_bytes: u64) -> bop_storage::io::IoResult<()> {
        self.inner.allocate(offset, len_bytes)
    }
    fn set_len(&self, len_bytes: u64) -> bop_storage::io::IoResult<()> {
        self.inner.set_len(len_bytes)
    }
    fn len(&self) -> bop_storage::io::IoResult<u64> {
        self.inner.len()
    }
    fn alignment(&self) -> usize {
        self.inner.alignment()
    }
}

/// Finding 12: checkpoints (a snapshot) ran their fsyncs inside async tasks, so on a node's runtime a slow
/// disk stalled every other task, heartbeats included. On a one-worker runtime, a 10 ms ticker is never
/// held up for the 400 ms a generation file's fsync takes while a snapshot is built.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn building_a_snapshot_does_not_stall_the_async_workers() {
    let _serial = SERIAL.lock().await;
    use bop_raft::node::NodeEnv;
    let dir = tempfile::tempdir().expect("tempdir");
    let armed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let io = SlowSyncIo { inner: bop_storage::io::BufferedIo::new(), armed: std::sync::Arc::clone(&armed) };
    let config = NodeConfig {
        id: 1,
        data_dir: dir.path().join("node-1"),
        raft_addr: "127.0.0.1:0".into(),
        http_addr: "127.0.0.1:0".into(),
    };
    let env = NodeEnv { io: std::sync::Arc::new(io), ..NodeEnv::default() };
    let node = Node::start_in(config, env).await.expect("start");
    node.initialize_if_new(BTreeMap::from([(1, node.member_addr())])).await.expect("init");
    node.raft()
        .wait(Some(Duration::from_secs(30)))
        .metrics(|m| m.state.is_leader(), "leader")
        .await
        .expect("leader");
    let body = json!(["CREATE TABLE t (x)", "INSERT INTO t VALUES (randomblob(10000))"]);
    let (status, out) = http(node.http_addr(), "POST", "/db/execute", body.to_string().as_bytes()).await;
    assert_eq!(status, 200, "{out}");
    armed.store(true, std::sync::atomic::Ordering::Relaxed);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = tokio::spawn({
        let done = std::sync::Arc::clone(&done);
        async move {
            let mut worst = Duration::ZERO;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let started = std::time::Instant::now();
                tokio::time::sleep(Duration::from_millis(10)).await;
                worst = worst.max(started.elapsed());
            }
            worst
        }
    });
    let applied = node.raft().metrics().borrow_watched().last_applied.map(|l| l.index);
    node.raft().trigger().snapshot().await.expect("trigger");
    node.raft()
        .wait(Some(Duration::from_secs(30)))
        .metrics(|m| m.snapshot.map(|s| s.index) >= applied, "snapshot built")
        .await
        .expect("snapshot");
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let worst = ticker.await.expect("ticker");
    assert!(SLOW_SYNCS.load(std::sync::atomic::Ordering::Relaxed) > 0, "the snapshot fsynced a file");
    assert!(worst < Duration::from_millis(300), "a 10 ms timer waited {worst:?}");
    armed.store(false, std::sync::atomic::Ordering::Relaxed);
    node.shutdown().await;
}

/// Finding 13: any `db=` name created a database, without bound. Names are checked and the number of
/// databases is bounded; existing ones stay writable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn databases_are_bounded_in_number_and_named_sanely() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = bop_raft::node::NodeLimits { databases_max: 2, ..Default::default() };
    let node = single_node(dir.path(), limits).await;
    let addr = node.http_addr().to_owned();
    let write = |db: &'static str| {
        let addr = addr.clone();
        async move {
            http(&addr, "POST", &format!("/db/execute?db={db}"), br#"["CREATE TABLE IF NOT EXISTS t (x)"]"#)
                .await
        }
    };
    assert_eq!(write("a").await.0, 200);
    assert_eq!(write("b").await.0, 200);
    let (status, out) = write("c").await;
    assert_eq!(status, 400, "{out}");
    assert!(out.to_string().contains("database limit reached"), "{out}");
    assert_eq!(write("a").await.0, 200, "an existing database stays writable");
    let (status, out) = write("x%2Fy").await;
    assert_eq!(status, 400, "{out}");
    assert_eq!(node.manager().list_databases().expect("list").len(), 2);
    node.shutdown().await;
}

/// Finding 13: concurrent backups could fill the disk (and then poison the log). At most `backups_max`
/// are made or sent at once (one more is 503 with `Retry-After`), and none that would leave less than
/// the reserve free (507).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_are_bounded_in_number_and_by_free_space() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = bop_raft::node::NodeLimits { backups_max: 1, ..Default::default() };
    let node = single_node(dir.path(), limits).await;
    let addr = node.http_addr().to_owned();
    let fill = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 4000) \
                INSERT INTO t SELECT randomblob(4000) FROM c";
    let body = json!(["CREATE TABLE t (b)", fill]);
    let (status, out) = http(&addr, "POST", "/db/execute", body.to_string().as_bytes()).await;
    assert_eq!(status, 200, "{out}");
    // A backup whose client reads only the head holds its copy (and its permit) while the body waits.
    let mut first = TcpStream::connect(&addr).await.expect("connect");
    first.write_all(b"GET /db/backup HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("send");
    let mut head = [0u8; 12];
    first.read_exact(&mut head).await.expect("head");
    assert_eq!(&head, b"HTTP/1.1 200");
    let mut second = TcpStream::connect(&addr).await.expect("connect");
    second.write_all(b"GET /db/backup HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), second.read_to_end(&mut raw))
        .await
        .expect("answer")
        .expect("read");
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.starts_with("HTTP/1.1 503") && text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    drop(first);
    let mut status = 0;
    for _ in 0..100 {
        let (s, _) = http(&addr, "GET", "/db/backup", b"").await;
        status = s;
        if s == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200, "a backup is made again once the first one is gone");
    node.shutdown().await;

    let dir = tempfile::tempdir().expect("tempdir");
    let limits =
        bop_raft::node::NodeLimits { backup_space_reserve_bytes: u64::MAX / 4, ..Default::default() };
    let node = single_node(dir.path(), limits).await;
    let (status, _) =
        http(node.http_addr(), "POST", "/db/execute", json!(["CREATE TABLE t (x)"]).to_string().as_bytes())
            .await;
    assert_eq!(status, 200);
    let (status, out) = http(node.http_addr(), "GET", "/db/backup", b"").await;
    assert_eq!(status, 507, "{out}");
    assert!(out.to_string().contains("not enough free space"), "{out}");
    node.shutdown().await;
}

/// Finding 13: the writer queues were unbounded. Past `writers_queued_max` waiting writers a request is
/// answered 503 with `Retry-After` at once; every admitted write commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_queue_is_bounded() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = bop_raft::node::NodeLimits { writers_queued_max: 2, ..Default::default() };
    let node = single_node(dir.path(), limits).await;
    let addr = node.http_addr().to_owned();
    let (status, _) =
        http(&addr, "POST", "/db/execute", json!(["CREATE TABLE t (x)"]).to_string().as_bytes()).await;
    assert_eq!(status, 200);
    let slow = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 100000) \
                INSERT INTO t SELECT x FROM c";
    let writes: Vec<_> = (0..8)
        .map(|_| {
            let addr = addr.clone();
            tokio::spawn(async move {
                http(&addr, "POST", "/db/execute", json!([slow]).to_string().as_bytes()).await
            })
        })
        .collect();
    let mut admitted = 0;
    let mut refused = 0;
    for write in writes {
        let (status, out) = write.await.expect("task");
        match status {
            200 => {
                assert_eq!(out["results"][0]["rows_affected"], 100000, "{out}");
                admitted += 1;
            }
            503 => {
                assert!(out.to_string().contains("write queue full"), "{out}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {out}"),
        }
    }
    assert!(refused > 0 && admitted > 0, "admitted {admitted}, refused {refused}");
    assert_eq!(count(&addr, "t").await, json!(admitted * 100000));
    node.shutdown().await;
}
