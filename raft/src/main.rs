//! The `bop` binary.
//!
//! - `bop up`: a local three-node cluster on loopback, data under `./bop-data/`, HTTP API on ports
//!   4101–4103 (Raft on 4001–4003); Ctrl-C stops it; run again, it reuses the data.
//! - `bop node [--config FILE] --id N --data-dir DIR --raft-addr A --http-addr H [--bootstrap ID=RAFT/HTTP,...
//!   | --join HTTP_ADDR]`: one node; the TOML file holds the same keys (`id`, `data_dir`, `raft_addr`,
//!   `http_addr`, `bootstrap`, `join`), flags override it.
//! - `bop demo`: append to a WAL from several threads in a child process, SIGKILL it mid-stream, reopen the
//!   log and show that every acknowledged entry was recovered.
//! - `bop bench`: a load generator against a running cluster (see `load.rs`).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod load;

use bop_storage::io::BufferedIo;
use bop_storage::wal::{NewEntry, WalConfig, WalStore};

const USAGE: &str = "usage:
  bop up [--data-dir DIR]                    a local three-node cluster (default ./bop-data), Ctrl-C to stop
  bop node [--config FILE.toml] --id N --data-dir DIR --raft-addr HOST:PORT --http-addr HOST:PORT
           [--bootstrap ID=RAFT/HTTP,... | --join HTTP_ADDR]   (the file holds the same keys; flags win)
  bop demo [--dir DIR] [--millis N]          append to a WAL in a child process, SIGKILL it, reopen, verify
  bop execute HTTP_ADDR SQL [--db NAME]      run a write through a node (its leader)
  bop query HTTP_ADDR SQL [--db NAME] [--level none|weak|linearizable]
  bop status HTTP_ADDR                       node, Raft and membership status
  bop join LEADER_HTTP_ADDR ID RAFT_ADDR[/HTTP_ADDR] [--learner]
  bop remove LEADER_HTTP_ADDR ID
  bop bench HTTP_ADDR[,HTTP_ADDR...] [--clients N] [--secs S] [--keys K]
                                             load: 256-byte upserts, then linearizable point reads";

fn payload(index: u64) -> Vec<u8> {
    format!("entry {index:>10} | bop demo payload").into_bytes()
}

fn open(dir: &PathBuf) -> Result<WalStore, String> {
    WalStore::open(Arc::new(BufferedIo::new()), WalConfig::new(dir))
        .map_err(|e| format!("open {}: {e}", dir.display()))
}

fn child(dir: &PathBuf) -> Result<(), String> {
    let store = Arc::new(open(dir)?);
    let next = Arc::new(Mutex::new(store.state().next_index.unwrap_or(1)));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (store, next) = (Arc::clone(&store), Arc::clone(&next));
            std::thread::spawn(move || -> Result<(), String> {
                for _ in 0..100_000 {
                    let (ticket, index) = {
                        let mut next = next.lock().map_err(|_| "lock poisoned".to_string())?;
                        let index = *next;
                        let entry = NewEntry { index, term: 1, payload: payload(index) };
                        let ticket = store.append(vec![entry]).map_err(|e| e.to_string())?;
                        *next += 1;
                        (ticket, index)
                    };
                    ticket.wait().map_err(|e| e.to_string())?;
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {index}").map_err(|e| e.to_string())?;
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| "appender panicked".to_string())??;
    }
    Ok(())
}

fn demo(dir: PathBuf, millis: u64) -> Result<(), String> {
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let before = open(&dir)?;
    let state = before.state();
    println!("bop demo: WAL at {}", dir.display());
    println!("  opened: {} segment(s), last entry {:?}", before.segment_count(), state.last.map(|p| p.index));
    before.close().map_err(|e| e.to_string())?;
    drop(before);

    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(["demo", "--child", "--dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn child: {e}"))?;
    let stdout = child.stdout.take().ok_or("child has no stdout")?;
    let acked = Arc::new(Mutex::new(0u64));
    let reader = {
        let acked = Arc::clone(&acked);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(index) = line.strip_prefix("ACK ").and_then(|s| s.parse::<u64>().ok()) {
                    if let Ok(mut max) = acked.lock() {
                        *max = (*max).max(index);
                    }
                }
            }
        })
    };
    let start = Instant::now();
    std::thread::sleep(Duration::from_millis(millis));
    child.kill().map_err(|e| format!("kill child: {e}"))?;
    let _ = child.wait();
    let _ = reader.join();
    let acked_max = *acked.lock().map_err(|_| "lock poisoned")?;
    println!(
        "  child appended from 8 threads for {:?}, then got SIGKILL; highest acknowledged entry: {acked_max}",
        start.elapsed()
    );

    let after = open(&dir)?;
    let report = after.recovery_report().clone();
    let state = after.state();
    let last = state.last.map_or(0, |p| p.index);
    let first = state.first_index.unwrap_or(1);
    let mut whole = 0u64;
    for index in first..=last {
        match after.read(index) {
            Ok(Some(e)) if e.payload == payload(index) => whole += 1,
            other => return Err(format!("entry {index} is not whole after recovery: {other:?}")),
        }
    }
    println!(
        "  recovered: {} segment(s), {} records scanned, entries {first}..={last} all whole ({whole} checked)",
        report.segments, report.records
    );
    match &report.torn_tail {
        Some((seg, offset, why)) => println!("  torn tail cut in segment {seg} at offset {offset}: {why}"),
        None => println!("  no torn tail"),
    }
    if last < acked_max {
        return Err(format!("LOST acknowledged entries: acked up to {acked_max}, log ends at {last}"));
    }
    println!(
        "  every acknowledged entry survived (acked ≤ {acked_max} ≤ last {last}); run again to append more"
    );
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,bop=info,openraft=error"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}

