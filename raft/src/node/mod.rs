//! A bop node: storage, Raft over TCP, the SQL engine committing through Raft, and the HTTP API.

mod bounds;
mod disk_watch;
mod dump;
mod http;
mod identity;
pub(crate) mod metrics;
mod reaper;
mod recovery;
mod rqlite;
mod writer;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bop_sql::{SqlConfig, SqlEngine};
use bop_storage::io::{BufferedIo, Io};
use bop_storage::manifest::{Manifest, ManifestConfig};
use bop_storage::page_store::{Manager, ManagerConfig};
use bop_storage::wal::{Preallocate, WalConfig, WalStore, WriterMode};
use openraft::async_runtime::WatchReceiver;
use openraft::impls::BasicNode;
use openraft::{Config, Raft};
use serde_json::{json, Value as Json};

pub(crate) use http::query_params;
pub use http::{parse_duration, BODY_BYTES_MAX, DEFAULT_DATABASE};
pub(crate) use rqlite::parse_statements;

use crate::blocking::Blocking;
use crate::net::{Net, NetConnector, TokioNet};
use crate::tcp::{serve, SnapshotInbox, TcpNetwork};
use crate::{BopConfig, BopSnapshot, BopStateMachine, LogStore, RaftSink};

/// What a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Node id (unique in the cluster, not 0).
    pub id: u64,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Address the Raft transport listens on (and peers connect to).
    pub raft_addr: String,
    /// Address the HTTP API listens on.
    pub http_addr: String,
}

/// Raft's timers, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTiming {
    /// Leader heartbeat interval.
    pub heartbeat_ms: u64,
    /// Election timeout, drawn from `election_min_ms..election_max_ms`.
    pub election_min_ms: u64,
    /// Upper end (exclusive) of the election timeout.
    pub election_max_ms: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming { heartbeat_ms: 100, election_min_ms: 500, election_max_ms: 1000 }
    }
}

/// Why leadership was not handed over.
#[derive(Debug)]
pub(crate) enum TransferError {
    /// Nothing to hand it to, or not to that node.
    Refused(String),
    /// Asked, and it did not move in time (or Raft has stopped).
    NotMoved(String),
}

/// Bounds on what clients can make a node hold or do at once (docs/design.md, "The node and its HTTP
/// API"). Past each one a request gets a clear error instead of the node growing without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeLimits {
    /// HTTP connections served at once; one more is answered 503 with `Retry-After` and closed.
    pub http_connections_max: usize,
    /// Longest a client may take to send a request's head, and longest a kept-alive connection may sit
    /// idle before its next request; then the connection is closed.
    pub http_header_timeout: Duration,
    /// HTTP requests being served at once (forwarded ones included); one more is answered 503 with
    /// `Retry-After` at once instead of waiting.
    pub http_requests_max: usize,
    /// Longest a request may take to produce its answer's head (a backup's copy excepted); then it is
    /// answered 503 and its work is stopped. Also the ceiling on a request's `db_timeout`.
    pub http_request_timeout: Duration,
    /// Write requests waiting for their database's writer or in the group it runs, over all databases;
    /// one more is answered 503 with `Retry-After`.
    pub writers_queued_max: usize,
    /// Bytes of those requests' bodies, likewise.
    pub writer_queue_bytes_max: usize,
    /// A database's writer that has had no work for this long ends (the next write starts another).
    pub writer_idle: Duration,
    /// Groups a database's writer may have proposed and not yet answered: the next group runs on top of
    /// the commits proposed before it. 1 (or 0) runs one group at a time, each answered before the next.
    pub pipeline_depth: usize,
    /// Databases a node holds; creating one more is refused.
    pub databases_max: usize,
    /// Backups made (or being sent) at once; one more is answered 503 with `Retry-After`.
    pub backups_max: usize,
    /// Free space a backup must leave on the data directory's file system beyond its own copy (room for
    /// the log); a backup that would not is refused with 507.
    pub backup_space_reserve_bytes: u64,
    /// A log write or fdatasync running longer than this makes the node refuse writes, report unhealthy
    /// and hand leadership to a peer, until the disk answers again.
    pub disk_stall_max: Duration,
}

