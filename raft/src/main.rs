//! The `bop` binary: its command line (clap), its logging, and the subcommands.
//!
//! - `bop up`: a local three-node cluster on loopback, data under `./bop-data/`, HTTP API on ports
//!   4101–4103 (Raft on 4001–4003); Ctrl-C stops it; run again, it reuses the data.
//! - `bop node`: one node of a cluster, configured by flags, `BOP_*` environment variables and a TOML file
//!   (in that order of precedence).
//! - `bop execute|query|status|join|remove`: clients of a node's HTTP API.
//! - `bop bench`: a load generator against a running cluster (see `load.rs`).
//! - `bop demo`: the WAL's crash recovery on its own (see `demo.rs`).
//!
//! Exit codes: 0 success, 1 a runtime failure, 2 a usage or configuration error (see [`EXIT_CODES`]).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod demo;
mod load;

use bop_raft::node::{Node, NodeConfig, NodeError};

/// What `--help` says about exit codes (and what [`Failure`] maps to).
const EXIT_CODES: &str =
    "Exit codes: 0 success; 1 a runtime failure (a node that cannot start or stops with \
an error, a client call that fails or is refused); 2 a usage or configuration error (an unknown flag, a bad \
value, an unreadable or misspelt config file, a missing setting).";

/// The log filter used when neither `--log-filter` nor `RUST_LOG` is given.
const DEFAULT_LOG_FILTER: &str = "warn,bop=info,bop_raft=info,openraft=error";

#[derive(Parser, Debug)]
#[command(
    name = "bop",
    version,
    about = "bop: a Raft-replicated SQLite-compatible storage node with an rqlite-compatible HTTP API",
    after_help = EXIT_CODES,
    arg_required_else_help = true,
    propagate_version = true
)]
struct Cli {
    /// How log lines (on stderr) are written: `text` (coloured only when stderr is a terminal and NO_COLOR
    /// is unset) or `json` (one object a line).
    #[arg(long, global = true, value_enum, env = "BOP_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Which log lines to write, in RUST_LOG's syntax (e.g. `info`, `warn,bop_raft=debug`).
    #[arg(long, global = true, value_name = "FILTER", env = "RUST_LOG", default_value = DEFAULT_LOG_FILTER)]
    log_filter: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A local three-node cluster in this process (Raft on 127.0.0.1:4001-4003, HTTP on 4101-4103);
    /// Ctrl-C stops it, and running it again reuses the data.
    Up {
        /// Where the three nodes keep their data (`node-1`, `node-2`, `node-3` inside it).
        #[arg(long, value_name = "DIR", env = "BOP_DATA_DIR", default_value = "bop-data")]
        data_dir: PathBuf,
        /// Mutual TLS between the nodes on the Raft transport, with a throwaway CA and node certificates
        /// made at start (kept in memory only). The HTTP API stays plain HTTP.
        #[arg(long)]
        tls: bool,
    },
    /// One node of a cluster. Settings come from flags, then `BOP_*` environment variables, then the TOML
    /// file named by --config (keys id, data_dir, raft_addr, http_addr, bootstrap, join, non_voter).
    #[command(after_help = EXIT_CODES)]
    Node(NodeArgs),
    /// Runs one write (or a batch, as a JSON array of statements) through a node; followers forward it.
    Execute {
        /// The node's HTTP address (HOST:PORT).
        http_addr: String,
        /// The SQL statement.
        sql: String,
        /// A named database (default `main`).
        #[arg(long)]
        db: Option<String>,
    },
    /// Runs one query on a node.
    Query {
        /// The node's HTTP address (HOST:PORT).
        http_addr: String,
        /// The SQL query.
        sql: String,
        /// A named database (default `main`).
        #[arg(long)]
        db: Option<String>,
        /// Read consistency.
        #[arg(long, value_parser = ["none", "weak", "linearizable", "strong"])]
        level: Option<String>,
    },
    /// Shows a node's status and the cluster's membership.
    Status {
        /// The node's HTTP address (HOST:PORT).
        http_addr: String,
    },
    /// Adds a node to the cluster (as a voter, or a learner with --learner).
    Join {
        /// The HTTP address of a member (followers forward to the leader).
        http_addr: String,
        /// The new node's id.
        id: u64,
        /// The new node's Raft address, or RAFT_ADDR/HTTP_ADDR so that followers can forward to it.
        addr: String,
        /// Join as a learner (non-voting).
        #[arg(long)]
        learner: bool,
    },
    /// Removes a node from the cluster.
    Remove {
        /// The HTTP address of a member (followers forward to the leader).
        http_addr: String,
        /// The node's id.
        id: u64,
    },
    /// A load generator: 256-byte upserts, then linearizable point reads; ops/s, p50, p99.
    Bench {
        /// One or more HTTP addresses, comma-separated; client i uses address i mod n.
        #[arg(value_delimiter = ',', required = true)]
        addrs: Vec<String>,
        /// Concurrent clients, each on its own connection.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=load::CLIENTS_MAX as u64))]
        clients: u64,
        /// Seconds per phase.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
        secs: u64,
        /// Distinct keys written and read.
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
        keys: u64,
    },
    /// Appends to a WAL in a child process, SIGKILLs it, reopens the log and checks every acknowledged
    /// entry survived.
    Demo {
        /// The WAL's directory.
        #[arg(long, default_value = "bop-data/demo-wal")]
        dir: PathBuf,
        /// How long the child appends before it is killed.
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(0..=60_000))]
        millis: u64,
        /// Internal: run as the appending child.
        #[arg(long, hide = true)]
        child: bool,
    },
}

