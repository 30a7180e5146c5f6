//! Coalesced requests (`Connection::request_group`): for random request streams, every request gets the
//! answer it gets when the requests run one at a time, in order, each on a fresh connection (what a bop
//! node did before it coalesced), and the database ends up the same.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bop_sql::{
    Connection, FrameSink, GroupRequest, InterruptHandle, Limits, LocalSink, OpenMode, Params,
    RequestOutcome, SinkError, SqlConfig, SqlEngine, Statement, Value,
};
use bop_storage::page_store::{Db, Manager, ManagerConfig};
use proptest::prelude::*;

const SCHEMA: &[&str] = &[
    "CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT UNIQUE, v INTEGER NOT NULL CHECK (v >= 0))",
    "CREATE TABLE log (id INTEGER PRIMARY KEY AUTOINCREMENT, msg TEXT NOT NULL)",
    "CREATE TABLE big (id INTEGER PRIMARY KEY, b BLOB)",
    "CREATE TRIGGER no_666 BEFORE INSERT ON t WHEN NEW.v = 666 BEGIN SELECT RAISE(ROLLBACK, 'v 666 refused'); END",
    "CREATE TRIGGER log_delete AFTER DELETE ON t BEGIN INSERT INTO log(msg) VALUES ('deleted ' || OLD.k); END",
];

/// Most held pages of one bop transaction in these tests: every request alone fits (at most two `big`
/// inserts of at most 14 KB each), a group of them often does not.
const PENDING_PAGES_MAX: usize = 20;

/// Time limit of requests with a runaway statement.
const RUNAWAY_LIMIT: Duration = Duration::from_millis(30);

/// An infinite write: only a time limit stops it (and its interruption rolls back the whole transaction).
const RUNAWAY_WRITE: &str = "INSERT INTO log(msg) SELECT 'runaway' FROM \
                             (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c) \
                             WHERE x = 0";
/// An infinite read.
const RUNAWAY_READ: &str =
    "SELECT count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c)";

/// Bytes whose presence in a committed page makes [`PoisonSink`] refuse the commit.
const POISON: &[u8] = b"POISON-PILL";

fn text(s: impl Into<String>) -> Value {
    Value::Text(s.into())
}

fn key() -> impl Strategy<Value = Value> {
    (0..6u8).prop_map(|k| text(format!("k{k}")))
}

