//! rqlite's documented API contract, on a three-node cluster over loopback: `redirect` answers 301 with the
//! leader's URL, unknown query parameters are ignored while misspelt values of known ones are refused,
//! every answer carries a version header, `/status` names the leader as rqlite's `store.leader`, `/nodes`
//! has rqlite's fields (reachability measured, the `ver=2` array form), and `/readyz` takes `noleader`,
//! `sync` and `timeout`.

use std::time::{Duration, Instant};

use bop_raft::node::Node;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "common/loopback.rs"]
mod loopback;

/// An answer: status, headers (names in lower case) and body (JSON, or a string when it is not JSON).
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// One request on its own connection (no redirect followed), answered within 30 s.
async fn http(addr: &str, method: &str, path: &str, body: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("send head");
    stream.write_all(body.as_bytes()).await.expect("send body");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("an answer within 30 s")
        .expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("end of head");
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()));
    Answer { status, headers, body }
}

struct Cluster {
    _dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

async fn cluster() -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = loopback::three_nodes(dir.path()).await;
    Cluster { _dir: dir, nodes }
}

impl Cluster {
    fn leader(&self) -> &Node {
        loopback::leader_of(&self.nodes)
    }

    fn follower(&self) -> &Node {
        let leader = self.leader().id();
        self.nodes.iter().find(|n| n.id() != leader).expect("a follower")
    }