/// `bop node`'s flags. Each also reads a `BOP_*` environment variable; both override the config file.
#[derive(Args, Debug, Default)]
struct NodeArgs {
    /// A TOML file with the same settings (keys id, data_dir, raft_addr, http_addr, bootstrap, join, non_voter).
    #[arg(long, value_name = "FILE", env = "BOP_CONFIG")]
    config: Option<PathBuf>,
    /// The node's id (unique in the cluster, not 0).
    #[arg(long, env = "BOP_ID")]
    id: Option<u64>,
    /// The node's data directory.
    #[arg(long, value_name = "DIR", env = "BOP_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Where the Raft transport listens (HOST:PORT).
    #[arg(long, value_name = "HOST:PORT", env = "BOP_RAFT_ADDR")]
    raft_addr: Option<String>,
    /// Where the HTTP API listens (HOST:PORT).
    #[arg(long, value_name = "HOST:PORT", env = "BOP_HTTP_ADDR")]
    http_addr: Option<String>,
    /// On first start, form a new cluster of these members: ID=RAFT_ADDR/HTTP_ADDR,...
    #[arg(long, visible_alias = "init", value_name = "MEMBERS", env = "BOP_BOOTSTRAP")]
    bootstrap: Option<String>,
    /// On first start, ask the cluster at this HTTP address (any member) to add this node as a voter.
    #[arg(long, value_name = "HTTP_ADDR", env = "BOP_JOIN")]
    join: Option<String>,
    /// With --join: join as a non-voter (a read-only learner that receives the log but never votes or
    /// counts in a quorum; it stays one). `level=auto` reads are served locally on it.
    #[arg(long, env = "BOP_NON_VOTER")]
    non_voter: bool,
    /// Mutual TLS on the Raft transport: the cluster CA's certificate (PEM). Needs --raft-tls-cert and
    /// --raft-tls-key; every node's certificate must name it as the DNS name bop-node-ID.
    #[arg(long, value_name = "FILE", env = "BOP_RAFT_TLS_CA")]
    raft_tls_ca: Option<PathBuf>,
    /// This node's certificate chain (PEM), issued by the CA, naming bop-node-ID.
    #[arg(long, value_name = "FILE", env = "BOP_RAFT_TLS_CERT")]
    raft_tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, value_name = "FILE", env = "BOP_RAFT_TLS_KEY")]
    raft_tls_key: Option<PathBuf>,
}