/// One statement: writes that succeed or violate a constraint, conflict resolutions that roll back the
/// whole transaction, reads of `changes()` and `last_insert_rowid()`, bad SQL, big rows, statements that
/// need a session of their own, runaway statements (with `poison`, commits the sink refuses).
fn statement(poison: bool) -> BoxedStrategy<(Statement, bool)> {
    let plain = prop_oneof![
        6 => (key(), -2..9i64).prop_map(|(k, v)| Statement::with_params(
            "INSERT INTO t(k, v) VALUES (?, ?)", Params::Positional(vec![k, Value::Integer(v)]))),
        4 => (key(), -3..5i64).prop_map(|(k, v)| Statement::with_params(
            "INSERT INTO t(k, v) VALUES (:k, :v) ON CONFLICT(k) DO UPDATE SET v = v + excluded.v",
            Params::Named(vec![("k".into(), k), (":v".into(), Value::Integer(v))]))),
        2 => (key(), 0..5i64).prop_map(|(k, v)| Statement::with_params(
            "INSERT OR ROLLBACK INTO t(k, v) VALUES (?, ?)", Params::Positional(vec![k, Value::Integer(v)]))),
        1 => key().prop_map(|k| Statement::with_params(
            "INSERT INTO t(k, v) VALUES (?, 666)", Params::Positional(vec![k]))),
        4 => (key(), -4..4i64).prop_map(|(k, d)| Statement::with_params(
            "UPDATE t SET v = v + ? WHERE k = ?", Params::Positional(vec![Value::Integer(d), k]))),
        2 => key().prop_map(|k| Statement::with_params("DELETE FROM t WHERE k = ?", Params::Positional(vec![k]))),
        3 => Just(Statement::new("SELECT changes(), last_insert_rowid()")),
        1 => Just(Statement::new("SELECT count(*) FROM sqlite_temp_master WHERE name = 'scratch'")),
        2 => Just(Statement::new("SELECT k, v FROM t ORDER BY k")),
        3 => (0..1000u32).prop_map(|n| Statement::with_params(
            "INSERT INTO log(msg) VALUES (?)", Params::Positional(vec![text(format!("m{n}"))]))),
        1 => Just(Statement::new("INSERT INTO log(msg) VALUES ('a'); INSERT INTO log(msg) VALUES ('b'); SELECT changes()")),
        1 => prop_oneof![
            Just(Statement::new("INSERT INTO nosuch VALUES (1)")),
            Just(Statement::new("SELEC 1")),
            Just(Statement::with_params("INSERT INTO log(msg) VALUES (?)", Params::Positional(vec![]))),
            Just(Statement::new("INSERT INTO log(msg) VALUES (NULL)")),
        ],
        12 => (8_000..14_000i64).prop_map(|n| Statement::with_params(
            "INSERT INTO big(b) VALUES (zeroblob(?))", Params::Positional(vec![Value::Integer(n)]))),
        1 => Just(Statement::new("DELETE FROM big WHERE id = (SELECT min(id) FROM big)")),
        1 => prop_oneof![
            Just(Statement::new("PRAGMA foreign_keys")),
            Just(Statement::new("BEGIN")),
            Just(Statement::new("COMMIT")),
            Just(Statement::new("SAVEPOINT s1")),
            Just(Statement::new("RELEASE s1")),
            Just(Statement::new("CREATE TEMP TABLE scratch(x); INSERT INTO scratch VALUES (1)")),
        ],
    ]
    .prop_map(|s| (s, false));
    let runaway =
        prop_oneof![Just(RUNAWAY_WRITE), Just(RUNAWAY_READ)].prop_map(|s| (Statement::new(s), true));
    if !poison {
        return prop_oneof![60 => plain, 1 => runaway].boxed();
    }
    let poisoned = Just((
        Statement::with_params(
            "INSERT INTO log(msg) VALUES (?)",
            Params::Positional(vec![text("POISON-PILL")]),
        ),
        false,
    ));
    prop_oneof![60 => plain, 1 => runaway, 3 => poisoned].boxed()
}

/// How a request is stopped before it runs, if it is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stopped {
    No,
    /// Its client went away: its interrupt handle was used.
    Interrupted,
    /// Its deadline passed.
    Expired,
}

#[derive(Debug, Clone)]
struct Request {
    statements: Vec<Statement>,
    transaction: bool,
    stopped: Stopped,
    /// A runaway statement: the request has a short time limit.
    runaway: bool,
    rows_max: Option<u64>,
}

fn request(poison: bool) -> impl Strategy<Value = Request> {
    let stopped =
        prop_oneof![40 => Just(Stopped::No), 1 => Just(Stopped::Interrupted), 1 => Just(Stopped::Expired)];
    let rows_max = prop_oneof![12 => Just(None), 1 => Just(Some(3u64))];
    (prop::collection::vec(statement(poison), 1..5), any::<bool>(), stopped, rows_max)
        .prop_filter("two big inserts at most", |(statements, ..)| {
            statements.iter().filter(|(s, _)| s.sql.contains("zeroblob")).count() <= 2
        })
        .prop_map(|(statements, transaction, stopped, rows_max)| Request {
            runaway: statements.iter().any(|(_, runaway)| *runaway),
            statements: statements.into_iter().map(|(s, _)| s).collect(),
            transaction,
            stopped,
            rows_max,
        })
}

/// A stream of requests, how it is cut into groups (sizes; the last group takes the rest), and how the
/// coalesced side runs them.
fn stream(poison: bool) -> impl Strategy<Value = (Vec<Request>, Vec<usize>, Runner)> {
    (
        prop::collection::vec(request(poison), 1..36),
        prop::collection::vec(1..12usize, 1..12),
        (any::<bool>(), any::<bool>(), any::<bool>())
            .prop_map(|(reuse, small_cache, short_answers)| Runner { reuse, small_cache, short_answers }),
    )
}

