//! `POST /db/load` (rqlite's restore): a backup of one cluster, in either format, loaded into a fresh one
//! through a follower gives every node the same rows and a sound database; bad uploads are refused with
//! the database unchanged and nothing left behind.

use std::time::{Duration, Instant};

use bop_raft::http_client::HttpConn;
use bop_raft::node::Node;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Method;
use serde_json::{json, Value};

#[path = "common/loopback.rs"]
mod loopback;

/// One request on its own connection: status and body bytes, within 60 s.
async fn call(addr: &str, method: Method, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Bytes) {
    let exchange = async {
        let mut conn = HttpConn::connect(addr, Duration::from_secs(5)).await.expect("connect");
        let headers = [("content-type", content_type.to_owned())];
        let answer = conn.send(method, path, &headers, Bytes::from(body)).await.expect("send");
        let status = answer.status().as_u16();
        (status, answer.into_body().collect().await.expect("body").to_bytes())
    };
    tokio::time::timeout(Duration::from_secs(60), exchange).await.expect("an answer within 60 s")
}

async fn json_call(
    addr: &str,
    method: Method,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let (status, body) = call(addr, method, path, content_type, body).await;
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("{path}: not JSON: {}", String::from_utf8_lossy(&body)));
    (status, value)
}

async fn execute(addr: &str, db: &str, statements: Value) {
    let path = format!("/db/execute?db={db}&transaction");
    let (status, body) =
        json_call(addr, Method::POST, &path, "application/json", statements.to_string().into()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["results"].as_array().unwrap().iter().all(|r| r.get("error").is_none()), "{body}");
}

/// The rows of `sql` read on `addr` itself (`level=none`).
async fn rows(addr: &str, db: &str, sql: &str) -> Value {
    let q = percent_encoding::utf8_percent_encode(sql, percent_encoding::NON_ALPHANUMERIC);
    let path = format!("/db/query?db={db}&level=none&q={q}");
    let (status, body) = json_call(addr, Method::GET, &path, "application/json", Vec::new()).await;
    assert_eq!(status, 200, "{body}");
    body["results"][0].clone()
}

/// Everything a database holds that a restore must reproduce: its schema and every table's rows.
const CONTENT: &[&str] = &[
    "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name",
    "SELECT * FROM items ORDER BY id",
    "SELECT * FROM tagged ORDER BY rowid",
    "SELECT * FROM sqlite_sequence ORDER BY name",
    "SELECT * FROM summary",
];

async fn content(addr: &str, db: &str) -> Vec<Value> {
    let mut all = Vec::new();
    for sql in CONTENT {
        let answer = rows(addr, db, sql).await;
        assert!(answer.get("error").is_none(), "{sql} on {addr}: {answer}");
        all.push(answer["values"].clone());
    }
    all
}

/// Waits (at most 30 s) until `db` on every node holds `expected`, and checks its integrity on each.
async fn every_node_holds(nodes: &[Node], db: &str, expected: &[Value]) {
    for node in nodes {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = content(node.http_addr(), db).await;
            if found == expected {
                break;
            }
            assert!(Instant::now() < deadline, "node {} never held the loaded {db}", node.id());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let check = rows(node.http_addr(), db, "PRAGMA integrity_check").await;
        assert_eq!(check["values"], json!([["ok"]]), "node {}: {check}", node.id());
    }
}

fn follower(nodes: &[Node]) -> &Node {
    let leader = loopback::leader_of(nodes).id();
    nodes.iter().find(|n| n.id() != leader).expect("a follower")
}

