//! Three `bop node` processes on loopback: writes through the leader; the leader is killed with SIGKILL, a
//! new leader is elected, no acknowledged write is lost; the old leader restarts and catches up; the load
//! generator runs; a fourth node configured by a TOML file joins. Bad configurations fail clearly.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

fn http(addr: &str, method: &str, path: &str, body: &str) -> Option<(u16, Value)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1;
    Some((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

struct Cluster {
    dir: tempfile::TempDir,
    raft: Vec<String>,
    http: Vec<String>,
    children: Vec<Option<Child>>,
}

impl Cluster {
    /// `n` nodes on free loopback ports, none running yet.
    fn new(n: usize) -> Cluster {
        Cluster {
            dir: tempfile::tempdir().expect("tempdir"),
            raft: (0..n).map(|_| format!("127.0.0.1:{}", free_port())).collect(),
            http: (0..n).map(|_| format!("127.0.0.1:{}", free_port())).collect(),
            children: (0..n).map(|_| None).collect(),
        }
    }

    /// `bop node` for node `i` (id `i + 1`) with its data directory and addresses.
    fn command(&self, i: usize) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bop"));
        cmd.args(["node", "--id", &(i + 1).to_string()])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("node-{}", i + 1)))
            .args(["--raft-addr", &self.raft[i], "--http-addr", &self.http[i]])
            .stdout(Stdio::null());
        // Kept beside the data directories, so that a node that exits says why.
        match std::fs::OpenOptions::new().create(true).append(true).open(self.stderr_path(i)) {
            Ok(log) => cmd.stderr(log),
            Err(_) => cmd.stderr(Stdio::null()),
        };
        cmd
    }

    fn stderr_path(&self, i: usize) -> std::path::PathBuf {
        self.dir.path().join(format!("node-{}.stderr", i + 1))
    }

    /// What node `i` wrote to stderr (its last 4 KiB).
    fn stderr_of(&self, i: usize) -> String {
        let bytes = std::fs::read(self.stderr_path(i)).unwrap_or_default();
        String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(4096)..]).into_owned()
    }

    fn spawn(&mut self, i: usize, init: bool) {
        let mut cmd = self.command(i);
        if init {
            let members: Vec<String> = (0..self.raft.len())
                .map(|j| format!("{}={}/{}", j + 1, self.raft[j], self.http[j]))
                .collect();
            cmd.args(["--init", &members.join(",")]);
        }
        self.children[i] = Some(cmd.spawn().expect("spawn bop node"));
    }

    /// The leader's index, once every live node agrees on one (bounded wait).
    fn leader(&self, deadline: Duration) -> usize {
        let until = Instant::now() + deadline;
        loop {
            for (i, addr) in self.http.iter().enumerate() {
                if self.children[i].is_none() {
                    continue;
                }
                if let Some((200, status)) = http(addr, "GET", "/status", "") {
                    if status["raft"]["state"] == "Leader" {
                        return i;
                    }
                }
            }
            assert!(Instant::now() < until, "no leader within {deadline:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn count(addr: &str) -> Option<i64> {
    let (status, out) = http(addr, "GET", "/db/query?q=SELECT%20count(*)%20FROM%20t&level=none", "")?;
    (status == 200).then(|| out["results"][0]["values"][0][0].as_i64()).flatten()
}

#[test]
fn killing_the_leader_loses_no_acknowledged_write_and_it_catches_up_on_restart() {
    let n = 3;
    let mut cluster = Cluster::new(n);
    for i in 0..n {
        cluster.spawn(i, i == 0);
    }
    let leader = cluster.leader(Duration::from_secs(30));
    let (status, out) =
        http(&cluster.http[leader], "POST", "/db/execute", r#"["CREATE TABLE t (x INTEGER)"]"#)
            .expect("create");
    assert_eq!(status, 200, "{out}");

    // Acknowledged writes through the leader.
    let mut acked = 0i64;
    for i in 0..50 {
        let body = format!("[\"INSERT INTO t VALUES ({i})\"]");
        if let Some((200, out)) = http(&cluster.http[leader], "POST", "/db/execute", &body) {
            if out["results"][0].get("error").is_none() {
                acked += 1;
            }
        }
    }
    assert_eq!(acked, 50);

    // SIGKILL the leader; a new one is elected among the other two and holds every acknowledged row.
    if let Some(mut child) = cluster.children[leader].take() {
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }
    let new_leader = cluster.leader(Duration::from_secs(30));
    assert_ne!(new_leader, leader);
    assert_eq!(count(&cluster.http[new_leader]), Some(acked), "no acknowledged write is lost");
    // A write sent to the other survivor, a follower, is forwarded to the new leader. (The follower may take
    // a heartbeat to learn who leads; a client retries a 503.)
    let follower = (0..n).find(|i| *i != leader && *i != new_leader).expect("a follower");
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let answer =
            http(&cluster.http[follower], "POST", "/db/execute", r#"["INSERT INTO t VALUES (1000)"]"#);
        if matches!(answer, Some((200, _))) {
            break;
        }
        assert!(Instant::now() < until, "the write through a follower never went through: {answer:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The old leader restarts from its data directory and catches up.
    cluster.spawn(leader, false);
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if count(&cluster.http[leader]) == Some(acked + 1) {
            break;
        }
        assert!(Instant::now() < until, "the restarted node did not catch up");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The load generator runs against the healed cluster: both phases complete without an error.
    let out = Command::new(env!("CARGO_BIN_EXE_bop"))
        .args(["bench", &cluster.http[new_leader], "--clients", "2", "--secs", "1", "--keys", "10"])
        .output()
        .expect("run bop bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for phase in ["writes:", " reads:"] {
        let line =
            stdout.lines().find(|l| l.starts_with(phase)).unwrap_or_else(|| panic!("{phase} in {stdout}"));
        assert!(line.ends_with(", 0 errors)") && !line.contains("(0 ops"), "{line}");
    }
    // Every upserted key is one row: 10 keys at most, all readable through the leader.
    let (status, rows) = http(
        &cluster.http[new_leader],
        "GET",
        "/db/query?db=bench&level=linearizable&q=SELECT%20count(*)%20FROM%20kv",
        "",
    )
    .expect("count bench rows");
    assert_eq!(status, 200);
    assert!(rows["results"][0]["values"][0][0].as_i64().is_some_and(|n| (1..=10).contains(&n)), "{rows}");

    // A fourth node configured by a TOML file joins through a follower (forwarded to the leader), becomes a
    // voter and serves every row from its own copy.
    let (raft4, http4) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let config = cluster.dir.path().join("node-4.toml");
    let toml = format!(
        "id = 4\ndata_dir = {:?}\nraft_addr = {raft4:?}\nhttp_addr = {http4:?}\njoin = {:?}\n",
        cluster.dir.path().join("node-4").display().to_string(),
        cluster.http[follower]
    );
    std::fs::write(&config, toml).expect("write config");
    let child = Command::new(env!("CARGO_BIN_EXE_bop"))
        .args(["node", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn node 4");
    cluster.raft.push(raft4);
    cluster.http.push(http4.clone());
    cluster.children.push(Some(child));
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let voters = http(&cluster.http[new_leader], "GET", "/nodes", "")
            .and_then(|(_, nodes)| nodes["4"]["voter"].as_bool())
            .unwrap_or(false);
        if voters && count(&http4) == Some(acked + 1) {
            break;
        }
        assert!(Instant::now() < until, "node 4 did not join and catch up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn bad_node_configuration_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_bop")).args(args).output().expect("run bop");
        assert!(!out.status.success(), "{args:?} must fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let missing = dir.path().join("missing.toml");
    let err = run(&["node", "--config", missing.to_str().expect("utf-8 path")]);
    assert!(err.contains("reading") && err.contains("missing.toml"), "{err}");
    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "id = 1\ndata_dirr = \"x\"\n").expect("write");
    let err = run(&["node", "--config", typo.to_str().expect("utf-8 path")]);
    assert!(err.contains("unknown field") && err.contains("data_dirr"), "{err}");
    let node = ["node", "--id", "1", "--data-dir", "x", "--raft-addr", "a:1", "--http-addr", "b:1"];
    let err = run(&[&node[..], &["--bootstrap", "1=a:1", "--join", "b:2"]].concat());
    assert!(err.contains("exclude each other"), "{err}");
    let err = run(&[&node[..], &["--non-voter"]].concat());
    assert!(err.contains("--non-voter needs --join"), "{err}");
    let err = run(&["node", "--id", "one"]);
    assert!(err.contains("--id"), "{err}");
}

/// Finding 2 of the hardening work: three `bop node --init ...` processes started at the same moment. A
/// node that received a peer's vote request before it called initialize used to exit with "not allowed
/// to initialize due to current raft state"; a cluster being formed by a peer is success. Twenty rounds:
/// every time all three stay up and agree on one leader.
#[test]
fn three_nodes_bootstrapped_at_the_same_moment_all_stay_up_and_agree_on_a_leader() {
    let n = 3;
    let mut port_clashes = 0;
    let mut round = 0;
    'rounds: while round < 20 {
        let mut cluster = Cluster::new(n);
        for i in 0..n {
            cluster.spawn(i, true);
        }
        let until = Instant::now() + Duration::from_secs(30);
        let leader = loop {
            for i in 0..n {
                let exited = cluster.children[i].as_mut().and_then(|c| c.try_wait().ok().flatten());
                if exited.is_some() {
                    let stderr = cluster.stderr_of(i);
                    // A port `free_port` picked can be taken by another test's connection before the node
                    // binds it: the harness's race, not the property under test. The round runs again on
                    // other ports (three times at most).
                    if stderr.contains("cannot listen") && port_clashes < 3 {
                        port_clashes += 1;
                        eprintln!("round {round}: node {} found its port taken; the round runs again", i + 1);
                        continue 'rounds;
                    }
                    panic!("round {round}: node {} exited: {exited:?}; its stderr:\n{stderr}", i + 1);
                }
            }
            let leaders: Vec<Option<u64>> = cluster
                .http
                .iter()
                .map(|addr| {
                    http(addr, "GET", "/status", "")
                        .filter(|(status, _)| *status == 200)
                        .and_then(|(_, s)| s["raft"]["leader"].as_u64())
                })
                .collect();
            if leaders[0].is_some() && leaders.iter().all(|l| *l == leaders[0]) {
                break leaders[0];
            }
            assert!(Instant::now() < until, "round {round}: no agreed leader within 30 s: {leaders:?}");
            std::thread::sleep(Duration::from_millis(50));
        };
        // Still up a moment later (a node that failed to initialise exits right after its start).
        std::thread::sleep(Duration::from_millis(200));
        for i in 0..n {
            let exited = cluster.children[i].as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() {
                let stderr = cluster.stderr_of(i);
                panic!("round {round}: node {} exited after leader {leader:?}: {exited:?}; its stderr:\n{stderr}", i + 1);
            }
        }
        round += 1;
    }
}

/// Finding 4 of the hardening work: a runaway statement kept a blocking thread busy, and a node asked to
/// stop (SIGINT, as Ctrl-C) hung until SIGKILL. Shutdown now interrupts running statements.
#[test]
fn a_node_stops_promptly_on_sigint_while_a_runaway_query_runs() {
    let mut cluster = Cluster::new(1);
    cluster.spawn(0, true);
    cluster.leader(Duration::from_secs(30));
    let (status, out) =
        http(&cluster.http[0], "POST", "/db/execute", r#"["CREATE TABLE t (x)"]"#).expect("create");
    assert_eq!(status, 200, "{out}");
    // A client that keeps waiting for a statement that would run for hours.
    let addr = cluster.http[0].clone();
    let _client = std::thread::spawn(move || {
        let q = "WITH%20RECURSIVE%20c(x)%20AS%20(SELECT%201%20UNION%20ALL%20SELECT%20x%2B1%20FROM%20c)%20SELECT%20count(*)%20FROM%20c";
        http(&addr, "GET", &format!("/db/query?q={q}"), "")
    });
    std::thread::sleep(Duration::from_millis(500));
    stops_cleanly_on(cluster.children[0].as_mut().expect("running"), "INT");
}

/// Sends the child `SIG{signal}` and asserts that it exits with status 0 within 15 s.
fn stops_cleanly_on(child: &mut std::process::Child, signal: &str) {
    let killed = Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status();
    assert!(killed.expect("kill").success());
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "a clean exit on SIG{signal}: {status:?}");
            break;
        }
        assert!(Instant::now() < until, "the node did not stop within 15 s of SIG{signal}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM (what systemd, Kubernetes and `kill` send) stops a node as cleanly as SIGINT does: it exits with
/// status 0 after its shutdown. Before, only Ctrl-C was handled and SIGTERM killed the process outright.
#[test]
fn a_node_stops_cleanly_on_sigterm() {
    let mut cluster = Cluster::new(1);
    cluster.spawn(0, true);
    cluster.leader(Duration::from_secs(30));
    stops_cleanly_on(cluster.children[0].as_mut().expect("running"), "TERM");
}

/// `bop node --join ADDR --non-voter` joins as a learner that stays one: the membership lists it as no
/// voter, it receives the log, `level=auto` reads are served from its own copy — also once the only voter
/// is gone, when a `weak` read has no leader to go to — and it never becomes leader.
#[test]
fn a_non_voter_joins_as_a_learner_and_serves_auto_reads_locally() {
    let mut cluster = Cluster::new(2);
    let http_addrs = cluster.http.clone();
    let members = format!("1={}/{}", cluster.raft[0], http_addrs[0]);
    cluster.children[0] = Some(cluster.command(0).args(["--init", &members]).spawn().expect("spawn"));
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let written = http(
            &http_addrs[0],
            "POST",
            "/db/execute",
            r#"["CREATE TABLE IF NOT EXISTS t (v)", "INSERT INTO t VALUES (7)"]"#,
        );
        if matches!(&written, Some((200, out)) if out["results"][1]["rows_affected"] == 1) {
            break;
        }
        assert!(Instant::now() < until, "the first node never took a write: {written:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.children[1] =
        Some(cluster.command(1).args(["--join", &http_addrs[0], "--non-voter"]).spawn().expect("spawn"));
    let read = |level: &str| {
        let path = format!("/db/query?q=SELECT%20v%20FROM%20t&level={level}");
        http(&http_addrs[1], "GET", &path, "")
            .filter(|(status, _)| *status == 200)
            .and_then(|(_, out)| out["results"][0]["values"][0][0].as_i64())
    };
    let until = Instant::now() + Duration::from_secs(30);
    while read("auto") != Some(7) {
        assert!(Instant::now() < until, "the non-voter never served the row");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, nodes) = http(&http_addrs[0], "GET", "/nodes?nonvoters&ver=2", "").expect("/nodes");
    assert_eq!(status, 200, "{nodes}");
    let listed = nodes["nodes"].as_array().expect("ver=2 lists nodes");
    let second_node = listed.iter().find(|n| n["id"] == "2" || n["id"] == 2).expect("node 2 listed");
    assert_eq!(second_node["voter"], false, "{nodes}");

    // The only voter goes: `auto` still reads locally, `weak` finds no leader, and the learner never
    // leads.
    if let Some(mut first) = cluster.children[0].take() {
        let _ = first.kill();
        let _ = first.wait();
    }
    assert_eq!(read("auto"), Some(7));
    assert_eq!(read("weak"), None, "a weak read needs a leader");
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let (_, status) = http(&http_addrs[1], "GET", "/status", "").expect("/status");
        assert_ne!(status["raft"]["state"], "Leader", "a non-voter took leadership");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Three `bop node` processes with everything on — mutual TLS on the Raft transport, HTTPS on the API with
/// client certificates not required, users from an auth file with a bcrypt password — started at the same
/// moment: writes through a follower as a user (forwarded over HTTPS with the caller's credentials),
/// anonymous and plain-HTTP calls refused, the leader SIGKILLed and no acknowledged write lost, the old
/// leader restarted and caught up, and a fourth node joining as the auth file's `join` user.
#[test]
fn a_cluster_with_tls_and_users_replicates_survives_a_kill_and_takes_a_joining_node() {
    use bop_raft::http_client::{call_blocking, ClientSettings};
    let n = 3;
    let mut cluster = Cluster::new(n);
    let pki = cluster.dir.path().join("pki");
    bop_raft::tcp::tls::write_throwaway_pki(&pki, &[1, 2, 3, 4]).expect("pki");
    let admin_hash = bcrypt::hash("admin pw", 4).expect("bcrypt");
    let users = format!(
        r#"[{{"username": "admin", "password": "{admin_hash}", "perms": ["all"]}},
            {{"username": "node", "password": "node pw", "perms": ["join"]}}]"#
    );
    std::fs::write(pki.join("users.json"), users).expect("write");
    // Node `id`'s own certificate and key serve both the Raft transport and HTTPS.
    let node_args = |id: usize| -> Vec<String> {
        let file = |name: &str| pki.join(name).display().to_string();
        let mut args = vec!["--auth".to_owned(), file("users.json")];
        for port in ["raft", "http"] {
            for (what, name) in
                [("ca", "ca.pem".to_owned()), ("cert", format!("{id}.pem")), ("key", format!("{id}-key.pem"))]
            {
                args.extend([format!("--{port}-tls-{what}"), file(&name)]);
            }
        }
        args
    };
    let members: Vec<String> =
        (0..n).map(|j| format!("{}={}/{}", j + 1, cluster.raft[j], cluster.http[j])).collect();
    let start = |cluster: &mut Cluster, i: usize, init: bool| {
        let mut cmd = cluster.command(i);
        cmd.args(node_args(i + 1));
        if init {
            cmd.args(["--init", &members.join(",")]);
        }
        cluster.children[i] = Some(cmd.spawn().expect("spawn bop node"));
    };
    for i in 0..n {
        start(&mut cluster, i, true);
    }
    let tls = bop_raft::https::client_trusting(&pki.join("ca.pem")).expect("client TLS");
    let admin = ClientSettings {
        authorization: Some(bop_raft::auth::basic_header("admin", "admin pw")),
        tls: Some(tls.clone()),
    };
    let call = |addr: &str, settings: &ClientSettings, method: &str, path: &str, body: &str| {
        call_blocking(addr, method, path, body, Duration::from_secs(10), settings)
            .ok()
            .map(|(status, text)| (status, serde_json::from_str::<Value>(&text).unwrap_or(Value::Null)))
    };
    let leader_of = |cluster: &Cluster| -> usize {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            for (i, addr) in cluster.http.iter().enumerate() {
                if cluster.children[i].is_some() {
                    if let Some((200, status)) = call(addr, &admin, "GET", "/status", "") {
                        if status["raft"]["state"] == "Leader" {
                            return i;
                        }
                    }
                }
            }
            assert!(Instant::now() < until, "no leader within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let leader = leader_of(&cluster);
    let follower = (leader + 1) % n;
    // The follower may take a heartbeat to learn who leads (503 "not the leader" meanwhile); a client retries.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let answer =
            call(&cluster.http[follower], &admin, "POST", "/db/execute", r#"["CREATE TABLE t (x)"]"#);
        if matches!(answer, Some((200, _))) {
            break;
        }
        assert!(Instant::now() < until, "no create through a follower within 30 s: {answer:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut acked = 0;
    for i in 0..30 {
        let body = format!("[\"INSERT INTO t VALUES ({i})\"]");
        if let Some((200, out)) = call(&cluster.http[follower], &admin, "POST", "/db/execute", &body) {
            if out["results"][0].get("error").is_none() {
                acked += 1;
            }
        }
    }
    assert_eq!(acked, 30);
    let anonymous = ClientSettings { authorization: None, tls: Some(tls.clone()) };
    let refused = call(&cluster.http[leader], &anonymous, "POST", "/db/execute", r#"["DELETE FROM t"]"#);
    assert_eq!(refused.map(|(status, _)| status), Some(401));
    assert_eq!(http(&cluster.http[leader], "GET", "/status", ""), None, "plain HTTP gets no answer");

    let count = |addr: &str| {
        call(addr, &admin, "GET", "/db/query?q=SELECT%20count(*)%20FROM%20t&level=none", "")
            .filter(|(status, _)| *status == 200)
            .and_then(|(_, out)| out["results"][0]["values"][0][0].as_i64())
    };
    if let Some(mut child) = cluster.children[leader].take() {
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }
    let new_leader = leader_of(&cluster);
    assert_eq!(count(&cluster.http[new_leader]), Some(acked), "no acknowledged write is lost");
    start(&mut cluster, leader, false);
    let until = Instant::now() + Duration::from_secs(30);
    while count(&cluster.http[leader]) != Some(acked) {
        assert!(Instant::now() < until, "the restarted node did not catch up");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Node 4 joins through a follower as the `join` user.
    let (raft4, http4) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    cluster.raft.push(raft4.clone());
    cluster.http.push(http4.clone());
    cluster.children.push(None);
    // A node started without --join-as is refused at once with what to do (it used to retry for 30 s).
    let mut cmd = cluster.command(3);
    cmd.args(node_args(4)).args(["--join", &cluster.http[leader]]).stderr(Stdio::piped());
    let mut refused = cmd.spawn().expect("spawn node 4 without --join-as");
    let until = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = refused.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > until {
            let _ = refused.kill();
            panic!("a join refused with 401 was still being retried after 15 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    refused.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("stderr");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("HTTP 401") && stderr.contains("--join-as"), "{stderr}");
    let _ = std::fs::remove_dir_all(cluster.dir.path().join("node-4"));
    let mut cmd = cluster.command(3);
    cmd.args(node_args(4)).args(["--join", &cluster.http[leader], "--join-as", "node"]);
    cluster.children[3] = Some(cmd.spawn().expect("spawn node 4"));
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let voter = call(&cluster.http[new_leader], &admin, "GET", "/nodes", "")
            .and_then(|(_, nodes)| nodes["4"]["voter"].as_bool())
            .unwrap_or(false);
        if voter && count(&http4) == Some(acked) {
            break;
        }
        assert!(Instant::now() < until, "node 4 did not join and catch up");
        std::thread::sleep(Duration::from_millis(100));
    }
}
