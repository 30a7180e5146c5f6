//! Bounds on a call's work: time limits, interrupts from another thread, the engine's shutdown, answer
//! bounds, and what an interrupted write leaves behind.

mod common;

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bop_sql::{
    AnswerUnit, Connection, Limits, OpenMode, Params, SqlConfig, SqlEngine, SqlError, Statement, Value,
};
use common::*;

/// Counts to 10^10: hours of work, unless stopped.
const COUNT_FOREVER: &str =
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10000000000) \
                             SELECT count(*) FROM c";
/// Inserts 10^10 rows: stopped long before the transaction bound, it holds frames (and spills) meanwhile.
const INSERT_FOREVER: &str = "INSERT INTO t WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c \
                              WHERE x < 10000000000) SELECT x FROM c";
/// Generates 10^9 rows.
const MANY_ROWS: &str =
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000) SELECT x FROM c";
/// How long a stopped statement may take to return (generous for a loaded debug build; a statement that
/// is not stopped runs for hours).
const STOP_WITHIN: Duration = Duration::from_secs(5);
/// How long a thread must still be running for the test to take its statement as under way.
const STILL_RUNNING: Duration = Duration::from_millis(300);

fn limits(time_max: Option<Duration>) -> Limits {
    Limits { time_max, ..Limits::NONE }
}

fn with_table(engine: &SqlEngine, name: &str) -> Connection {
    let mut conn = open(engine, name);
    exec(&mut conn, "CREATE TABLE t(x)");
    exec(&mut conn, "INSERT INTO t VALUES (1), (2), (3)");
    conn
}

#[test]
fn defaults_are_configured_and_given_to_connections() {
    let dir = tempfile::tempdir().unwrap();
    let config = SqlConfig::new(dir.path().join("sql"));
    assert_eq!(config.statement_time_max, Some(Duration::from_secs(60)));
    assert_eq!(config.answer_rows_max, Some(1_000_000));
    assert_eq!(config.answer_bytes_max, Some(64 << 20));
    let engine = engine(dir.path());
    let conn = open(&engine, "defaults");
    assert_eq!(conn.limits(), config.default_limits());
    assert_eq!(engine.default_limits(), config.default_limits());
    assert_eq!(Connection::open_stock(dir.path().join("stock.db")).unwrap().limits(), Limits::NONE);
}

#[test]
fn recursive_count_is_stopped_by_the_time_limit() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let mut conn = open(&engine, "clock");
    conn.set_limits(limits(Some(Duration::from_millis(200))));
    let start = Instant::now();
    let err = conn.query(COUNT_FOREVER, &Params::None).unwrap_err();
    let elapsed = start.elapsed();
    assert!(matches!(err, SqlError::Timeout { limit } if limit == Duration::from_millis(200)), "{err}");
    assert_eq!(err.to_string(), "statement time limit of 200ms exceeded");
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    assert!(elapsed < STOP_WITHIN, "{elapsed:?}");
    // The limit is per call: the next one has its own 200 ms.
    assert_eq!(int(&mut conn, "SELECT 1 + 1"), 2);
}

#[test]
fn a_deadline_bounds_calls_and_a_passed_one_refuses_them_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let mut conn = open(&engine, "deadline");
    let deadline = Instant::now() + Duration::from_millis(200);
    // The earlier of the two applies.
    conn.set_limits(Limits {
        time_max: Some(Duration::from_secs(3600)),
        deadline: Some(deadline),
        ..Limits::NONE
    });
    let err = conn.query(COUNT_FOREVER, &Params::None).unwrap_err();
    assert!(matches!(err, SqlError::Timeout { .. }), "{err}");
    assert!(Instant::now() >= deadline);
    assert!(deadline.elapsed() < STOP_WITHIN);
    // Past the deadline nothing runs, not even a trivial statement.
    let err = conn.query("SELECT 1", &Params::None).unwrap_err();
    assert!(matches!(err, SqlError::Timeout { limit } if limit == Duration::ZERO), "{err}");
    conn.set_limits(Limits::NONE);
    assert_eq!(int(&mut conn, "SELECT 1"), 1);
}