/// How the coalesced side runs its groups.
#[derive(Debug, Clone, Copy)]
struct Runner {
    /// One connection for every group (else a fresh one per group, as a node does).
    reuse: bool,
    /// A page cache of 8 pages on the connections it opens, so that SQLite spills held pages to the
    /// WAL while statements run (and a group's transaction can run out of room in the middle of a
    /// request, not only at its commit).
    small_cache: bool,
    /// An answer bound of 100 bytes on the connections it opens, so that a transaction ends (commits) after
    /// its first request that answers a row.
    short_answers: bool,
}

impl Request {
    fn limits(&self) -> Limits {
        Limits {
            time_max: self.runaway.then_some(RUNAWAY_LIMIT),
            deadline: (self.stopped == Stopped::Expired).then(Instant::now),
            rows_max: self.rows_max,
            bytes_max: None,
        }
    }

    fn interrupt(&self) -> Option<InterruptHandle> {
        let handle = InterruptHandle::new();
        if self.stopped == Stopped::Interrupted {
            handle.interrupt();
        }
        Some(handle)
    }

    /// Runs the request alone on `conn`, as a bop node did before coalescing.
    fn run_alone(&self, conn: &mut Connection) -> RequestOutcome {
        conn.set_limits(self.limits());
        if self.stopped == Stopped::Interrupted {
            conn.interrupt_handle().interrupt();
        }
        if self.transaction {
            conn.request_batch(&self.statements).map(|done| done.into_iter().map(Ok).collect())
        } else {
            conn.request_each(&self.statements)
        }
    }
}

/// An answer as compared: results and outcomes exactly, errors by their message (a time limit's message
/// names the limit, which depends on when the request started: only "time limit" is kept).
fn show(outcome: &RequestOutcome) -> String {
    let error = |e: &bop_sql::SqlError| {
        let message = e.to_string();
        if message.starts_with("statement time limit") {
            "statement time limit exceeded".to_owned()
        } else {
            message
        }
    };
    match outcome {
        Ok(results) => results
            .iter()
            .map(|r| match r {
                Ok(done) => format!("{done:?}"),
                Err(e) => format!("error: {}", error(e)),
            })
            .collect::<Vec<_>>()
            .join("; "),
        Err(e) => format!("request error: {}", error(e)),
    }
}

/// The database's contents, as compared.
fn dump(conn: &mut Connection) -> Vec<Vec<Vec<Value>>> {
    [
        "SELECT * FROM t ORDER BY id",
        "SELECT * FROM log ORDER BY id",
        "SELECT id, length(b) FROM big ORDER BY id",
    ]
    .iter()
    .chain(&["SELECT name, seq FROM sqlite_sequence ORDER BY name"])
    .map(|sql| conn.query(sql, &Params::None).unwrap_or_else(|e| panic!("{sql}: {e}")).rows)
    .collect()
}

fn schema(conn: &mut Connection) {
    conn.execute_batch(&SCHEMA.iter().map(|sql| Statement::new(*sql)).collect::<Vec<_>>()).unwrap();
}

/// A bop engine over a simulated disk (no real fsyncs), with the test's transaction bound.
fn bop_engine(dir: &Path, sink: Arc<dyn FrameSink>) -> SqlEngine {
    let mut config = ManagerConfig::new(dir.join("node"));
    config.io = Arc::new(bop_storage::io::SimDisk::new(1));
    config.wal.segment_size_bytes = 1 << 20;
    config.wal.preallocate = bop_storage::wal::Preallocate::Allocate;
    let manager = Manager::open(config).unwrap();
    let mut sql = SqlConfig::new(dir.join("sql"));
    sql.pending_bytes_max = PENDING_PAGES_MAX * 4096;
    SqlEngine::new(manager, sink, sql).unwrap()
}