    async fn shutdown(self) {
        for node in self.nodes {
            node.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_answers_301_with_the_leaders_url_for_the_same_path_and_query() {
    let cluster = cluster().await;
    let (l, f) = (cluster.leader().http_addr().to_owned(), cluster.follower().http_addr().to_owned());
    let created = http(&l, "POST", "/db/execute", r#"["CREATE TABLE t (x)"]"#).await;
    assert_eq!(created.status, 200, "{}", created.body);
    for (method, path, body) in [
        ("POST", "/db/execute?redirect&timings", r#"["INSERT INTO t VALUES (1)"]"#),
        ("GET", "/db/query?q=SELECT%20x%20FROM%20t&level=weak&redirect", ""),
        ("POST", "/db/query?redirect&level=linearizable", r#"["SELECT x FROM t"]"#),
        ("POST", "/db/request?redirect", r#"["INSERT INTO t VALUES (2)"]"#),
        ("GET", "/db/backup?redirect", ""),
        ("POST", "/join?redirect", r#"{"id": 9, "addr": "127.0.0.1:1"}"#),
    ] {
        let answer = http(&f, method, path, body).await;
        assert_eq!(answer.status, 301, "{method} {path}: {}", answer.body);
        assert_eq!(answer.header("location"), Some(format!("http://{l}{path}").as_str()), "{method} {path}");
    }
    // Nothing was written by the redirected writes: the follower did not forward them.
    let count = http(&l, "GET", "/db/query?q=SELECT%20count(*)%20FROM%20t", "").await;
    assert_eq!(count.body["results"][0]["values"], json!([[0]]), "{}", count.body);
    // Following the Location header reaches the leader, which answers the request itself.
    let answer = http(&f, "POST", "/db/execute?redirect", r#"["INSERT INTO t VALUES (3)"]"#).await;
    let location = answer.header("location").expect("location").to_owned();
    let target = location.strip_prefix("http://").and_then(|r| r.split_once('/')).expect("http URL");
    let followed = http(target.0, "POST", &format!("/{}", target.1), r#"["INSERT INTO t VALUES (3)"]"#).await;
    assert_eq!((followed.status, followed.body["results"][0]["rows_affected"].clone()), (200, json!(1)));
    // Without `redirect` a follower still forwards, and the leader serves `redirect` requests itself.
    let forwarded = http(&f, "GET", "/db/query?q=SELECT%20count(*)%20FROM%20t", "").await;
    assert_eq!(forwarded.body["results"][0]["values"], json!([[1]]), "{}", forwarded.body);
    let on_leader = http(&l, "GET", "/db/query?q=SELECT%20count(*)%20FROM%20t&redirect", "").await;
    assert_eq!(on_leader.status, 200, "{}", on_leader.body);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_parameters_are_ignored_and_misspelt_values_of_known_ones_refused() {
    let cluster = cluster().await;
    let (l, f) = (cluster.leader().http_addr().to_owned(), cluster.follower().http_addr().to_owned());
    // What client libraries send that bop does not act on: rqlite's retries, timeout, queue-free flags,
    // and junk keys.
    let answer =
        http(&l, "POST", "/db/execute?timeout=10s&retries=2&bogus=1&x-client=7", r#"["CREATE TABLE t (x)"]"#)
            .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    for addr in [&l, &f] {
        let answer = http(addr, "GET", "/db/query?q=SELECT%201&bogus=1&nonsense&level=weak", "").await;
        assert_eq!(
            (answer.status, answer.body["results"][0]["values"].clone()),
            (200, json!([[1]])),
            "{addr}"
        );
        // Level names are case-insensitive, as in rqlite.
        let answer = http(addr, "GET", "/db/query?q=SELECT%201&level=WEAK", "").await;
        assert_eq!(answer.status, 200, "{addr}: {}", answer.body);
        // A misspelt level is refused on every node, before anything is forwarded.
        let answer = http(addr, "GET", "/db/query?q=SELECT%201&level=strng", "").await;
        assert_eq!(answer.status, 400, "{addr}: {}", answer.body);
        let error = answer.body["error"].as_str().unwrap_or_default();
        assert!(error.contains("strng") && error.contains("linearizable"), "{error}");
        for bad in
            ["q=SELECT%201&timeout=soon", "q=SELECT%201&db_timeout=x", "q=SELECT%201&freshness=1y&level=none"]
        {
            let answer = http(addr, "GET", &format!("/db/query?{bad}"), "").await;
            assert_eq!(answer.status, 400, "{addr} {bad}: {}", answer.body);
        }
        for bad in ["q=SELECT%201&retries=many", "q="] {
            let answer = http(addr, "GET", &format!("/db/query?{bad}"), "").await;
            assert_eq!(answer.status, 400, "{addr} {bad}: {}", answer.body);
        }
    }
    // freshness=0 (Go's zero duration, which rqdb sends by default) means no freshness bound.
    let answer = http(&f, "GET", "/db/query?q=SELECT%201&level=none&freshness=0", "").await;
    assert_eq!(
        (answer.status, answer.body["results"][0]["values"].clone()),
        (200, json!([[1]])),
        "{}",
        answer.body
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_the_version_header_and_status_and_nodes_speak_rqlite() {
    let cluster = cluster().await;
    let leader = cluster.leader();
    let leader_id = leader.id();
    let (l, f) = (leader.http_addr().to_owned(), cluster.follower().http_addr().to_owned());
    let version = format!("bop-{}", env!("CARGO_PKG_VERSION"));
    for (addr, method, path) in [
        (&l, "GET", "/status"),
        (&f, "GET", "/nodes"),
        (&f, "GET", "/db/query?q=SELECT%201"),
        (&f, "GET", "/db/query?q=SELECT%201&redirect"),
        (&l, "GET", "/nope"),
        (&l, "GET", "/db/query?q=SELECT%201&level=strng"),
        (&f, "GET", "/readyz"),
    ] {
        let answer = http(addr, method, path, "").await;
        assert_eq!(answer.header("x-rqlite-version"), Some(version.as_str()), "{method} {path}");
    }

    // /status: bop's own fields and rqlite's store.leader (node id as a string, Raft address).
    for node in &cluster.nodes {
        let status = http(node.http_addr(), "GET", "/status", "").await.body;
        assert_eq!(status["raft"]["leader"], leader.id(), "{status}");
        assert_eq!(status["store"]["leader"]["node_id"], leader.id().to_string(), "{status}");
        assert_eq!(status["store"]["leader"]["addr"], leader.raft_addr(), "{status}");
        assert_eq!(status["build"]["version"], version, "{status}");
    }

    // /nodes: bop's fields and rqlite's, keyed by id; every node reachable; ver=2 as an array.
    let nodes = http(&f, "GET", "/nodes", "").await.body;
    for node in &cluster.nodes {
        let entry = &nodes[node.id().to_string()];
        assert_eq!(entry["id"], node.id().to_string(), "{nodes}");
        assert_eq!(entry["api_addr"], format!("http://{}", node.http_addr()), "{nodes}");
        assert_eq!(entry["addr"], node.raft_addr(), "{nodes}");
        assert_eq!(entry["raft_addr"], node.member_addr(), "{nodes}");
        assert_eq!(entry["voter"], true, "{nodes}");
        assert_eq!(entry["reachable"], true, "{nodes}");
        assert_eq!(entry["leader"], node.id() == leader.id(), "{nodes}");
        assert!(entry["time"].as_f64().is_some_and(|t| (0.0..5.0).contains(&t)), "{nodes}");
    }
    let v2 = http(&f, "GET", "/nodes?ver=2", "").await.body;
    let list = v2["nodes"].as_array().expect("ver=2 is {\"nodes\": [...]}");
    let ids: Vec<&str> = list.iter().filter_map(|n| n["id"].as_str()).collect();
    assert_eq!(ids, ["1", "2", "3"], "{v2}");
    assert_eq!(list.iter().filter(|n| n["leader"] == true).count(), 1, "{v2}");

    // A node that stops answering is reported unreachable, within the timeout asked for.
    let mut nodes_left = cluster.nodes;
    let gone_index =
        nodes_left.iter().position(|n| n.id() != leader_id && n.http_addr() != f).expect("third");
    let gone = nodes_left.remove(gone_index);
    let gone_id = gone.id().to_string();
    gone.shutdown().await;
    let started = Instant::now();
    let nodes = http(&f, "GET", "/nodes?timeout=2s", "").await.body;
    assert!(started.elapsed() < Duration::from_secs(10), "bounded by the timeout: {:?}", started.elapsed());
    assert_eq!(nodes[&gone_id]["reachable"], false, "{nodes}");
    assert!(nodes[&gone_id]["error"].as_str().is_some_and(|e| !e.is_empty()), "{nodes}");
    assert_eq!(nodes[&f_id(&nodes_left, &f)]["reachable"], true, "{nodes}");
    for node in nodes_left {
        node.shutdown().await;
    }
}

fn f_id(nodes: &[Node], http_addr: &str) -> String {
    nodes.iter().find(|n| n.http_addr() == http_addr).map(|n| n.id().to_string()).expect("node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_takes_noleader_sync_and_timeout() {
    let cluster = cluster().await;
    let (l, f) = (cluster.leader().http_addr().to_owned(), cluster.follower().http_addr().to_owned());
    for addr in [&l, &f] {
        for path in ["/readyz", "/readyz?noleader", "/readyz?sync", "/readyz?sync&timeout=5s"] {
            let answer = http(addr, "GET", path, "").await;
            assert_eq!(answer.status, 200, "{addr} {path}: {}", answer.body);
        }
    }
    let answer = http(&f, "GET", "/readyz?timeout=soon", "").await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    // A follower whose leader and peer are gone cannot reach a leader: not ready, but `noleader` says it
    // is up.
    let mut nodes = cluster.nodes;
    let lone = nodes.remove(nodes.iter().position(|n| n.http_addr() == f).expect("the follower"));
    for node in nodes {
        node.shutdown().await;
    }
    let addr = lone.http_addr().to_owned();
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = http(&addr, "GET", "/readyz", "").await;
        if answer.status == 503 {
            break;
        }
        assert!(Instant::now() < until, "the lone node still claims a leader: {}", answer.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer = http(&addr, "GET", "/readyz?noleader", "").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    // Nor is it ready with `sync`, and it answers within the `timeout` asked for.
    let started = Instant::now();
    let answer = http(&addr, "GET", "/readyz?sync&timeout=500ms", "").await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    lone.shutdown().await;
}

/// `GET /db/backup` with rqlite's options: the raw bytes of an answer.
async fn backup_bytes(addr: &str, path: &str) -> (u16, Vec<u8>) {
    let mut conn =
        bop_raft::http_client::HttpConn::connect(addr, Duration::from_secs(10)).await.expect("connect");
    let (status, body) =
        conn.call(hyper::Method::GET, path, bytes::Bytes::new(), 64 << 20).await.expect("backup");
    (status, body.to_vec())
}

/// A query on a stock SQLite copy: the first column of every row.
fn column(db: &std::path::Path, sql: &str) -> Vec<Value> {
    let mut conn = bop_sql::Connection::open_stock(db).expect("open the copy");
    let rows = conn.query(sql, &bop_sql::Params::None).expect("query the copy");
    rows.rows
        .iter()
        .map(|row| match &row[0] {
            bop_sql::Value::Integer(i) => json!(i),
            bop_sql::Value::Text(t) => json!(t),
            other => json!(format!("{other:?}")),
        })
        .collect()
}

/// rqlite's backup options (https://rqlite.io/docs/guides/backup/): `noleader` gives the receiving
/// follower's own copy (without it the follower's answer is the leader's, or a 301 with `redirect`);
/// `vacuum` gives a copy with no free pages and the same rows; `tables=` with `fmt=sql` dumps only the
/// named tables, their indexes and triggers and their `sqlite_sequence` counters; a binary `tables=`, an
/// empty list and an unknown table are 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_takes_noleader_vacuum_and_tables() {
    let cluster = cluster().await;
    let (l, f) = (cluster.leader().http_addr().to_owned(), cluster.follower().http_addr().to_owned());
    let setup = json!([
        "CREATE TABLE a (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT)",
        "CREATE INDEX a_v ON a(v)",
        "CREATE TABLE b (x)",
        "CREATE TABLE log (what)",
        "CREATE TRIGGER a_log AFTER INSERT ON a BEGIN INSERT INTO log VALUES ('a'); END",
        "CREATE VIEW av AS SELECT v FROM a",
        "INSERT INTO b VALUES (1)",
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) INSERT INTO a(v) SELECT printf('%0500d', i) FROM n",
        "DELETE FROM a WHERE id > 10",
    ]);
    let made = http(&l, "POST", "/db/execute?transaction", &setup.to_string()).await;
    assert_eq!(made.status, 200, "{}", made.body);
    assert!(
        made.body["results"].as_array().expect("results").iter().all(|r| r.get("error").is_none()),
        "{}",
        made.body
    );
    let dir = tempfile::tempdir().expect("tempdir");

    // vacuum: the same rows, no free pages; without it the deleted rows' pages are free.
    let (status, plain) = backup_bytes(&l, "/db/backup").await;
    assert_eq!(status, 200);
    let (status, vacuumed) = backup_bytes(&l, "/db/backup?vacuum").await;
    assert_eq!(status, 200);
    let (plain_db, vacuumed_db) = (dir.path().join("plain.db"), dir.path().join("vacuumed.db"));
    std::fs::write(&plain_db, &plain).expect("write");
    std::fs::write(&vacuumed_db, &vacuumed).expect("write");
    assert!(
        column(&plain_db, "PRAGMA freelist_count")[0].as_i64() > Some(0),
        "the plain copy has free pages"
    );
    assert_eq!(column(&vacuumed_db, "PRAGMA freelist_count"), [json!(0)]);
    assert!(vacuumed.len() < plain.len(), "{} < {}", vacuumed.len(), plain.len());
    assert_eq!(column(&vacuumed_db, "PRAGMA integrity_check"), [json!("ok")]);
    let rows = "SELECT id FROM a ORDER BY id";
    assert_eq!(column(&vacuumed_db, rows), column(&plain_db, rows));

    // tables=a: a, its index and trigger and its counter; not b, not the view.
    let (status, dump) = backup_bytes(&l, "/db/backup?fmt=sql&tables=a").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&dump));
    let dump = String::from_utf8(dump).expect("text");
    for wanted in ["CREATE TABLE a ", "CREATE INDEX a_v", "CREATE TRIGGER a_log", "sqlite_sequence"] {
        assert!(dump.contains(wanted), "{wanted:?} in {dump:.400}");
    }
    for unwanted in ["CREATE TABLE b", "CREATE VIEW", "INSERT INTO \"b\""] {
        assert!(!dump.contains(unwanted), "{unwanted:?} in {dump:.400}");
    }
    let loaded = dir.path().join("loaded.db");
    // Loaded by stock SQLite's script runner (Python's sqlite3). The trigger writes into `log`, which the
    // dump of `a` alone does not carry: made first, as a user restoring one table into an existing database
    // would have it.
    let script = dir.path().join("a.sql");
    std::fs::write(&script, format!("CREATE TABLE log (what);\n{dump}")).expect("write");
    let load = "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.executescript(open(sys.argv[2]).read()); c.close()";
    let ran = std::process::Command::new("python3")
        .args(["-c", load])
        .arg(&loaded)
        .arg(&script)
        .output()
        .expect("python3");
    assert!(
        ran.status.success(),
        "the dump loads into stock SQLite: {}",
        String::from_utf8_lossy(&ran.stderr)
    );
    assert_eq!(column(&loaded, rows), column(&plain_db, rows));
    assert_eq!(column(&loaded, "SELECT seq FROM sqlite_sequence WHERE name = 'a'"), [json!(2000)]);
    for (path, why) in [
        ("/db/backup?tables=a", "a binary backup is the whole database"),
        ("/db/backup?fmt=sql&tables=", "no table"),
        ("/db/backup?fmt=sql&tables=a,nope", "no table named \"nope\""),
    ] {
        let answer = http(&l, "GET", path, "").await;
        assert_eq!(answer.status, 400, "{path}: {}", answer.body);
        assert!(answer.body["error"].as_str().is_some_and(|e| e.contains(why)), "{path}: {}", answer.body);
    }

    // noleader: the follower's own copy, also with redirect; without it, redirect sends the client on.
    let until = Instant::now() + Duration::from_secs(30);
    while http(&f, "GET", "/db/query?level=none&q=SELECT%20COUNT(*)%20FROM%20a", "").await.body["results"][0]
        ["values"][0][0]
        != 10
    {
        assert!(Instant::now() < until, "the follower never applied the setup");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(http(&f, "GET", "/db/backup?redirect", "").await.status, 301);
    let (status, local) = backup_bytes(&f, "/db/backup?noleader&redirect").await;
    assert_eq!(status, 200, "the follower serves its own copy");
    let local_db = dir.path().join("local.db");
    std::fs::write(&local_db, &local).expect("write");
    assert_eq!(column(&local_db, rows), column(&plain_db, rows));
    cluster.shutdown().await;
}

/// rqlite's queued writes (https://rqlite.io/docs/api/queued-wr/): `queue` answers at once with
/// `{"results": [], "sequence_number": N}` and writes later through the writer; the numbers increase;
/// `queue&wait` answers once its write is applied, so a read after it sees every earlier queued write.
/// Through a follower too (forwarded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_writes_are_answered_at_once_and_written_in_order() {
    let cluster = cluster().await;
    let (l, f) = (cluster.leader().http_addr().to_owned(), cluster.follower().http_addr().to_owned());
    let made = http(&l, "POST", "/db/execute", r#"["CREATE TABLE q (n INTEGER)"]"#).await;
    assert_eq!(made.status, 200, "{}", made.body);
    let mut numbers = Vec::new();
    for n in 0..20 {
        let addr = if n % 2 == 0 { &l } else { &f };
        let body = format!(r#"["INSERT INTO q VALUES ({n})"]"#);
        let answer = http(addr, "POST", "/db/execute?queue", &body).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.body["results"], json!([]), "{}", answer.body);
        numbers.push(answer.body["sequence_number"].as_u64().expect("a sequence number"));
    }
    let on_leader: Vec<u64> = numbers.iter().step_by(2).copied().collect();
    assert!(on_leader.windows(2).all(|w| w[0] < w[1]), "increasing on a node: {on_leader:?}");
    let waited = http(&l, "POST", "/db/execute?queue&wait", r#"["INSERT INTO q VALUES (99)"]"#).await;
    assert_eq!(waited.status, 200, "{}", waited.body);
    assert!(waited.body["sequence_number"].as_u64() > on_leader.last().copied(), "{}", waited.body);
    let count = http(&l, "GET", "/db/query?level=none&q=SELECT%20COUNT(*)%2C%20SUM(n)%20FROM%20q", "").await;
    assert_eq!(count.body["results"][0]["values"][0], json!([21, 190 + 99]), "{}", count.body);
    cluster.shutdown().await;
}

/// rqlite's `blob_array`: blobs come back as arrays of bytes instead of base64 text, in both result shapes
/// and from `/db/request` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_array_answers_blobs_as_byte_arrays() {
    let cluster = cluster().await;
    let l = cluster.leader().http_addr().to_owned();
    let made =
        http(&l, "POST", "/db/execute", r#"["CREATE TABLE b (x)", "INSERT INTO b VALUES (X'00FF41')"]"#)
            .await;
    assert_eq!(made.status, 200, "{}", made.body);
    let q = "q=SELECT%20x%20FROM%20b&level=strong";
    let plain = http(&l, "GET", &format!("/db/query?{q}"), "").await;
    assert_eq!(plain.body["results"][0]["values"], json!([["AP9B"]]), "{}", plain.body);
    let arrays = http(&l, "GET", &format!("/db/query?{q}&blob_array"), "").await;
    assert_eq!(arrays.body["results"][0]["values"], json!([[[0, 255, 65]]]), "{}", arrays.body);
    let objects = http(&l, "GET", &format!("/db/query?{q}&blob_array&associative"), "").await;
    assert_eq!(objects.body["results"][0]["rows"], json!([{ "x": [0, 255, 65] }]), "{}", objects.body);
    let request = http(&l, "POST", "/db/request?blob_array", r#"["SELECT x FROM b"]"#).await;
    assert_eq!(request.body["results"][0]["values"], json!([[[0, 255, 65]]]), "{}", request.body);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raft_index_names_the_writes_entry_and_qualify_columns_names_tables() {
    let cluster = cluster().await;
    let l = cluster.leader().http_addr().to_owned();
    let f = cluster.follower().http_addr().to_owned();
    let plain = http(&l, "POST", "/db/execute", r#"["CREATE TABLE a (id INTEGER PRIMARY KEY, x)"]"#).await;
    assert_eq!(plain.status, 200, "{}", plain.body);
    assert!(plain.body.get("raft_index").is_none(), "only when asked: {}", plain.body);
    let first = http(&l, "POST", "/db/execute?raft_index", r#"["INSERT INTO a VALUES (1, 'one')"]"#).await;
    let first_index = first.body["raft_index"].as_u64().unwrap_or_else(|| panic!("{}", first.body));
    // Through a follower, which passes it (and the parameter) on.
    let second = http(&f, "POST", "/db/execute?raft_index", r#"["INSERT INTO a VALUES (2, 'two')"]"#).await;
    let second_index = second.body["raft_index"].as_u64().unwrap_or_else(|| panic!("{}", second.body));
    assert!(second_index > first_index, "{first_index} then {second_index}");
    // It is the entry's index: applied on the leader by the answer, and a node that applied it has the row.
    let applied = {
        use openraft::async_runtime::WatchReceiver;
        cluster.leader().raft().metrics().borrow_watched().last_applied.map(|l| l.index).unwrap_or(0)
    };
    assert!(applied >= second_index, "answered at {second_index}, applied {applied}");
    for node in &cluster.nodes {
        node.raft()
            .wait(Some(Duration::from_secs(10)))
            .applied_index_at_least(Some(second_index), "raft_index")
            .await
            .expect("applied");
        let read =
            http(node.http_addr(), "GET", "/db/query?level=none&q=SELECT%20count(*)%20FROM%20a", "").await;
        assert_eq!(read.body["results"][0]["values"], json!([[2]]), "node {}", node.id());
    }
    // A write that changes nothing commits nothing, and names no entry.
    let none = http(&l, "POST", "/db/execute?raft_index", r#"["DELETE FROM a WHERE id = 99"]"#).await;
    assert_eq!(none.status, 200, "{}", none.body);

    let made =
        http(&l, "POST", "/db/execute", r#"["CREATE TABLE b (id, y)", "INSERT INTO b VALUES (1, 'uno')"]"#)
            .await;
    assert_eq!(made.status, 200, "{}", made.body);
    let q = "q=SELECT%20a.x%2C%20b.y%20AS%20why%2C%201%2B1%20FROM%20a%20JOIN%20b%20USING%20(id)&level=strong";
    let unqualified = http(&l, "GET", &format!("/db/query?{q}"), "").await;
    assert_eq!(unqualified.body["results"][0]["columns"], json!(["x", "why", "1+1"]), "{}", unqualified.body);
    let qualified = http(&l, "GET", &format!("/db/query?{q}&qualify_columns"), "").await;
    assert_eq!(qualified.body["results"][0]["columns"], json!(["a.x", "b.why", "1+1"]), "{}", qualified.body);
    assert_eq!(qualified.body["results"][0]["values"], json!([["one", "uno", 2]]), "{}", qualified.body);
    let objects = http(&l, "GET", &format!("/db/query?{q}&qualify_columns&associative"), "").await;
    assert_eq!(objects.body["results"][0]["rows"], json!([{ "a.x": "one", "b.why": "uno", "1+1": 2 }]));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timeout_bounds_the_wait_for_a_forwarded_call() {
    let cluster = cluster().await;
    let f = cluster.follower().http_addr().to_owned();
    // A statement that runs for seconds on the leader.
    let slow = r#"["SELECT count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 200000000) SELECT x FROM c)"]"#;
    let started = Instant::now();
    let answer = http(&f, "POST", "/db/execute?timeout=300ms", slow).await;
    let took = started.elapsed();
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(
        answer.body["error"].as_str().is_some_and(|e| e.contains("did not answer within 300ms")),
        "{}",
        answer.body
    );
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    // Without it, a quick call is forwarded as usual.
    let quick = http(&f, "POST", "/db/execute?timeout=10s", r#"["CREATE TABLE q(x)"]"#).await;
    assert_eq!(quick.status, 200, "{}", quick.body);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn min_index_makes_any_node_wait_for_a_position_then_read_locally() {
    let cluster = cluster().await;
    let l = cluster.leader().http_addr().to_owned();
    let f = cluster.follower().http_addr().to_owned();
    let made = http(&l, "POST", "/db/execute", r#"["CREATE TABLE m (id INTEGER PRIMARY KEY)"]"#).await;
    assert_eq!(made.status, 200, "{}", made.body);
    let write = http(&l, "POST", "/db/execute?raft_index", r#"["INSERT INTO m VALUES (1)"]"#).await;
    let index = write.body["raft_index"].as_u64().unwrap_or_else(|| panic!("{}", write.body));
    // A weak read sent to a follower with `redirect` is redirected; with `min_index` it is the follower's
    // own, once it applied the write's entry: it sees the write.
    let q = "q=SELECT%20count(*)%20FROM%20m";
    let redirected = http(&f, "GET", &format!("/db/query?{q}&redirect"), "").await;
    assert_eq!(redirected.status, 301, "{}", redirected.body);
    let local = http(&f, "GET", &format!("/db/query?{q}&redirect&min_index={index}"), "").await;
    assert_eq!(local.status, 200, "{}", local.body);
    assert_eq!(local.body["results"][0]["values"], json!([[1]]), "{}", local.body);
    let none = http(&f, "GET", &format!("/db/query?{q}&level=none&min_index={index}"), "").await;
    assert_eq!(none.body["results"][0]["values"], json!([[1]]), "{}", none.body);
    // A position no node has reached: the wait is bounded by `timeout`, and the answer says why.
    for node in [&l, &f] {
        let started = Instant::now();
        let ahead = format!("/db/query?{q}&min_index={}&timeout=300ms", index + 1_000_000);
        let answer = http(node, "GET", &ahead, "").await;
        let took = started.elapsed();
        assert_eq!(answer.status, 200, "{}", answer.body);
        let message = answer.body["results"][0]["error"].as_str().unwrap_or_default().to_owned();
        assert!(message.contains("not caught up") && message.contains("min_index"), "{}", answer.body);
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(5), "waited {took:?}");
    }
    let bad = http(&f, "GET", &format!("/db/query?{q}&min_index=soon"), "").await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body["error"].as_str().is_some_and(|e| e.contains("min_index")), "{}", bad.body);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_reads_see_every_acknowledged_write_and_take_linearizable_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lease = bop_raft::node::ReadLease { clock_drift_percent: 10 };
    let nodes = loopback::three_nodes_in(dir.path(), |_| bop_raft::node::NodeEnv {
        read_lease: Some(lease),
        ..bop_raft::node::NodeEnv::default()
    })
    .await;
    let cluster = Cluster { _dir: dir, nodes };
    let l = cluster.leader().http_addr().to_owned();
    let f = cluster.follower().http_addr().to_owned();
    let made = http(&l, "POST", "/db/execute", r#"["CREATE TABLE r (id INTEGER PRIMARY KEY)"]"#).await;
    assert_eq!(made.status, 200, "{}", made.body);
    for i in 1..=20 {
        let write = http(&f, "POST", "/db/execute", &format!(r#"["INSERT INTO r VALUES ({i})"]"#)).await;
        assert_eq!(write.status, 200, "{}", write.body);
        for (node, level) in [(&l, "linearizable"), (&f, "linearizable"), (&l, "strong")] {
            let path =
                format!("/db/query?q=SELECT%20count(*)%20FROM%20r&level={level}&linearizable_timeout=2s");
            let read = http(node, "GET", &path, "").await;
            assert_eq!(read.body["results"][0]["values"], json!([[i]]), "{level} via {node}: {}", read.body);
        }
    }
    // The lease is one election timeout shortened by the margin.
    assert_eq!(lease.max_age(1000), Duration::from_millis(909));
    assert_eq!(
        bop_raft::node::ReadLease { clock_drift_percent: 0 }.max_age(1000),
        Duration::from_millis(1000)
    );
    let bad =
        http(&l, "GET", "/db/query?q=SELECT%201&level=linearizable&linearizable_timeout=soon", "").await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_answers_linearizable_reads_after_the_leaders_read_index() {
    let cluster = cluster().await;
    let l = cluster.leader().http_addr().to_owned();
    let f = cluster.follower().http_addr().to_owned();
    let made = http(&l, "POST", "/db/execute", r#"["CREATE TABLE z (id INTEGER PRIMARY KEY)"]"#).await;
    assert_eq!(made.status, 200, "{}", made.body);
    for i in 1..=20 {
        let write =
            http(&l, "POST", "/db/execute?raft_index", &format!(r#"["INSERT INTO z VALUES ({i})"]"#)).await;
        let index = write.body["raft_index"].as_u64().unwrap_or_else(|| panic!("{}", write.body));
        // The leader's read index covers every write it acknowledged.
        let read_index = http(&l, "GET", "/read-index?level=linearizable", "").await;
        assert!(read_index.body["index"].as_u64() >= Some(index), "{} after {index}", read_index.body);
        // Right after the acknowledgement, before the follower need have applied it, a linearizable read
        // through the follower sees it (either level).
        for level in ["linearizable", "strong"] {
            let path = format!("/db/query?q=SELECT%20count(*)%20FROM%20z&level={level}");
            let read = http(&f, "GET", &path, "").await;
            assert_eq!(read.body["results"][0]["values"], json!([[i]]), "{level}: {}", read.body);
        }
    }
    // Only the leader gives read indexes.
    let refused = http(&f, "GET", "/read-index?level=linearizable", "").await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.body["error"], "not the leader", "{}", refused.body);
    cluster.shutdown().await;
}