#[test]
fn the_interrupt_handle_stops_a_running_statement_from_another_thread() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let conn = open(&engine, "interrupt");
    let handle = conn.interrupt_handle();
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let mut conn = conn;
        conn.set_limits(Limits::NONE);
        tx.send(conn.query(COUNT_FOREVER, &Params::None).map(|_| ())).unwrap();
        conn
    });
    assert!(matches!(rx.recv_timeout(STILL_RUNNING), Err(mpsc::RecvTimeoutError::Timeout)));
    let start = Instant::now();
    handle.interrupt();
    let err = rx.recv_timeout(STOP_WITHIN).expect("the statement stops").unwrap_err();
    assert!(start.elapsed() < STOP_WITHIN);
    assert!(matches!(err, SqlError::Interrupted), "{err}");
    assert_eq!(err.to_string(), "statement interrupted (client gone or node shutting down)");
    let mut conn = worker.join().unwrap();

    // Sticky until cleared, so that an interrupt sent before a call starts is not lost.
    assert!(handle.is_interrupted());
    assert!(matches!(conn.query("SELECT 1", &Params::None), Err(SqlError::Interrupted)));
    conn.clear_interrupt();
    assert!(!handle.is_interrupted());
    assert_eq!(int(&mut conn, "SELECT 1"), 1);

    // Using the handle after the connection is gone is harmless.
    drop(conn);
    handle.interrupt();
}

#[test]
fn the_interrupt_handle_works_on_stock_connections_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = Connection::open_stock(dir.path().join("stock.db")).unwrap();
    let handle = conn.interrupt_handle();
    let (tx, rx) = mpsc::channel();
    let interrupter = std::thread::spawn(move || {
        // Interrupt once the main thread says its statement is about to start (it may already run).
        rx.recv().unwrap();
        handle.interrupt();
    });
    tx.send(()).unwrap();
    let start = Instant::now();
    let err = conn.query(COUNT_FOREVER, &Params::None).unwrap_err();
    assert!(matches!(err, SqlError::Interrupted), "{err}");
    assert!(start.elapsed() < STOP_WITHIN);
    interrupter.join().unwrap();
}

/// What a test expects of table `t` after a write was stopped: its three rows, no new commit, intact, and
/// a next write commits.
fn assert_unchanged_and_writable(engine: &SqlEngine, conn: &mut Connection, applied: u64) {
    conn.clear_interrupt();
    conn.set_limits(Limits::NONE);
    assert!(conn.is_autocommit());
    assert_eq!(int(conn, "SELECT count(*) FROM t"), 3);
    assert_eq!(engine.manager().applied_index(), applied);
    assert_integrity(conn);
    exec(conn, "INSERT INTO t VALUES (4)");
    assert!(engine.manager().applied_index() > applied);
    let mut other = open(engine, "writes");
    assert_eq!(int(&mut other, "SELECT count(*) FROM t"), 4);
    assert_eq!(int(&mut other, "SELECT sum(x) FROM t"), 10);
    exec(conn, "DELETE FROM t WHERE x = 4");
}