/// Runs `requests` cut into `groups` through `request_group`, as `runner` says.
fn coalesced(
    engine: &SqlEngine,
    requests: &[Request],
    groups: &[usize],
    runner: Runner,
) -> Vec<RequestOutcome> {
    let open = || {
        let mut conn = engine.open("db", OpenMode::CreateIfMissing).unwrap();
        if runner.small_cache {
            conn.execute("PRAGMA cache_size=8", &Params::None).unwrap();
        }
        if runner.short_answers {
            conn.set_limits(Limits { bytes_max: Some(100), ..conn.limits() });
        }
        conn
    };
    let mut conn = open();
    let mut outcomes = Vec::new();
    let mut rest = requests;
    let mut sizes = groups.iter().copied().chain(std::iter::repeat(usize::MAX));
    while !rest.is_empty() {
        let size = sizes.next().unwrap_or(usize::MAX).min(rest.len());
        let (group, later) = rest.split_at(size);
        rest = later;
        if !runner.reuse {
            conn = open();
        }
        let group: Vec<GroupRequest> = group
            .iter()
            .map(|r| GroupRequest {
                statements: &r.statements,
                transaction: r.transaction,
                limits: r.limits(),
                interrupt: r.interrupt(),
            })
            .collect();
        outcomes.extend(conn.request_group(&group));
    }
    outcomes
}

fn assert_same(requests: &[Request], coalesced: &[RequestOutcome], alone: &[RequestOutcome]) {
    assert_eq!(coalesced.len(), requests.len());
    for (i, ((request, got), want)) in requests.iter().zip(coalesced).zip(alone).enumerate() {
        assert_eq!(show(got), show(want), "request {i} {request:?}");
    }
}

/// 40 streams per property unless `PROPTEST_CASES` says otherwise.
fn config() -> ProptestConfig {
    let cases =
        if std::env::var_os("PROPTEST_CASES").is_some() { ProptestConfig::default().cases } else { 40 };
    ProptestConfig { cases, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    /// Against stock SQLite, one request at a time on a fresh connection each.
    #[test]
    fn coalesced_requests_answer_as_stock_sqlite_one_at_a_time((requests, groups, runner) in stream(false)) {
        let dir = tempfile::tempdir().unwrap();
        let stock_path = dir.path().join("stock.db");
        let mut stock = Connection::open_stock(&stock_path).unwrap();
        stock.execute("PRAGMA journal_mode=WAL", &Params::None).unwrap();
        schema(&mut stock);
        let alone: Vec<RequestOutcome> = requests
            .iter()
            .map(|r| {
                let mut conn = Connection::open_stock(&stock_path).unwrap();
                conn.execute("PRAGMA synchronous=OFF", &Params::None).unwrap();
                r.run_alone(&mut conn)
            })
            .collect();

        let engine = bop_engine(dir.path(), Arc::new(LocalSink));
        let mut conn = engine.open("db", OpenMode::CreateIfMissing).unwrap();
        schema(&mut conn);
        let got = coalesced(&engine, &requests, &groups, runner);
        assert_same(&requests, &got, &alone);
        prop_assert_eq!(dump(&mut conn), dump(&mut stock));
        let check = conn.query("PRAGMA integrity_check", &Params::None).unwrap().rows;
        prop_assert_eq!(check, vec![vec![text("ok")]]);
    }

    /// With a sink that refuses some commits (and so some groups' commits), against the same sink one
    /// request at a time.
    #[test]
    fn coalesced_requests_answer_as_one_at_a_time_when_the_sink_refuses_commits(
        (requests, groups, runner) in stream(true)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let engine = bop_engine(&dir.path().join("alone"), Arc::new(PoisonSink));
        let mut reference = engine.open("db", OpenMode::CreateIfMissing).unwrap();
        schema(&mut reference);
        let alone: Vec<RequestOutcome> = requests
            .iter()
            .map(|r| r.run_alone(&mut engine.open("db", OpenMode::Existing).unwrap()))
            .collect();

        let grouped = bop_engine(&dir.path().join("grouped"), Arc::new(PoisonSink));
        let mut conn = grouped.open("db", OpenMode::CreateIfMissing).unwrap();
        schema(&mut conn);
        let got = coalesced(&grouped, &requests, &groups, runner);
        assert_same(&requests, &got, &alone);
        prop_assert_eq!(dump(&mut conn), dump(&mut reference));
    }
}

/// Commits locally, refusing any whose pages hold [`POISON`].
struct PoisonSink;

impl FrameSink for PoisonSink {
    fn commit(
        &self,
        db: &Db,
        frames: &[(u32, &[u8])],
        pages: u32,
        read_index: u64,
    ) -> Result<u64, SinkError> {
        if frames.iter().any(|(_, page)| page.windows(POISON.len()).any(|w| w == POISON)) {
            return Err(SinkError::Rejected { reason: "poisoned commit refused".into() });
        }
        LocalSink.commit(db, frames, pages, read_index)
    }
}

/// Counts commit attempts and successes; refuses commits holding [`POISON`], and fails the next
/// `fail_next` commits with `failure`.
#[derive(Default)]
struct CountingSink {
    attempts: std::sync::atomic::AtomicU64,
    commits: std::sync::atomic::AtomicU64,
    fail_next: std::sync::atomic::AtomicU64,
    unknown: bool,
}

impl FrameSink for CountingSink {
    fn commit(
        &self,
        db: &Db,
        frames: &[(u32, &[u8])],
        pages: u32,
        read_index: u64,
    ) -> Result<u64, SinkError> {
        use std::sync::atomic::Ordering::SeqCst;
        self.attempts.fetch_add(1, SeqCst);
        if self.fail_next.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(if self.unknown {
                SinkError::OutcomeUnknown { reason: "outcome unknown: test".into() }
            } else {
                SinkError::Unavailable { reason: "not the leader (test)".into() }
            });
        }
        let index = PoisonSink.commit(db, frames, pages, read_index)?;
        self.commits.fetch_add(1, SeqCst);
        Ok(index)
    }
}