async fn wait_for_leader(node: &bop_raft::node::Node) -> Result<u64, String> {
    let m = node
        .raft()
        .wait(Some(Duration::from_secs(30)))
        .metrics(|m| m.current_leader.is_some(), "a leader")
        .await
        .map_err(|e| format!("no leader elected: {e}"))?;
    m.current_leader.ok_or_else(|| "no leader".to_string())
}

/// `bop up`: three nodes in this process on loopback.
fn up(data_dir: PathBuf) -> Result<(), String> {
    use bop_raft::node::{Node, NodeConfig};
    init_logging();
    runtime()?.block_on(async move {
        let mut nodes = Vec::new();
        let mut members = std::collections::BTreeMap::new();
        for id in 1..=3u64 {
            let config = NodeConfig {
                id,
                data_dir: data_dir.join(format!("node-{id}")),
                raft_addr: format!("127.0.0.1:{}", 4000 + id),
                http_addr: format!("127.0.0.1:{}", 4100 + id),
            };
            members.insert(id, format!("{} http={}", config.raft_addr, config.http_addr));
            nodes.push(Node::start(config).await.map_err(|e| format!("node {id}: {e}"))?);
        }
        nodes[0].initialize_if_new(members).await.map_err(|e| e.to_string())?;
        let leader = wait_for_leader(&nodes[0]).await?;
        println!("bop: three nodes up, data in {}", data_dir.display());
        for node in &nodes {
            let role = if node.id() == leader { " (leader)" } else { "" };
            println!("  node {}: http://{}  raft {}{role}", node.id(), node.http_addr(), node.raft_addr());
        }
        let leader_http = nodes.iter().find(|n| n.id() == leader).map(|n| n.http_addr().to_owned()).unwrap_or_default();
        println!();
        println!("try:");
        println!(
            "  curl -s -XPOST 'http://{leader_http}/db/execute' -H 'Content-Type: application/json' \\\n    -d '[\"CREATE TABLE IF NOT EXISTS greet (id INTEGER PRIMARY KEY, msg TEXT)\", [\"INSERT INTO greet(msg) VALUES(?)\", \"hello\"]]'"
        );
        println!("  curl -s -G 'http://{leader_http}/db/query' --data-urlencode 'q=SELECT * FROM greet'");
        println!();
        println!("Ctrl-C stops the cluster.");
        tokio::signal::ctrl_c().await.map_err(|e| format!("waiting for Ctrl-C: {e}"))?;
        println!("stopping");
        for node in nodes {
            node.shutdown().await;
        }
        Ok(())
    })
}

/// `bop node`: one node of a cluster.
/// `bop node`'s settings, from `--config FILE` (TOML) and flags; flags win.
#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    id: Option<u64>,
    data_dir: Option<PathBuf>,
    raft_addr: Option<String>,
    http_addr: Option<String>,
    /// A new cluster's members, `ID=RAFT_ADDR/HTTP_ADDR,...` (as `--bootstrap`).
    bootstrap: Option<String>,
    /// An HTTP address of a running cluster to join on first start (as `--join`).
    join: Option<String>,
}