/// Why a command failed, and so its exit code.
enum Failure {
    /// Exit code 2: how bop was called, or what it was configured with, is wrong.
    Usage(String),
    /// Exit code 1: it was configured right, and failed while running.
    Runtime(String),
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::Runtime(message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Self {
        Failure::Runtime(message.to_owned())
    }
}

impl From<NodeError> for Failure {
    fn from(error: NodeError) -> Self {
        match error {
            NodeError::Config(_) => Failure::Usage(error.to_string()),
            other => Failure::Runtime(other.to_string()),
        }
    }
}

fn main() -> ExitCode {
    // clap answers --help and --version with 0, and a usage error with 2 and a message naming it.
    let cli = Cli::parse();
    if let Err(e) = init_logging(cli.log_format, &cli.log_filter) {
        eprintln!("bop: {e}");
        return ExitCode::from(2);
    }
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("bop: {message}\n\nRun `bop --help` (or `bop COMMAND --help`) for usage.");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(message)) => {
            eprintln!("bop: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Up { data_dir, tls } => up(data_dir, tls),
        Command::Node(args) => node(args),
        Command::Execute { http_addr, sql, db } => {
            let body = serde_json::to_string(&[&sql]).map_err(|e| e.to_string())?;
            let path =
                format!("/db/execute{}", db.map(|d| format!("?db={}", url_encode(&d))).unwrap_or_default());
            client_call(&http_addr, "POST", &path, &body)
        }
        Command::Query { http_addr, sql, db, level } => {
            let mut path = format!("/db/query?q={}", url_encode(&sql));
            if let Some(db) = db {
                path.push_str(&format!("&db={}", url_encode(&db)));
            }
            if let Some(level) = level {
                path.push_str(&format!("&level={}", url_encode(&level)));
            }
            client_call(&http_addr, "GET", &path, "")
        }
        Command::Status { http_addr } => {
            let (status, body) = http_call(&http_addr, "GET", "/status", "")?;
            let (_, nodes) = http_call(&http_addr, "GET", "/nodes", "")?;
            print_answer(&format!("{body}\n{nodes}"));
            answered(status)
        }
        Command::Join { http_addr, id, addr, learner } => {
            let body =
                serde_json::json!({ "id": id, "addr": member_addr(&addr), "voter": !learner }).to_string();
            client_call(&http_addr, "POST", "/join", &body)
        }
        Command::Remove { http_addr, id } => {
            client_call(&http_addr, "DELETE", "/remove", &serde_json::json!({ "id": id }).to_string())
        }
        Command::Bench { addrs, clients, secs, keys } => {
            let config = load::LoadConfig { addrs, clients: clients as usize, secs, keys };
            Ok(runtime()?.block_on(load::run(config))?)
        }
        Command::Demo { dir, child: true, .. } => Ok(demo::child(&dir)?),
        Command::Demo { dir, millis, child: false } => Ok(demo::demo(dir, millis)?),
    }
}

/// Logs go to stderr: as text (ANSI colours only when stderr is a terminal and `NO_COLOR` is unset) or
/// JSON lines, filtered by `filter` (RUST_LOG's syntax).
fn init_logging(format: LogFormat, filter: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| format!("--log-filter (or RUST_LOG) {filter:?}: {e}"))?;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second subscriber can only exist in tests that call this twice; the first one stays.
    let _ = match format {
        LogFormat::Text => builder.with_ansi(ansi).try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

async fn wait_for_leader(node: &Node) -> Result<u64, String> {
    let m = node
        .raft()
        .wait(Some(Duration::from_secs(30)))
        .metrics(|m| m.current_leader.is_some(), "a leader")
        .await
        .map_err(|e| format!("no leader elected: {e}"))?;
    m.current_leader.ok_or_else(|| "no leader".to_string())
}

/// Logs every change of the leader this node knows of (a readable line, and fields for JSON logs).
fn log_leader_changes(node: &Node) {
    use openraft::async_runtime::WatchReceiver;
    let mut metrics = node.raft().metrics();
    let id = node.id();
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let leader = metrics.borrow_watched().current_leader;
            if leader != last {
                match leader {
                    Some(leader) => {
                        tracing::info!(node = id, leader, "node {id}: the leader is node {leader}")
                    }
                    None => tracing::info!(node = id, "node {id}: no leader"),
                }
                last = leader;
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    });
}

/// `bop up`: three nodes in this process on loopback.
fn up(data_dir: PathBuf, tls: bool) -> Result<(), Failure> {
    let pki = if tls {
        let (ca, certs) = bop_raft::tcp::tls::throwaway_pki(&[1, 2, 3]).map_err(|e| e.to_string())?;
        let mut by_id = BTreeMap::new();
        for (id, cert, key) in certs {
            let node_tls =
                bop_raft::tcp::tls::TransportTls::from_pem(ca.as_bytes(), cert.as_bytes(), key.as_bytes())
                    .map_err(|e| e.to_string())?;
            by_id.insert(id, node_tls);
        }
        Some(by_id)
    } else {
        None
    };
    runtime()?.block_on(async move {
        let mut nodes = Vec::new();
        let mut members = BTreeMap::new();
        for id in 1..=3u64 {
            let config = NodeConfig {
                id,
                data_dir: data_dir.join(format!("node-{id}")),
                raft_addr: format!("127.0.0.1:{}", 4000 + id),
                http_addr: format!("127.0.0.1:{}", 4100 + id),
            };
            members.insert(id, format!("{} http={}", config.raft_addr, config.http_addr));
            let raft_tls = pki.as_ref().and_then(|pki| pki.get(&id).cloned());
            let env = bop_raft::node::NodeEnv { raft_tls, ..Default::default() };
            let node =
                Node::start_in(config, env).await.map_err(|e| Failure::Runtime(format!("node {id}: {e}")))?;
            log_leader_changes(&node);
            nodes.push(node);
        }
        nodes[0].initialize_if_new(members).await.map_err(|e| e.to_string())?;
        let leader = wait_for_leader(&nodes[0]).await?;
        println!("bop: three nodes up, data in {}", data_dir.display());
        if tls {
            println!("  Raft between them over mutual TLS (a throwaway CA made at start); HTTP is plain");
        }
        for node in &nodes {
            let role = if node.id() == leader { " (leader)" } else { "" };
            println!("  node {}: http://{}  raft {}{role}", node.id(), node.http_addr(), node.raft_addr());
            tracing::info!(
                node = node.id(),
                http_addr = node.http_addr(),
                raft_addr = node.raft_addr(),
                leader = node.id() == leader,
                "node {} up",
                node.id()
            );
        }
        let leader_http =
            nodes.iter().find(|n| n.id() == leader).map(|n| n.http_addr().to_owned()).unwrap_or_default();
        println!();
        println!("try:");
        println!(
            "  curl -s -XPOST 'http://{leader_http}/db/execute' -H 'Content-Type: application/json' \\\n    -d '[\"CREATE TABLE IF NOT EXISTS greet (id INTEGER PRIMARY KEY, msg TEXT)\", [\"INSERT INTO greet(msg) VALUES(?)\", \"hello\"]]'"
        );
        println!("  curl -s -G 'http://{leader_http}/db/query' --data-urlencode 'q=SELECT * FROM greet'");
        println!();
        println!("Ctrl-C stops the cluster.");
        stop_signal().await?;
        println!("stopping");
        for node in nodes {
            node.shutdown().await;
        }
        Ok(())
    })
}

/// Waits for Ctrl-C (SIGINT) or SIGTERM (what service managers send to stop a process): both stop the node
/// cleanly, a leader handing leadership over first.
async fn stop_signal() -> Result<(), String> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("listening for SIGTERM: {e}"))?;
    tokio::select! {
        interrupted = tokio::signal::ctrl_c() => interrupted.map_err(|e| format!("waiting for Ctrl-C: {e}")),
        _ = term.recv() => Ok(()),
    }
}

