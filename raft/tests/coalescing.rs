//! Coalesced writes on a node: the writes queued for a database's writer run as one transaction and one
//! Raft entry, and every request still gets the answer it would get alone (docs/design.md, "The node and
//! its HTTP API", writers).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bop_raft::node::NodeLimits;
use common::hardening::{http, single_node, SERIAL};
use openraft::async_runtime::WatchReceiver;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn execute(addr: &str, query: &str, body: Value) -> Value {
    let (status, out) = http(addr, "POST", &format!("/db/execute{query}"), body.to_string().as_bytes()).await;
    assert_eq!(status, 200, "{out}");
    out
}

async fn rows(addr: &str, sql: &str) -> Vec<Value> {
    let body = json!([sql]).to_string();
    let (status, out) = http(addr, "POST", "/db/query?level=linearizable", body.as_bytes()).await;
    assert_eq!(status, 200, "{out}");
    out["results"][0]["values"].as_array().cloned().unwrap_or_default()
}

async fn metrics(addr: &str) -> HashMap<String, f64> {
    let (status, out) = http(addr, "GET", "/metrics", b"").await;
    assert_eq!(status, 200);
    let text = out.as_str().unwrap_or_default().to_owned();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(' ').and_then(|(k, v)| Some((k.to_owned(), v.parse().ok()?))))
        .collect()
}

/// Polls `/metrics` until `metric` satisfies `ok`, for at most 30 s; its last value.
async fn wait_metric(addr: &str, metric: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let started = Instant::now();
    loop {
        let value = metrics(addr).await.get(metric).copied().unwrap_or(f64::NAN);
        if ok(value) {
            return value;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{metric} stayed at {value}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const SCHEMA: &str = "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, client INTEGER NOT NULL, \
                      seq INTEGER NOT NULL, UNIQUE (client, seq))";

/// Many clients write at once, each its own rows, some of their requests failing (a duplicate in a
/// batch without `transaction`, a duplicate in a batch with it): every answer is that request's own —
/// its `last_insert_id` names the row it inserted, a failed statement or batch wrote nothing — and the
/// writes went in groups (fewer groups than requests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_clients_all_get_their_own_answers() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let node = single_node(dir.path(), NodeLimits::default()).await;
    let addr = node.http_addr().to_owned();
    execute(&addr, "", json!([SCHEMA])).await;
    const CLIENTS: i64 = 24;
    const REQUESTS: i64 = 12;
    let before = metrics(&addr).await;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let addr = addr.clone();
            tokio::spawn(async move {
                let insert = "INSERT INTO t (client, seq) VALUES (?, ?)";
                // (seq, answer's last_insert_id) of each row this client was told it inserted.
                let mut inserted = Vec::new();
                for seq in 0..REQUESTS {
                    match seq % 4 {
                        // A plain insert.
                        0 | 1 => {
                            let out = execute(&addr, "", json!([[insert, client, seq]])).await;
                            let result = &out["results"][0];
                            assert_eq!(result["rows_affected"], 1, "{out}");
                            inserted.push((seq, result["last_insert_id"].as_i64().expect("id")));
                        }
                        // Each statement alone: a duplicate of an earlier row fails in its place, the
                        // next statement is written.
                        2 => {
                            let out =
                                execute(&addr, "", json!([[insert, client, seq - 2], [insert, client, seq]]))
                                    .await;
                            let results = &out["results"];
                            assert!(
                                results[0]["error"].as_str().is_some_and(|e| e.contains("UNIQUE")),
                                "{out}"
                            );
                            assert_eq!(results[1]["rows_affected"], 1, "{out}");
                            inserted.push((seq, results[1]["last_insert_id"].as_i64().expect("id")));
                        }
                        // All or nothing: the duplicate fails the whole batch, its first row is not written.
                        _ => {
                            let body = json!([[insert, client, seq], [insert, client, seq - 3]]);
                            let out = execute(&addr, "?transaction", body).await;
                            let error = out["results"][0]["error"].as_str().unwrap_or_default().to_owned();
                            assert!(error.contains("UNIQUE"), "{out}");
                        }
                    }
                }
                (client, inserted)
            })
        })
        .collect();
    let mut told = Vec::new();
    for client in clients {
        let (client, inserted) = client.await.expect("client");
        told.extend(inserted.into_iter().map(|(seq, id)| (id, client, seq)));
    }
    told.sort();
    let stored: Vec<(i64, i64, i64)> = rows(&addr, "SELECT id, client, seq FROM t ORDER BY id")
        .await
        .iter()
        .map(|r| (r[0].as_i64().expect("id"), r[1].as_i64().expect("client"), r[2].as_i64().expect("seq")))
        .collect();
    assert_eq!(stored, told, "exactly the rows the clients were told of, at the ids they were told");
    let after = metrics(&addr).await;
    let delta = |name: &str| after[name] - before.get(name).copied().unwrap_or(0.0);
    let (groups, requests) =
        (delta("bop_sql_write_groups_total"), delta("bop_sql_write_group_requests_total"));
    assert_eq!(requests, (CLIENTS * REQUESTS) as f64);
    assert!(groups < requests, "{requests} requests in {groups} groups");
    node.shutdown().await;
}