/// Parses `ID=RAFT_ADDR[/HTTP_ADDR],...` into membership addresses (`RAFT_ADDR http=HTTP_ADDR`).
fn parse_members(list: &str) -> Result<std::collections::BTreeMap<u64, String>, String> {
    let mut members = std::collections::BTreeMap::new();
    for pair in list.split(',') {
        let (member, addr) =
            pair.split_once('=').ok_or_else(|| format!("--bootstrap wants ID=ADDR, got {pair:?}"))?;
        // ADDR is RAFT_ADDR, or RAFT_ADDR/HTTP_ADDR so that followers can forward to the leader.
        let addr = match addr.split_once('/') {
            Some((raft, http)) => format!("{raft} http={http}"),
            None => addr.to_owned(),
        };
        members.insert(member.parse::<u64>().map_err(|e| format!("--bootstrap id {member:?}: {e}"))?, addr);
    }
    Ok(members)
}

fn node(args: &[String]) -> Result<(), String> {
    use bop_raft::node::{Node, NodeConfig};
    init_logging();
    let mut flags = NodeFile::default();
    let mut file = NodeFile::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().cloned().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--config" => {
                let path = value()?;
                let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
                file = toml::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
            }
            "--id" => flags.id = Some(value()?.parse::<u64>().map_err(|e| format!("--id: {e}"))?),
            "--data-dir" => flags.data_dir = Some(PathBuf::from(value()?)),
            "--raft-addr" => flags.raft_addr = Some(value()?),
            "--http-addr" => flags.http_addr = Some(value()?),
            "--bootstrap" | "--init" => flags.bootstrap = Some(value()?),
            "--join" => flags.join = Some(value()?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let bootstrap = flags.bootstrap.or(file.bootstrap).map(|list| parse_members(&list)).transpose()?;
    let join = flags.join.or(file.join);
    if bootstrap.is_some() && join.is_some() {
        return Err("--bootstrap and --join exclude each other".into());
    }
    let config = NodeConfig {
        id: flags.id.or(file.id).ok_or("--id (or id in the config file) is required")?,
        data_dir: flags.data_dir.or(file.data_dir).ok_or("--data-dir (or data_dir) is required")?,
        raft_addr: flags.raft_addr.or(file.raft_addr).ok_or("--raft-addr (or raft_addr) is required")?,
        http_addr: flags.http_addr.or(file.http_addr).ok_or("--http-addr (or http_addr) is required")?,
    };
    runtime()?.block_on(async move {
        let node = Node::start(config).await.map_err(|e| e.to_string())?;
        if let Some(members) = bootstrap {
            node.initialize_if_new(members).await.map_err(|e| e.to_string())?;
        }
        println!("bop node {}: http://{}  raft {}", node.id(), node.http_addr(), node.raft_addr());
        if let Some(target) = join {
            join_cluster(&node, &target).await?;
        }
        tokio::signal::ctrl_c().await.map_err(|e| format!("waiting for Ctrl-C: {e}"))?;
        node.shutdown().await;
        Ok(())
    })
}