fn leftovers(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    for node in std::fs::read_dir(dir).expect("read dir").flatten() {
        for entry in std::fs::read_dir(node.path()).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("restore-") {
                found.push(name);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_in_either_format_loads_into_a_fresh_cluster_with_the_same_rows_on_every_node() {
    let source_dir = tempfile::tempdir().expect("tempdir");
    let source = loopback::three_nodes(source_dir.path()).await;
    let leader = loopback::leader_of(&source).http_addr().to_owned();
    // Several hundred pages: an index, a view, a trigger, an AUTOINCREMENT counter, every value type.
    execute(
        &leader,
        "main",
        json!([
            "CREATE TABLE items(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, weight REAL, raw BLOB, note)",
            "CREATE INDEX items_by_name ON items(name)",
            "CREATE TABLE tagged(item INTEGER REFERENCES items(id), tag TEXT)",
            "CREATE VIEW summary AS SELECT count(*) AS n, sum(weight) AS w FROM items",
            "CREATE TRIGGER tag_new AFTER INSERT ON items BEGIN INSERT INTO tagged VALUES (new.id, 'new'); END",
            "INSERT INTO items(name, weight, raw, note) WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c \
             LIMIT 3000) SELECT 'item ' || n || ' ''quoted''; with a semicolon', n * 0.5, randomblob(n % 700), \
             CASE WHEN n % 3 = 0 THEN NULL ELSE n END FROM c",
            "DELETE FROM tagged WHERE item % 10 = 0",
            "DELETE FROM items WHERE id % 10 = 0",
        ]),
    )
    .await;
    let expected = content(&leader, "main").await;
    assert_eq!(expected[4], json!([[2700, 2025000.0]]), "the source's view");
    let (status, binary) = call(&leader, Method::GET, "/db/backup", "application/json", Vec::new()).await;
    assert_eq!(status, 200);
    assert!(binary.len() > 300 * 4096, "a backup of {} bytes", binary.len());
    let (status, dump) =
        call(&leader, Method::GET, "/db/backup?fmt=sql", "application/json", Vec::new()).await;
    assert_eq!(status, 200);
    for node in source {
        node.shutdown().await;
    }

    let target_dir = tempfile::tempdir().expect("tempdir");
    let target = loopback::three_nodes(target_dir.path()).await;
    // The binary copy through a follower, which passes the upload on to the leader.
    let via = follower(&target).http_addr().to_owned();
    let (status, answer) =
        json_call(&via, Method::POST, "/db/load", "application/octet-stream", binary.to_vec()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["loaded"]["format"], "sqlite", "{answer}");
    assert_eq!(answer["loaded"]["upload_bytes"], binary.len(), "{answer}");
    every_node_holds(&target, "main", &expected).await;
    // The dump into another database, on the leader; and a second load replaces the first whole.
    let leader = loopback::leader_of(&target).http_addr().to_owned();
    execute(&leader, "fromsql", json!(["CREATE TABLE stale(x)", "INSERT INTO stale VALUES (1)"])).await;
    let (status, answer) =
        json_call(&leader, Method::POST, "/db/load?db=fromsql", "text/plain", dump.to_vec()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["loaded"]["format"], "sql", "{answer}");
    assert!(answer["loaded"]["statements"].as_u64().unwrap() > 3000, "{answer}");
    every_node_holds(&target, "fromsql", &expected).await;
    let stale = rows(&leader, "fromsql", "SELECT * FROM stale").await;
    assert!(stale["error"].as_str().is_some_and(|e| e.contains("no such table")), "{stale}");
    // The restored databases take writes, and the trigger and the counter came with them.
    execute(&leader, "main", json!(["INSERT INTO items(name) VALUES ('after')"])).await;
    let after = rows(
        &leader,
        "main",
        "SELECT id, (SELECT tag FROM tagged WHERE item = items.id) FROM items \
                                       WHERE name = 'after'",
    )
    .await;
    assert_eq!(after["values"], json!([[3001, "new"]]), "{after}");
    // A file as other tools leave it: another page size, WAL mode. It is converted on the way in.
    let other = target_dir.path().join("other.sqlite");
    {
        let mut conn = bop_sql::Connection::open_stock(&other).expect("open");
        conn.execute(
            "PRAGMA page_size=8192; PRAGMA journal_mode=WAL; CREATE TABLE w(x); \
             INSERT INTO w WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c LIMIT 500) SELECT n FROM c",
            &bop_sql::Params::None,
        )
        .expect("fill");
    }
    let file = std::fs::read(&other).expect("read");
    assert_eq!(&file[18..20], &[2, 2], "a WAL-mode file");
    let (status, answer) =
        json_call(&via, Method::POST, "/db/load?db=converted", "application/octet-stream", file).await;
    assert_eq!(status, 200, "{answer}");
    for node in &target {
        let deadline = Instant::now() + Duration::from_secs(30);
        while rows(node.http_addr(), "converted", "SELECT sum(x) FROM w").await["values"] != json!([[125250]])
        {
            assert!(Instant::now() < deadline, "node {} never held the converted database", node.id());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let size = rows(node.http_addr(), "converted", "PRAGMA page_size").await;
        assert_eq!(size["values"], json!([[4096]]), "{size}");
    }
    assert!(leftovers(target_dir.path()).is_empty(), "{:?}", leftovers(target_dir.path()));
    for node in target {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_loads_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = loopback::three_nodes(dir.path()).await;
    let leader = loopback::leader_of(&nodes).http_addr().to_owned();
    execute(&leader, "main", json!(["CREATE TABLE kept(x)", "INSERT INTO kept VALUES (1), (2), (3)"])).await;
    let (_, good) = call(&leader, Method::GET, "/db/backup", "application/json", Vec::new()).await;
    let mut corrupt = good.to_vec();
    for byte in &mut corrupt[4096..] {
        *byte ^= 0x5a;
    }
    let refused: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("not a database", "application/octet-stream", b"hello".to_vec(), 400, "not an SQLite database"),
        ("SQLite's header, then garbage", "application/octet-stream", corrupt, 400, "refused"),
        ("a file cut short", "application/octet-stream", good[..good.len() / 2].to_vec(), 400, "refused"),
        ("an empty upload", "text/plain", Vec::new(), 400, "empty"),
        (
            "a dump failing half way",
            "text/plain",
            b"CREATE TABLE a(x);\nINSERT INTO nope VALUES (1);\n".to_vec(),
            400,
            "no such table",
        ),
        (
            "a dump cut short",
            "text/plain",
            b"CREATE TABLE a(x);\nINSERT INTO a VALUES (1".to_vec(),
            400,
            "incomplete",
        ),
        (
            "a dump attaching a file",
            "text/plain",
            b"ATTACH '/tmp/bop-load-attach.db' AS o;\n".to_vec(),
            400,
            "refused",
        ),
        ("a dump that is not text", "text/plain", b"SELECT '\xff\xfe';\n".to_vec(), 400, "UTF-8"),
    ];
    for (what, content_type, body, status, says) in refused {
        for addr in [leader.clone(), follower(&nodes).http_addr().to_owned()] {
            let (got, answer) = json_call(&addr, Method::POST, "/db/load", content_type, body.clone()).await;
            assert_eq!(got, status, "{what} via {addr}: {answer}");
            let message = answer["error"].as_str().unwrap_or_default();
            assert!(message.contains(says), "{what}: {answer}");
        }
    }
    assert!(!std::path::Path::new("/tmp/bop-load-attach.db").exists());
    // A declared length past the bound is refused before the body is read.
    let (status, answer) = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(&leader).await.expect("connect");
        let head = format!(
            "POST /db/load HTTP/1.1\r\nHost: {leader}\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            1u64 << 40
        );
        stream.write_all(head.as_bytes()).await.expect("send");
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
            .await
            .expect("answered")
            .ok();
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status: u16 = text.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status");
        (status, text)
    };
    assert_eq!(status, 413, "{answer}");
    // `redirect` on a follower names the leader instead.
    let (status, _) =
        call(follower(&nodes).http_addr(), Method::POST, "/db/load?redirect", "text/plain", b"x".to_vec())
            .await;
    assert_eq!(status, 301);
    for node in &nodes {
        let kept = rows(node.http_addr(), "main", "SELECT count(*), sum(x) FROM kept").await;
        assert_eq!(kept["values"], json!([[3, 6]]), "node {}", node.id());
        let tables = rows(node.http_addr(), "main", "SELECT name FROM sqlite_master").await;
        assert_eq!(tables["values"], json!([["kept"]]), "node {}", node.id());
    }
    assert!(leftovers(dir.path()).is_empty(), "{:?}", leftovers(dir.path()));
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_a_crash_left_behind_a_backup_or_a_load_are_removed_at_the_next_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("node-1");
    loopback::one_node_in(dir.path(), bop_raft::node::NodeEnv::default()).await.shutdown().await;
    let stale = [
        "backup-9-0.sqlite.tmp",
        "backup-9-1.gz.tmp",
        "restore-9-2.upload.tmp",
        "restore-9-2.upload.tmp-wal",
        "restore-9-2.scratch.tmp",
        "restore-9-2.scratch.tmp-journal",
    ];
    for name in stale.iter().chain(["keep-me.txt"].iter()) {
        std::fs::write(data.join(name), b"left by a crash").expect("write");
    }
    let node = loopback::one_node_in(dir.path(), bop_raft::node::NodeEnv::default()).await;
    for name in stale {
        assert!(!data.join(name).exists(), "{name} was left");
    }
    assert!(data.join("keep-me.txt").exists(), "another file was removed");
    node.shutdown().await;
}