#[test]
fn an_interrupted_insert_select_leaves_the_table_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SqlConfig::new(dir.path().join("sql"));
    // Spill early, so that the stopped transaction also has frames in its spill file.
    config.held_memory_bytes_max = 16 * 4096;
    let engine = SqlEngine::local(manager(dir.path()), config).unwrap();
    let mut conn = with_table(&engine, "writes");
    // A small page cache, so that SQLite hands the virtual WAL frames before the commit.
    exec(&mut conn, "PRAGMA cache_size=20");
    let applied = engine.manager().applied_index();
    let spilled = engine.frames_spilled();
    let time = limits(Some(Duration::from_millis(200)));

    // Autocommit.
    conn.set_limits(time);
    let start = Instant::now();
    let err = conn.execute(INSERT_FOREVER, &Params::None).unwrap_err();
    assert!(matches!(err, SqlError::Timeout { .. }), "{err}");
    assert!(start.elapsed() < STOP_WITHIN);
    assert!(engine.frames_spilled() > spilled, "the statement wrote frames before it was stopped");
    assert_unchanged_and_writable(&engine, &mut conn, applied);
    let applied = engine.manager().applied_index();

    // One transaction for the batch: the first statement's row goes too.
    conn.set_limits(time);
    let batch = [Statement::new("INSERT INTO t VALUES (100)"), Statement::new(INSERT_FOREVER)];
    let err = conn.request_batch(&batch).unwrap_err();
    assert!(matches!(err, SqlError::Timeout { .. }), "{err}");
    assert_unchanged_and_writable(&engine, &mut conn, applied);
    let applied = engine.manager().applied_index();

    // Statements standing alone (savepoints): a stopped statement ends the whole batch, nothing commits.
    conn.set_limits(time);
    let batch = [
        Statement::new("INSERT INTO t VALUES (100)"),
        Statement::new(INSERT_FOREVER),
        Statement::new("INSERT INTO t VALUES (200)"),
    ];
    let err = conn.request_each(&batch).unwrap_err();
    assert!(matches!(err, SqlError::Timeout { .. }), "{err}");
    assert_unchanged_and_writable(&engine, &mut conn, applied);
    let applied = engine.manager().applied_index();

    // The client's own transaction with a savepoint: SQLite rolls an interrupted write's transaction back.
    conn.set_limits(time);
    exec(&mut conn, "BEGIN");
    exec(&mut conn, "INSERT INTO t VALUES (100)");
    exec(&mut conn, "SAVEPOINT s");
    exec(&mut conn, "INSERT INTO t VALUES (200)");
    let err = conn.execute(INSERT_FOREVER, &Params::None).unwrap_err();
    assert!(matches!(err, SqlError::Timeout { .. }), "{err}");
    assert!(conn.is_autocommit(), "the interrupted write's transaction is rolled back");
    assert!(conn.execute("COMMIT", &Params::None).is_err(), "no transaction is left to commit");
    assert_unchanged_and_writable(&engine, &mut conn, applied);
    let applied = engine.manager().applied_index();

    // Interrupted from another thread rather than timed out.
    let handle = conn.interrupt_handle();
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        conn.set_limits(Limits::NONE);
        tx.send(conn.request_batch(&[Statement::new(INSERT_FOREVER)]).map(|_| ())).unwrap();
        conn
    });
    assert!(matches!(rx.recv_timeout(STILL_RUNNING), Err(mpsc::RecvTimeoutError::Timeout)));
    handle.interrupt();
    let err = rx.recv_timeout(STOP_WITHIN).expect("the write stops").unwrap_err();
    assert!(matches!(err, SqlError::Interrupted), "{err}");
    let mut conn = worker.join().unwrap();
    assert_unchanged_and_writable(&engine, &mut conn, applied);
}

#[test]
fn a_write_waiting_for_the_write_lock_is_stopped_too() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let mut holder = with_table(&engine, "writes");
    let mut waiter = open(&engine, "writes");
    exec(&mut holder, "BEGIN IMMEDIATE");
    exec(&mut holder, "INSERT INTO t VALUES (100)");

    // The busy timeout is 5 s; the time limit cuts the wait short.
    waiter.set_limits(limits(Some(Duration::from_millis(200))));
    let start = Instant::now();
    let err = waiter.execute("INSERT INTO t VALUES (200)", &Params::None).unwrap_err();
    assert!(matches!(err, SqlError::Timeout { .. }), "{err}");
    assert!(start.elapsed() < Duration::from_secs(4), "{:?}", start.elapsed());

    exec(&mut holder, "COMMIT");
    waiter.set_limits(Limits::NONE);
    exec(&mut waiter, "INSERT INTO t VALUES (200)");
    assert_eq!(int(&mut waiter, "SELECT count(*) FROM t"), 5);
}

#[test]
fn the_busy_timeout_still_applies_without_limits() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SqlConfig::new(dir.path().join("sql"));
    config.busy_timeout_ms = 200;
    let engine = SqlEngine::local(manager(dir.path()), config).unwrap();
    let mut holder = with_table(&engine, "writes");
    let mut waiter = open(&engine, "writes");
    exec(&mut holder, "BEGIN IMMEDIATE");
    let start = Instant::now();
    let err = waiter.execute("INSERT INTO t VALUES (200)", &Params::None).unwrap_err();
    let elapsed = start.elapsed();
    assert!(matches!(err, SqlError::Sqlite { code, .. } if code & 0xff == 5), "{err}");
    assert!(elapsed >= Duration::from_millis(200) && elapsed < STOP_WITHIN, "{elapsed:?}");
    exec(&mut holder, "ROLLBACK");
}