impl Default for NodeLimits {
    fn default() -> Self {
        NodeLimits {
            http_connections_max: 1024,
            http_header_timeout: Duration::from_secs(10),
            http_requests_max: 512,
            http_request_timeout: Duration::from_secs(120),
            writers_queued_max: 1024,
            writer_queue_bytes_max: 256 << 20,
            writer_idle: Duration::from_secs(10),
            pipeline_depth: 4,
            databases_max: 1024,
            backups_max: 2,
            backup_space_reserve_bytes: 256 << 20,
            disk_stall_max: Duration::from_secs(5),
        }
    }
}

/// What a node runs on: the network, the disk its log and pages live on, where blocking work runs, and its
/// timers. [`NodeEnv::default`] is a real node (TCP, buffered files, tokio's blocking pool, writer
/// threads); the simulation substitutes turmoil's network, a simulated disk, lockstep blocking work and the
/// inline WAL writer. The manifest (LMDB) and SQLite's placeholder files are always real files in the
/// data directory.
#[derive(Clone)]
pub struct NodeEnv {
    /// Listening and connecting (Raft and HTTP).
    pub net: Arc<dyn Net>,
    /// The disk under the WAL, the page store's generations and received snapshots.
    pub io: Arc<dyn Io>,
    /// Where SQL transactions run.
    pub blocking: Blocking,
    /// Who writes the WAL (inline also commits the manifest and deletes segments without threads).
    pub wal_writer: WriterMode,
    /// How new WAL segments reserve their space.
    pub wal_preallocate: Preallocate,
    /// Raft's timers.
    pub raft_timing: RaftTiming,
    /// Size of each WAL segment (64 MiB; tests use smaller ones). It also bounds the largest entry, so
    /// every node of a cluster must use the same.
    pub wal_segment_bytes: u64,
    /// Bounds on client work.
    pub limits: NodeLimits,
    /// Mutual TLS on the Raft transport (`None`: plain TCP, the hello's claims unproven).
    pub raft_tls: Option<crate::tcp::tls::TransportTls>,
    /// Users and permissions on the HTTP API (`None`: every caller may do everything).
    pub auth: Option<Arc<crate::auth::Auth>>,
    /// TLS on the HTTP API (`None`: plain HTTP).
    pub http_tls: Option<Arc<crate::https::HttpTls>>,
    /// Web origins (`https://app.example.com`) whose pages may call the API from a browser (CORS); empty:
    /// none, and cross-origin calls that could change something are refused.
    pub cors_origins: Vec<String>,
    /// Remove a member the leader has not heard from for this long (`None`: never; rqlite's reap timeout).
    pub remove_dead_after: Option<Duration>,
    /// Quorum-loss recovery (`--force-new-cluster`): before Raft starts, the log gets a membership of this
    /// node alone, so that it leads a cluster of one with all its data (see `recovery.rs`).
    pub force_new_cluster: bool,
    /// Lease reads (`--read-lease`): a leader serves `level=linearizable` reads without a quorum round
    /// while a quorum acknowledged it recently enough (`None`: every such read confirms leadership with a
    /// heartbeat round, read-index). `level=strong` always confirms.
    pub read_lease: Option<ReadLease>,
}

/// Lease reads and the clock drift they allow for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLease {
    /// How much faster, in percent, any node's clock may run than another's. A follower refuses to vote
    /// for another leader until one election timeout (its `election_max_ms`) has passed on its clock since
    /// it last heard from the leader; the leader counts its lease from when it sent what a quorum
    /// acknowledged, and shortens it by this margin: `election_max_ms × 100 / (100 + drift)`.
    pub clock_drift_percent: u32,
}

impl ReadLease {
    /// The default margin: clocks may run 10 % apart (NTP-disciplined clocks drift by parts per million;
    /// the margin also covers a paused or throttled process measuring time late).
    pub const DEFAULT_DRIFT_PERCENT: u32 = 10;