/// `bop node`'s settings in its `--config` file (TOML); flags and environment variables win over it.
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
    /// Join as a non-voter (as `--non-voter`).
    non_voter: Option<bool>,
    /// Mutual TLS on the Raft transport (as `--raft-tls-ca`, `--raft-tls-cert`, `--raft-tls-key`).
    raft_tls_ca: Option<PathBuf>,
    raft_tls_cert: Option<PathBuf>,
    raft_tls_key: Option<PathBuf>,
}

/// `RAFT_ADDR/HTTP_ADDR` (or a bare `RAFT_ADDR`) as a membership address, `RAFT_ADDR http=HTTP_ADDR`.
fn member_addr(addr: &str) -> String {
    match addr.split_once('/') {
        Some((raft, http)) => format!("{raft} http={http}"),
        None => addr.to_owned(),
    }
}

/// Parses `ID=RAFT_ADDR[/HTTP_ADDR],...` into membership addresses.
fn parse_members(list: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut members = BTreeMap::new();
    for pair in list.split(',') {
        let (member, addr) =
            pair.split_once('=').ok_or_else(|| format!("--bootstrap wants ID=ADDR, got {pair:?}"))?;
        let id = member.parse::<u64>().map_err(|e| format!("--bootstrap id {member:?}: {e}"))?;
        members.insert(id, member_addr(addr));
    }
    Ok(members)
}

