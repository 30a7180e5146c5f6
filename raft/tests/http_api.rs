//! The node's HTTP API against rqlite's request and response shapes, on a three-node cluster over loopback
//! TCP: writes through the leader, reads at every level on every node, and the error cases — once as it
//! comes, and once with HTTPS, users and mutual TLS on the Raft transport (every call as a user who may do
//! everything).

use std::collections::BTreeMap;
use std::time::Duration;

use bop_raft::http_client::ClientSettings;
use bop_raft::node::{Node, NodeConfig, NodeEnv, BODY_BYTES_MAX};
use openraft::async_runtime::WatchReceiver;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A minimal HTTP/1.1 client: one request per connection, returns (status, body as JSON or string).
async fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let (status, raw) = http_raw(addr, method, path, body).await;
    let body = String::from_utf8_lossy(&raw).into_owned();
    (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

tokio::task_local! {
    /// How the test's calls reach the nodes: TLS and credentials (none unless set).
    static CLIENT: ClientSettings;
}

/// The status and the body's bytes.
async fn http_raw(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let client = CLIENT.try_with(Clone::clone).unwrap_or_default();
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let mut stream: bop_raft::net::BoxStream = match &client.tls {
        None => Box::new(tcp),
        Some(tls) => Box::new(bop_raft::https::connect(tls, tcp, addr).await.expect("TLS")),
    };
    let authorization =
        client.authorization.map(|value| format!("Authorization: {value}\r\n")).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{authorization}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("send head");
    // A body past the limit is answered before it is read: sending the rest may fail, the answer came.
    let sent = stream.write_all(body).await;
    let mut raw = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw)).await.expect("answer");
    if raw.is_empty() {
        sent.expect("send body");
        read.expect("read");
    }
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("end of head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
    (status, raw[split + 4..].to_vec())
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_speaks_rqlite() {
    speaks_rqlite(&|_| NodeEnv::default()).await;
}

/// The same with everything on: HTTPS, users (the test calls as a user with `all`), mutual TLS between
/// the nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_speaks_rqlite_over_https_with_users() {
    use std::sync::Arc;
    let pki = tempfile::tempdir().expect("tempdir");
    bop_raft::tcp::tls::write_throwaway_pki(pki.path(), &[1, 2, 3, 4]).expect("pki");
    let users = br#"[{"username": "op", "password": "op pw", "perms": ["all"]}]"#;
    let auth = Arc::new(bop_raft::auth::Auth::from_json(users).expect("auth file"));
    let env = |id: u64| {
        let (cert, key) = (pki.path().join(format!("{id}.pem")), pki.path().join(format!("{id}-key.pem")));
        let ca = pki.path().join("ca.pem");
        NodeEnv {
            raft_tls: Some(
                bop_raft::tcp::tls::TransportTls::from_pem_files(&ca, &cert, &key).expect("Raft TLS"),
            ),
            http_tls: Some(Arc::new(
                bop_raft::https::HttpTls::from_pem_files(&cert, &key, &ca, None).expect("HTTPS"),
            )),
            auth: Some(Arc::clone(&auth)),
            ..NodeEnv::default()
        }
    };
    let client = ClientSettings {
        authorization: Some(bop_raft::auth::basic_header("op", "op pw")),
        tls: Some(bop_raft::https::client_trusting(&pki.path().join("ca.pem")).expect("client")),
    };
    CLIENT.scope(client, speaks_rqlite(&env)).await;
}