impl CountingSink {
    fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::SeqCst;
        (self.attempts.load(SeqCst), self.commits.load(SeqCst))
    }
}

fn insert(k: &str, v: i64) -> Statement {
    Statement::with_params(
        "INSERT INTO t(k, v) VALUES (?, ?)",
        Params::Positional(vec![text(k), Value::Integer(v)]),
    )
}

fn plain(statements: &[Statement], transaction: bool) -> GroupRequest<'_> {
    GroupRequest { statements, transaction, limits: Limits::NONE, interrupt: None }
}

fn counted_engine(dir: &Path, sink: Arc<CountingSink>) -> (SqlEngine, Connection) {
    let engine = bop_engine(dir, sink);
    let mut conn = engine.open("db", OpenMode::CreateIfMissing).unwrap();
    schema(&mut conn);
    (engine, conn)
}

fn rows_of(conn: &mut Connection, sql: &str) -> Vec<Vec<Value>> {
    conn.query(sql, &Params::None).unwrap().rows
}

#[test]
fn a_group_is_one_commit_and_each_request_gets_its_own_answer() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(CountingSink::default());
    let (_engine, mut conn) = counted_engine(dir.path(), sink.clone());
    let before = sink.counts();
    let requests: Vec<Vec<Statement>> = vec![
        vec![insert("a", 1)],
        vec![insert("b", 2), Statement::new("SELECT changes(), last_insert_rowid()")],
        // All or nothing: its second statement fails, so its first is not written either.
        vec![insert("c", 3), insert("a", 9)],
        // Each statement alone: only the failed one is undone.
        vec![insert("d", 4), insert("b", 9), insert("e", 5)],
        vec![Statement::new("SELECT changes(), last_insert_rowid()")],
    ];
    let group: Vec<GroupRequest> =
        requests.iter().enumerate().map(|(i, statements)| plain(statements, i == 2)).collect();
    let answers = conn.request_group(&group);
    let shown: Vec<String> = answers.iter().map(show).collect();
    assert_eq!(
        shown,
        [
            "(None, ExecOutcome { rows_affected: 1, last_insert_rowid: 1 })",
            "(None, ExecOutcome { rows_affected: 1, last_insert_rowid: 2 }); (Some(Rows { columns: [Column { name: \"changes()\", decl_type: None, table: None }, Column { name: \"last_insert_rowid()\", decl_type: None, table: None }], rows: [[Integer(1), Integer(2)]] }), ExecOutcome { rows_affected: 1, last_insert_rowid: 2 })",
            "request error: SQLite error 2067: UNIQUE constraint failed: t.k",
            "(None, ExecOutcome { rows_affected: 1, last_insert_rowid: 3 }); error: SQLite error 2067: UNIQUE constraint failed: t.k; (None, ExecOutcome { rows_affected: 1, last_insert_rowid: 4 })",
            // As on a fresh connection: nothing changed yet, no rowid.
            "(Some(Rows { columns: [Column { name: \"changes()\", decl_type: None, table: None }, Column { name: \"last_insert_rowid()\", decl_type: None, table: None }], rows: [[Integer(0), Integer(0)]] }), ExecOutcome { rows_affected: 0, last_insert_rowid: 0 })",
        ]
    );
    let (attempts, commits) = sink.counts();
    assert_eq!((attempts - before.0, commits - before.1), (1, 1), "one commit for the whole group");
    let keys = rows_of(&mut conn, "SELECT k FROM t ORDER BY id");
    assert_eq!(keys, [["a"], ["b"], ["d"], ["e"]].map(|k| vec![text(k[0])]));
}

