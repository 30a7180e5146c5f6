//! The HTTP API's tower layers (docs/design.md, "The node and its HTTP API"): a declared body past the
//! limit is refused before it is sent, requests past the in-flight limit are refused at once, a request
//! past the request timeout is answered and its statement stopped, and every one of those answers has
//! bop's JSON error shape and the version header.

mod common;

use std::time::Duration;

use bop_raft::node::NodeLimits;
use common::hardening::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FOREVER: &str = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c";

/// Sends `head` (a request line and headers, without the blank line) and `body`; returns the answer's
/// status, its head and its body as JSON (or a string), within 10 s.
async fn raw_call(addr: &str, head: &str, body: &[u8]) -> (u16, String, Value) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(format!("{head}\r\nConnection: close\r\n\r\n").as_bytes()).await.expect("send head");
    stream.write_all(body).await.expect("send body");
    let mut raw = Vec::new();
    // The answer may come before the server read the whole declared body: read until the server closes.
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("an answer within 10 s")
        .expect("read");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a whole head");
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let body = String::from_utf8_lossy(&raw[split + 4..]).into_owned();
    (status, head, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

/// Creates the default database (a query needs one), with a table.
async fn create_database(addr: &str) {
    let (status, out) = http(addr, "POST", "/db/execute", br#"["CREATE TABLE t (x)"]"#).await;
    assert!(status == 200 && out["results"][0].get("error").is_none(), "{status} {out}");
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: bop")
}

async fn stopped_calls(addr: &str) -> f64 {
    counter(addr, "bop_sql_calls_stopped_total").await
}

async fn counter(addr: &str, name: &str) -> f64 {
    let (_, out) = http(addr, "GET", "/metrics", b"").await;
    let prefix = format!("{name} ");
    out.as_str()
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A query is answered on the HTTP task when a pooled connection is idle and it takes less than the
/// task's time budget (1 ms); one that takes longer is run again on a blocking thread and answered in full,
/// and its first try counts as neither stopped nor failed. A request's own time limit shorter than the
/// budget is kept: such a query is answered with its timeout, and counted as stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_the_inline_budget_moves_to_a_blocking_thread_and_is_answered_in_full() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = single_node(dir.path(), NodeLimits::default()).await;
    let addr = node.http_addr().to_owned();
    create_database(&addr).await;
    let point = format!("/db/query?level=none&q={}", encode("SELECT count(*) FROM t"));
    for _ in 0..3 {
        let (status, out) = http(&addr, "GET", &point, b"").await;
        assert_eq!((status, &out["results"][0]["values"][0][0]), (200, &Value::from(0)), "{out}");
    }
    assert!(counter(&addr, "bop_sql_reads_inline_total").await >= 2.0, "point reads are answered inline");
    let (moved, stopped) = (counter(&addr, "bop_sql_reads_moved_total").await, stopped_calls(&addr).await);
    let long = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 2000000) SELECT count(*) FROM c";
    let (status, out) = http(&addr, "GET", &format!("/db/query?level=none&q={}", encode(long)), b"").await;
    assert_eq!((status, &out["results"][0]["values"][0][0]), (200, &Value::from(2_000_000)), "{out}");
    assert_eq!(counter(&addr, "bop_sql_reads_moved_total").await, moved + 1.0);
    assert_eq!(stopped_calls(&addr).await, stopped, "the first try is not a stopped call");
    let tight = format!("/db/query?level=none&db_timeout=1ms&q={}", encode(long));
    let (status, out) = http(&addr, "GET", &tight, b"").await;
    let error = out["results"][0]["error"].as_str().or(out["error"].as_str()).unwrap_or_default().to_owned();
    assert!(status == 200 && error.contains("time"), "{status} {out}");
    assert_eq!(counter(&addr, "bop_sql_reads_moved_total").await, moved + 1.0, "its own limit is kept");
    assert_eq!(stopped_calls(&addr).await, stopped + 1.0);
    node.shutdown().await;
}

/// A request whose declared length is past the limit is answered 413 without its body being sent (it was
/// read up to the limit first; a client that declared a length and sent nothing held its request open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_body_past_the_limit_is_refused_before_it_is_sent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = single_node(dir.path(), NodeLimits::default()).await;
    let addr = node.http_addr().to_owned();
    let length = bop_raft::node::BODY_BYTES_MAX + 1;
    let head = format!(
        "POST /db/execute HTTP/1.1\r\nHost: bop\r\nContent-Type: application/json\r\nContent-Length: {length}"
    );
    let (status, head, out) = raw_call(&addr, &head, b"").await;
    assert_eq!(status, 413, "{out}");
    assert!(out["error"].as_str().unwrap_or_default().contains("larger than the limit"), "{out}");
    assert!(
        head.contains("content-type: application/json") && head.contains("x-rqlite-version: bop-"),
        "{head}"
    );
    node.shutdown().await;
}

