//! Pooled read connections (`SqlEngine::reader`) and the prepared statements a connection keeps: a lent
//! connection sees every commit made before its read, refuses writes, does not carry one borrower's session
//! changes or interrupts to the next, and the idle ones are bounded.

mod common;

use bop_sql::{AnswerUnit, Limits, Params, SqlConfig, SqlEngine, SqlError, Value};
use common::*;

fn with_rows(engine: &SqlEngine, rows: i64) -> bop_sql::Connection {
    let mut writer = open(engine, "main");
    exec(&mut writer, "CREATE TABLE t(x INTEGER PRIMARY KEY, v TEXT)");
    for i in 0..rows {
        exec(&mut writer, &format!("INSERT INTO t(v) VALUES ('row {i}')"));
    }
    writer
}

#[test]
fn a_reader_is_lent_again_and_sees_every_commit_made_since() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let mut writer = with_rows(&engine, 3);
    let first = {
        let mut reader = engine.reader("main").unwrap();
        assert!(!reader.reused());
        assert_eq!(int(&mut reader, "SELECT count(*) FROM t"), 3);
        &*reader as *const bop_sql::Connection as usize
    };
    assert_eq!(engine.readers_idle(), 1);
    for round in 0..5 {
        exec(&mut writer, "INSERT INTO t(v) VALUES ('more')");
        let mut reader = engine.reader("main").unwrap();
        assert!(reader.reused(), "round {round}: the idle connection is lent again");
        assert_eq!(int(&mut reader, "SELECT count(*) FROM t"), 4 + round);
        let (hits, kept) = reader.statement_cache_use();
        assert_eq!(hits, round as u64 + 1, "round {round}: the statement was prepared once");
        assert_eq!(kept, 1);
        let _ = first;
    }
}

#[test]
fn a_reader_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let _writer = with_rows(&engine, 1);
    let mut reader = engine.reader("main").unwrap();
    let refused = reader.execute("INSERT INTO t(v) VALUES ('no')", &Params::None).unwrap_err();
    assert!(
        refused.to_string().contains("readonly") || refused.to_string().contains("read-only"),
        "{refused}"
    );
    drop(reader);
    let mut reader = engine.reader("main").unwrap();
    assert_eq!(int(&mut reader, "SELECT count(*) FROM t"), 1);
}

#[test]
fn a_reader_whose_session_changed_is_not_lent_again() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let _writer = with_rows(&engine, 2);
    for change in ["PRAGMA query_only = 0", "PRAGMA reverse_unordered_selects = 1", "PRAGMA cache_size = 5"] {
        let mut reader = engine.reader("main").unwrap();
        reader.query(change, &Params::None).unwrap_or_else(|e| panic!("{change}: {e}"));
        drop(reader);
        assert_eq!(engine.readers_idle(), 0, "{change}: the changed session was closed");
        let mut reader = engine.reader("main").unwrap();
        assert!(!reader.reused(), "{change}");
        let refused = reader.execute("INSERT INTO t(v) VALUES ('no')", &Params::None);
        assert!(refused.is_err(), "{change}: a new reader is read-only again");
    }
    // Reading leaves the session as it was: lent again.
    let mut reader = engine.reader("main").unwrap();
    assert_eq!(int(&mut reader, "SELECT count(*) FROM t"), 2);
    drop(reader);
    assert!(engine.reader("main").unwrap().reused());
}

#[test]
fn an_earlier_borrowers_interrupt_does_not_reach_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let _writer = with_rows(&engine, 2);
    let mut reader = engine.reader("main").unwrap();
    assert_eq!(int(&mut reader, "SELECT count(*) FROM t"), 2);
    let late = reader.interrupt_handle();
    drop(reader);
    // The first borrower's request is cancelled after it gave its connection back.
    late.interrupt();
    let mut reader = engine.reader("main").unwrap();
    assert!(reader.reused());
    assert_eq!(int(&mut reader, "SELECT count(*) FROM t"), 2);
    // Its own handle still stops it.
    reader.interrupt_handle().interrupt();
    let stopped = reader.query("SELECT count(*) FROM t", &Params::None).unwrap_err();
    assert!(matches!(stopped, SqlError::Interrupted), "{stopped:?}");
}