/// Requests queued behind a busy writer run as one group, one Raft entry for all that write (plus one
/// for each that lost its transaction and had the others run again without it), and none of them is
/// affected by another's failure: a duplicate, a conflict resolved by `ROLLBACK`, a bad statement in a
/// batch without `transaction`, a runaway read past its `db_timeout`, a runaway write whose client went
/// away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_request_in_a_group_affects_no_other() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let node = single_node(dir.path(), NodeLimits::default()).await;
    let addr = node.http_addr().to_owned();
    execute(&addr, "", json!([SCHEMA, "INSERT INTO t (client, seq) VALUES (0, 0)"])).await;

    // The writer is kept busy for 5 s by a runaway write, answered with its time limit.
    let forever = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c";
    let blocker = {
        let addr = addr.clone();
        let sql = format!("INSERT INTO t (client, seq) SELECT 100, x FROM ({forever}) WHERE x = 0");
        tokio::spawn(async move { execute(&addr, "?db_timeout=5s", json!([sql])).await })
    };
    wait_metric(&addr, "bop_http_write_queue_depth", |depth| depth == 1.0).await;
    let log_before = node.raft().metrics().borrow_watched().last_log_index.unwrap_or(0);

    let insert = "INSERT INTO t (client, seq) VALUES (?, ?)";
    let requests: Vec<(&str, Value)> = vec![
        ("", json!([[insert, 1, 1]])),
        ("?transaction", json!([[insert, 2, 1], [insert, 0, 0]])),
        ("", json!([[insert, 3, 1]])),
        ("", json!([["INSERT OR ROLLBACK INTO t (client, seq) VALUES (0, 0)"]])),
        ("", json!([[insert, 4, 1], "INSERT INTO nosuch VALUES (1)", [insert, 4, 2]])),
        ("?db_timeout=200ms", json!([format!("SELECT count(*) FROM ({forever})")])),
        ("", json!([[insert, 5, 1]])),
    ];
    let sent: Vec<_> = requests
        .iter()
        .map(|(query, body)| {
            let (addr, query, body) = (addr.clone(), query.to_string(), body.clone());
            tokio::spawn(async move {
                http(&addr, "POST", &format!("/db/execute{query}"), body.to_string().as_bytes()).await
            })
        })
        .collect();
    // A runaway write whose client goes away as soon as it is queued.
    let mut gone = TcpStream::connect(&addr).await.expect("connect");
    let body = json!([format!("INSERT INTO t (client, seq) SELECT 99, x FROM ({forever})")]).to_string();
    let head = format!(
        "POST /db/execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    gone.write_all(format!("{head}{body}").as_bytes()).await.expect("send");
    let queued = 1.0 + requests.len() as f64 + 1.0;
    wait_metric(&addr, "bop_http_write_queue_depth", |depth| depth == queued).await;
    drop(gone);

    let started = Instant::now();
    let answers: Vec<(u16, Value)> =
        futures_util::future::join_all(sent).await.into_iter().map(|a| a.expect("task")).collect();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the group was not held up by the gone client's write"
    );
    let blocked = blocker.await.expect("blocker");
    assert!(blocked["results"][0]["error"].as_str().is_some_and(|e| e.contains("time limit")), "{blocked}");
    for (status, out) in &answers {
        assert_eq!(*status, 200, "{out}");
    }
    let result = |i: usize, j: usize| answers[i].1["results"][j].clone();
    assert_eq!(result(0, 0)["rows_affected"], 1, "{:?}", answers[0]);
    assert!(result(1, 0)["error"].as_str().is_some_and(|e| e.contains("UNIQUE")), "{:?}", answers[1]);
    assert_eq!(result(2, 0)["rows_affected"], 1, "{:?}", answers[2]);
    assert!(result(3, 0)["error"].as_str().is_some_and(|e| e.contains("UNIQUE")), "{:?}", answers[3]);
    assert_eq!(result(4, 0)["rows_affected"], 1, "{:?}", answers[4]);
    assert!(result(4, 1)["error"].as_str().is_some_and(|e| e.contains("no such table")), "{:?}", answers[4]);
    assert_eq!(result(4, 2)["rows_affected"], 1, "{:?}", answers[4]);
    assert!(result(5, 0)["error"].as_str().is_some_and(|e| e.contains("time limit")), "{:?}", answers[5]);
    assert_eq!(result(6, 0)["rows_affected"], 1, "{:?}", answers[6]);

    // In whatever order the requests reached the queue.
    let stored = rows(&addr, "SELECT client, seq FROM t ORDER BY client, seq").await;
    let stored: Vec<(i64, i64)> =
        stored.iter().map(|r| (r[0].as_i64().expect("client"), r[1].as_i64().expect("seq"))).collect();
    assert_eq!(stored, [(0, 0), (1, 1), (3, 1), (4, 1), (4, 2), (5, 1)]);
    // The five that wrote: one entry, and one more for the rerun after the conflict resolved by ROLLBACK
    // (which answered on its own, first in a transaction).
    let log_after = node.raft().metrics().borrow_watched().last_log_index.unwrap_or(0);
    assert!(log_after - log_before <= 2, "{} entries for the group", log_after - log_before);
    node.shutdown().await;
}