    /// How old a quorum acknowledgement may be for a lease read, given the election timeout's upper end.
    pub fn max_age(self, election_max_ms: u64) -> Duration {
        if bop_storage::bugs::lease_without_drift_margin() {
            return Duration::from_millis(election_max_ms);
        }
        Duration::from_millis(election_max_ms * 100 / (100 + u64::from(self.clock_drift_percent)))
    }
}

impl Default for NodeEnv {
    fn default() -> Self {
        NodeEnv {
            net: Arc::new(TokioNet),
            io: Arc::new(BufferedIo::new()),
            blocking: Blocking::Threads,
            wal_writer: WriterMode::Threads,
            wal_preallocate: Preallocate::ZeroFill,
            raft_timing: RaftTiming::default(),
            wal_segment_bytes: 64 << 20,
            limits: NodeLimits::default(),
            raft_tls: None,
            auth: None,
            http_tls: None,
            cors_origins: Vec::new(),
            remove_dead_after: None,
            force_new_cluster: false,
            read_lease: None,
        }
    }
}

/// Errors starting a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Bad configuration (e.g. node id 0).
    #[error("invalid node configuration: {0}")]
    Config(String),
    /// A listening address could not be bound (e.g. the port is taken).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Storage failed to open.
    #[error("storage: {0}")]
    Storage(String),
    /// Raft failed to start.
    #[error("raft: {0}")]
    Raft(String),
}

/// Name of the file that ties a data directory to one node id.
const IDENTITY_FILE: &str = "bop-node.json";
const LOCK_FILE: &str = "LOCK";

/// Removes the temporary files of `/db/backup` and `/db/load` calls a crash interrupted (they are never
/// read again): `backup-*.tmp` and `restore-*.tmp`, with the side files SQLite may have made beside them
/// (`-journal`, `-wal`, `-shm`).
fn remove_stale_backups(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if (name.starts_with("backup-") || name.starts_with("restore-")) && name.contains(".tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Takes the exclusive lock on the data directory, held as long as the returned file is open, so two
/// processes (or two nodes in one process) never open the same log, manifest and page store.
fn lock_data_dir(config: &NodeConfig) -> Result<std::fs::File, NodeError> {
    let path = config.data_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| NodeError::Storage(format!("opening {}: {e}", path.display())))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(NodeError::Config(format!(
            "data directory {} is in use by another running bop node",
            config.data_dir.display()
        ))),
        Err(e) => Err(NodeError::Storage(format!("locking {}: {e}", path.display()))),
    }
}

/// A data directory belongs to one node: its first start writes the node id (fsynced), and every later start
/// with another id is refused, so a node cannot come up with someone else's log and vote.
fn check_identity(config: &NodeConfig) -> Result<(), NodeError> {
    let path = config.data_dir.join(IDENTITY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let stored: Json = serde_json::from_slice(&bytes).map_err(|e| {
                NodeError::Config(format!("{} is not a bop node identity: {e}", path.display()))
            })?;
            match stored["node_id"].as_u64() {
                Some(id) if id == config.id => Ok(()),
                Some(id) => Err(NodeError::Config(format!(
                    "data directory {} belongs to node {id}, not node {}",
                    config.data_dir.display(),
                    config.id
                ))),
                None => Err(NodeError::Config(format!("{} has no node_id", path.display()))),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let entries = std::fs::read_dir(&config.data_dir)
                .map(|d| d.filter(|e| e.as_ref().map_or(true, |e| e.file_name() != LOCK_FILE)).count())
                .unwrap_or(0);
            if entries > 0 {
                return Err(NodeError::Config(format!(
                    "data directory {} is not empty and is not a bop node's",
                    config.data_dir.display()
                )));
            }
            let write = || -> std::io::Result<()> {
                let tmp = config.data_dir.join(format!("{IDENTITY_FILE}.tmp"));
                std::fs::write(&tmp, json!({ "node_id": config.id }).to_string())?;
                std::fs::File::open(&tmp)?.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                std::fs::File::open(&config.data_dir)?.sync_all()
            };
            write().map_err(|e| NodeError::Storage(format!("writing {}: {e}", path.display())))
        }
        Err(e) => Err(NodeError::Storage(format!("reading {}: {e}", path.display()))),
    }
}

