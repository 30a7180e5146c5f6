//! Users, permissions and TLS on the HTTP API, on three-node clusters over loopback: every permission of
//! the auth file allows its calls and only them (403 for a user without it, 401 with `WWW-Authenticate`
//! for an anonymous caller or wrong credentials), forwarded calls are judged by the leader, HTTPS with
//! client certificates between clients and nodes and between nodes, certificate reload, and the browser
//! safety rules.

#[path = "common/loopback.rs"]
mod loopback;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bop_raft::auth::{basic_header, Auth};
use bop_raft::http_client::{ClientSettings, HttpConn};
use bop_raft::https::HttpTls;
use bop_raft::node::{Node, NodeEnv};
use bytes::Bytes;
use hyper::Method;
use openraft::async_runtime::WatchReceiver;
use serde_json::Value;

/// An answer: status, headers, body (JSON when it parses).
struct Answer {
    status: u16,
    headers: hyper::HeaderMap,
    body: Value,
}

async fn ask_with(
    addr: &str,
    settings: &ClientSettings,
    method: Method,
    path: &str,
    headers: &[(&str, String)],
    body: &str,
) -> std::io::Result<Answer> {
    use http_body_util::BodyExt;
    let exchange = async {
        let mut conn = HttpConn::connect_with(addr, Duration::from_secs(10), settings).await?;
        let response = conn.send(method, path, headers, Bytes::from(body.to_owned())).await?;
        let (head, body) = response.into_parts();
        let body = body.collect().await.map_err(std::io::Error::other)?.to_bytes();
        let text = String::from_utf8_lossy(&body).into_owned();
        Ok(Answer {
            status: head.status.as_u16(),
            headers: head.headers,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        })
    };
    tokio::time::timeout(Duration::from_secs(60), exchange).await.expect("an answer within 60 s")
}

async fn ask(addr: &str, settings: &ClientSettings, method: Method, path: &str, body: &str) -> Answer {
    ask_with(addr, settings, method, path, &[], body).await.expect("exchange")
}

/// The number of tables in database `main` (0 while it does not exist: nothing was ever written).
async fn table_count(addr: &str, settings: &ClientSettings) -> i64 {
    let path = "/db/query?level=strong&q=SELECT%20COUNT(*)%20FROM%20sqlite_master";
    let answer = ask(addr, settings, Method::GET, path, "").await;
    let result = &answer.body["results"][0];
    match result["error"].as_str() {
        Some(e) if e.contains("no database named") => 0,
        _ => result["values"][0][0].as_i64().unwrap_or_else(|| panic!("a count: {}", answer.body)),
    }
}

fn as_user(user: &str, password: &str) -> ClientSettings {
    ClientSettings { authorization: Some(basic_header(user, password)), tls: None }
}

const USERS: &str = r#"[
  {"username": "root", "password": "rootpw", "perms": ["all"]},
  {"username": "writer", "password": "BCRYPT", "perms": ["execute", "query"]},
  {"username": "reader", "password": "ARGON2", "perms": ["query"]},
  {"username": "backer", "password": "b", "perms": ["backup"]},
  {"username": "joiner", "password": "j", "perms": ["join"]},
  {"username": "ro-joiner", "password": "j", "perms": ["join-read-only"]},
  {"username": "remover", "password": "r", "perms": ["remove"]},
  {"username": "prober", "password": "p", "perms": ["ready"]},
  {"username": "watcher", "password": "w", "perms": ["status"]},
  {"username": "ops", "password": "o", "perms": ["leader-ops"]},
  {"username": "main-only", "password": "m", "perms": ["execute:main", "query:main", "backup:main"]},
  {"username": "nobody", "password": "n", "perms": []}
]"#;