/// Past `http_requests_max` requests in flight, one more is answered 503 with `Retry-After` at once (not
/// queued), and requests are served again when the running ones end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_in_flight_limit_are_refused_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = NodeLimits { http_requests_max: 2, ..NodeLimits::default() };
    let node = single_node(dir.path(), limits).await;
    let addr = node.http_addr().to_owned();
    create_database(&addr).await;
    let slow = format!("/db/query?level=none&db_timeout=6s&q={}", encode(FOREVER));
    let running: Vec<_> = (0..2)
        .map(|_| {
            let (addr, slow) = (addr.clone(), slow.clone());
            // The poll below holds a slot for a moment, so a slow request that arrives in that moment is
            // itself refused; it tries again (within a bound) until it runs.
            tokio::spawn(async move {
                let mut answer = raw_call(&addr, &get(&slow), b"").await;
                for _ in 0..200 {
                    if answer.0 != 503 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    answer = raw_call(&addr, &get(&slow), b"").await;
                }
                answer
            })
        })
        .collect();
    // Once both run, a third request is refused at once (polled within a bound while they start).
    let mut refused = None;
    for _ in 0..200 {
        let started = std::time::Instant::now();
        let answer = raw_call(&addr, &get("/status"), b"").await;
        if answer.0 == 503 {
            refused = Some((answer, started.elapsed()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if refused.is_none() {
        // Say what the two slow requests did instead of running.
        let mut answers = Vec::new();
        for call in running {
            answers.push(format!("{:?}", call.await));
        }
        panic!("no request past the limit was refused; the two slow requests answered {answers:?}");
    }
    let ((status, head, out), took) = refused.expect("a request past the limit was refused");
    assert_eq!(status, 503);
    assert!(took < Duration::from_secs(1), "refused at once, not queued: {took:?}");
    assert!(out["error"].as_str().unwrap_or_default().contains("too many requests in flight"), "{out}");
    assert!(head.contains("retry-after: 1") && head.contains("x-rqlite-version: bop-"), "{head}");
    for call in running {
        let (status, _, out) = call.await.expect("slow call");
        assert_eq!(status, 200, "{out}");
        assert!(out.to_string().contains("time limit of 6s exceeded"), "{out}");
    }
    let (status, _, out) = raw_call(&addr, &get("/status"), b"").await;
    assert_eq!(status, 200, "served again once the running requests ended: {out}");
    node.shutdown().await;
}

/// A request still unanswered after `http_request_timeout` is answered 503 with the JSON error shape, and
/// its statement is stopped (it would otherwise run to its own, longer, `db_timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_the_request_timeout_is_answered_and_its_statement_stopped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = NodeLimits { http_request_timeout: Duration::from_millis(500), ..NodeLimits::default() };
    let node = single_node(dir.path(), limits).await;
    let addr = node.http_addr().to_owned();
    create_database(&addr).await;
    let before = stopped_calls(&addr).await;
    let started = std::time::Instant::now();
    let slow = format!("/db/query?level=none&db_timeout=60s&q={}", encode(FOREVER));
    let (status, head, out) = raw_call(&addr, &get(&slow), b"").await;
    assert_eq!(status, 503, "{out}");
    assert!(started.elapsed() < Duration::from_secs(5), "answered at the timeout: {:?}", started.elapsed());
    assert!(
        out["error"].as_str().unwrap_or_default().contains("not answered within the limit of 500ms"),
        "{out}"
    );
    assert!(head.contains("x-rqlite-version: bop-"), "{head}");
    let mut stopped = before;
    for _ in 0..100 {
        stopped = stopped_calls(&addr).await;
        if stopped > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stopped > before, "the statement was stopped ({before} -> {stopped})");
    node.shutdown().await;
}
