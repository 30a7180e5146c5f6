//! One simulated run: three bop nodes and a few clients on turmoil, faults chosen from the seed, then the
//! checks. Everything runs on the calling thread (turmoil hosts, and SQL in lockstep with them), so a seed
//! determines the whole run; [`Report::trace_hash`] fingerprints it.

use std::cell::{Cell, RefCell};
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bop_raft::blocking::Blocking;
use bop_raft::node::{Node, NodeConfig, NodeEnv, NodeLimits, RaftTiming, ReadLease};
use bop_storage::io::{CrashMode, SimDisk};
use bop_storage::wal::{Preallocate, WriterMode};
use openraft::async_runtime::WatchReceiver;
use serde_json::{json, Value as Json};

use crate::check::{self, Op, Operation};
use crate::net::TurmoilNet;

/// Nodes the cluster starts with.
pub const NODES: usize = 3;
/// Node hosts: the starting nodes and one spare that membership changes add and remove.
const HOSTS: usize = NODES + 1;
/// Registers the clients read and write.
const KEYS: u64 = 4;
/// The register the prober writes (clients use `0..KEYS`): its writes never overwrite, and so never hide,
/// the clients' registers.
const PROBE_KEY: u64 = KEYS;
/// Violations a run keeps the text of.
const VIOLATIONS_KEPT: usize = 100;
/// Client hosts.
const CLIENTS: usize = 3;
/// One simulation step (turmoil tick).
const TICK_MS: u64 = 1;
/// Longest a client waits for one answer.
const OP_TIMEOUT: Duration = Duration::from_millis(1500);
/// Every this many steps the nodes' page contents are compared.
const HASH_EVERY_STEPS: u64 = 250;
/// Time after the last heal within which the cluster must serve every request again.
const HEAL_GRACE_MS: u64 = 4000;
/// Time a node with a failed fsync has to stop leading.
const POISON_GRACE_MS: u64 = 1500;

/// A deliberately reintroduced bug (see `bop_storage::bugs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// The WAL acknowledges batches without fdatasync.
    SkipWalFsync,
    /// A new leader writes on a view missing its predecessors' last commits, and every node applies the
    /// result (the lost update this simulation found).
    AcceptStaleCommits,
    /// A pipelined commit is applied even when the commit it was built on is not the database's newest, and
    /// a new leader does not wait to apply its predecessors' entries before it runs transactions.
    AcceptWrongBase,
    /// A pipelined writer answers its requests when their commit is proposed, not once it is applied.
    AnswerOnPropose,
    /// A leader's read lease lasts a whole election timeout, without the margin for clock drift.
    LeaseWithoutDriftMargin,
    /// A read with `min_index` does not wait for the node to apply that index.
    MinIndexIgnored,
}

impl Bug {
    /// The name `--bug` takes.
    pub fn name(self) -> &'static str {
        match self {
            Bug::SkipWalFsync => "skip-wal-fsync",
            Bug::AcceptStaleCommits => "accept-stale-commits",
            Bug::AcceptWrongBase => "accept-wrong-base",
            Bug::AnswerOnPropose => "answer-on-propose",
            Bug::LeaseWithoutDriftMargin => "lease-without-drift-margin",
            Bug::MinIndexIgnored => "min-index-ignored",
        }
    }

    /// The bug called `name`.
    pub fn from_name(name: &str) -> Option<Bug> {
        [
            Bug::SkipWalFsync,
            Bug::AcceptStaleCommits,
            Bug::AcceptWrongBase,
            Bug::AnswerOnPropose,
            Bug::LeaseWithoutDriftMargin,
            Bug::MinIndexIgnored,
        ]
        .into_iter()
        .find(|b| b.name() == name)
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The seed: every choice of the run follows from it.
    pub seed: u64,
    /// Simulated milliseconds with faults.
    pub safety_ms: u64,
    /// Simulated milliseconds without faults after them (the cluster must heal and serve everything).
    pub liveness_ms: u64,
    /// A bug to reintroduce.
    pub bug: Option<Bug>,
    /// Print every traced event.
    pub verbose: bool,
    /// Inject only these kinds of fault ([`FAULT_KINDS`] names); empty for all of them.
    pub faults: Vec<String>,
    /// Inject the kinds one after another, in the order `faults` lists them ([`FAULT_KINDS`] order when it
    /// is empty), instead of drawing each by weight: a short run then meets every kind it allows (a run makes
    /// a fault every 300 to 900 ms of its safety phase, after a first one within 800 ms).
    pub faults_in_turn: bool,
    /// Groups a database's writer may have proposed and not yet answered (`NodeLimits::pipeline_depth`;
    /// 1 turns pipelining off).
    pub pipeline_depth: usize,
    /// Lease reads on every node, with this clock-drift margin in percent (`ReadLease`); the nodes' timers
    /// then run at rates at most that far apart (1x to 1+margin), the drift the margin is for, instead of
    /// 0.5x to 2x. `None`: read-index.
    pub read_lease: Option<u32>,
}

impl Options {
    /// The defaults for `seed`: 8 s of faults, then 8 s to heal.
    pub fn new(seed: u64) -> Options {
        Options {
            seed,
            safety_ms: 8_000,
            liveness_ms: 8_000,
            bug: None,
            verbose: false,
            faults: Vec::new(),
            faults_in_turn: false,
            pipeline_depth: NodeLimits::default().pipeline_depth,
            read_lease: None,
        }
    }
}

/// The kinds of fault the safety phase injects, with their relative weights.
pub const FAULT_KINDS: [(&str, u64); 11] = [
    ("partition", 4),
    ("one-way-partition", 2),
    ("leader-isolated", 2),
    ("message-delay", 2),
    ("message-loss", 2),
    ("crash", 2),
    ("leader-kill", 2),
    ("fsync-failure", 2),
    ("power-loss", 2),
    ("membership-change", 2),
    ("leader-kill-after-ack", 2),
];

/// What a violation is about. A run counts its violations by kind ([`Report::violation_kinds`]), those whose
/// text it did not keep too, so a test can ask what a run caught and not only whether it caught something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ViolationKind {
    /// An acknowledged write vanished: a linearizable read invoked after the write was acknowledged saw its
    /// register as it was before the write ([`check::Violation::lost_write`]).
    LostWrite,
    /// Any other history without a linearization.
    NotLinearizable,
    /// A node could not start (its storage refused to open, say), or was not back up at the end.
    NodeStart,
    /// A running host failed or panicked (one of openraft's debug assertions, say).
    HostFailed,
    /// Raft's safety: two leaders in a term, an entry applied under two leaders, logs that do not match.
    Raft,
    /// Nodes that applied the same index hold different pages (or their pages could not be read).
    Pages,
    /// A partial transaction visible, or a weak read of a value no client wrote to its register.
    Reads,
    /// A node went on leading after its fsync failed.
    Poisoned,
    /// The cluster did not serve every request once the faults healed.
    Liveness,
    /// The harness itself could not run.
    Harness,
}

impl ViolationKind {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            ViolationKind::LostWrite => "lost-write",
            ViolationKind::NotLinearizable => "not-linearizable",
            ViolationKind::NodeStart => "node-start",
            ViolationKind::HostFailed => "host-failed",
            ViolationKind::Raft => "raft",
            ViolationKind::Pages => "pages",
            ViolationKind::Reads => "reads",
            ViolationKind::Poisoned => "poisoned",
            ViolationKind::Liveness => "liveness",
            ViolationKind::Harness => "harness",
        }
    }
}