async fn speaks_rqlite(env: &dyn Fn(u64) -> NodeEnv) {
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
        let node = Node::start_in(config, env(id)).await.expect("start");
        members.insert(id, node.member_addr());
        nodes.push(node);
    }
    nodes[0].initialize_if_new(members).await.expect("initialize");
    let m = nodes[0]
        .raft()
        .wait(Some(Duration::from_secs(30)))
        .metrics(|m| m.current_leader.is_some(), "leader")
        .await
        .expect("leader");
    let leader_id = m.current_leader.expect("leader id");
    let leader = nodes.iter().find(|n| n.id() == leader_id).expect("leader node");
    let follower = nodes.iter().find(|n| n.id() != leader_id).expect("a follower");
    leader
        .raft()
        .wait(Some(Duration::from_secs(30)))
        .metrics(|m| m.state.is_leader() && m.last_applied.map(|l| l.index) == m.last_log_index, "ready")
        .await
        .expect("ready");
    let (l, f) = (leader.http_addr().to_owned(), follower.http_addr().to_owned());

    // Writes: plain, positional and named statements, with rqlite's result shape.
    let body = json!([
        "CREATE TABLE foo (id INTEGER NOT NULL PRIMARY KEY, name TEXT, age INTEGER)",
        ["INSERT INTO foo(name, age) VALUES(?, ?)", "fiona", 20],
        ["INSERT INTO foo(name, age) VALUES(:name, :age)", {"name": "billy", "age": 30}]
    ]);
    let (status, out) = http(&l, "POST", "/db/execute", body.to_string().as_bytes()).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["results"][1]["last_insert_id"], 1);
    assert_eq!(out["results"][2]["rows_affected"], 1);

    // Reads: GET with q, POST with a statement list, associative rows, each level.
    let path = format!("/db/query?q={}", encode("SELECT name, age FROM foo ORDER BY id"));
    let (status, out) = http(&l, "GET", &path, b"").await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["results"][0]["columns"], json!(["name", "age"]));
    assert_eq!(out["results"][0]["values"], json!([["fiona", 20], ["billy", 30]]));
    let (_, out) = http(
        &l,
        "POST",
        "/db/query?associative&level=linearizable",
        br#"["SELECT name FROM foo WHERE age > 25"]"#,
    )
    .await;
    assert_eq!(out["results"][0]["rows"], json!([{"name": "billy"}]));
    let (status, out) = http(&f, "GET", &format!("{path}&level=weak"), b"").await;
    assert_eq!(
        (status, out["results"][0]["values"].clone()),
        (200, json!([["fiona", 20], ["billy", 30]])),
        "a weak read on a follower is forwarded to the leader"
    );
    let (status, out) = http(&f, "GET", &format!("{path}&level=weak&redirect"), b"").await;
    assert_eq!(status, 301, "with redirect, a follower sends the client to the leader instead: {out}");
    assert_eq!(out["leader"]["id"], leader_id);
    // A follower serves level=none from its own page store once it applied the writes.
    let mut seen = Value::Null;
    for _ in 0..100 {
        let (_, out) = http(&f, "GET", &format!("{path}&level=none"), b"").await;
        seen = out["results"][0]["values"].clone();
        if seen == json!([["fiona", 20], ["billy", 30]]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, json!([["fiona", 20], ["billy", 30]]), "the follower's own copy");

    // Errors: SQL errors inside results, writes on a follower, malformed input, a misspelt level, size.
    let (status, out) = http(&l, "POST", "/db/execute", br#"["INSERT INTO nope VALUES(1)"]"#).await;
    assert_eq!(status, 200);
    assert!(out["results"][0]["error"].as_str().is_some_and(|e| e.contains("no such table")), "{out}");
    let (status, _) =
        http(&f, "POST", "/db/execute?redirect", br#"["INSERT INTO foo(name) VALUES('x')"]"#).await;
    assert_eq!(status, 301, "with redirect, writes sent to a follower are redirected to the leader");
    let (status, _) = http(&l, "POST", "/db/execute", b"{not json").await;
    assert_eq!(status, 400);
    let (status, _) = http(&l, "GET", "/db/query?q=SELECT%201&level=strng", b"").await;
    assert_eq!(status, 400, "a misspelt level");
    let (status, _) = http(&l, "POST", "/db/execute", &vec![b' '; BODY_BYTES_MAX + 1]).await;
    assert_eq!(status, 413);
    let (status, out) = http(&l, "GET", "/db/query?q=SELECT%20count(*)%20FROM%20foo", b"").await;
    assert_eq!(
        (status, out["results"][0]["values"].clone()),
        (200, json!([[2]])),
        "nothing was written by the failures"
    );

    // A named database beyond the default one.
    let (status, _) =
        http(&l, "POST", "/db/execute?db=other", br#"["CREATE TABLE t (x)", "INSERT INTO t VALUES (42)"]"#)
            .await;
    assert_eq!(status, 200);
    let (_, out) = http(&l, "GET", "/db/query?db=other&q=SELECT%20x%20FROM%20t", b"").await;
    assert_eq!(out["results"][0]["values"], json!([[42]]));

    // The unified endpoint: a batch with a write runs in one transaction on the leader (forwarded from a
    // follower) and answers rows for reads; a batch of reads is a query, served locally at level=none.
    let mixed = br#"[["INSERT INTO t VALUES(?)", 7], "SELECT x FROM t ORDER BY x"]"#;
    let (status, out) = http(&f, "POST", "/db/request?db=other", mixed).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["results"][0]["rows_affected"], 1, "{out}");
    assert_eq!(out["results"][1]["values"], json!([[7], [42]]), "{out}");
    let (status, _) = http(&f, "POST", "/db/request?db=other&redirect", mixed).await;
    assert_eq!(status, 301, "with redirect, a batch with a write is redirected to the leader");
    let (status, out) = http(
        &l,
        "POST",
        "/db/request?db=other&transaction",
        br#"["INSERT INTO t VALUES(1)", "SELECT * FROM nope"]"#,
    )
    .await;
    assert_eq!(status, 200);
    assert!(out["results"][0]["error"].as_str().is_some_and(|e| e.contains("no such table")), "{out}");
    let mut seen = Value::Null;
    for _ in 0..100 {
        let (status, out) =
            http(&f, "POST", "/db/request?db=other&level=none&redirect", br#"["SELECT count(*) FROM t"]"#)
                .await;
        // 301 only until the follower has applied the database's creation (unknown databases count as
        // writes); afterwards a read-only batch at level=none is served here, not redirected.
        seen = json!([status, out["results"][0]["values"].clone()]);
        if seen == json!([200, [[2]]]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        seen,
        json!([200, [[2]]]),
        "served locally; the failed batch wrote nothing, the mixed one applied"
    );

    // Without `transaction` each statement stands alone (rqlite's semantics): the failed one is reported in
    // its place, the others are written. With it, the batch is all or nothing.
    let (status, out) = http(
        &l,
        "POST",
        "/db/execute?db=each",
        br#"["CREATE TABLE e (x)", "INSERT INTO e VALUES (1)", "INSERT INTO nope VALUES (2)", "INSERT INTO e VALUES (3)"]"#,
    )
    .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["results"][1]["rows_affected"], 1, "{out}");
    assert!(out["results"][2]["error"].as_str().is_some_and(|e| e.contains("no such table")), "{out}");
    assert_eq!(out["results"][3]["rows_affected"], 1, "{out}");
    let (_, out) = http(
        &l,
        "POST",
        "/db/execute?db=each&transaction",
        br#"["INSERT INTO e VALUES (4)", "INSERT INTO nope VALUES (5)"]"#,
    )
    .await;
    assert!(out["results"][0]["error"].as_str().is_some_and(|e| e.contains("no such table")), "{out}");
    let (_, out) = http(&l, "GET", "/db/query?db=each&q=SELECT%20x%20FROM%20e%20ORDER%20BY%20x", b"").await;
    assert_eq!(out["results"][0]["values"], json!([[1], [3]]), "{out}");

    // A backup is a consistent, ordinary SQLite file, taken on the leader (forwarded byte for byte).
    let (status, bytes) = http_raw(&f, "GET", "/db/backup?db=other", b"").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    assert_eq!(&bytes[..16], b"SQLite format 3\0");
    let backed_up_rows = |name: &str, file: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, file).expect("write backup");
        let mut copy = bop_sql::Connection::open_stock(&path).expect("open backup");
        copy.query("SELECT x FROM t ORDER BY x", &bop_sql::Params::None).expect("query backup").rows
    };
    let rows_written = vec![vec![bop_sql::Value::Integer(7)], vec![bop_sql::Value::Integer(42)]];
    assert_eq!(backed_up_rows("backup-copy.db", &bytes), rows_written);
    // rqlite's `compress`: the same file, gzip-compressed (through the follower too).
    let (status, gz) = http_raw(&f, "GET", "/db/backup?db=other&compress", b"").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&gz));
    assert_eq!(&gz[..2], &[0x1f, 0x8b], "a gzip file");
    let mut unzipped = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut unzipped).expect("gunzip");
    assert_eq!(unzipped.len(), bytes.len());
    assert_eq!(&unzipped[..16], b"SQLite format 3\0");
    assert_eq!(backed_up_rows("backup-unzipped.db", &unzipped), rows_written);
    let (status, gz) = http_raw(&f, "GET", "/db/backup?db=other&fmt=sql&compress", b"").await;
    assert_eq!(status, 200);
    let mut dump = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut dump).expect("gunzip");
    assert!(dump.starts_with("PRAGMA foreign_keys=OFF;") && dump.contains("INSERT INTO"), "{dump}");
    let (status, _) = http(&l, "GET", "/db/backup?db=missing", b"").await;
    assert_eq!(status, 404);
    let (status, _) = http(&l, "GET", "/db/backup?db=other&fmt=xml", b"").await;
    assert_eq!(status, 400, "an unknown backup format is refused");

    // A backup larger than a streaming chunk (1 MiB) arrives whole through a follower: the leader streams
    // it from an unlinked file and the follower passes it on chunk by chunk.
    let (status, out) = http(
        &l,
        "POST",
        "/db/execute?db=big",
        br#"["CREATE TABLE b (i INTEGER PRIMARY KEY, v BLOB)", "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 12) INSERT INTO b SELECT i, randomblob(500000) FROM c"]"#,
    )
    .await;
    assert_eq!(status, 200, "{out}");
    let (status, bytes) = http_raw(&f, "GET", "/db/backup?db=big", b"").await;
    assert_eq!(status, 200);
    assert!(bytes.len() > 6_000_000, "{} bytes", bytes.len());
    let big_path = dir.path().join("big-copy.db");
    std::fs::write(&big_path, &bytes).expect("write backup");
    let mut big = bop_sql::Connection::open_stock(&big_path).expect("open backup");
    let rows = big
        .query(
            "SELECT count(*), sum(length(v)), (SELECT * FROM pragma_integrity_check) FROM b",
            &bop_sql::Params::None,
        )
        .expect("query backup");
    assert_eq!(
        rows.rows,
        vec![vec![
            bop_sql::Value::Integer(12),
            bop_sql::Value::Integer(6_000_000),
            bop_sql::Value::Text("ok".into())
        ]]
    );
    drop(big);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join(format!("node-{leader_id}")))
        .expect("data dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("backup-"))
        .collect();
    assert!(leftovers.is_empty(), "the backup's temporary file is gone: {leftovers:?}");

    // fmt=sql: the SQL text that rebuilds the database (rqlite's and SQLite's .dump shape).
    let (status, out) = http(
        &l,
        "POST",
        "/db/execute?db=dump",
        json!([
            r#"CREATE TABLE "odd ""name" (id INTEGER PRIMARY KEY AUTOINCREMENT, t TEXT, r REAL, b BLOB, n)"#,
            r#"CREATE INDEX odd_t ON "odd ""name" (t)"#,
            "CREATE TABLE kv (k TEXT PRIMARY KEY, v) WITHOUT ROWID",
            "CREATE VIEW kv_view AS SELECT k FROM kv",
            r#"INSERT INTO "odd ""name" (t, r, b, n) VALUES ('it''s', 1.5, x'00ff', NULL)"#,
            "INSERT INTO \"odd \"\"name\" (t, r, b, n) VALUES ('line\nbreak', -2.5e-8, x'', 7)",
            "INSERT INTO kv VALUES ('a', 1), ('b', 'two')",
            "CREATE TABLE g (a INTEGER, b INTEGER GENERATED ALWAYS AS (a * 2) VIRTUAL)",
            "INSERT INTO g (rowid, a) VALUES (-9223372036854775808, 5), (3, 6)",
        ])
        .to_string()
        .as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    let (status, dump) = http_raw(&f, "GET", "/db/backup?db=dump&fmt=sql", b"").await;
    assert_eq!(status, 200);
    let dump = String::from_utf8(dump).expect("the dump is text");
    assert!(dump.starts_with("PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\n"), "{dump}");
    assert!(dump.ends_with("COMMIT;\n"), "{dump}");
    let restored_path = dir.path().join("restored.db");
    let mut restored = bop_sql::Connection::open_stock(&restored_path).expect("open");
    restored.execute(&dump, &bop_sql::Params::None).expect("the dump runs");
    let q =
        |conn: &mut bop_sql::Connection, sql: &str| conn.query(sql, &bop_sql::Params::None).expect(sql).rows;
    use bop_sql::Value::{Blob, Integer, Null, Real, Text};
    assert_eq!(
        q(&mut restored, "SELECT id, t, r, b, n FROM \"odd \"\"name\" ORDER BY id"),
        vec![
            vec![Integer(1), Text("it's".into()), Real(1.5), Blob(vec![0, 0xff]), Null],
            vec![Integer(2), Text("line\nbreak".into()), Real(-2.5e-8), Blob(vec![]), Integer(7)],
        ]
    );
    assert_eq!(
        q(&mut restored, "SELECT k, v FROM kv_view JOIN kv USING (k) ORDER BY k"),
        vec![vec![Text("a".into()), Integer(1)], vec![Text("b".into()), Text("two".into())],]
    );
    assert_eq!(q(&mut restored, "SELECT seq FROM sqlite_sequence"), vec![vec![Integer(2)]]);
    // Generated columns are computed again, not inserted; the smallest possible rowid is not skipped.
    assert_eq!(
        q(&mut restored, "SELECT a, b FROM g ORDER BY rowid"),
        vec![vec![Integer(5), Integer(10)], vec![Integer(6), Integer(12)]]
    );
    assert_eq!(
        q(&mut restored, "SELECT name FROM sqlite_master WHERE type = 'index' AND name = 'odd_t'").len(),
        1
    );
    let (status, _) = http(&f, "GET", "/db/backup?db=other&redirect", b"").await;
    assert_eq!(status, 301, "with redirect, a follower redirects a backup to the leader");

    // Status and readiness.
    let (status, out) = http(&f, "GET", "/status", b"").await;
    assert_eq!(status, 200);
    assert_eq!(out["raft"]["leader"], leader_id);
    let (status, _) = http(&f, "GET", "/readyz", b"").await;
    assert_eq!(status, 200);
    let (status, text) = http(&l, "GET", "/metrics", b"").await;
    let text = text.as_str().unwrap_or_default().to_owned();
    assert_eq!(status, 200);
    // OpenMetrics text (prometheus-client): counters end in _total, histograms have buckets, `# EOF` ends it.
    let values: std::collections::HashMap<&str, f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k, v.parse().ok()?))))
        .collect();
    assert_eq!(values.get("bop_raft_is_leader"), Some(&1.0), "{text}");
    assert!(values["bop_wal_fsyncs_total"] > 0.0 && values["bop_wal_fsync_seconds_total"] > 0.0, "{text}");
    // The fdatasync histogram counts what the counter counts (cumulative buckets, +Inf = all of them).
    let fsyncs = values["bop_wal_fsync_duration_seconds_count"];
    assert!(fsyncs > 0.0 && fsyncs <= values["bop_wal_fsyncs_total"], "{text}");
    assert_eq!(values["bop_wal_fsync_duration_seconds_bucket{le=\"+Inf\"}"], fsyncs, "{text}");
    assert!(values["bop_wal_fsync_duration_seconds_bucket{le=\"0.00025\"}"] <= fsyncs, "{text}");
    assert!(values["bop_write_duration_seconds_count"] >= 3.0, "the writes above: {text}");
    assert!(values["bop_write_duration_seconds_sum"] > 0.0, "{text}");
    // Every entry applied here, once: indexes 0 (the first membership) to the last applied.
    assert_eq!(
        values["bop_raft_apply_duration_seconds_count"],
        values["bop_raft_last_applied_index"] + 1.0,
        "{text}"
    );
    assert!(values["bop_http_request_duration_seconds_bucket{le=\"+Inf\"}"] >= 3.0, "{text}");
    assert!(text.trim_end().ends_with("# EOF"), "{text}");

    // A running node's data directory is locked: a second node on it is refused before touching its files.
    let twin = NodeConfig {
        id: leader_id,
        data_dir: dir.path().join(format!("node-{leader_id}")),
        raft_addr: "127.0.0.1:0".into(),
        http_addr: "127.0.0.1:0".into(),
    };
    let err = Node::start(twin).await.err().expect("refused");
    assert!(err.to_string().contains("in use by another running bop node"), "{err}");

    // Membership: a fourth node joins through the leader's API (learner, caught up, then voter), serves the
    // data from its own copy, and is removed again.
    let config = NodeConfig {
        id: 4,
        data_dir: dir.path().join("node-4"),
        raft_addr: "127.0.0.1:0".into(),
        http_addr: "127.0.0.1:0".into(),
    };
    let fourth = Node::start_in(config, env(4)).await.expect("start node 4");
    let join = json!({ "id": 4, "addr": fourth.member_addr() });
    let (status, out) = http(&l, "POST", "/join", join.to_string().as_bytes()).await;
    assert_eq!(status, 200, "{out}");
    let (status, _) = http(&f, "POST", "/join?redirect", join.to_string().as_bytes()).await;
    assert_eq!(status, 301, "membership changes go to the leader");
    let (_, out) = http(&l, "GET", "/nodes", b"").await;
    assert_eq!(out["4"]["voter"], true, "{out}");
    let h4 = fourth.http_addr().to_owned();
    // Joined means replicated to; the new node applies what it received a moment later.
    let applied = leader.raft().metrics().borrow_watched().last_applied.map(|l| l.index);
    fourth
        .raft()
        .wait(Some(Duration::from_secs(30)))
        .applied_index_at_least(applied, "node 4 applied what the leader had")
        .await
        .expect("node 4 catches up");
    let (_, out) = http(&h4, "GET", &format!("{path}&level=none"), b"").await;
    assert_eq!(out["results"][0]["values"], json!([["fiona", 20], ["billy", 30]]), "the new node's copy");
    let (status, out) = http(&l, "DELETE", "/remove", br#"{"id": 4}"#).await;
    assert_eq!(status, 200, "{out}");
    let (_, out) = http(&l, "GET", "/nodes", b"").await;
    assert!(out.get("4").is_none(), "node 4 is gone from the membership: {out}");
    // `freshness` bounds how long ago a node at level=none last heard from a leader: a follower in the
    // cluster answers; node 4, removed and no longer sent heartbeats, turns its reads down as stale.
    let (_, out) = http(&f, "GET", &format!("{path}&level=none&freshness=10s"), b"").await;
    assert_eq!(out["results"][0]["values"], json!([["fiona", 20], ["billy", 30]]), "{out}");
    // With freshness_strict the follower has also applied everything the leader had reported committed.
    let (_, out) = http(&f, "GET", &format!("{path}&level=none&freshness=10s&freshness_strict"), b"").await;
    assert_eq!(out["results"][0]["values"], json!([["fiona", 20], ["billy", 30]]), "{out}");
    let (status, _) = http(&f, "GET", &format!("{path}&level=none&freshness_strict"), b"").await;
    assert_eq!(status, 400, "freshness_strict without freshness");
    let (status, _) = http(&f, "GET", &format!("{path}&level=none&freshness=soon"), b"").await;
    assert_eq!(status, 400, "a freshness that is not a duration");
    let until = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out) =
            http(&h4, "GET", &format!("{path}&level=none&freshness=300ms&freshness_strict"), b"").await;
        if out["results"][0]["error"].as_str().is_some_and(|e| e.starts_with("stale read")) {
            break;
        }
        assert!(std::time::Instant::now() < until, "node 4 never turned a read down as stale: {out}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fourth.shutdown().await;
    // A write sent to a follower is forwarded to the leader and committed.
    let (status, out) =
        http(&f, "POST", "/db/execute", br#"["INSERT INTO foo(name) VALUES('after')"]"#).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(
        out["results"][0]["rows_affected"], 1,
        "the three remaining nodes still commit, via forwarding"
    );
    for node in nodes {
        node.shutdown().await;
    }

    // A data directory belongs to one node id; a port that is taken is a clear error.
    let wrong = NodeConfig {
        id: 9,
        data_dir: dir.path().join("node-1"),
        raft_addr: "127.0.0.1:0".into(),
        http_addr: "127.0.0.1:0".into(),
    };
    let err = Node::start(wrong).await.err().expect("refused");
    // Not "in use": shutting the node down released the directory's lock.
    assert!(err.to_string().contains("belongs to node 1"), "{err}");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy = NodeConfig {
        id: 1,
        data_dir: dir.path().join("node-1"),
        raft_addr: taken.local_addr().expect("addr").to_string(),
        http_addr: "127.0.0.1:0".into(),
    };
    let err = Node::start(busy).await.err().expect("refused");
    assert!(err.to_string().contains("cannot listen"), "{err}");
}