/// What the HTTP handlers share.
pub struct NodeShared {
    id: u64,
    wal: Arc<WalStore>,
    manager: Manager,
    raft: Raft<BopConfig, BopStateMachine>,
    engine: Arc<SqlEngine>,
    /// The engine's sink (for the outcomes of pipelined commits).
    sink: Arc<RaftSink>,
    raft_addr: String,
    http_addr: String,
    data_dir: std::path::PathBuf,
    /// One writer per database, which runs the writes queued for it in groups (`writer.rs`).
    writers: writer::Writers,
    /// When the Raft server last heard from a leader (for `freshness`).
    contact: crate::tcp::LeaderContact,
    /// For forwarding to the leader.
    net: Arc<dyn Net>,
    /// Where SQL runs.
    blocking: Blocking,
    limits: NodeLimits,
    /// Lease reads (`None`: read-index).
    read_lease: Option<ReadLease>,
    /// Users and permissions on the HTTP API (`None`: none checked).
    auth: Option<Arc<crate::auth::Auth>>,
    /// TLS on the HTTP API, and for calls to other nodes' (`None`: plain HTTP).
    http_tls: Option<Arc<crate::https::HttpTls>>,
    /// Origins allowed to call the API from a browser.
    cors_origins: Vec<String>,
    /// Write requests waiting for their database's writer or in the group it runs.
    writer_queue: Arc<bounds::WriterQueue>,
    /// Backups being made or sent.
    backups: Arc<tokio::sync::Semaphore>,
    /// Held by the `/db/load` being received, checked or committed (one at a time).
    restoring: tokio::sync::Semaphore,
    /// A follower's linearizable reads waiting for the leader's read index (`http/read.rs`).
    read_indexes: http::ReadIndexBatches,
    /// Most pages one commit (one log entry) may carry: the largest database a load can write.
    commit_pages_max: usize,
    /// SQL calls stopped by their time limit or an interrupt (client gone, shutdown).
    statements_stopped: AtomicU64,
    /// Queries answered on the async task (`http/db.rs`, `query`), and those moved from it to a blocking
    /// thread as they needed longer than its time budget.
    reads_inline: AtomicU64,
    reads_moved: AtomicU64,
    requests: AtomicU64,
    latency_us_total: AtomicU64,
    /// Latency histograms for `/metrics`.
    latencies: metrics::Latencies,
}

