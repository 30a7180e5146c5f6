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
mod node_plan;

use node_plan::{member_addr, node_plan, NodeArgs};

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
        /// TLS with a throwaway CA and node certificates made at start: mutual TLS between the nodes on
        /// the Raft transport, and HTTPS on the API (the CA and certificates are written to DIR/tls/, so
        /// that clients can trust `DIR/tls/ca.pem`).
        #[arg(long)]
        tls: bool,
        /// Users and permissions on the HTTP API: an auth file in rqlite's format (as `bop node --auth`).
        #[arg(long, value_name = "FILE", env = "BOP_AUTH")]
        auth: Option<PathBuf>,
        /// Lease reads on every node (as `bop node --read-lease`): `level=linearizable` answered without a
        /// heartbeat round while a quorum's acknowledgement is younger than the lease.
        #[arg(long)]
        read_lease: bool,
        /// With `--read-lease`: the clock-drift margin in percent (0 to 100; default 10).
        #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u32).range(0..=100))]
        clock_drift_max: Option<u32>,
    },
    /// One node of a cluster. Settings come from flags, then `BOP_*` environment variables, then the TOML
    /// file named by --config (its keys are the flags' names with `_` for `-`: id, data_dir, raft_addr,
    /// http_addr, bootstrap, join, non_voter, auth, join_as, raft_tls_ca, http_tls_cert, ...).
    #[command(after_help = EXIT_CODES)]
    Node(Box<NodeArgs>),
    /// Runs one write (or a batch, as a JSON array of statements) through a node; followers forward it.
    Execute {
        /// The node's HTTP address (HOST:PORT).
        http_addr: String,
        /// The SQL statement.
        sql: String,
        /// A named database (default `main`).
        #[arg(long)]
        db: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
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
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Shows a node's status and the cluster's membership.
    Status {
        /// The node's HTTP address (HOST:PORT).
        http_addr: String,
        #[command(flatten)]
        client: ClientArgs,
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
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Removes a node from the cluster.
    Remove {
        /// The HTTP address of a member (followers forward to the leader).
        http_addr: String,
        /// The node's id.
        id: u64,
        #[command(flatten)]
        client: ClientArgs,
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

/// How the client subcommands reach a node.
#[derive(Args, Debug, Default)]
struct ClientArgs {
    /// HTTP Basic credentials for a node with users (`--auth`).
    #[arg(long, value_name = "USER:PASSWORD", env = "BOP_USER", hide_env_values = true)]
    user: Option<String>,
    /// Speak HTTPS, trusting this CA certificate (PEM) for the node's certificate.
    #[arg(long, value_name = "FILE", env = "BOP_TLS_CA")]
    tls_ca: Option<PathBuf>,
}

impl ClientArgs {
    fn settings(&self) -> Result<bop_raft::http_client::ClientSettings, Failure> {
        let authorization = match &self.user {
            Some(user) => {
                let (name, password) = user
                    .split_once(':')
                    .ok_or_else(|| Failure::Usage("--user wants USER:PASSWORD".into()))?;
                Some(bop_raft::auth::basic_header(name, password))
            }
            None => None,
        };
        let tls = match &self.tls_ca {
            Some(ca) => Some(
                bop_raft::https::client_trusting(ca).map_err(|e| Failure::Usage(format!("--tls-ca: {e}")))?,
            ),
            None => None,
        };
        Ok(bop_raft::http_client::ClientSettings { authorization, tls })
    }
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
        Command::Up { data_dir, tls, auth, read_lease, clock_drift_max } => {
            let lease = node_plan::read_lease(read_lease, clock_drift_max).map_err(Failure::Usage)?;
            up(data_dir, tls, auth, lease)
        }
        Command::Node(args) => node(*args),
        Command::Execute { http_addr, sql, db, client } => {
            let body = serde_json::to_string(&[&sql]).map_err(|e| e.to_string())?;
            let path =
                format!("/db/execute{}", db.map(|d| format!("?db={}", url_encode(&d))).unwrap_or_default());
            client_call(&client, &http_addr, "POST", &path, &body)
        }
        Command::Query { http_addr, sql, db, level, client } => {
            let mut path = format!("/db/query?q={}", url_encode(&sql));
            if let Some(db) = db {
                path.push_str(&format!("&db={}", url_encode(&db)));
            }
            if let Some(level) = level {
                path.push_str(&format!("&level={}", url_encode(&level)));
            }
            client_call(&client, &http_addr, "GET", &path, "")
        }
        Command::Status { http_addr, client } => {
            let settings = client.settings()?;
            let (status, body) = http_call(&settings, &http_addr, "GET", "/status", "")?;
            let (_, nodes) = http_call(&settings, &http_addr, "GET", "/nodes", "")?;
            print_answer(&format!("{body}\n{nodes}"));
            answered(status)
        }
        Command::Join { http_addr, id, addr, learner, client } => {
            let body =
                serde_json::json!({ "id": id, "addr": member_addr(&addr), "voter": !learner }).to_string();
            client_call(&client, &http_addr, "POST", "/join", &body)
        }
        Command::Remove { http_addr, id, client } => client_call(
            &client,
            &http_addr,
            "DELETE",
            "/remove",
            &serde_json::json!({ "id": id }).to_string(),
        ),
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
fn up(
    data_dir: PathBuf,
    tls: bool,
    auth: Option<PathBuf>,
    read_lease: Option<bop_raft::node::ReadLease>,
) -> Result<(), Failure> {
    let auth = match auth {
        Some(path) => Some(std::sync::Arc::new(
            bop_raft::auth::Auth::load(&path).map_err(|e| Failure::Usage(format!("--auth: {e}")))?,
        )),
        None => None,
    };
    let pki = if tls { Some(throwaway_tls(&data_dir.join("tls"))?) } else { None };
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
            let (raft_tls, http_tls) = match pki.as_ref().and_then(|pki| pki.get(&id).cloned()) {
                Some((raft, http)) => (Some(raft), Some(http)),
                None => (None, None),
            };
            let env =
                bop_raft::node::NodeEnv { raft_tls, http_tls, auth: auth.clone(), read_lease, ..Default::default() };
            let node =
                Node::start_in(config, env).await.map_err(|e| Failure::Runtime(format!("node {id}: {e}")))?;
            log_leader_changes(&node);
            nodes.push(node);
        }
        nodes[0].initialize_if_new(members).await.map_err(|e| e.to_string())?;
        let leader = wait_for_leader(&nodes[0]).await?;
        println!("bop: three nodes up, data in {}", data_dir.display());
        let scheme = if tls { "https" } else { "http" };
        let mut curl = if tls { format!("curl --cacert {}", data_dir.join("tls/ca.pem").display()) } else { "curl".into() };
        if auth.is_some() {
            curl.push_str(" -u USER:PASSWORD");
        }
        if tls {
            println!(
                "  TLS with a throwaway CA made at start ({}): mutual TLS on Raft, HTTPS on the API",
                data_dir.join("tls/ca.pem").display()
            );
        }
        if auth.is_some() {
            println!("  users and permissions from the auth file (HTTP Basic: curl -u USER:PASSWORD)");
        }
        if let Some(lease) = read_lease {
            println!(
                "  lease reads: level=linearizable without a heartbeat round (clock-drift margin {} %)",
                lease.clock_drift_percent
            );
        }
        for node in &nodes {
            let role = if node.id() == leader { " (leader)" } else { "" };
            println!("  node {}: {scheme}://{}  raft {}{role}", node.id(), node.http_addr(), node.raft_addr());
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
            "  {curl} -s -XPOST '{scheme}://{leader_http}/db/execute' -H 'Content-Type: application/json' \\\n    -d '[\"CREATE TABLE IF NOT EXISTS greet (id INTEGER PRIMARY KEY, msg TEXT)\", [\"INSERT INTO greet(msg) VALUES(?)\", \"hello\"]]'"
        );
        println!("  {curl} -s -G '{scheme}://{leader_http}/db/query' --data-urlencode 'q=SELECT * FROM greet'");
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

/// `bop up --tls`'s throwaway CA and node certificates, written to `dir` (the keys readable by this user
/// only): per node id its transport TLS and its HTTP TLS.
fn throwaway_tls(
    dir: &std::path::Path,
) -> Result<BTreeMap<u64, (bop_raft::tcp::tls::TransportTls, std::sync::Arc<bop_raft::https::HttpTls>)>, String>
{
    let failed = |e: std::io::Error| format!("{}: {e}", dir.display());
    bop_raft::tcp::tls::write_throwaway_pki(dir, &[1, 2, 3]).map_err(failed)?;
    let mut by_id = BTreeMap::new();
    for id in 1..=3u64 {
        let (ca, cert, key) =
            (dir.join("ca.pem"), dir.join(format!("{id}.pem")), dir.join(format!("{id}-key.pem")));
        let raft = bop_raft::tcp::tls::TransportTls::from_pem_files(&ca, &cert, &key).map_err(failed)?;
        let http = bop_raft::https::HttpTls::from_pem_files(&cert, &key, &ca, None).map_err(failed)?;
        by_id.insert(id, (raft, std::sync::Arc::new(http)));
    }
    Ok(by_id)
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

/// `bop node`: one node of a cluster.
fn node(args: NodeArgs) -> Result<(), Failure> {
    let plan = node_plan(args).map_err(Failure::Usage)?;
    let data_dir = plan.config.data_dir.clone();
    let scheme = if plan.http_tls.is_some() { "https" } else { "http" };
    runtime()?.block_on(async move {
        let env = bop_raft::node::NodeEnv {
            raft_tls: plan.raft_tls,
            auth: plan.auth,
            http_tls: plan.http_tls,
            cors_origins: plan.cors_origins,
            remove_dead_after: plan.remove_dead_after,
            force_new_cluster: plan.force_new_cluster,
            read_lease: plan.read_lease,
            limits: bop_raft::node::NodeLimits {
                pipeline_depth: plan.pipeline_depth,
                ..bop_raft::node::NodeLimits::default()
            },
            ..Default::default()
        };
        let node = Node::start_in(plan.config, env).await?;
        log_leader_changes(&node);
        if let Some(members) = plan.bootstrap {
            node.initialize_if_new(members).await?;
        }
        println!(
            "bop node {}: {scheme}://{}  raft {}  data {}",
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
            join_cluster(&node, &target, !plan.non_voter, &plan.join_client).await?;
        }
        stop_signal().await?;
        node.shutdown().await;
        Ok(())
    })
}

/// On a node's first start, asks the cluster at `target` (any member's HTTP address; followers forward)
/// to add it as a voter (or a non-voter); retried a bounded number of times while the cluster is
/// unreachable or electing.
async fn join_cluster(
    node: &Node,
    target: &str,
    voter: bool,
    client: &bop_raft::http_client::ClientSettings,
) -> Result<(), String> {
    if node.raft().is_initialized().await.map_err(|e| e.to_string())? {
        return Ok(());
    }
    let body = serde_json::json!({ "id": node.id(), "addr": node.member_addr(), "voter": voter }).to_string();
    let mut last = String::new();
    for _ in 0..JOIN_ATTEMPTS_MAX {
        let attempt = async {
            let mut conn =
                bop_raft::http_client::HttpConn::connect_with(target, Duration::from_secs(5), client).await?;
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
            // Refused credentials do not become right by trying again.
            Ok((status @ (401 | 403), answer)) => {
                return Err(format!(
                "{target} refused the join (HTTP {status}: {}); the cluster has users: start this node with \
                     --auth FILE --join-as USER, a user with the join permission (join-read-only for \
                     --non-voter) whose plain password is in FILE",
                String::from_utf8_lossy(&answer)
            ))
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
fn http_call(
    settings: &bop_raft::http_client::ClientSettings,
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), String> {
    bop_raft::http_client::call_blocking(addr, method, path, body, Duration::from_secs(60), settings)
}

/// A client subcommand's request: prints the answer; any status but 200 is a failure.
fn client_call(client: &ClientArgs, addr: &str, method: &str, path: &str, body: &str) -> Result<(), Failure> {
    let (status, answer) = http_call(&client.settings()?, addr, method, path, body)?;
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
}