/// On a node's first start, asks the cluster at `target` (any member's HTTP address; followers forward)
/// to add it as a voter; retried a bounded number of times while the cluster is unreachable or electing.
async fn join_cluster(node: &bop_raft::node::Node, target: &str) -> Result<(), String> {
    if node.raft().is_initialized().await.map_err(|e| e.to_string())? {
        return Ok(());
    }
    let body = serde_json::json!({ "id": node.id(), "addr": node.member_addr(), "voter": true }).to_string();
    let mut last = String::new();
    for _ in 0..JOIN_ATTEMPTS_MAX {
        let attempt = async {
            let mut conn = bop_raft::http_client::HttpConn::connect(target, Duration::from_secs(5)).await?;
            let answer = conn.call(hyper::Method::POST, "/join", body.clone().into(), 1 << 20);
            tokio::time::timeout(Duration::from_secs(60), answer)
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
        };
        match attempt.await {
            Ok((200, _)) => {
                println!("joined the cluster through {target}");
                return Ok(());
            }
            Ok((status, answer)) => last = format!("HTTP {status}: {}", String::from_utf8_lossy(&answer)),
            Err(e) => last = format!("{target}: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(format!("joining through {target} failed {JOIN_ATTEMPTS_MAX} times; last: {last}"))
}

/// Attempts `--join` makes before giving up.
const JOIN_ATTEMPTS_MAX: u32 = 30;

/// A one-request HTTP/1.1 client for the client subcommands: returns the status and the body.
fn http_call(addr: &str, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    bop_raft::http_client::call_blocking(addr, method, path, body, Duration::from_secs(60))
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The client subcommands: `execute`, `query`, `status`, `join`, `remove`.
fn client(command: &str, args: &[String]) -> Result<(), String> {
    let mut positional = Vec::new();
    let mut db = None;
    let mut level = None;
    let mut learner = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--db" => db = Some(it.next().ok_or("--db needs a name")?.clone()),
            "--level" => level = Some(it.next().ok_or("--level needs a value")?.clone()),
            "--learner" => learner = true,
            other => positional.push(other.to_owned()),
        }
    }
    let want = |n: usize| -> Result<(), String> {
        if positional.len() == n {
            Ok(())
        } else {
            Err(format!("{command} takes {n} arguments, got {}", positional.len()))
        }
    };
    let db_param = db.map(|d| format!("db={}", url_encode(&d)));
    let (status, body) = match command {
        "execute" => {
            want(2)?;
            let body = serde_json::to_string(&[&positional[1]]).map_err(|e| e.to_string())?;
            let path = format!("/db/execute{}", db_param.map(|p| format!("?{p}")).unwrap_or_default());
            http_call(&positional[0], "POST", &path, &body)?
        }
        "query" => {
            want(2)?;
            let mut path = format!("/db/query?q={}", url_encode(&positional[1]));
            if let Some(p) = db_param {
                path.push_str(&format!("&{p}"));
            }
            if let Some(level) = level {
                path.push_str(&format!("&level={}", url_encode(&level)));
            }
            http_call(&positional[0], "GET", &path, "")?
        }
        "status" => {
            want(1)?;
            let (status, body) = http_call(&positional[0], "GET", "/status", "")?;
            let (_, nodes) = http_call(&positional[0], "GET", "/nodes", "")?;
            (status, format!("{body}\n{nodes}"))
        }
        "join" => {
            want(3)?;
            let id: u64 = positional[1].parse().map_err(|e| format!("node id {:?}: {e}", positional[1]))?;
            let addr = match positional[2].split_once('/') {
                Some((raft, http)) => format!("{raft} http={http}"),
                None => positional[2].clone(),
            };
            let body = serde_json::json!({ "id": id, "addr": addr, "voter": !learner }).to_string();
            http_call(&positional[0], "POST", "/join", &body)?
        }
        "remove" => {
            want(2)?;
            let id: u64 = positional[1].parse().map_err(|e| format!("node id {:?}: {e}", positional[1]))?;
            http_call(&positional[0], "DELETE", "/remove", &serde_json::json!({ "id": id }).to_string())?
        }
        other => return Err(format!("unknown command {other:?}")),
    };
    println!("{body}");
    if status == 200 {
        Ok(())
    } else {
        Err(format!("HTTP {status}"))
    }
}

fn bench(args: &[String]) -> Result<(), String> {
    let mut config = load::LoadConfig { addrs: Vec::new(), clients: 16, secs: 10, keys: 10_000 };
    let mut it = args.iter();
    let number = |flag: &str, value: Option<&String>| -> Result<u64, String> {
        value.and_then(|v| v.parse().ok()).ok_or_else(|| format!("{flag} needs a number"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--clients" => config.clients = number(arg, it.next())? as usize,
            "--secs" => config.secs = number(arg, it.next())?.min(3600),
            "--keys" => config.keys = number(arg, it.next())?,
            addrs if config.addrs.is_empty() && !addrs.starts_with("--") => {
                config.addrs = addrs.split(',').map(str::to_owned).collect();
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    runtime()?.block_on(load::run(config))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(command @ ("execute" | "query" | "status" | "join" | "remove")) =
        args.first().map(String::as_str)
    {
        return match client(command, &args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        };
    }
    match args.first().map(String::as_str) {
        Some("up") => {
            let mut data_dir = PathBuf::from("bop-data");
            let mut it = args.iter().skip(1);
            while let Some(arg) = it.next() {
                match (arg.as_str(), it.next()) {
                    ("--data-dir", Some(dir)) => data_dir = PathBuf::from(dir),
                    _ => return fail(&format!("unknown argument {arg:?}")),
                }
            }
            return match up(data_dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            };
        }
        Some("bench") => {
            return match bench(&args[1..]) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            };
        }
        Some("node") => {
            return match node(&args[1..]) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            };
        }
        _ => {}
    }
    let mut dir = PathBuf::from("bop-data/demo-wal");
    let mut millis = 300u64;
    let mut is_child = false;
    let mut it = args.iter().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--dir" => match it.next() {
                Some(d) => dir = PathBuf::from(d),
                None => return fail("--dir needs a value"),
            },
            "--millis" => match it.next().and_then(|m| m.parse().ok()) {
                Some(m) if m <= 60_000 => millis = m,
                _ => return fail("--millis needs a number of milliseconds up to 60000"),
            },
            "--child" => is_child = true,
            other => return fail(&format!("unknown argument {other:?}")),
        }
    }
    let result = match args.first().map(String::as_str) {
        Some("demo") if is_child => child(&dir),
        Some("demo") => demo(dir, millis),
        _ => return fail("expected a command"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("bop: {message}\n\n{USAGE}");
    ExitCode::FAILURE
}