#[test]
fn a_rollback_by_conflict_resolution_takes_nothing_of_the_others_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(CountingSink::default());
    let (_engine, mut conn) = counted_engine(dir.path(), sink.clone());
    let before = sink.counts();
    let requests: Vec<Vec<Statement>> = vec![
        vec![insert("a", 1)],
        vec![Statement::with_params("INSERT OR ROLLBACK INTO t(k, v) VALUES ('a', 2)", Params::None)],
        vec![insert("x", 666)],
        vec![insert("b", 3)],
    ];
    let group: Vec<GroupRequest> = requests.iter().map(|s| plain(s, false)).collect();
    let answers: Vec<String> = conn.request_group(&group).iter().map(show).collect();
    assert!(answers[0].contains("rows_affected: 1"), "{answers:?}");
    assert_eq!(answers[1], "request error: SQLite error 2067: UNIQUE constraint failed: t.k");
    assert_eq!(answers[2], "request error: SQLite error 1811: v 666 refused");
    assert!(answers[3].contains("last_insert_rowid: 2"), "{answers:?}");
    assert_eq!(rows_of(&mut conn, "SELECT k FROM t ORDER BY id"), [vec![text("a")], vec![text("b")]]);
    let (_, commits) = sink.counts();
    // "a" is committed once run again without the rest, "b" after the two that lost their transaction.
    assert_eq!(commits - before.1, 2);
}

#[test]
fn a_request_interrupted_while_it_runs_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(CountingSink::default());
    let (_engine, mut conn) = counted_engine(dir.path(), sink.clone());
    let before = sink.counts();
    let (first, runaway, last) =
        (vec![insert("a", 1)], vec![Statement::new(RUNAWAY_WRITE)], vec![insert("b", 2)]);
    let handle = InterruptHandle::new();
    let group = [
        plain(&first, false),
        GroupRequest {
            statements: &runaway,
            transaction: false,
            limits: Limits::NONE,
            interrupt: Some(handle.clone()),
        },
        plain(&last, true),
    ];
    // The client of the runaway request goes away while it runs.
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        handle.interrupt();
    });
    let started = Instant::now();
    let answers: Vec<String> = conn.request_group(&group).iter().map(show).collect();
    stopper.join().unwrap();
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(answers[0].contains("rows_affected: 1"), "{answers:?}");
    assert_eq!(answers[1], "request error: statement interrupted (client gone or node shutting down)");
    assert!(answers[2].contains("rows_affected: 1"), "{answers:?}");
    assert_eq!(rows_of(&mut conn, "SELECT k FROM t ORDER BY id"), [vec![text("a")], vec![text("b")]]);
    assert_eq!(rows_of(&mut conn, "SELECT count(*) FROM log"), [vec![Value::Integer(0)]]);
    assert_eq!(sink.counts().1 - before.1, 1, "the other two still commit together");
}