#[test]
fn idle_readers_are_bounded_over_all_databases() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SqlConfig::new(dir.path().join("sql"));
    config.read_pool_max = 3;
    let engine = SqlEngine::local(manager(dir.path()), config).unwrap();
    let _writer = with_rows(&engine, 1);
    let mut other = open(&engine, "other");
    exec(&mut other, "CREATE TABLE u(y)");
    let held: Vec<_> = (0..4).map(|_| engine.reader("main").unwrap()).collect();
    let also: Vec<_> = (0..2).map(|_| engine.reader("other").unwrap()).collect();
    drop(held);
    assert_eq!(engine.readers_idle(), 3);
    drop(also);
    assert_eq!(engine.readers_idle(), 3);
    // The newest returned stay: both of "other", one of "main".
    let mut reader = engine.reader("other").unwrap();
    assert!(reader.reused());
    assert_eq!(int(&mut reader, "SELECT count(*) FROM u"), 0);
    assert!(engine.reader("main").unwrap().reused());
    engine.shutdown();
    assert_eq!(engine.readers_idle(), 0, "shutdown closes the idle readers");
    assert!(matches!(engine.reader("main"), Err(SqlError::ShuttingDown)));
}

#[test]
fn a_kept_statement_follows_schema_changes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let mut writer = with_rows(&engine, 1);
    let mut reader = engine.reader("main").unwrap();
    assert_eq!(query(&mut reader, "SELECT * FROM t").columns.len(), 2);
    exec(&mut writer, "ALTER TABLE t ADD COLUMN w INTEGER DEFAULT 7");
    let rows = query(&mut reader, "SELECT * FROM t");
    assert_eq!(rows.columns.len(), 3);
    assert_eq!(rows.rows[0][2], Value::Integer(7));
    exec(&mut writer, "DROP TABLE t");
    let gone = reader.query("SELECT * FROM t", &Params::None).unwrap_err();
    assert!(gone.to_string().contains("no such table"), "{gone}");
}

#[test]
fn a_kept_statement_stopped_mid_answer_holds_no_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let mut writer = with_rows(&engine, 3);
    let mut reader = engine.reader("main").unwrap();
    reader.set_limits(Limits { rows_max: Some(2), ..engine.default_limits() });
    let sql = "SELECT x FROM t ORDER BY x";
    assert_eq!(query(&mut reader, "SELECT x FROM t WHERE x = 1").rows.len(), 1);
    for expected in [4, 5] {
        let stopped = reader.query(sql, &Params::None).unwrap_err();
        assert!(
            matches!(stopped, SqlError::AnswerTooLarge { limit: 2, unit: AnswerUnit::Rows }),
            "{stopped:?}"
        );
        assert!(reader.is_autocommit());
        exec(&mut writer, "INSERT INTO t(v) VALUES ('after')");
        assert_eq!(int(&mut reader, "SELECT count(*) FROM t"), expected, "the next read sees the new commit");
    }
    drop(reader);
    assert!(engine.reader("main").unwrap().reused());
}

#[test]
fn parameters_of_one_use_do_not_stay_bound_for_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let _writer = with_rows(&engine, 3);
    let mut reader = engine.reader("main").unwrap();
    let sql = "SELECT count(*) FROM t WHERE x >= ?";
    let rows = reader.query(sql, &Params::Positional(vec![Value::Integer(2)])).unwrap();
    assert_eq!(rows.rows, vec![vec![Value::Integer(2)]]);
    // Unbound, `?` is NULL: nothing compares.
    let rows = reader.query(sql, &Params::None).unwrap();
    assert_eq!(rows.rows, vec![vec![Value::Integer(0)]]);
    let refused = reader.query(sql, &Params::Positional(vec![])).unwrap_err();
    assert!(refused.to_string().contains("parameters"), "{refused}");
    let rows = reader.query(sql, &Params::Positional(vec![Value::Integer(3)])).unwrap();
    assert_eq!(rows.rows, vec![vec![Value::Integer(1)]]);
    assert_eq!(reader.statement_cache_use().0, 3);
}