/// What a run found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Hash of the full event trace (faults, client operations and their outcomes, leader changes).
    pub trace_hash: u64,
    /// Faults injected, by kind ([`FAULT_KINDS`] names).
    pub faults: BTreeMap<&'static str, u64>,
    /// Client operations in the checked history.
    pub ops_checked: usize,
    /// Writes acknowledged.
    pub writes_acked: usize,
    /// Everything that went wrong; empty for a passing run.
    pub violations: Vec<String>,
    /// How many violations of each kind the run found (all of them, kept in `violations` or not).
    pub violation_kinds: BTreeMap<ViolationKind, usize>,
    /// Simulated time, in milliseconds.
    pub sim_ms: u64,
}

/// The run's own generator (SplitMix64), for the harness's and clients' choices.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        let out = bop_raft::runtime::splitmix64(self.0);
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        out
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `lo..hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo))
    }
}

fn host(i: usize) -> String {
    format!("n{}", i + 1)
}

fn raft_addr(i: usize) -> String {
    format!("n{}:7000", i + 1)
}

fn http_addr(i: usize) -> String {
    format!("n{}:8000", i + 1)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Safety,
    Liveness,
    Final,
    Done,
}

/// A read with `min_index`: (key, the index asked for, what was read, who read through which node).
type MinIndexRead = (u64, u64, Option<u64>, String);

/// What clients and the harness share (all on one thread).
struct World {
    seq: Cell<u64>,
    now_ms: Cell<u64>,
    phase: Cell<Phase>,
    ready: Cell<bool>,
    healed_at_ms: Cell<u64>,
    history: RefCell<Vec<Operation>>,
    weak_reads: RefCell<Vec<(u64, Option<u64>, u64)>>,
    /// Reads with `min_index`: (key, the index asked for, what was read, who read through which node).
    min_index_reads: RefCell<Vec<MinIndexRead>>,
    writes: RefCell<BTreeMap<u64, u64>>,
    /// The log index each acknowledged write was applied at (value -> index).
    write_indexes: RefCell<BTreeMap<u64, u64>>,
    violations: RefCell<Vec<String>>,
    trace: RefCell<DefaultHasher>,
    verbose: bool,
    next_value: Cell<u64>,
    finals_done: Cell<bool>,
    writes_acked: Cell<usize>,
    /// Membership changes for the admin client to make.
    admin: RefCell<std::collections::VecDeque<Admin>>,
    /// Until when (simulated ms) the prober writes through the nodes other than this one (a killed leader):
    /// writes aimed at whichever node leads next, as soon as it does.
    probe: Cell<Option<(usize, u64)>>,
    /// A node that reports itself leader, as of the last step (set by `Harness::observe`).
    leader_now: Cell<Option<usize>>,
    /// The node that reports itself leader in the highest term, as of the last step.
    newest_leader: Cell<Option<usize>>,
    /// Until when (simulated ms) the prober writes through the newest leader and then reads through this
    /// node, an isolated leader that may still think it leads (see `lease_probe`).
    lease_probe: Cell<Option<(usize, u64)>>,
    /// Violations beyond `VIOLATIONS_KEPT`.
    violations_dropped: Cell<usize>,
    /// Every violation, by kind.
    violation_kinds: RefCell<BTreeMap<ViolationKind, usize>>,
}

/// A membership change the admin client makes over HTTP (through any node; followers forward).
#[derive(Debug, Clone, Copy)]
enum Admin {
    /// Add the spare node as a learner, wait until it caught up, promote it to voter.
    Join(usize),
    /// Remove it.
    Remove(usize),
}

impl World {
    /// A point of the run's total order of events.
    fn tick(&self) -> u64 {
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        seq
    }

    fn event(&self, text: impl AsRef<str>) {
        let text = text.as_ref();
        text.hash(&mut *self.trace.borrow_mut());
        if self.verbose {
            println!("[{:>6} ms] {text}", self.now_ms.get());
        }
    }

    /// The violations kept, and a line counting the others.
    fn violations_reported(&self) -> Vec<String> {
        let mut violations = self.violations.borrow().clone();
        let dropped = self.violations_dropped.get();
        if dropped > 0 {
            violations.push(format!("... and {dropped} more violations"));
        }
        violations
    }

    /// Records a violation; past `VIOLATIONS_KEPT`, only their number grows (a broken invariant can fire
    /// at every step).
    fn violation(&self, kind: ViolationKind, text: String) {
        self.event(format!("VIOLATION {text}"));
        *self.violation_kinds.borrow_mut().entry(kind).or_default() += 1;
        let mut violations = self.violations.borrow_mut();
        if violations.len() < VIOLATIONS_KEPT {
            violations.push(text);
        } else {
            self.violations_dropped.set(self.violations_dropped.get() + 1);
        }
    }
}

struct NodeSlot {
    disk: RefCell<SimDisk>,
    node: RefCell<Option<Node>>,
    up: Cell<bool>,
    poisoned_at_ms: Cell<Option<u64>>,
    /// Why the node's last start failed (`Node::start_in`'s error), until the harness reports it.
    start_failure: RefCell<Option<String>>,
    data_dir: PathBuf,
    timing: RaftTiming,
}

/// A minimal HTTP/1.1 exchange over turmoil (the node closes the connection after answering).
async fn http(addr: &str, method: &str, path: &str, body: &str) -> Result<(u16, Json), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream =
            turmoil::net::TcpStream::connect(addr.to_owned()).await.map_err(|e| format!("connect: {e}"))?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
        stream.write_all(body.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
        let mut raw = Vec::new();
        (&mut stream).take(1 << 20).read_to_end(&mut raw).await.map_err(|e| format!("receive: {e}"))?;
        Ok::<_, String>(raw)
    };
    let raw = tokio::time::timeout(OP_TIMEOUT, exchange).await.map_err(|_| "timed out".to_owned())??;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no header end")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok()).ok_or("no status")?;
    let json = serde_json::from_slice(&raw[split + 4..]).map_err(|e| format!("body: {e}"))?;
    Ok((status, json))
}

fn result_error(body: &Json) -> Option<String> {
    if let Some(e) = body.get("error") {
        return Some(e.to_string());
    }
    let results = body.get("results")?.as_array()?;
    results.iter().find_map(|r| r.get("error").map(|e| e.to_string()))
}

const SCHEMA: &str = r#"[
    "CREATE TABLE IF NOT EXISTS kv(k INTEGER PRIMARY KEY, v INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS kv2(k INTEGER PRIMARY KEY, v INTEGER NOT NULL)"
]"#;

/// Writes `value` to register `key`: one transaction setting it in both tables (a reader seeing the two
/// differ has seen part of a transaction). Returns the log index it was applied at (rqlite's `raft_index`).
async fn write(node: usize, key: u64, value: u64) -> Result<Option<u64>, String> {
    let body = json!([
        ["INSERT INTO kv(k, v) VALUES(?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v", key, value],
        ["INSERT INTO kv2(k, v) VALUES(?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v", key, value]
    ]);
    let (status, answer) =
        http(&http_addr(node), "POST", "/db/execute?transaction&raft_index", &body.to_string()).await?;
    if status != 200 {
        return Err(format!("status {status}: {answer}"));
    }
    if let Some(e) = result_error(&answer) {
        return Err(e);
    }
    let results = answer["results"].as_array().map_or(0, Vec::len);
    if results != 2 {
        return Err(format!("{results} results: {answer}"));
    }
    Ok(answer["raft_index"].as_u64())
}

/// Reads register `key` at `level`: `(kv's value, kv2's value)`.
async fn read(node: usize, key: u64, level: &str) -> Result<(Option<u64>, Option<u64>), String> {
    read_at(node, key, &format!("level={level}")).await
}

/// [`read`] with the query string `params` (a level, `min_index`, ...).
async fn read_at(node: usize, key: u64, params: &str) -> Result<(Option<u64>, Option<u64>), String> {
    let body = json!([["SELECT (SELECT v FROM kv WHERE k = ?), (SELECT v FROM kv2 WHERE k = ?)", key, key]]);
    let path = format!("/db/query?{params}");
    let (status, answer) = http(&http_addr(node), "POST", &path, &body.to_string()).await?;
    if status != 200 {
        return Err(format!("status {status}: {answer}"));
    }
    if let Some(e) = result_error(&answer) {
        return Err(e);
    }
    let row = &answer["results"][0]["values"][0];
    Ok((row[0].as_u64(), row[1].as_u64()))
}

/// Writes a fresh value to register `key` through `node` and records the operation in the history (and the
/// log index an acknowledged write was applied at). Returns that index.
async fn recorded_write(world: &World, who: &str, node: usize, key: u64) -> Result<Option<u64>, String> {
    let value = world.next_value.get() + 1;
    world.next_value.set(value);
    world.writes.borrow_mut().insert(value, key);
    let call = world.tick();
    let outcome = write(node, key, value).await;
    let ret = world.tick();
    world.event(format!("{who} write k{key}={value} via n{} -> {outcome:?}", node + 1));
    let acked = outcome.is_ok();
    if acked {
        world.writes_acked.set(world.writes_acked.get() + 1);
    }
    if let Ok(Some(index)) = outcome {
        world.write_indexes.borrow_mut().insert(value, index);
    }
    world.history.borrow_mut().push(Operation { key, op: Op::Write(value), call, ret: acked.then_some(ret) });
    outcome
}

/// Reads register `key` through `node` with `level=weak&min_index=position` and records the read for the
/// `min_index` check (and as a weak read).
async fn min_index_read(
    world: &World,
    id: usize,
    node: usize,
    key: u64,
    position: u64,
) -> Result<(), String> {
    let outcome = read_at(node, key, &format!("level=weak&min_index={position}")).await;
    let ret = world.tick();
    world.event(format!("c{id} read(weak, min_index={position}) k{key} via n{} -> {outcome:?}", node + 1));
    let (a, b) = outcome?;
    if a != b {
        world.violation(
            ViolationKind::Reads,
            format!("partial transaction visible: key {key} reads {a:?} in kv but {b:?} in kv2"),
        );
    }
    world.min_index_reads.borrow_mut().push((key, position, a, format!("c{id} via n{}", node + 1)));
    world.weak_reads.borrow_mut().push((key, a, ret));
    Ok(())
}

/// Probe writes in flight at once.
const PROBES_MAX: usize = 32;

/// After a leader kill (see `Harness::kill_when_ahead`), writes to the next leader as soon as it leads —
/// before it has applied its predecessor's entries, the window in which a new leader must not run
/// transactions — a write every few milliseconds, without waiting for earlier ones. It writes to the new
/// leader directly: forwarded through a follower that still names the dead leader, each would be a
/// connection attempt to a dead host, which turmoil never releases the port of.
async fn prober(world: Rc<World>, seed: u64) -> turmoil::Result {
    let mut rng = Rng::new(seed);
    let in_flight = Rc::new(Cell::new(0usize));
    loop {
        match world.phase.get() {
            Phase::Final | Phase::Done => return Ok(()),
            Phase::Liveness => {
                world.probe.set(None);
                world.lease_probe.set(None);
            }
            Phase::Safety => {}
        }
        if let (Some((old, until)), Some(leader)) = (world.lease_probe.get(), world.newest_leader.get()) {
            if leader != old && world.now_ms.get() < until && world.ready.get() {
                lease_probe(&world, leader, old).await;
                tokio::time::sleep(Duration::from_millis(rng.between(2, 8))).await;
                continue;
            }
        }
        match (world.probe.get(), world.leader_now.get()) {
            (Some((dead, until)), Some(leader))
                if leader != dead && world.now_ms.get() < until && world.ready.get() =>
            {
                if in_flight.get() < PROBES_MAX {
                    let (world, in_flight) = (Rc::clone(&world), Rc::clone(&in_flight));
                    in_flight.set(in_flight.get() + 1);
                    tokio::task::spawn_local(async move {
                        let _ = recorded_write(&world, "probe", leader, PROBE_KEY).await;
                        in_flight.set(in_flight.get() - 1);
                    });
                }
                tokio::time::sleep(Duration::from_millis(rng.between(2, 8))).await;
            }
            (Some(_), _) => tokio::time::sleep(Duration::from_millis(1)).await,
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// While a leader is cut off from the other nodes and another one leads: a write through the new leader,
/// then, once it is acknowledged, a linearizable read through the old one. A leader that answers it from its
/// lease after the other nodes could elect a new leader (a lease longer than the clocks' drift allows)
/// answers the value from before the write, which the linearizability check reports.
async fn lease_probe(world: &World, leader: usize, old: usize) {
    if recorded_write(world, "lease-probe", leader, PROBE_KEY).await.is_err() {
        return;
    }
    let call = world.tick();
    let outcome = read(old, PROBE_KEY, "linearizable").await;
    let ret = world.tick();
    world.event(format!("lease-probe read(linearizable) k{PROBE_KEY} via n{} -> {outcome:?}", old + 1));
    if let Ok((value, _)) = outcome {
        world.history.borrow_mut().push(Operation {
            key: PROBE_KEY,
            op: Op::Read(value),
            call,
            ret: Some(ret),
        });
    }
}

async fn client(world: Rc<World>, id: usize, seed: u64) -> turmoil::Result {
    let mut rng = Rng::new(seed);
    if id == 0 {
        loop {
            let node = rng.below(NODES as u64) as usize;
            match http(&http_addr(node), "POST", "/db/execute", SCHEMA).await {
                Ok((200, answer)) if result_error(&answer).is_none() => break,
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        world.event("schema created");
        world.ready.set(true);
    }
    while !world.ready.get() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    loop {
        let phase = world.phase.get();
        if phase == Phase::Final {
            if id == 0 {
                final_reads(&world).await;
            }
            return Ok(());
        }
        if phase == Phase::Done {
            return Ok(());
        }
        let key = rng.below(KEYS);
        let node = rng.below(NODES as u64) as usize;
        let mut roll = rng.below(100);
        if world.probe.get().is_some_and(|(_, until)| world.now_ms.get() < until) && roll < 80 {
            // While the prober runs, clients only read (linearizably), so that an acknowledged write a new
            // leader lost is seen missing before another write to its register hides it.
            roll = 50 + roll % 30;
        }
        let must_succeed =
            phase == Phase::Liveness && world.now_ms.get() > world.healed_at_ms.get() + HEAL_GRACE_MS;
        let failed = if roll < 50 {
            match recorded_write(&world, &format!("c{id}"), node, key).await {
                // A fifth of the acknowledged writes are read back at once through the next node with
                // `min_index` set to the write's index (read-your-writes without a leader round): that node
                // must wait until it applied the write, which it may not have yet.
                Ok(Some(index)) if roll < 10 => {
                    min_index_read(&world, id, (node + 1) % NODES, key, index).await.err()
                }
                Ok(_) => None,
                Err(e) => Some(e),
            }
        } else {
            let level = if roll < 80 { "linearizable" } else { "weak" };
            let call = world.tick();
            let outcome = read(node, key, level).await;
            let ret = world.tick();
            world.event(format!("c{id} read({level}) k{key} via n{} -> {outcome:?}", node + 1));
            match outcome {
                Ok((a, b)) => {
                    if a != b {
                        world.violation(
                            ViolationKind::Reads,
                            format!(
                                "partial transaction visible: key {key} reads {a:?} in kv but {b:?} in kv2"
                            ),
                        );
                    }
                    if level == "linearizable" {
                        world.history.borrow_mut().push(Operation {
                            key,
                            op: Op::Read(a),
                            call,
                            ret: Some(ret),
                        });
                    } else {
                        world.weak_reads.borrow_mut().push((key, a, ret));
                    }
                    None
                }
                Err(e) => Some(e),
            }
        };
        if let (Some(e), true) = (failed, must_succeed) {
            world.violation(
                ViolationKind::Liveness,
                format!(
                    "liveness: client {id}'s request to n{} failed {} ms after the faults healed: {e}",
                    node + 1,
                    world.now_ms.get() - world.healed_at_ms.get()
                ),
            );
        }
        tokio::time::sleep(Duration::from_millis(rng.between(1, 30))).await;
    }
}

async fn admin(world: Rc<World>, seed: u64) -> turmoil::Result {
    let mut rng = Rng::new(seed);
    loop {
        if world.phase.get() == Phase::Done || world.phase.get() == Phase::Final {
            return Ok(());
        }
        let Some(op) = world.admin.borrow_mut().pop_front() else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let (path, body) = match op {
            Admin::Join(i) => (
                "/join",
                json!({ "id": i as u64 + 1, "addr": format!("{} http={}", raft_addr(i), http_addr(i)) }),
            ),
            Admin::Remove(i) => ("/remove", json!({ "id": i as u64 + 1 })),
        };
        for attempt in 0..20 {
            let node = rng.below(NODES as u64) as usize;
            let outcome = http(&http_addr(node), "POST", path, &body.to_string()).await;
            world.event(format!("admin {op:?} via n{} (attempt {attempt}) -> {outcome:?}", node + 1));
            if matches!(outcome, Ok((200, _))) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// After the run: every register read linearizably (through each node in turn, a bounded number of
/// tries), so a lost acknowledged write shows up in the history.
async fn final_reads(world: &World) {
    for key in 0..KEYS {
        let mut done = false;
        for attempt in 0..60 {
            let node = attempt % NODES;
            let call = world.tick();
            let outcome = read(node, key, "linearizable").await;
            let ret = world.tick();
            world.event(format!("final read k{key} via n{} -> {outcome:?}", node + 1));
            if let Ok((a, b)) = outcome {
                if a != b {
                    world.violation(
                        ViolationKind::Reads,
                        format!("partial transaction visible: key {key}: {a:?} vs {b:?}"),
                    );
                }
                world.history.borrow_mut().push(Operation { key, op: Op::Read(a), call, ret: Some(ret) });
                done = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !done {
            world.violation(
                ViolationKind::Liveness,
                format!("liveness: the final read of key {key} never succeeded"),
            );
        }
    }
    world.finals_done.set(true);
}

/// Reads with `min_index=P` that saw their register older than the log prefix up to P: a write to it
/// acknowledged at an index at most P is in every state from P on, so the read must see that write or one
/// applied at a higher index — not "never written", nor a value whose write was applied at a lower index.
/// (Sequential consistency per client: a client's reads at its own position reflect all its writes, and
/// every write ordered before them in the log.) Values whose index is unknown (not acknowledged) prove
/// nothing either way; two writes in one entry share its index and are not ordered here.
fn min_index_violations(world: &World) -> Vec<String> {
    let (writes, indexes) = (world.writes.borrow(), world.write_indexes.borrow());
    let mut found = Vec::new();
    for (key, position, seen, who) in world.min_index_reads.borrow().iter() {
        let newest_due = indexes
            .iter()
            .filter(|(value, index)| writes.get(value) == Some(key) && **index <= *position)
            .max_by_key(|(_, index)| **index);
        let Some((due, due_index)) = newest_due else { continue };
        let older = match seen {
            None => true,
            Some(value) => indexes.get(value).is_some_and(|index| index < due_index),
        };
        if older {
            found.push(format!(
                "min_index read by {who} of key {key} at min_index={position} saw {seen:?}, older than {due} \
                 acknowledged at index {due_index}"
            ));
        }
    }
    found
}

/// Hash of every page of every database on `node` (as of its applied index).
fn page_hash(node: &Node) -> Result<u64, String> {
    let manager = node.manager();
    let mut hasher = DefaultHasher::new();
    let databases = manager.list_databases().map_err(|e| e.to_string())?;
    for (name, _) in databases {
        let db = manager.open_database(&name).map_err(|e| e.to_string())?;
        let snapshot = db.snapshot().map_err(|e| e.to_string())?;
        name.hash(&mut hasher);
        let pages = snapshot.page_count();
        pages.hash(&mut hasher);
        for page in 1..=pages {
            match snapshot.read_page(page).map_err(|e| e.to_string())? {
                Some(bytes) => bytes.hash(&mut hasher),
                None => 0u8.hash(&mut hasher),
            }
        }
    }
    Ok(hasher.finish())
}

enum Heal {
    Repair(usize, usize),
    RepairOneway(usize, usize),
    Latency,
    Restart(usize),
}

/// What the trace records of a node when it changes: term, last log index, applied index.
type Progress = (u64, Option<u64>, Option<u64>);

struct Harness<'a> {
    sim: turmoil::Sim<'a>,
    world: Rc<World>,
    slots: Vec<Rc<NodeSlot>>,
    rng: Rng,
    report: Report,
    heals: Vec<(u64, Heal)>,
    leaders: BTreeMap<u64, u64>,
    applied: BTreeMap<u64, String>,
    last_leader: Option<(u64, u64)>,
    progress: Vec<Option<Progress>>,
    /// Whether the spare node was last asked to join (true) or leave.
    spare_member: bool,
    /// Until when an armed "leader kill after an ack" waits for its moment.
    kill_when_ahead_until: Option<u64>,
    /// Acknowledged writes as of the previous step.
    acked_seen: usize,
    /// A host panicked; the simulation must not be stepped or torn down again.
    panicked: bool,
    /// The kinds of fault to inject (empty: all).
    faults: Vec<String>,
    /// Whether they are injected in turn, and how many were drawn so far (see `Options::faults_in_turn`).
    faults_in_turn: bool,
    drawn: usize,
}

impl Harness<'_> {
    fn now_ms(&self) -> u64 {
        self.world.now_ms.get()
    }

    fn fault(&mut self, kind: &'static str, detail: String) {
        debug_assert!(FAULT_KINDS.iter().any(|(name, _)| *name == kind), "{kind} is not in FAULT_KINDS");
        *self.report.faults.entry(kind).or_default() += 1;
        self.world.event(format!("FAULT {kind}: {detail}"));
    }

    fn leader(&self) -> Option<usize> {
        self.slots.iter().position(|slot| {
            slot.node.borrow().as_ref().is_some_and(|n| {
                let m = n.raft().metrics().borrow_watched().clone();
                m.running_state.is_ok() && m.state.is_leader()
            })
        })
    }

    fn crash(&mut self, i: usize, mode: CrashMode) {
        let slot = Rc::clone(&self.slots[i]);
        if !slot.up.get() {
            return;
        }
        // The disk first: nothing the dying node does from here on reaches it.
        let disk = slot.disk.borrow().crash(mode);
        *slot.disk.borrow_mut() = disk;
        self.sim.crash(host(i));
        drop(slot.node.borrow_mut().take());
        slot.up.set(false);
        slot.poisoned_at_ms.set(None);
    }

    fn restart(&mut self, i: usize) {
        let slot = Rc::clone(&self.slots[i]);
        if slot.up.get() {
            return;
        }
        self.world.event(format!("restart n{}", i + 1));
        self.sim.bounce(host(i));
        slot.up.set(true);
    }

    fn others(i: usize) -> Vec<usize> {
        (0..NODES).filter(|&j| j != i).collect()
    }

    /// Draws a kind of fault (weighted, among those the options allow).
    fn pick_fault(&mut self) -> &'static str {
        if self.faults_in_turn {
            let listed: Vec<&'static str> = if self.faults.is_empty() {
                FAULT_KINDS.iter().map(|(name, _)| *name).collect()
            } else {
                self.faults
                    .iter()
                    .filter_map(|f| FAULT_KINDS.iter().find(|(name, _)| name == f).map(|(name, _)| *name))
                    .collect()
            };
            if !listed.is_empty() {
                let kind = listed[self.drawn % listed.len()];
                self.drawn += 1;
                return kind;
            }
        }
        let allowed: Vec<(&'static str, u64)> = FAULT_KINDS
            .iter()
            .copied()
            .filter(|(name, _)| self.faults.is_empty() || self.faults.iter().any(|f| f == name))
            .collect();
        let mut draw = self.rng.below(allowed.iter().map(|(_, w)| w).sum());
        for (name, weight) in &allowed {
            if draw < *weight {
                return name;
            }
            draw -= weight;
        }
        unreachable!("the draw is below the total weight")
    }

    fn inject(&mut self) {
        let now = self.now_ms();
        let heal_at = now + self.rng.between(300, 2000);
        match self.pick_fault() {
            "partition" => {
                let i = self.rng.below(NODES as u64) as usize;
                for j in Self::others(i) {
                    self.sim.partition(host(i), host(j));
                    self.heals.push((heal_at, Heal::Repair(i, j)));
                }
                self.fault("partition", format!("n{} cut off from the other nodes", i + 1));
            }
            "one-way-partition" => {
                let i = self.rng.below(NODES as u64) as usize;
                let j = Self::others(i)[self.rng.below(NODES as u64 - 1) as usize];
                self.sim.partition_oneway(host(i), host(j));
                self.heals.push((heal_at, Heal::RepairOneway(i, j)));
                self.fault("one-way-partition", format!("n{} -> n{} dropped", i + 1, j + 1));
            }
            "leader-isolated" => {
                if let Some(i) = self.leader() {
                    for j in Self::others(i) {
                        self.sim.partition(host(i), host(j));
                        self.heals.push((heal_at, Heal::Repair(i, j)));
                    }
                    // Clients still reach it: once another node leads, the prober writes there and reads
                    // here, which a leader past its lease must not answer from its old view.
                    self.world.lease_probe.set(Some((i, heal_at)));
                    self.fault("leader-isolated", format!("n{}", i + 1));
                }
            }
            "message-delay" => {
                let latency = Duration::from_millis(self.rng.between(20, 150));
                self.sim.set_max_message_latency(latency);
                self.heals.push((heal_at, Heal::Latency));
                self.fault("message-delay", format!("up to {} ms", latency.as_millis()));
            }
            "message-loss" => {
                let i = self.rng.below(NODES as u64) as usize;
                let j = Self::others(i)[self.rng.below(NODES as u64 - 1) as usize];
                self.sim.partition(host(i), host(j));
                self.heals.push((now + self.rng.between(50, 300), Heal::Repair(i, j)));
                self.fault("message-loss", format!("link n{}-n{} drops everything briefly", i + 1, j + 1));
            }
            "crash" => {
                let i = self.rng.below(NODES as u64) as usize;
                if self.slots[i].up.get() {
                    let mode =
                        if self.rng.below(2) == 0 { CrashMode::TornSectors } else { CrashMode::LoseUnsynced };
                    self.crash(i, mode);
                    self.heals.push((heal_at, Heal::Restart(i)));
                    self.fault("crash", format!("n{} ({mode:?})", i + 1));
                }
            }
            "leader-kill" => {
                if let Some(i) = self.leader() {
                    self.crash(i, CrashMode::TornSectors);
                    self.heals.push((heal_at, Heal::Restart(i)));
                    self.fault("leader-kill", format!("n{}", i + 1));
                }
            }
            "leader-kill-after-ack" => {
                // Fired by `kill_when_ahead` at the first step where it can do harm, once every node is up.
                self.kill_when_ahead_until = Some(now + 2000);
            }
            "membership-change" => {
                let spare = NODES;
                let member = self.spare_member;
                self.spare_member = !member;
                let op = if member { Admin::Remove(spare) } else { Admin::Join(spare) };
                self.world.admin.borrow_mut().push_back(op);
                self.fault("membership-change", format!("{op:?}"));
            }
            "fsync-failure" => {
                let i = self.rng.below(NODES as u64) as usize;
                if self.slots[i].up.get() {
                    let after = self.rng.below(4);
                    self.slots[i].disk.borrow().fail_sync_after(after);
                    // Restarted later (a failed fsync is only recovered by reopening).
                    self.heals.push((now + 3000, Heal::Restart(i)));
                    self.fault("fsync-failure", format!("n{} after {after} more syncs", i + 1));
                }
            }
            _ => {
                // power-loss
                for i in 0..HOSTS {
                    self.crash(i, CrashMode::TornSectors);
                    self.heals.push((now + self.rng.between(200, 800), Heal::Restart(i)));
                }
                self.fault("power-loss", "every node at once".into());
            }
        }
    }

    /// The armed "leader kill after an ack": kills the leader at the first step where a client has just
    /// heard "written" and the leader has applied an entry that a follower stores but has not applied yet,
    /// so that the next leader starts with acknowledged entries still to apply: the window in which a new
    /// leader must not run transactions on its stale view.
    fn kill_when_ahead(&mut self) {
        // Whether a client heard "written" since the previous step.
        let acked = self.world.writes_acked.get();
        let fresh_ack = acked > self.acked_seen;
        self.acked_seen = acked;
        let Some(until) = self.kill_when_ahead_until else { return };
        if self.now_ms() > until {
            self.kill_when_ahead_until = None;
            return;
        }
        if !self.slots.iter().all(|slot| slot.up.get()) {
            return;
        }
        let Some(leader) = self.leader() else { return };
        let term = |i: usize| {
            let guard = self.slots[i].node.borrow();
            guard.as_ref().map_or(0, |n| n.raft().metrics().borrow_watched().current_term)
        };
        if Self::others(leader).into_iter().any(|j| term(j) > term(leader)) {
            // A deposed leader that has not heard of it yet.
            return;
        }
        let progress = |i: usize| {
            let guard = self.slots[i].node.borrow();
            let node = guard.as_ref()?;
            let m = node.raft().metrics().borrow_watched().clone();
            Some((m.last_applied.map_or(0, |l| l.index), node.wal().state().last.map_or(0, |p| p.index)))
        };
        let Some((leader_applied, _)) = progress(leader) else { return };
        // Every other node stores the entry and none has applied it: whichever leads next starts behind.
        let others = Self::others(leader);
        let all_behind = others.iter().all(|&j| {
            progress(j).is_some_and(|(applied, stored)| applied < leader_applied && stored >= leader_applied)
        });
        let behind = all_behind.then_some(others[0]);
        if let (Some(j), true) = (behind, fresh_ack) {
            // The leader's messages still on the wire die with it (a power cut before the NIC sent them):
            // the followers do not learn what it last committed, though a client has just heard back.
            self.kill_when_ahead_until = None;
            for k in Self::others(leader) {
                self.sim.partition_oneway(host(leader), host(k));
            }
            self.kill_cut_leader(leader, j, leader_applied);
        }
    }

    /// Kills `leader`, whose links to the other nodes `kill_when_ahead` cut.
    fn kill_cut_leader(&mut self, leader: usize, follower: usize, applied: u64) {
        self.crash(leader, CrashMode::TornSectors);
        let now = self.now_ms();
        // Back late enough for the others to have elected a leader.
        let heal_at = now + self.rng.between(1500, 3000);
        self.heals.push((heal_at, Heal::Restart(leader)));
        for k in Self::others(leader) {
            self.heals.push((heal_at, Heal::RepairOneway(leader, k)));
        }
        // A slow network keeps the next leader's own first entry uncommitted (and the old entries
        // unapplied) for a while.
        let latency = Duration::from_millis(self.rng.between(20, 150));
        self.sim.set_max_message_latency(latency);
        self.heals.push((heal_at, Heal::Latency));
        self.world.probe.set(Some((leader, heal_at)));
        self.fault(
            "leader-kill-after-ack",
            format!(
                "n{} applied {applied}, n{} has it unapplied; messages take up to {} ms",
                leader + 1,
                follower + 1,
                latency.as_millis()
            ),
        );
    }

    fn heal(&mut self, heal: Heal) {
        match heal {
            Heal::Repair(i, j) => self.sim.repair(host(i), host(j)),
            Heal::RepairOneway(i, j) => self.sim.repair_oneway(host(i), host(j)),
            Heal::Latency => self.sim.set_max_message_latency(Duration::from_millis(5)),
            Heal::Restart(i) => {
                // A node left poisoned by a failed fsync is restarted like after a crash.
                if self.slots[i].poisoned_at_ms.get().is_some() || !self.slots[i].up.get() {
                    self.crash(i, CrashMode::LoseUnsynced);
                    self.restart(i);
                }
            }
        }
    }

    fn heal_due(&mut self, all: bool) {
        let now = self.now_ms();
        let mut i = 0;
        while i < self.heals.len() {
            if all || self.heals[i].0 <= now {
                let (_, heal) = self.heals.remove(i);
                self.heal(heal);
            } else {
                i += 1;
            }
        }
    }

    /// The invariants checked after every step.
    fn observe(&mut self, step: u64) {
        let now = self.now_ms();
        let mut leader_now = None;
        let mut newest_leader: Option<(u64, usize)> = None;
        for i in 0..HOSTS {
            let slot = Rc::clone(&self.slots[i]);
            let guard = slot.node.borrow();
            let Some(node) = guard.as_ref() else { continue };
            let id = i as u64 + 1;
            let m = node.raft().metrics().borrow_watched().clone();
            let running = m.running_state.is_ok();
            let stored = node.wal().state().last.map(|p| p.index);
            let progress = (m.current_term, stored, m.last_applied.map(|l| l.index));
            if self.progress[i] != Some(progress) {
                self.progress[i] = Some(progress);
                self.world.event(format!(
                    "n{id} term {} log {:?} applied {:?}",
                    progress.0, progress.1, progress.2
                ));
            }
            if running && m.state.is_leader() {
                leader_now = leader_now.or(Some(i));
                if newest_leader.is_none_or(|(term, _)| m.current_term > term) {
                    newest_leader = Some((m.current_term, i));
                }
                let term = m.current_term;
                match self.leaders.get(&term) {
                    Some(&other) if other != id => self.world.violation(
                        ViolationKind::Raft,
                        format!("two leaders in term {term}: n{other} and n{id}"),
                    ),
                    Some(_) => {}
                    None => {
                        self.leaders.insert(term, id);
                    }
                }
                if self.last_leader != Some((term, id)) {
                    self.last_leader = Some((term, id));
                    self.world.event(format!("leader n{id} in term {term}"));
                }
            }
            if let Some(applied) = m.last_applied {
                let leader = format!("{:?}", applied.leader_id);
                match self.applied.get(&applied.index) {
                    Some(seen) if *seen != leader => self.world.violation(
                        ViolationKind::Raft,
                        format!(
                            "entry {} applied with two different leaders: {seen} and {leader} (on n{id})",
                            applied.index
                        ),
                    ),
                    Some(_) => {}
                    None => {
                        self.applied.insert(applied.index, leader);
                    }
                }
            }
            if node.wal().poisoned().is_some() && slot.poisoned_at_ms.get().is_none() {
                slot.poisoned_at_ms.set(Some(now));
                self.world.event(format!("n{id} poisoned"));
            }
            if let Some(at) = slot.poisoned_at_ms.get() {
                if running && m.state.is_leader() && now > at + POISON_GRACE_MS {
                    self.world.violation(
                        ViolationKind::Poisoned,
                        format!("n{id} still leads {} ms after its fsync failed", now - at),
                    );
                }
            }
        }
        self.world.leader_now.set(leader_now);
        self.world.newest_leader.set(newest_leader.map(|(_, i)| i));
        if step % HASH_EVERY_STEPS == 0 {
            self.compare_pages();
        }
    }

    /// Nodes that applied the same index hold the same pages.
    fn compare_pages(&mut self) {
        let mut by_index: BTreeMap<u64, Vec<(usize, u64)>> = BTreeMap::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let guard = slot.node.borrow();
            let Some(node) = guard.as_ref() else { continue };
            if node.wal().poisoned().is_some() {
                continue;
            }
            match page_hash(node) {
                Ok(hash) => by_index.entry(node.manager().applied_index()).or_default().push((i, hash)),
                Err(e) => self
                    .world
                    .violation(ViolationKind::Pages, format!("n{}: reading pages failed: {e}", i + 1)),
            }
        }
        for (index, hashes) in by_index {
            if hashes.windows(2).any(|w| w[0].1 != w[1].1) {
                self.world.violation(
                    ViolationKind::Pages,
                    format!("nodes applied index {index} but hold different pages: {hashes:?}"),
                );
            }
        }
    }

    /// Logs agree on every index below the highest index at which they agree (Raft's log matching).
    fn compare_logs(&mut self) {
        let logs: Vec<(usize, BTreeMap<u64, String>)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, slot)| {
                let guard = slot.node.borrow();
                let node = guard.as_ref()?;
                let state = node.wal().state();
                let first = state.first_index?;
                let last = state.last?.index;
                let store = node.log_store();
                let ids = (first..=last)
                    .filter_map(|x| {
                        store.log_id_at(x).ok().flatten().map(|id| (x, format!("{:?}", id.leader_id)))
                    })
                    .collect();
                Some((i, ids))
            })
            .collect();
        for a in 0..logs.len() {
            for b in a + 1..logs.len() {
                let (ia, la) = &logs[a];
                let (ib, lb) = &logs[b];
                let mut agreed = false;
                for (index, term) in la.iter().rev() {
                    let Some(other) = lb.get(index) else { continue };
                    if other == term {
                        agreed = true;
                    } else if agreed {
                        self.world.violation(ViolationKind::Raft, format!(
                            "logs of n{} and n{} agree above index {index} but differ at it ({term} vs {other})",
                            ia + 1,
                            ib + 1
                        ));
                        break;
                    }
                }
            }
        }
    }

    /// Every member of the newest membership is up and has applied the same index.
    fn members_settled(&self) -> bool {
        let newest = self
            .slots
            .iter()
            .filter_map(|s| {
                let m = s.node.borrow().as_ref()?.raft().metrics().borrow_watched().clone();
                Some((m.last_applied.map_or(0, |l| l.index), m.membership_config.membership().clone()))
            })
            .max_by_key(|(applied, _)| *applied);
        let Some((_, membership)) = newest else { return false };
        let applied: BTreeSet<Option<u64>> = membership
            .nodes()
            .map(|(id, _)| {
                let slot = self.slots.get((*id as usize).wrapping_sub(1))?;
                let guard = slot.node.borrow();
                Some(guard.as_ref()?.manager().applied_index())
            })
            .collect();
        applied.len() == 1 && !applied.contains(&None)
    }

    fn step(&mut self, step: u64) -> bool {
        self.world.now_ms.set(step * TICK_MS);
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.sim.step())) {
            Ok(Ok(_)) => {
                self.observe(step);
                true
            }
            Ok(Err(e)) => {
                // A node whose start failed (see `run_inner`) cannot start; any other host failed running.
                let text = e.to_string();
                let start_failed = self.slots.iter().position(|slot| {
                    slot.start_failure.borrow_mut().take_if(|f| text.contains(f.as_str())).is_some()
                });
                match start_failed {
                    Some(i) => self
                        .world
                        .violation(ViolationKind::NodeStart, format!("n{} could not start: {text}", i + 1)),
                    None => self.world.violation(ViolationKind::HostFailed, format!("a host failed: {text}")),
                }
                false
            }
            Err(panic) => {
                // A panic inside a host (e.g. one of openraft's debug assertions seeing a follower's log go
                // backwards): the run ends here and reports it; the simulation is not touched again.
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".into());
                self.world.violation(ViolationKind::HostFailed, format!("a host panicked: {message}"));
                self.panicked = true;
                false
            }
        }
    }

    /// The report of a run that a host panic ended: what was seen up to then. The simulation is leaked,
    /// not dropped: after a panic inside it, tearing it down can panic again.
    fn abandon(mut self, step: u64) -> Report {
        let mut report = std::mem::take(&mut self.report);
        report.ops_checked = self.world.history.borrow().len() + self.world.weak_reads.borrow().len();
        report.writes_acked = self.world.writes_acked.get();
        report.sim_ms = step * TICK_MS;
        report.violations = self.world.violations_reported();
        report.violation_kinds = self.world.violation_kinds.borrow().clone();
        report.trace_hash = self.world.trace.borrow().finish();
        std::mem::forget(self);
        report
    }
}

/// Runs one seed.
pub fn run(options: &Options) -> Report {
    bop_raft::runtime::seed_thread_rng(options.seed);
    bop_storage::bugs::set_skip_wal_fsync(options.bug == Some(Bug::SkipWalFsync));
    bop_storage::bugs::set_accept_stale_commits(options.bug == Some(Bug::AcceptStaleCommits));
    bop_storage::bugs::set_accept_wrong_base(options.bug == Some(Bug::AcceptWrongBase));
    bop_storage::bugs::set_answer_on_propose(options.bug == Some(Bug::AnswerOnPropose));
    bop_storage::bugs::set_lease_without_drift_margin(options.bug == Some(Bug::LeaseWithoutDriftMargin));
    bop_storage::bugs::set_min_index_ignored(options.bug == Some(Bug::MinIndexIgnored));
    let report = run_inner(options);
    bop_storage::bugs::set_skip_wal_fsync(false);
    bop_storage::bugs::set_accept_stale_commits(false);
    bop_storage::bugs::set_accept_wrong_base(false);
    bop_storage::bugs::set_answer_on_propose(false);
    report
}

fn run_inner(options: &Options) -> Report {
    let mut rng = Rng::new(options.seed);
    let world = Rc::new(World {
        seq: Cell::new(0),
        now_ms: Cell::new(0),
        phase: Cell::new(Phase::Safety),
        ready: Cell::new(false),
        healed_at_ms: Cell::new(0),
        history: RefCell::new(Vec::new()),
        weak_reads: RefCell::new(Vec::new()),
        min_index_reads: RefCell::new(Vec::new()),
        write_indexes: RefCell::new(BTreeMap::new()),
        writes: RefCell::new(BTreeMap::new()),
        violations: RefCell::new(Vec::new()),
        trace: RefCell::new(DefaultHasher::new()),
        verbose: options.verbose,
        next_value: Cell::new(0),
        finals_done: Cell::new(false),
        writes_acked: Cell::new(0),
        admin: RefCell::new(std::collections::VecDeque::new()),
        probe: Cell::new(None),
        leader_now: Cell::new(None),
        newest_leader: Cell::new(None),
        lease_probe: Cell::new(None),
        violations_dropped: Cell::new(0),
        violation_kinds: RefCell::new(BTreeMap::new()),
    });
    let mut report = Report { seed: options.seed, ..Report::default() };
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => {
            report.violations.push(format!("no temporary directory: {e}"));
            report.violation_kinds.insert(ViolationKind::Harness, 1);
            return report;
        }
    };
    let mut sim = turmoil::Builder::new()
        .rng_seed(rng.next_u64())
        .tick_duration(Duration::from_millis(TICK_MS))
        .simulation_duration(Duration::from_secs(24 * 3600))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(5))
        .build();
    let members: BTreeMap<u64, String> =
        (0..NODES).map(|i| (i as u64 + 1, format!("{} http={}", raft_addr(i), http_addr(i)))).collect();
    let mut slots = Vec::new();
    for i in 0..HOSTS {
        // Clock skew: each node's timers run at their own rate (0.5x to 2x; with lease reads, within the
        // drift their margin allows for).
        let skew = match options.read_lease {
            // The extremes of the allowed drift, the cases a lease must survive.
            Some(drift) => 100 + u64::from(drift) * rng.below(2),
            None => [50u64, 75, 100, 150, 200][rng.below(5) as usize],
        };
        let timing = RaftTiming {
            heartbeat_ms: 50 * skew / 100,
            election_min_ms: 300 * skew / 100,
            election_max_ms: 600 * skew / 100,
        };
        world.event(format!("n{} timers {timing:?}", i + 1));
        let slot = Rc::new(NodeSlot {
            disk: RefCell::new(SimDisk::new(rng.next_u64())),
            node: RefCell::new(None),
            up: Cell::new(true),
            poisoned_at_ms: Cell::new(None),
            start_failure: RefCell::new(None),
            data_dir: dir.path().join(host(i)),
            timing,
        });
        let software_slot = Rc::clone(&slot);
        let members = members.clone();
        let pipeline_depth = options.pipeline_depth;
        let read_lease = options.read_lease.map(|clock_drift_percent| ReadLease { clock_drift_percent });
        sim.host(host(i), move || {
            let slot = Rc::clone(&software_slot);
            let members = members.clone();
            let config = NodeConfig {
                id: i as u64 + 1,
                data_dir: slot.data_dir.clone(),
                raft_addr: raft_addr(i),
                http_addr: http_addr(i),
            };
            let env = NodeEnv {
                net: Arc::new(TurmoilNet),
                io: Arc::new(slot.disk.borrow().clone()),
                blocking: Blocking::Lockstep,
                wal_writer: WriterMode::Inline,
                // The simulated disk holds a segment in memory either way; zero-filling would only mark
                // every sector dirty.
                wal_preallocate: Preallocate::Allocate,
                raft_timing: slot.timing,
                limits: NodeLimits { pipeline_depth, ..NodeLimits::default() },
                read_lease,
                ..NodeEnv::default()
            };
            async move {
                let node = match Node::start_in(config, env).await {
                    Ok(node) => node,
                    Err(e) => {
                        *slot.start_failure.borrow_mut() = Some(e.to_string());
                        return Err(e.into());
                    }
                };
                if i == 0 {
                    node.initialize_if_new(members).await?;
                }
                *slot.node.borrow_mut() = Some(node);
                std::future::pending::<()>().await;
                Ok(())
            }
        });
        slots.push(slot);
    }
    for c in 0..CLIENTS {
        let world = Rc::clone(&world);
        let seed = rng.next_u64();
        sim.client(format!("client{c}"), client(world, c, seed));
    }
    sim.client("admin", admin(Rc::clone(&world), rng.next_u64()));
    sim.client("prober", prober(Rc::clone(&world), rng.next_u64()));
    let mut harness = Harness {
        sim,
        world: Rc::clone(&world),
        slots,
        rng,
        report,
        heals: Vec::new(),
        leaders: BTreeMap::new(),
        applied: BTreeMap::new(),
        last_leader: None,
        progress: vec![None; HOSTS],
        spare_member: false,
        kill_when_ahead_until: None,
        acked_seen: 0,
        panicked: false,
        faults: options.faults.clone(),
        faults_in_turn: options.faults_in_turn,
        drawn: 0,
    };
    let mut step = 0u64;
    let mut ok = true;
    // Setup: the schema, without faults (bounded).
    while ok && !world.ready.get() && step < 20_000 {
        step += 1;
        ok = harness.step(step);
    }
    if !world.ready.get() {
        world.violation(
            ViolationKind::Liveness,
            "liveness: the schema could not be created without faults".into(),
        );
        ok = false;
    }
    // Safety phase: faults.
    let safety_end = step + options.safety_ms / TICK_MS;
    let mut next_fault = step + harness.rng.between(200, 800);
    while ok && step < safety_end {
        step += 1;
        ok = harness.step(step);
        if !ok {
            break;
        }
        harness.heal_due(false);
        harness.kill_when_ahead();
        if step >= next_fault {
            harness.inject();
            next_fault = step + harness.rng.between(300, 900);
        }
    }
    if harness.panicked {
        return harness.abandon(step);
    }
    // Liveness phase: everything healed and restarted; after a grace period every request must succeed.
    harness.heal_due(true);
    for slot in &harness.slots {
        // An fsync failure armed but not yet triggered would strike in the liveness phase.
        slot.disk.borrow().clear_faults();
    }
    for i in 0..HOSTS {
        if harness.slots[i].poisoned_at_ms.get().is_some() || !harness.slots[i].up.get() {
            harness.crash(i, CrashMode::LoseUnsynced);
            harness.restart(i);
        }
    }
    world.healed_at_ms.set(step * TICK_MS);
    world.phase.set(Phase::Liveness);
    world.event("liveness phase");
    let liveness_end = step + options.liveness_ms / TICK_MS;
    while ok && step < liveness_end {
        step += 1;
        ok = harness.step(step);
    }
    world.phase.set(Phase::Final);
    let final_end = step + 30_000;
    while ok && !world.finals_done.get() && step < final_end {
        step += 1;
        ok = harness.step(step);
    }
    if ok && !world.finals_done.get() {
        world.violation(ViolationKind::Liveness, "liveness: the final reads did not finish".into());
    }
    // Let every member catch up, then compare logs and pages.
    let settle_end = step + 10_000;
    while ok && step < settle_end {
        if harness.members_settled() {
            break;
        }
        step += 1;
        ok = harness.step(step);
    }
    world.phase.set(Phase::Done);
    if harness.panicked {
        return harness.abandon(step);
    }
    if ok {
        harness.compare_pages();
        harness.compare_logs();
        let up = harness.slots[..NODES].iter().filter(|s| s.node.borrow().is_some()).count();
        if up != NODES {
            world.violation(
                ViolationKind::NodeStart,
                format!("liveness: only {up} of {NODES} nodes came back up"),
            );
        }
    }
    let history = world.history.borrow().clone();
    for violation in check::check(&history) {
        match violation.lost_write() {
            Some((w, r)) => world.violation(
                ViolationKind::LostWrite,
                format!(
                    "not linearizable, an acknowledged write lost (#{w} returned before #{r} was invoked, which saw an older value): {violation}"
                ),
            ),
            None => world.violation(ViolationKind::NotLinearizable, format!("not linearizable: {violation}")),
        }
    }
    let writes = world.writes.borrow().clone();
    for (key, value, _) in world.weak_reads.borrow().iter() {
        if let Some(value) = value {
            if writes.get(value) != Some(key) {
                world.violation(
                    ViolationKind::Reads,
                    format!("weak read of key {key} saw {value}, which no client wrote there"),
                );
            }
        }
    }
    for text in min_index_violations(&world) {
        world.violation(ViolationKind::Reads, text);
    }
    let mut report = std::mem::take(&mut harness.report);
    report.ops_checked = history.len() + world.weak_reads.borrow().len();
    report.writes_acked = world.writes_acked.get();
    report.sim_ms = step * TICK_MS;
    report.violations = world.violations_reported();
    report.violation_kinds = world.violation_kinds.borrow().clone();
    report.trace_hash = world.trace.borrow().finish();
    // Nodes down before the directory goes.
    for slot in &harness.slots {
        drop(slot.node.borrow_mut().take());
    }
    drop(harness);
    report
}