#[test]
fn the_engine_shutting_down_stops_every_request_not_yet_committed() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(CountingSink::default());
    let (engine, mut conn) = counted_engine(dir.path(), sink.clone());
    let engine = Arc::new(engine);
    let before = sink.counts();
    let (first, runaway, last) =
        (vec![insert("a", 1)], vec![Statement::new(RUNAWAY_READ)], vec![insert("b", 2)]);
    let group = [plain(&first, false), plain(&runaway, false), plain(&last, false)];
    let stopping = Arc::clone(&engine);
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        stopping.shutdown();
    });
    let answers: Vec<String> = conn.request_group(&group).iter().map(show).collect();
    stopper.join().unwrap();
    let stopped = "request error: node shutting down: SQL statements are no longer run";
    assert_eq!(answers, [stopped, stopped, stopped]);
    assert_eq!(sink.counts(), before, "nothing was committed");
}

#[test]
fn a_group_whose_commit_is_refused_runs_each_request_alone() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(CountingSink::default());
    let (_engine, mut conn) = counted_engine(dir.path(), sink.clone());
    let before = sink.counts();
    let poisoned = vec![Statement::with_params(
        "INSERT INTO log(msg) VALUES (?)",
        Params::Positional(vec![text("POISON-PILL")]),
    )];
    let (a, b) = (vec![insert("a", 1)], vec![insert("b", 2)]);
    let group = [plain(&a, false), plain(&poisoned, false), plain(&b, true)];
    let answers: Vec<String> = conn.request_group(&group).iter().map(show).collect();
    assert!(
        answers[0].contains("rows_affected: 1") && answers[2].contains("rows_affected: 1"),
        "{answers:?}"
    );
    assert!(answers[1].contains("poisoned commit refused"), "{answers:?}");
    let (attempts, commits) = sink.counts();
    assert_eq!((attempts - before.0, commits - before.1), (4, 2), "the group, then each alone");
    assert_eq!(rows_of(&mut conn, "SELECT k FROM t ORDER BY id"), [vec![text("a")], vec![text("b")]]);
}

#[test]
fn a_commit_of_unknown_outcome_or_a_sink_that_takes_none_is_not_retried() {
    for unknown in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(CountingSink { unknown, ..CountingSink::default() });
        let (_engine, mut conn) = counted_engine(dir.path(), sink.clone());
        let before = sink.counts();
        sink.fail_next.store(1, std::sync::atomic::Ordering::SeqCst);
        let (a, b) = (vec![insert("a", 1)], vec![insert("b", 2)]);
        let answers: Vec<String> =
            conn.request_group(&[plain(&a, false), plain(&b, false)]).iter().map(show).collect();
        let reason = if unknown { "outcome unknown: test" } else { "not the leader (test)" };
        assert!(answers.iter().all(|a| a.starts_with("request error") && a.contains(reason)), "{answers:?}");
        assert_eq!(sink.counts().0 - before.0, 1, "no request was run again");
    }
}

#[test]
fn answers_are_delivered_as_each_transaction_commits_which_holds_at_most_the_answer_bound() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(CountingSink::default());
    let (_engine, mut conn) = counted_engine(dir.path(), sink.clone());
    // Each request answers a 4 KB blob: a transaction holds three (more than 10 KB) and commits.
    conn.set_limits(Limits { bytes_max: Some(10_000), ..Limits::NONE });
    let before = sink.counts().1;
    let requests: Vec<Vec<Statement>> =
        (0..6).map(|i| vec![insert(&format!("k{i}"), i), Statement::new("SELECT zeroblob(4000)")]).collect();
    let group: Vec<GroupRequest> = requests.iter().map(|s| plain(s, false)).collect();
    let mut delivered = Vec::new();
    conn.request_group_with(&group, &mut |i, outcome| {
        assert!(outcome.is_ok(), "{i}: {outcome:?}");
        delivered.push((i, sink.counts().1 - before));
    });
    // Requests 0-2 are answered after the first commit, before the second.
    assert_eq!(delivered, [(0, 1), (1, 1), (2, 1), (3, 2), (4, 2), (5, 2)]);
    assert_eq!(rows_of(&mut conn, "SELECT count(*) FROM t"), [vec![Value::Integer(6)]]);
}