/// A node's configuration and what it does on first start, from flags, environment and file.
#[derive(Debug)]
struct NodePlan {
    config: NodeConfig,
    bootstrap: Option<BTreeMap<u64, String>>,
    join: Option<String>,
    /// Join as a learner that stays one.
    non_voter: bool,
    raft_tls: Option<bop_raft::tcp::tls::TransportTls>,
}

fn node_plan(args: NodeArgs) -> Result<NodePlan, String> {
    let file = match &args.config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            toml::from_str::<NodeFile>(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => NodeFile::default(),
    };
    let bootstrap = args.bootstrap.or(file.bootstrap).map(|list| parse_members(&list)).transpose()?;
    let join = args.join.or(file.join);
    if bootstrap.is_some() && join.is_some() {
        return Err("--bootstrap and --join exclude each other".into());
    }
    let non_voter = args.non_voter || file.non_voter.unwrap_or(false);
    if non_voter && join.is_none() {
        return Err(
            "--non-voter needs --join: a non-voter joins a running cluster (bootstrap members vote)".into()
        );
    }
    let config = NodeConfig {
        id: args.id.or(file.id).ok_or("--id (BOP_ID, or id in the config file) is required")?,
        data_dir: args
            .data_dir
            .or(file.data_dir)
            .ok_or("--data-dir (BOP_DATA_DIR, or data_dir in the config file) is required")?,
        raft_addr: args
            .raft_addr
            .or(file.raft_addr)
            .ok_or("--raft-addr (BOP_RAFT_ADDR, or raft_addr in the config file) is required")?,
        http_addr: args
            .http_addr
            .or(file.http_addr)
            .ok_or("--http-addr (BOP_HTTP_ADDR, or http_addr in the config file) is required")?,
    };
    let tls_files = [
        ("--raft-tls-ca", args.raft_tls_ca.or(file.raft_tls_ca)),
        ("--raft-tls-cert", args.raft_tls_cert.or(file.raft_tls_cert)),
        ("--raft-tls-key", args.raft_tls_key.or(file.raft_tls_key)),
    ];
    let raft_tls = match &tls_files {
        [(_, None), (_, None), (_, None)] => None,
        [(_, Some(ca)), (_, Some(cert)), (_, Some(key))] => Some(
            bop_raft::tcp::tls::TransportTls::from_pem_files(ca, cert, key)
                .map_err(|e| format!("Raft transport TLS: {e}"))?,
        ),
        _ => {
            let missing: Vec<&str> =
                tls_files.iter().filter(|(_, path)| path.is_none()).map(|(flag, _)| *flag).collect();
            return Err(format!(
                "TLS on the Raft transport needs all of --raft-tls-ca, --raft-tls-cert and --raft-tls-key; missing {}",
                missing.join(", ")
            ));
        }
    };
    Ok(NodePlan { config, bootstrap, join, non_voter, raft_tls })
}

/// `bop node`: one node of a cluster.
fn node(args: NodeArgs) -> Result<(), Failure> {
    let plan = node_plan(args).map_err(Failure::Usage)?;
    let data_dir = plan.config.data_dir.clone();
    runtime()?.block_on(async move {
        let env = bop_raft::node::NodeEnv { raft_tls: plan.raft_tls, ..Default::default() };
        let node = Node::start_in(plan.config, env).await?;
        log_leader_changes(&node);
        if let Some(members) = plan.bootstrap {
            node.initialize_if_new(members).await?;
        }
        println!(
            "bop node {}: http://{}  raft {}  data {}",
            node.id(),
            node.http_addr(),
            node.raft_addr(),
            data_dir.display()
        );
        tracing::info!(
            node = node.id(),
            http_addr = node.http_addr(),
            raft_addr = node.raft_addr(),
            data_dir = %data_dir.display(),
            "node {} up",
            node.id()
        );
        if let Some(target) = plan.join {
            join_cluster(&node, &target, !plan.non_voter).await?;
        }
        stop_signal().await?;
        node.shutdown().await;
        Ok(())
    })
}