#[test]
fn an_answer_past_rows_max_fails_as_soon_as_the_bound_is_passed() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let mut conn = open(&engine, "rows");
    conn.set_limits(Limits { rows_max: Some(1000), ..Limits::NONE });
    let start = Instant::now();
    let err = conn.query(MANY_ROWS, &Params::None).unwrap_err();
    assert!(start.elapsed() < STOP_WITHIN, "stopped at the bound, not after 10^9 rows");
    assert!(matches!(err, SqlError::AnswerTooLarge { limit: 1000, unit: AnswerUnit::Rows }), "{err}");
    assert_eq!(err.to_string(), "answer too large: more than 1000 rows");

    // Exactly the bound is fine.
    let rows = conn.query(&MANY_ROWS.replace("1000000000", "1000"), &Params::None).unwrap();
    assert_eq!(rows.rows.len(), 1000);

    // The bound covers a whole call: two statements of 600 rows in one batch pass it.
    exec(&mut conn, "CREATE TABLE t(x)");
    let six_hundred = Statement::new(MANY_ROWS.replace("1000000000", "600"));
    let err = conn.request_batch(&[six_hundred.clone(), six_hundred.clone()]).unwrap_err();
    assert!(matches!(err, SqlError::AnswerTooLarge { unit: AnswerUnit::Rows, .. }), "{err}");

    // Standing alone, the statement past the bound fails by itself and is not counted; the others commit.
    let results = conn
        .request_each(&[
            six_hundred.clone(),
            six_hundred.clone(),
            Statement::new("INSERT INTO t VALUES (1)"),
            Statement::new(MANY_ROWS.replace("1000000000", "400")),
        ])
        .unwrap();
    assert_eq!(results[0].as_ref().unwrap().0.as_ref().unwrap().rows.len(), 600);
    assert!(matches!(results[1], Err(SqlError::AnswerTooLarge { .. })), "{:?}", results[1]);
    assert!(results[2].is_ok());
    assert_eq!(results[3].as_ref().unwrap().0.as_ref().unwrap().rows.len(), 400);
    conn.set_limits(Limits::NONE);
    assert_eq!(int(&mut conn, "SELECT count(*) FROM t"), 1);
}

#[test]
fn an_answer_past_bytes_max_fails_as_soon_as_the_bound_is_passed() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let mut conn = open(&engine, "bytes");
    conn.set_limits(Limits { bytes_max: Some(1 << 20), ..Limits::NONE });
    // 10^9 rows of 1 KB each (a terabyte), stopped after about a thousand.
    let kilobytes = MANY_ROWS.replace("SELECT x FROM c", "SELECT printf('%01000d', x) FROM c");
    let start = Instant::now();
    let err = conn.query(&kilobytes, &Params::None).unwrap_err();
    assert!(start.elapsed() < STOP_WITHIN, "stopped at the bound, not after 10^9 rows");
    assert!(
        matches!(err, SqlError::AnswerTooLarge { limit, unit: AnswerUnit::Bytes } if limit == 1 << 20),
        "{err}"
    );
    assert_eq!(err.to_string(), "answer too large: more than 1048576 bytes");

    // One value bigger than the bound is refused before it is copied.
    let err = conn.query("SELECT randomblob(2000000)", &Params::None).unwrap_err();
    assert!(matches!(err, SqlError::AnswerTooLarge { unit: AnswerUnit::Bytes, .. }), "{err}");

    // The count is what `Rows::answer_size` reports: an answer of exactly the bound passes.
    conn.set_limits(Limits::NONE);
    let sample = conn.query("SELECT 1, 'abc', x'0102', NULL, 2.5", &Params::None).unwrap();
    let (rows, bytes) = sample.answer_size();
    assert_eq!((rows, bytes), (1, 5 * 8 + 8 + 3 + 2 + 8));
    conn.set_limits(Limits { bytes_max: Some(bytes), ..Limits::NONE });
    assert_eq!(conn.query("SELECT 1, 'abc', x'0102', NULL, 2.5", &Params::None).unwrap(), sample);
    conn.set_limits(Limits { bytes_max: Some(bytes - 1), ..Limits::NONE });
    assert!(conn.query("SELECT 1, 'abc', x'0102', NULL, 2.5", &Params::None).is_err());
    assert_eq!(Value::Text("abcd".into()).answer_bytes(), 12);
}