/// The auth file above, with the writer's password ("wpw") stored as a bcrypt hash and the reader's
/// ("rpw") as an argon2 one.
fn users() -> Arc<Auth> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let bcrypt = bcrypt::hash("wpw", 4).expect("bcrypt");
    let salt = SaltString::encode_b64(b"sixteen byte slt").expect("salt");
    let argon2 = argon2::Argon2::default().hash_password(b"rpw", &salt).expect("argon2").to_string();
    let text = USERS.replace("BCRYPT", &bcrypt).replace("ARGON2", &argon2);
    Arc::new(Auth::from_json(text.as_bytes()).expect("auth file"))
}

fn with_users(auth: &Arc<Auth>) -> NodeEnv {
    NodeEnv { auth: Some(Arc::clone(auth)), ..NodeEnv::default() }
}

fn voter_count(node: &Node) -> usize {
    node.raft().metrics().borrow_watched().membership_config.membership().voter_ids().count()
}

fn member_count(node: &Node) -> usize {
    node.raft().metrics().borrow_watched().membership_config.membership().nodes().count()
}

/// `user` (who holds the permission) may make the call; `nobody` gets 403 and an anonymous caller 401 with
/// `WWW-Authenticate`. Returns the allowed call's answer.
async fn only_with(addr: &str, user: &ClientSettings, method: Method, path: &str, body: &str) -> Answer {
    let anonymous = ask(addr, &ClientSettings::default(), method.clone(), path, body).await;
    assert_eq!(anonymous.status, 401, "anonymous {method} {path}: {}", anonymous.body);
    let challenge = anonymous.headers.get("www-authenticate").expect("401 names the scheme");
    assert!(challenge.to_str().expect("ascii").starts_with("Basic realm="), "{challenge:?}");
    let refused = ask(addr, &as_user("nobody", "n"), method.clone(), path, body).await;
    assert_eq!(refused.status, 403, "nobody {method} {path}: {}", refused.body);
    let allowed = ask(addr, user, method.clone(), path, body).await;
    assert!(![401, 403].contains(&allowed.status), "allowed {method} {path}: {}", allowed.body);
    allowed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_permission_allows_its_calls_and_only_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = users();
    let nodes = loopback::three_nodes_in(dir.path(), |_| with_users(&auth)).await;
    let leader = loopback::leader_of(&nodes);
    let follower = nodes.iter().find(|n| n.id() != leader.id()).expect("a follower");
    let (l, f) = (leader.http_addr(), follower.http_addr());
    let writer = as_user("writer", "wpw");
    let reader = as_user("reader", "rpw");

    // execute (a bcrypt password), through a follower: the leader judges the forwarded credentials.
    let create = r#"["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", "INSERT INTO t VALUES (1, 'one')"]"#;
    let made = only_with(f, &writer, Method::POST, "/db/execute", create).await;
    assert_eq!(made.status, 200, "{}", made.body);
    assert!(made.body["results"][1]["last_insert_id"] == 1, "{}", made.body);
    let reader_writes =
        ask(f, &reader, Method::POST, "/db/execute", r#"["INSERT INTO t VALUES (2, 'x')"]"#).await;
    assert_eq!(reader_writes.status, 403, "query alone does not write: {}", reader_writes.body);

    // query (an argon2 password), at a level served locally and at one the leader serves.
    for path in
        ["/db/query?level=none&q=SELECT%20v%20FROM%20t", "/db/query?level=strong&q=SELECT%20v%20FROM%20t"]
    {
        let read = only_with(f, &reader, Method::GET, path, "").await;
        assert_eq!(read.status, 200, "{}", read.body);
        assert_eq!(read.body["results"][0]["values"][0][0], "one", "{}", read.body);
    }
    // /db/request: reads need query, a batch with a write needs execute.
    let reads = ask(l, &reader, Method::POST, "/db/request", r#"["SELECT v FROM t"]"#).await;
    assert_eq!(reads.status, 200, "{}", reads.body);
    let mixed = r#"["SELECT v FROM t", "INSERT INTO t VALUES (3, 'three')"]"#;
    let refused = ask(l, &reader, Method::POST, "/db/request", mixed).await;
    assert_eq!(refused.status, 403, "a write in /db/request needs execute: {}", refused.body);
    let nobody = ask(l, &as_user("nobody", "n"), Method::POST, "/db/request", r#"["SELECT 1"]"#).await;
    assert_eq!(nobody.status, 403, "{}", nobody.body);
    assert_eq!(ask(l, &writer, Method::POST, "/db/request", mixed).await.status, 200);

    // backup.
    let backup = only_with(f, &as_user("backer", "b"), Method::GET, "/db/backup", "").await;
    assert_eq!(backup.status, 200);
    let wrote = ask(l, &as_user("backer", "b"), Method::POST, "/db/execute", r#"["DELETE FROM t"]"#).await;
    assert_eq!(wrote.status, 403, "backup alone does not write: {}", wrote.body);

    // Permissions limited to one database.
    let main_only = as_user("main-only", "m");
    let insert = r#"["CREATE TABLE IF NOT EXISTS u (x)"]"#;
    assert_eq!(ask(l, &main_only, Method::POST, "/db/execute?db=main", insert).await.status, 200);
    let other = ask(l, &main_only, Method::POST, "/db/execute?db=other", insert).await;
    assert_eq!(other.status, 403, "execute:main does not cover db=other: {}", other.body);
    assert!(other.body["error"].as_str().is_some_and(|e| e.contains("\"other\"")), "{}", other.body);
    assert_eq!(ask(l, &main_only, Method::GET, "/db/backup?db=other", "").await.status, 403);
    assert_eq!(ask(l, &main_only, Method::GET, "/status", "").await.status, 403);
    // A linearizable read through a follower, which asks the leader for its read index with these
    // credentials: judged on the read's database, not as a node-wide permission.
    for level in ["linearizable", "strong"] {
        let path = format!("/db/query?db=main&level={level}&q=SELECT%20count(*)%20FROM%20u");
        let read = ask(f, &main_only, Method::GET, &path, "").await;
        assert_eq!(read.status, 200, "{level}: {}", read.body);
        assert_eq!(read.body["results"][0]["values"][0][0], 0, "{level}: {}", read.body);
        let other = format!("/db/query?db=other&level={level}&q=SELECT%201");
        assert_eq!(ask(f, &main_only, Method::GET, &other, "").await.status, 403, "{level}");
    }

    // status, ready.
    let watcher = as_user("watcher", "w");
    for path in ["/status", "/nodes?ver=2", "/metrics"] {
        assert_eq!(only_with(f, &watcher, Method::GET, path, "").await.status, 200, "{path}");
    }
    assert_eq!(only_with(f, &as_user("prober", "p"), Method::GET, "/readyz", "").await.status, 200);

    // Wrong credentials are 401 whatever the call, and never reach it.
    for settings in [
        as_user("writer", "not the password"),
        as_user("reader", "wpw"),
        as_user("ghost", "x"),
        ClientSettings { authorization: Some("Basic !!!not base64".into()), tls: None },
        ClientSettings { authorization: Some("Bearer abc".into()), tls: None },
    ] {
        let answer = ask(l, &settings, Method::POST, "/db/execute", r#"["DELETE FROM t"]"#).await;
        assert_eq!(answer.status, 401, "{settings:?}: {}", answer.body);
        assert!(answer.headers.contains_key("www-authenticate"));
    }
    let rows =
        ask(l, &reader, Method::GET, "/db/query?level=strong&q=SELECT%20COUNT(*)%20FROM%20t", "").await;
    assert_eq!(rows.body["results"][0]["values"][0][0], 2, "nothing was deleted: {}", rows.body);

    // join: a rogue voter without `join` is refused and the membership stays as it was; `join-read-only`
    // adds non-voters only. Nothing runs at the addresses, so an allowed join is a 503 (it never caught up).
    let rogue = r#"{"id": 9, "addr": "127.0.0.1:9", "voter": true}"#;
    let before = member_count(leader);
    only_with(f, &as_user("joiner", "j"), Method::POST, "/join?timeout=1s", rogue).await;
    let ro_joiner = as_user("ro-joiner", "j");
    let as_voter =
        ask(f, &ro_joiner, Method::POST, "/join?timeout=1s", r#"{"id": 10, "addr": "127.0.0.1:10"}"#).await;
    assert_eq!(as_voter.status, 403, "join-read-only adds no voter: {}", as_voter.body);
    let learner = r#"{"id": 10, "addr": "127.0.0.1:10", "voter": false}"#;
    let joined = ask(f, &ro_joiner, Method::POST, "/join?timeout=1s", learner).await;
    assert_eq!(joined.status, 503, "allowed, then it did not catch up: {}", joined.body);
    assert_eq!(member_count(leader), before + 2, "nodes 9 and 10 joined as learners");
    assert_eq!(voter_count(leader), 3, "neither became a voter");

    // remove: the leader cannot be removed without `remove`; with it, the learners go.
    let remove_leader = format!(r#"{{"id": {}}}"#, leader.id());
    for settings in [ClientSettings::default(), as_user("nobody", "n"), writer.clone()] {
        let answer = ask(f, &settings, Method::DELETE, "/remove", &remove_leader).await;
        assert!([401, 403].contains(&answer.status), "{settings:?}: {}", answer.body);
    }
    assert_eq!(voter_count(leader), 3, "the leader is still a voter");
    assert!(leader.raft().metrics().borrow_watched().state.is_leader());
    let remover = as_user("remover", "r");
    assert_eq!(only_with(f, &remover, Method::DELETE, "/remove", r#"{"id": 9}"#).await.status, 200);
    assert_eq!(ask(l, &remover, Method::DELETE, "/remove", r#"{"id": 10}"#).await.status, 200);
    assert_eq!(member_count(leader), before);

    // leader-ops, last: it moves the leadership.
    let moved = only_with(f, &as_user("ops", "o"), Method::POST, "/leader", "").await;
    assert_eq!(moved.status, 200, "{}", moved.body);
    assert_ne!(moved.body["leader"], leader.id(), "{}", moved.body);

    for node in nodes {
        node.shutdown().await;
    }
}

/// The leader judges a forwarded call by its own auth file: a follower whose file lets everyone write
/// passes an anonymous write on, and the leader, whose file does not, refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_call_is_judged_by_the_leader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let strict = Arc::new(
        Auth::from_json(br#"[{"username": "root", "password": "pw", "perms": ["all"]}]"#).expect("auth"),
    );
    let open = Arc::new(
        Auth::from_json(
            br#"[{"username": "root", "password": "pw", "perms": ["all"]}, {"username": "*", "perms": ["execute", "query"]}]"#,
        )
        .expect("auth"),
    );
    let nodes =
        loopback::three_nodes_in(dir.path(), |id| with_users(if id == 1 { &strict } else { &open })).await;
    let root = as_user("root", "pw");
    if loopback::leader_of(&nodes).id() != 1 {
        let moved = ask(nodes[1].http_addr(), &root, Method::POST, "/leader", r#"{"id": 1}"#).await;
        assert_eq!(moved.status, 200, "{}", moved.body);
    }
    for node in &nodes {
        node.raft()
            .wait(Some(Duration::from_secs(30)))
            .metrics(|m| m.current_leader == Some(1), "node 1 leads")
            .await
            .expect("node 1 leads");
    }
    let write = r#"["CREATE TABLE t (x)"]"#;
    let anonymous = ClientSettings::default();
    let answer = ask(nodes[1].http_addr(), &anonymous, Method::POST, "/db/execute", write).await;
    assert_eq!(answer.status, 401, "the leader refused what the follower allowed: {}", answer.body);
    let direct = ask(nodes[0].http_addr(), &anonymous, Method::POST, "/db/execute", write).await;
    assert_eq!(direct.status, 401, "{}", direct.body);
    // Local reads follow the follower's own file; the write never happened.
    let read =
        ask(nodes[2].http_addr(), &anonymous, Method::GET, "/db/query?level=none&q=SELECT%201", "").await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(table_count(nodes[0].http_addr(), &root).await, 0, "nothing was written");
    // Credentials the leader accepts pass through the follower unchanged.
    assert_eq!(ask(nodes[1].http_addr(), &root, Method::POST, "/db/execute", write).await.status, 200);
    for node in nodes {
        node.shutdown().await;
    }
}

/// Writes a throwaway CA and certificates for `ids` into `dir`: `ca.pem`, `N.pem`, `N-key.pem`.
fn pki(dir: &Path, ids: &[u64]) -> String {
    bop_raft::tcp::tls::write_throwaway_pki(dir, ids).expect("pki")
}

/// `dir`'s certificate `id` as HTTP TLS, requiring client certificates of the same CA when `mutual`.
fn http_tls(dir: &Path, id: u64, mutual: bool) -> HttpTls {
    let ca = dir.join("ca.pem");
    let client_ca = mutual.then_some(ca.as_path());
    HttpTls::from_pem_files(
        &dir.join(format!("{id}.pem")),
        &dir.join(format!("{id}-key.pem")),
        &ca,
        client_ca,
    )
    .expect("HTTP TLS")
}

/// HTTPS with client certificates on every node, users on, Raft over mutual TLS: calls with a client
/// certificate of the cluster's CA are served and forwarded (node to node over mutual TLS too); plain
/// HTTP, a client without a certificate, and a client that trusts another CA get no answer; redirects
/// name `https`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_client_certificates_serves_forwards_and_refuses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki_dir = dir.path().join("pki");
    let ca = pki(&pki_dir, &[1, 2, 3, 99]);
    let auth = users();
    let nodes = loopback::three_nodes_in(dir.path(), |id| {
        let cert = std::fs::read_to_string(pki_dir.join(format!("{id}.pem"))).expect("cert");
        let key = std::fs::read_to_string(pki_dir.join(format!("{id}-key.pem"))).expect("key");
        NodeEnv {
            raft_tls: Some(
                bop_raft::tcp::tls::TransportTls::from_pem(ca.as_bytes(), cert.as_bytes(), key.as_bytes())
                    .expect("transport TLS"),
            ),
            http_tls: Some(Arc::new(http_tls(&pki_dir, id, true))),
            ..with_users(&auth)
        }
    })
    .await;
    let leader = loopback::leader_of(&nodes);
    let follower = nodes.iter().find(|n| n.id() != leader.id()).expect("a follower");
    // Client 99's certificate, and the cluster's CA.
    let client = ClientSettings {
        authorization: Some(basic_header("root", "rootpw")),
        tls: Some(http_tls(&pki_dir, 99, true).client()),
    };
    let write = r#"["CREATE TABLE t (x)", "INSERT INTO t VALUES (42)"]"#;
    let made = ask(follower.http_addr(), &client, Method::POST, "/db/execute", write).await;
    assert_eq!(made.status, 200, "forwarded over HTTPS with the node's certificate: {}", made.body);
    let read = "/db/query?level=linearizable&q=SELECT%20x%20FROM%20t";
    let read = ask(follower.http_addr(), &client, Method::GET, read, "").await;
    assert_eq!(read.body["results"][0]["values"][0][0], 42, "{}", read.body);
    let anonymous = ClientSettings { authorization: None, ..client.clone() };
    assert_eq!(ask(follower.http_addr(), &anonymous, Method::GET, "/status", "").await.status, 401);

    let redirected = ask(follower.http_addr(), &client, Method::POST, "/db/execute?redirect", write).await;
    assert_eq!(redirected.status, 301, "{}", redirected.body);
    let location = redirected.headers.get("location").expect("Location").to_str().expect("ascii");
    assert!(location.starts_with(&format!("https://{}/db/execute", leader.http_addr())), "{location}");

    let nodes_answer = ask(follower.http_addr(), &client, Method::GET, "/nodes?ver=2", "").await;
    for entry in nodes_answer.body["nodes"].as_array().expect("nodes") {
        assert!(entry["api_addr"].as_str().is_some_and(|a| a.starts_with("https://")), "{entry}");
        assert_eq!(entry["reachable"], true, "probed over HTTPS: {entry}");
    }

    let other_pki = dir.path().join("other");
    pki(&other_pki, &[99]);
    let refused = [
        ("plain HTTP", ClientSettings { tls: None, ..client.clone() }),
        (
            "no client certificate",
            ClientSettings {
                tls: Some(bop_raft::https::client_trusting(&pki_dir.join("ca.pem")).expect("client")),
                ..client.clone()
            },
        ),
        (
            "another CA",
            ClientSettings { tls: Some(http_tls(&other_pki, 99, true).client()), ..client.clone() },
        ),
    ];
    for (what, settings) in refused {
        let answer = ask_with(leader.http_addr(), &settings, Method::GET, "/status", &[], "").await;
        assert!(answer.is_err(), "{what}: answered {}", answer.map(|a| a.status).unwrap_or(0));
    }
    for node in nodes {
        node.shutdown().await;
    }
}

/// A node serves the certificate its files hold now: overwritten with one of another CA, new connections
/// get it within a bounded wait (the files are watched), and clients that trust only the old CA no longer
/// connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_certificate_is_reloaded_when_its_files_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let ca_a = pki(&a, &[1]);
    let ca_b = pki(&b, &[1]);
    let live = dir.path().join("live");
    std::fs::create_dir_all(&live).expect("mkdir");
    std::fs::write(live.join("ca.pem"), format!("{ca_a}{ca_b}")).expect("write");
    for name in ["1.pem", "1-key.pem"] {
        std::fs::copy(a.join(name), live.join(name)).expect("copy");
    }
    let tls = Arc::new(http_tls(&live, 1, false));
    let env = NodeEnv { http_tls: Some(Arc::clone(&tls)), ..NodeEnv::default() };
    let node = loopback::one_node_in(dir.path(), env).await;
    let trusts = |ca: &Path| ClientSettings {
        authorization: None,
        tls: Some(bop_raft::https::client_trusting(&ca.join("ca.pem")).expect("client")),
    };
    let addr = node.http_addr().to_owned();
    let status = |settings: ClientSettings| {
        let addr = addr.clone();
        async move { ask_with(&addr, &settings, Method::GET, "/status", &[], "").await.map(|a| a.status) }
    };
    assert_eq!(status(trusts(&a)).await.expect("CA A's certificate is served"), 200);
    assert!(status(trusts(&b)).await.is_err(), "a client of CA B does not trust it");

    // Replaced as a deployment tool would: write aside, rename over.
    for name in ["1-key.pem", "1.pem"] {
        std::fs::copy(b.join(name), live.join(format!("{name}.new"))).expect("copy");
        std::fs::rename(live.join(format!("{name}.new")), live.join(name)).expect("rename");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(trusts(&b)).await.is_err() {
        assert!(Instant::now() < deadline, "the new certificate was not served within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(status(trusts(&a)).await.is_err(), "the old certificate is no longer served");

    // A pair that does not belong together is refused and the one in use stays.
    std::fs::copy(a.join("1-key.pem"), live.join("1-key.pem")).expect("copy");
    assert!(tls.reload().is_err(), "B's certificate with A's key");
    assert_eq!(status(trusts(&b)).await.expect("still B's"), 200);
    node.shutdown().await;
}

/// No writes through a browser that a page elsewhere steers: a cross-origin call and a form body are
/// refused before they reach a handler, and nothing is written; the same call without those headers (as
/// every client library sends it) is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_cannot_be_made_to_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = loopback::three_nodes(dir.path()).await;
    let leader = loopback::leader_of(&nodes);
    let addr = leader.http_addr();
    let none = ClientSettings::default();
    let write = r#"["CREATE TABLE t (x)"]"#;
    let refusals: [(&[(&str, String)], u16); 5] = [
        (&[("origin", "http://evil.example".into())], 403),
        (&[("origin", "null".into())], 403),
        (&[("sec-fetch-site", "cross-site".into())], 403),
        (&[("content-type", "application/x-www-form-urlencoded".into())], 415),
        (&[("content-type", "multipart/form-data; boundary=x".into())], 415),
    ];
    for (headers, status) in refusals {
        let answer =
            ask_with(addr, &none, Method::POST, "/db/execute", headers, write).await.expect("answer");
        assert_eq!(answer.status, status, "{headers:?}: {}", answer.body);
    }
    let leader_move = [("origin", "http://evil.example".into())];
    let answer = ask_with(addr, &none, Method::POST, "/leader", &leader_move, "").await.expect("answer");
    assert_eq!(answer.status, 403, "{}", answer.body);
    let same_origin = [("origin", format!("http://{addr}")), ("sec-fetch-site", "same-origin".into())];
    assert_eq!(table_count(addr, &none).await, 0, "nothing was written");
    let served =
        ask_with(addr, &none, Method::POST, "/db/execute", &same_origin, write).await.expect("answer");
    assert_eq!(served.status, 200, "a same-origin call is served: {}", served.body);
    let text = [("content-type", "text/plain".into())];
    let again = r#"["CREATE TABLE u (x)"]"#;
    assert_eq!(
        ask_with(addr, &none, Method::POST, "/db/execute", &text, again).await.expect("answer").status,
        200
    );
    assert_eq!(table_count(addr, &none).await, 2);
    let answer = ask(addr, &none, Method::GET, "/db/query?q=DROP%20TABLE%20t", "").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body["results"][0]["error"].is_string(), "no writes through GET: {}", answer.body);
    assert_eq!(table_count(addr, &none).await, 2);
    for node in nodes {
        node.shutdown().await;
    }
}

/// With an origin allowed (CORS), its pages may call the API from a browser: preflights are answered
/// before users are checked, answers carry `Access-Control-Allow-Origin` with credentials allowed, and its
/// calls are judged by the user's permissions as any other; every other origin is still refused and gets
/// no CORS headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_origin_may_call_from_a_browser_and_no_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = NodeEnv { cors_origins: vec!["https://app.example".into()], ..with_users(&users()) };
    let node = loopback::one_node_in(dir.path(), env).await;
    let addr = node.http_addr();
    let none = ClientSettings::default();
    let app = || ("origin", "https://app.example".to_owned());
    let preflight = [app(), ("access-control-request-method", "POST".into())];
    let answer =
        ask_with(addr, &none, Method::OPTIONS, "/db/execute", &preflight, "").await.expect("preflight");
    assert_eq!(answer.status, 200, "a preflight needs no credentials: {}", answer.body);
    assert_eq!(answer.headers.get("access-control-allow-origin").expect("ACAO"), "https://app.example");
    assert_eq!(answer.headers.get("access-control-allow-credentials").expect("credentials"), "true");
    let write = r#"["CREATE TABLE t (x)"]"#;
    let writer = as_user("writer", "wpw");
    let served = ask_with(
        addr,
        &writer,
        Method::POST,
        "/db/execute",
        &[app(), ("sec-fetch-site", "cross-site".into())],
        write,
    )
    .await
    .expect("answer");
    assert_eq!(served.status, 200, "{}", served.body);
    assert_eq!(served.headers.get("access-control-allow-origin").expect("ACAO"), "https://app.example");
    let reader = as_user("reader", "rpw");
    let refused =
        ask_with(addr, &reader, Method::POST, "/db/execute", &[app()], write).await.expect("answer");
    assert_eq!(refused.status, 403, "the allowed origin's calls are judged by the user: {}", refused.body);
    let evil = [("origin", "https://evil.example".to_owned())];
    let answer = ask_with(addr, &writer, Method::POST, "/db/execute", &evil, write).await.expect("answer");
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert!(!answer.headers.contains_key("access-control-allow-origin"));
    let evil_preflight = [evil[0].clone(), ("access-control-request-method", "POST".into())];
    let answer =
        ask_with(addr, &none, Method::OPTIONS, "/db/execute", &evil_preflight, "").await.expect("answer");
    assert!(!answer.headers.contains_key("access-control-allow-origin"), "{:?}", answer.headers);
    node.shutdown().await;
}