/// A writer with nothing to do ends after `writer_idle`; the next write to its database starts another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_writers_end_and_come_back_on_demand() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = NodeLimits { writer_idle: Duration::from_millis(300), ..NodeLimits::default() };
    let node = single_node(dir.path(), limits).await;
    let addr = node.http_addr().to_owned();
    for db in ["a", "b", "c"] {
        execute(&addr, &format!("?db={db}"), json!(["CREATE TABLE t (x)"])).await;
    }
    wait_metric(&addr, "bop_sql_writers", |writers| writers == 0.0).await;
    let out = execute(&addr, "?db=b", json!(["INSERT INTO t VALUES (1)"])).await;
    assert_eq!(out["results"][0]["rows_affected"], 1, "{out}");
    let (status, out) = http(&addr, "GET", "/db/query?db=b&q=SELECT%20count(*)%20FROM%20t", b"").await;
    assert_eq!(status, 200);
    assert_eq!(out["results"][0]["values"][0][0], 1, "{out}");
    wait_metric(&addr, "bop_sql_writers", |writers| writers == 0.0).await;
    node.shutdown().await;
}

/// A writer keeps its connection from one group to the next, and every request still starts on what
/// looks like a fresh session: a temp table made by an earlier request is gone, `last_insert_id` and
/// `changes()` start at 0, and a schema change made by one request is seen by the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writers_kept_connection_gives_each_request_a_fresh_session() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = NodeLimits { writer_idle: Duration::from_secs(600), ..NodeLimits::default() };
    let node = single_node(dir.path(), limits).await;
    let addr = node.http_addr().to_owned();
    let opened = metrics(&addr).await.get("bop_sql_writer_connections_opened_total").copied();
    execute(&addr, "", json!([SCHEMA])).await;
    let insert = "INSERT INTO t (client, seq) VALUES (?, ?)";
    // One request after another: each its own group.
    for seq in 0..20 {
        let out = execute(&addr, "", json!([[insert, 1, seq]])).await;
        assert_eq!(out["results"][0]["last_insert_id"], seq + 1, "{out}");
    }
    let out = execute(&addr, "", json!(["INSERT INTO t (client, seq) SELECT 1, 99 WHERE 0"])).await;
    let result = &out["results"][0];
    assert!(result["last_insert_id"].as_i64().unwrap_or(0) == 0, "last_insert_id starts at 0: {out}");
    assert_eq!(result["rows_affected"].as_i64().unwrap_or(0), 0, "{out}");
    let out =
        execute(&addr, "", json!(["CREATE TEMP TABLE scratch (a)", "INSERT INTO scratch VALUES (1)"])).await;
    assert!(out["results"][1]["error"].is_null(), "{out}");
    let out = execute(&addr, "", json!(["INSERT INTO scratch VALUES (2)"])).await;
    let error = out["results"][0]["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.contains("no such table"), "the temp table went with its request's session: {out}");
    execute(&addr, "", json!(["ALTER TABLE t ADD COLUMN note TEXT"])).await;
    let out = execute(&addr, "", json!([["UPDATE t SET note = ? WHERE seq = 3", "kept"]])).await;
    assert_eq!(out["results"][0]["rows_affected"], 1, "{out}");
    assert_eq!(rows(&addr, "SELECT note FROM t WHERE seq = 3").await, [json!(["kept"])]);
    let after = metrics(&addr).await["bop_sql_writer_connections_opened_total"];
    let opened = after - opened.unwrap_or(0.0);
    // One writer, one connection (the temp-table request's own session is made inside its group).
    assert_eq!(opened, 1.0, "connections opened for 25 requests in turn");
    node.shutdown().await;
}