#[test]
fn interrupt_all_stops_running_statements_but_not_later_ones() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(engine(dir.path()));
    let (tx, rx) = mpsc::channel();
    let workers: Vec<_> = (0..2)
        .map(|i| {
            let (engine, tx) = (engine.clone(), tx.clone());
            std::thread::spawn(move || {
                let mut conn = open(&engine, &format!("db{i}"));
                conn.set_limits(Limits::NONE);
                tx.send(conn.query(COUNT_FOREVER, &Params::None).map(|_| ())).unwrap();
                conn
            })
        })
        .collect();
    assert!(matches!(rx.recv_timeout(STILL_RUNNING), Err(mpsc::RecvTimeoutError::Timeout)));
    engine.interrupt_all();
    for _ in 0..2 {
        let err = rx.recv_timeout(STOP_WITHIN).expect("the statement stops").unwrap_err();
        assert!(matches!(err, SqlError::Interrupted), "{err}");
    }
    for worker in workers {
        let mut conn = worker.join().unwrap();
        assert_eq!(int(&mut conn, "SELECT 1"), 1);
    }
    assert!(!engine.is_shutting_down());
}

#[test]
fn shutdown_stops_running_statements_and_refuses_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(engine(dir.path()));
    let mut idle = with_table(&engine, "writes");
    let (tx, rx) = mpsc::channel();
    let reader = {
        let (engine, tx) = (engine.clone(), tx.clone());
        std::thread::spawn(move || {
            let mut conn = open(&engine, "writes");
            conn.set_limits(Limits::NONE);
            tx.send(conn.query(COUNT_FOREVER, &Params::None).map(|_| ())).unwrap();
            conn
        })
    };
    let writer = {
        let (engine, tx) = (engine.clone(), tx.clone());
        std::thread::spawn(move || {
            let mut conn = open(&engine, "writes");
            conn.set_limits(Limits::NONE);
            tx.send(conn.request_batch(&[Statement::new(INSERT_FOREVER)]).map(|_| ())).unwrap();
            conn
        })
    };
    let applied = engine.manager().applied_index();
    assert!(matches!(rx.recv_timeout(STILL_RUNNING), Err(mpsc::RecvTimeoutError::Timeout)));
    let start = Instant::now();
    engine.shutdown();
    for _ in 0..2 {
        let err = rx.recv_timeout(STOP_WITHIN).expect("the statement stops").unwrap_err();
        assert!(matches!(err, SqlError::ShuttingDown), "{err}");
    }
    assert!(start.elapsed() < STOP_WITHIN);
    assert!(engine.is_shutting_down());
    assert_eq!(engine.manager().applied_index(), applied);

    // Nothing new runs: not on the connections that were running, not on an idle one, not on a new one.
    let mut reader = reader.join().unwrap();
    let mut writer = writer.join().unwrap();
    for conn in [&mut reader, &mut writer, &mut idle] {
        let err = conn.query("SELECT count(*) FROM t", &Params::None).unwrap_err();
        assert!(matches!(err, SqlError::ShuttingDown), "{err}");
        assert!(conn.is_autocommit());
    }
    let err = engine.open("writes", OpenMode::Existing).err().expect("open refused");
    assert!(matches!(err, SqlError::ShuttingDown), "{err}");
    assert_eq!(err.to_string(), "node shutting down: SQL statements are no longer run");
    let err = idle.backup_to(dir.path().join("copy.db")).unwrap_err();
    assert!(matches!(err, SqlError::ShuttingDown), "{err}");
    drop((reader, writer, idle));

    // What was committed before is intact for the next engine over the same page store.
    let engine = Arc::into_inner(engine).expect("threads are done");
    let manager = engine.manager().clone();
    drop(engine);
    let engine = SqlEngine::local(manager, SqlConfig::new(dir.path().join("sql"))).unwrap();
    let mut conn = open(&engine, "writes");
    assert_eq!(int(&mut conn, "SELECT count(*) FROM t"), 3);
    assert_integrity(&mut conn);
}

#[test]
fn a_transaction_past_pending_bytes_max_says_it_is_too_large() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SqlConfig::new(dir.path().join("sql"));
    config.pending_bytes_max = 64 * 4096;
    let engine = SqlEngine::local(manager(dir.path()), config).unwrap();
    let mut conn = open(&engine, "full");
    exec(&mut conn, "CREATE TABLE t(v BLOB)");
    let err = conn
        .execute(
            &MANY_ROWS
                .replace("1000000000", "100")
                .replace("SELECT x FROM c", "INSERT INTO t SELECT zeroblob(4000) FROM c"),
            &Params::None,
        )
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, SqlError::Sqlite { code, .. } if code & 0xff == 13), "{err}");
    assert!(
        message.contains("(transaction too large: 266240 bytes of pages, more than the limit of 262144 (pending_bytes_max))"),
        "{message}"
    );
}