/// On a node's first start, asks the cluster at `target` (any member's HTTP address; followers forward)
/// to add it as a voter (or a non-voter); retried a bounded number of times while the cluster is
/// unreachable or electing.
async fn join_cluster(node: &Node, target: &str, voter: bool) -> Result<(), String> {
    if node.raft().is_initialized().await.map_err(|e| e.to_string())? {
        return Ok(());
    }
    let body = serde_json::json!({ "id": node.id(), "addr": node.member_addr(), "voter": voter }).to_string();
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
                tracing::info!(node = node.id(), through = target, "joined the cluster");
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

/// One request to a node's HTTP API: the status and the body.
fn http_call(addr: &str, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    bop_raft::http_client::call_blocking(addr, method, path, body, Duration::from_secs(60))
}

/// A client subcommand's request: prints the answer; any status but 200 is a failure.
fn client_call(addr: &str, method: &str, path: &str, body: &str) -> Result<(), Failure> {
    let (status, answer) = http_call(addr, method, path, body)?;
    print_answer(&answer);
    answered(status)
}

/// Prints a client subcommand's answer. A reader that went away (`bop status | head -1`) is not an error:
/// `println!` panicked on the broken pipe.
fn print_answer(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{text}").and_then(|()| out.flush()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("bop: writing the answer: {e}");
        }
    }
}

fn answered(status: u16) -> Result<(), Failure> {
    if status == 200 {
        Ok(())
    } else {
        Err(Failure::Runtime(format!("HTTP {status}")))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_override_the_config_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("node.toml");
        std::fs::write(&file, "id = 1\ndata_dir = \"d\"\nraft_addr = \"r:1\"\nhttp_addr = \"h:1\"\n")
            .expect("write");
        let args = NodeArgs { config: Some(file), http_addr: Some("h:2".into()), ..NodeArgs::default() };
        let plan = node_plan(args).map_err(|e| e.to_string()).expect("plan");
        assert_eq!((plan.config.id, plan.config.raft_addr.as_str()), (1, "r:1"), "from the file");
        assert_eq!(plan.config.http_addr, "h:2", "the flag wins");
    }

    #[test]
    fn transport_tls_needs_all_three_files_and_valid_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = || NodeArgs {
            id: Some(1),
            data_dir: Some("d".into()),
            raft_addr: Some("r:1".into()),
            http_addr: Some("h:1".into()),
            ..NodeArgs::default()
        };
        let half = NodeArgs { raft_tls_ca: Some(dir.path().join("ca.pem")), ..base() };
        let error = node_plan(half).expect_err("half a TLS configuration");
        assert!(error.contains("missing --raft-tls-cert, --raft-tls-key"), "{error}");
        let (ca, certs) = bop_raft::tcp::tls::throwaway_pki(&[1]).expect("pki");
        let paths = ["ca.pem", "cert.pem", "key.pem"].map(|name| dir.path().join(name));
        for (path, pem) in paths.iter().zip([&ca, &certs[0].1, &certs[0].2]) {
            std::fs::write(path, pem).expect("write");
        }
        let [ca, cert, key] = paths;
        let whole = NodeArgs {
            raft_tls_ca: Some(ca.clone()),
            raft_tls_cert: Some(cert),
            raft_tls_key: Some(key.clone()),
            ..base()
        };
        assert!(node_plan(whole).expect("a whole TLS configuration").raft_tls.is_some());
        let wrong = NodeArgs {
            raft_tls_ca: Some(ca.clone()),
            raft_tls_cert: Some(ca),
            raft_tls_key: Some(key),
            ..base()
        };
        let error = node_plan(wrong).expect_err("a CA certificate with the node's key");
        assert!(error.contains("Raft transport TLS"), "{error}");
    }

    #[test]
    fn members_parse_with_and_without_http_addresses() {
        let members = parse_members("1=a:1/b:1,2=a:2").expect("parse");
        assert_eq!(members[&1], "a:1 http=b:1");
        assert_eq!(members[&2], "a:2");
        assert!(parse_members("x=a:1").is_err());
        assert!(parse_members("1").is_err());
    }
}