impl NodeShared {
    /// The leader's id and its address as recorded in the membership (`RAFT_ADDR http=HTTP_ADDR`).
    ///
    /// Only a running Raft names a leader: after a fatal error openraft keeps its last metrics, which may
    /// name this very node, and forwarding there would loop.
    fn leader(&self) -> Option<(u64, String)> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        if metrics.running_state.is_err() {
            return None;
        }
        let id = metrics.current_leader?;
        let addr =
            metrics.membership_config.membership().get_node(&id).map(|n| n.addr.clone()).unwrap_or_default();
        Some((id, addr))
    }

    /// This node's address as it goes into the membership.
    pub fn member_addr(&self) -> String {
        format!("{} http={}", self.raft_addr, self.http_addr)
    }

    /// Whether this node leads (and its Raft still runs: a node stopped by a storage failure keeps its last
    /// metrics, which may still name it leader).
    fn raft_running(&self) -> bool {
        self.raft.metrics().borrow_watched().running_state.is_ok()
    }

    /// Hands leadership to voter `to`, or to the other voter whose log is the most up to date, and waits
    /// (at most `wait`) until that voter leads. Returns its id.
    pub(crate) async fn transfer_leadership(
        &self,
        to: Option<u64>,
        wait: Duration,
    ) -> Result<u64, TransferError> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let others: Vec<u64> =
            metrics.membership_config.membership().voter_ids().filter(|v| *v != self.id).collect();
        let target = match to {
            Some(to) if to == self.id => return Ok(to),
            Some(to) if others.contains(&to) => to,
            Some(to) => {
                return Err(TransferError::Refused(format!("node {to} is not a voter of this cluster")))
            }
            None => {
                let matched = |id: &u64| {
                    metrics
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(id))
                        .and_then(|l| l.as_ref())
                        .map(|l| l.index)
                };
                *others
                    .iter()
                    .max_by_key(|id| matched(id))
                    .ok_or_else(|| TransferError::Refused("no other voter to hand leadership to".into()))?
            }
        };
        self.raft
            .trigger()
            .transfer_leader(target)
            .await
            .map_err(|e| TransferError::NotMoved(format!("transferring leadership to {target}: {e}")))?;
        self.raft
            .wait(Some(wait))
            .metrics(|m| m.current_leader == Some(target), "the new leader")
            .await
            .map_err(|_| {
                TransferError::NotMoved(format!("node {target} did not take leadership within {wait:?}"))
            })?;
        Ok(target)
    }

    /// Whether this node is a voter of the membership it knows (a non-voter is a learner).
    fn is_voter(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        let voter = metrics.membership_config.membership().voter_ids().any(|v| v == self.id);
        voter
    }

    fn is_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        metrics.running_state.is_ok() && metrics.current_leader == Some(self.id)
    }

    /// Waits (at most 2 s) until this leader has applied an entry of its own term: everything committed
    /// before its term is then applied, so a transaction that starts now reads the whole database. (One
    /// that started earlier would have its commit refused as stale, on every node, when applied.)
    async fn leadership_applied(&self) {
        if bop_storage::bugs::accept_stale_commits() {
            return;
        }
        let _ = self
            .raft
            .wait(Some(Duration::from_secs(2)))
            .metrics(
                |m| {
                    m.current_leader != Some(self.id)
                        || m.last_applied.as_ref().is_some_and(|l| l.leader_id.term == m.current_term)
                },
                "leader applied an entry of its term",
            )
            .await;
    }

    /// Counts a SQL call stopped by its time limit, an interrupt or shutdown.
    fn count_stopped(&self, error: Option<&bop_sql::SqlError>) {
        if error.is_some_and(|e| e.stops_call()) {
            self.statements_stopped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn record_latency(&self, took: Duration) {
        self.latencies.http(took);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.latency_us_total.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    fn status(&self) -> Json {
        let m = self.raft.metrics().borrow_watched().clone();
        let requests = self.requests.load(Ordering::Relaxed);
        json!({
            "node": { "id": self.id, "raft_addr": self.raft_addr, "http_addr": self.http_addr },
            "raft": {
                "state": format!("{:?}", m.state),
                "term": m.current_term,
                "leader": m.current_leader,
                "last_log_index": m.last_log_index,
                "last_applied": m.last_applied.map(|l| l.index),
                "snapshot": m.snapshot.map(|l| l.index),
                "purged": m.purged.map(|l| l.index),
            },
            "http": {
                "requests": requests,
                "latency_us_avg": self.latency_us_total.load(Ordering::Relaxed).checked_div(requests).unwrap_or(0),
            },
        })
    }
}

/// A running node.
pub struct Node {
    shared: Arc<NodeShared>,
    store: LogStore<BopConfig>,
    cluster_identity: Arc<crate::tcp::ClusterIdentity>,
    raft_server: tokio::task::JoinHandle<std::io::Result<()>>,
    http_server: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The data directory's exclusive lock, released when the node is dropped.
    _lock: std::fs::File,
    /// The manifest and the WAL, watched by `shutdown` until every holder has let go of them.
    storage: (Weak<Manifest>, Weak<WalStore>),
}

impl Node {
    /// Opens the node's storage (recovering it), starts Raft, the Raft transport and the HTTP API.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        Node::start_in(config, NodeEnv::default()).await
    }

    /// [`Node::start`] on the network, disk and threads of `env`.
    pub async fn start_in(config: NodeConfig, env: NodeEnv) -> Result<Node, NodeError> {
        if config.id == 0 {
            return Err(NodeError::Config("node id must not be 0".into()));
        }
        let raft_listener = env
            .net
            .bind(&config.raft_addr)
            .await
            .map_err(|source| NodeError::Bind { addr: config.raft_addr.clone(), source })?;
        let http_listener = env
            .net
            .bind(&config.http_addr)
            .await
            .map_err(|source| NodeError::Bind { addr: config.http_addr.clone(), source })?;
        let storage = |e: &dyn std::fmt::Display| NodeError::Storage(e.to_string());
        std::fs::create_dir_all(&config.data_dir).map_err(|e| storage(&e))?;
        let lock = lock_data_dir(&config)?;
        check_identity(&config)?;
        remove_stale_backups(&config.data_dir);
        let mut wal_config = WalConfig::new(config.data_dir.join("wal"));
        wal_config.writer = env.wal_writer;
        wal_config.preallocate = env.wal_preallocate;
        wal_config.segment_size_bytes = env.wal_segment_bytes;
        let wal = Arc::new(WalStore::open(Arc::clone(&env.io), wal_config).map_err(|e| storage(&e))?);
        let manifest =
            Arc::new(Manifest::open(&config.data_dir, ManifestConfig::default()).map_err(|e| storage(&e))?);
        let cluster_identity = identity::open(config.id, &manifest, env.raft_tls.clone())?;
        let storage_handles = (Arc::downgrade(&manifest), Arc::downgrade(&wal));
        let store = LogStore::new(Arc::clone(&wal), Arc::clone(&manifest)).map_err(|e| storage(&e))?;
        let mut manager_config = ManagerConfig::new(&config.data_dir);
        manager_config.io = Arc::clone(&env.io);
        let commit_frames_max = manager_config.commit_frames_max;
        let manager =
            Manager::open_replicated(manager_config, Arc::clone(&wal), manifest).map_err(|e| storage(&e))?;
        let sm = BopStateMachine::open(manager.clone(), Arc::clone(&wal)).map_err(|e| storage(&e))?;
        let apply_seconds = sm.apply_seconds();
        let http_addr = http_listener.local_addr().unwrap_or_else(|_| config.http_addr.clone());
        let raft_addr = raft_listener.local_addr().unwrap_or_else(|_| config.raft_addr.clone());
        if env.force_new_cluster {
            let addr = format!("{raft_addr} http={http_addr}");
            recovery::force_new_cluster(&store, &config.data_dir, config.id, addr).await?;
        }
        let raft_config = Arc::new(
            Config {
                heartbeat_interval: env.raft_timing.heartbeat_ms,
                election_timeout_min: env.raft_timing.election_min_ms,
                election_timeout_max: env.raft_timing.election_max_ms,
                // A node back from a partition with a stale log asks first whether it could win, instead of
                // raising its term over and over and deposing the leader (the simulation found clusters kept
                // leaderless for seconds that way, by a stale node with fast timers).
                enable_pre_vote: Some(true),
                ..Default::default()
            }
            .validate()
            .map_err(|e| NodeError::Raft(e.to_string()))?,
        );
        let network = TcpNetwork::<_, BopSnapshot, _>::new(
            NetConnector(Arc::clone(&env.net)),
            Duration::from_secs(5),
            Arc::clone(&cluster_identity),
        )
        .with_append_timeout(Duration::from_millis(env.raft_timing.election_min_ms));
        let raft = Raft::new(config.id, raft_config, network, store.clone(), sm)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        // A transaction's size is bounded by what one log entry can hold, so that no client can make the
        // leader propose an entry its log refuses (fatal to Raft).
        let entry_bytes_max = store.entry_bytes_max();
        let sink =
            RaftSink::new(raft.clone(), tokio::runtime::Handle::current(), env.blocking, entry_bytes_max);
        let proposals = sink.proposals();
        store.observe_appends(Box::new(move |entry| proposals.observe(entry)));
        let mut sql_config = SqlConfig::new(config.data_dir.join("sql"));
        let pages_max = crate::sql_sink::commit_pages_max(entry_bytes_max).min(commit_frames_max);
        sql_config.pending_bytes_max = pages_max * bop_storage::page_store::PAGE_SIZE;
        let engine = Arc::new(
            SqlEngine::new(manager.clone(), Arc::clone(&sink) as Arc<dyn bop_sql::FrameSink>, sql_config)
                .map_err(|e| storage(&e))?,
        );
        let shared = Arc::new(NodeShared {
            id: config.id,
            wal,
            manager,
            raft: raft.clone(),
            engine,
            sink,
            raft_addr,
            http_addr,
            data_dir: config.data_dir.clone(),
            writers: writer::Writers::default(),
            contact: crate::tcp::LeaderContact::default(),
            net: Arc::clone(&env.net),
            blocking: env.blocking,
            limits: env.limits,
            read_lease: env.read_lease,
            auth: env.auth.clone(),
            http_tls: env.http_tls.clone(),
            cors_origins: env.cors_origins.clone(),
            writer_queue: Arc::new(bounds::WriterQueue::default()),
            backups: Arc::new(tokio::sync::Semaphore::new(env.limits.backups_max)),
            restoring: tokio::sync::Semaphore::new(1),
            read_indexes: http::ReadIndexBatches::default(),
            commit_pages_max: pages_max,
            statements_stopped: AtomicU64::new(0),
            reads_inline: AtomicU64::new(0),
            reads_moved: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            latency_us_total: AtomicU64::new(0),
            latencies: metrics::Latencies::new(apply_seconds),
        });
        let inbox = SnapshotInbox {
            io: Arc::clone(&env.io),
            dir: config.data_dir.join("snapshot-inbox"),
            blocking: env.blocking,
        };
        let raft_server = tokio::spawn(serve(
            raft_listener,
            raft,
            inbox,
            shared.contact.clone(),
            Arc::clone(&cluster_identity),
        ));
        let http_server = tokio::spawn(http::serve_http(http_listener, Arc::clone(&shared)));
        tokio::spawn(disk_watch::watch_disk(Arc::clone(&shared)));
        if let Some(after) = env.remove_dead_after {
            tokio::spawn(reaper::remove_dead_members(Arc::clone(&shared), after));
        }
        Ok(Node {
            shared,
            store,
            cluster_identity,
            raft_server,
            http_server,
            _lock: lock,
            storage: storage_handles,
        })
    }

    /// The node's id.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The node's page store (for checks that compare nodes' contents).
    pub fn manager(&self) -> &Manager {
        &self.shared.manager
    }

    /// The node's Raft log storage.
    pub fn log_store(&self) -> &LogStore<BopConfig> {
        &self.store
    }

    /// The node's WAL chunk store (its Raft log).
    pub fn wal(&self) -> &Arc<WalStore> {
        &self.shared.wal
    }

    /// The address the HTTP API listens on.
    pub fn http_addr(&self) -> &str {
        &self.shared.http_addr
    }

    /// The address the Raft transport listens on.
    pub fn raft_addr(&self) -> &str {
        &self.shared.raft_addr
    }

    /// The node's Raft handle.
    pub fn raft(&self) -> &Raft<BopConfig, BopStateMachine> {
        &self.shared.raft
    }

    /// This node's address as it goes into the membership: `RAFT_ADDR http=HTTP_ADDR`.
    pub fn member_addr(&self) -> String {
        self.shared.member_addr()
    }

    /// The id of the cluster this node belongs to, once it is known (fixed at bootstrap, or adopted from
    /// the first peer that contacted it).
    pub fn cluster_id(&self) -> Option<crate::tcp::ClusterId> {
        self.cluster_identity.cluster()
    }

    /// Forms a new cluster of `members` (id → member address, `RAFT_ADDR` or `RAFT_ADDR http=HTTP_ADDR`) if
    /// this node has never been initialised. The cluster id is derived from `members`; a node that a peer
    /// of another cluster already contacted refuses (a configuration error naming both ids).
    pub async fn initialize_if_new(&self, members: BTreeMap<u64, String>) -> Result<(), NodeError> {
        let cluster = identity::of_members(&members);
        if self.shared.raft.is_initialized().await.map_err(|e| NodeError::Raft(e.to_string()))? {
            // An initialised node keeps the id it has, whatever list it is started with now (members come
            // and go); one from before cluster ids takes the list's.
            if self.cluster_identity.cluster().is_none() {
                identity::fix(&self.cluster_identity, self.shared.blocking, cluster).await?;
            }
            return Ok(());
        }
        identity::fix(&self.cluster_identity, self.shared.blocking, cluster).await?;
        if self.formed_by_a_peer(&members).await {
            tracing::info!(node = self.shared.id, "cluster being formed by a peer");
            return Ok(());
        }
        let members: BTreeMap<u64, BasicNode> =
            members.into_iter().map(|(id, addr)| (id, BasicNode::new(addr))).collect();
        match self.shared.raft.initialize(members).await {
            Ok(()) => Ok(()),
            // Between the check above and the call, a peer started at the same moment may already have
            // asked this node for its vote (or sent it entries): the cluster is being formed by that
            // peer, from the same member list, which is what initialising wanted.
            Err(e) if matches!(e.api_error(), Some(openraft::errors::InitializeError::NotAllowed(_))) => {
                tracing::info!(node = self.shared.id, "cluster already being formed by a peer: {e}");
                Ok(())
            }
            Err(e) => Err(NodeError::Raft(e.to_string())),
        }
    }

    /// For a bootstrap member other than the lowest-numbered one: waits (at most two election timeouts) to
    /// be asked for its vote or sent entries by a peer, and says whether it was. Only the first member forms the
    /// cluster at once: a member that initialised on its own campaigned at the same term with a higher node
    /// id, which openraft orders above the first leader's, and deposed it (about 0.6 s without a leader
    /// right after bootstrap, in 3 of 15 simultaneous starts). If the first member is not up in time, the
    /// others form the cluster themselves.
    async fn formed_by_a_peer(&self, members: &BTreeMap<u64, String>) -> bool {
        if members.keys().next().is_none_or(|first| *first == self.shared.id) {
            return false;
        }
        let wait = Duration::from_millis(2 * self.shared.raft.config().election_timeout_max);
        self.shared
            .raft
            .wait(Some(wait))
            .metrics(|m| m.vote.leader_id().term > 0 || m.last_log_index.is_some(), "contacted by a peer")
            .await
            .is_ok()
    }

    /// Stops serving, shuts Raft down and closes the storage.
    pub async fn shutdown(self) {
        // A leader hands leadership to the most up-to-date voter first (bounded by two election timeouts),
        // so that a rolling restart costs the cluster no election timeout of waiting for this node.
        if self.shared.is_leader() {
            let wait = Duration::from_millis(2 * self.shared.raft.config().election_timeout_max);
            match self.shared.transfer_leadership(None, wait).await {
                Ok(to) => tracing::info!(to, "leadership handed over before shutdown"),
                Err(e) => tracing::info!(?e, "leadership not handed over before shutdown"),
            }
        }
        // Running statements stop at once (a runaway query would otherwise hold the blocking pool, and
        // the process, until it ended); later ones are refused.
        self.shared.engine.shutdown();
        self.shared.writers.stop();
        self.http_server.abort();
        self.raft_server.abort();
        // Raft's shutdown waits for its storage calls in flight; one held for lack of space would never
        // end, so work held for space is given up — again each second while Raft stops, as an append may
        // be held after the first look.
        {
            let stopping = self.shared.raft.shutdown();
            tokio::pin!(stopping);
            loop {
                self.shared.stop_waiting_for_space();
                tokio::select! {
                    _ = &mut stopping => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
        let _ = self.store.close();
        // Tasks that held the node (an aborted server's, Raft's last storage calls) end a moment after
        // they were told to: wait, bounded, until none holds the manifest or the WAL, so that a node
        // started again on this data directory in this process does not find them open.
        let (manifest, wal) = self.storage.clone();
        drop(self);
        let until = tokio::time::Instant::now() + STORAGE_RELEASE_WAIT_MAX;
        while manifest.strong_count() + wal.strong_count() > 0 {
            if tokio::time::Instant::now() >= until {
                tracing::warn!(
                    "the node's storage is still held {STORAGE_RELEASE_WAIT_MAX:?} after shutdown; a restart in \
                     this process may find it open"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// How long `Node::shutdown` waits for the tasks that still hold the node's storage to end.
const STORAGE_RELEASE_WAIT_MAX: Duration = Duration::from_secs(10);
