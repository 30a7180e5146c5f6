//! Read snapshots under concurrent writes, failing sinks, bad SQL, bop checkpoints, the frame bound.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bop_sql::{FrameSink, LocalSink, Params, SinkError, SqlConfig, SqlEngine, SqlError, Statement, Value};
use bop_storage::page_store::Db;
use common::*;

const ACCOUNTS: i64 = 50;
const BALANCE: i64 = 1_000;

fn setup_accounts(conn: &mut bop_sql::Connection) {
    conn.execute_batch(&[
        Statement::new("CREATE TABLE acct(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL, pad TEXT)"),
        Statement::with_params(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?1) \
             INSERT INTO acct SELECT x, ?2, printf('%0900d', x) FROM c",
            Params::Positional(vec![Value::Integer(ACCOUNTS), Value::Integer(BALANCE)]),
        ),
    ])
    .unwrap();
}

#[test]
fn readers_see_consistent_snapshots_during_transfers() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(engine(dir.path()));
    let mut conn = open(&engine, "bank");
    setup_accounts(&mut conn);
    let total = ACCOUNTS * BALANCE;
    let writers_done = Arc::new(AtomicBool::new(false));
    const TRANSFERS_PER_WRITER: i64 = 150;

    // Two writers move money between accounts, one transaction per transfer.
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                let mut conn = open(&engine, "bank");
                for i in 0..TRANSFERS_PER_WRITER {
                    let from = (i * 7 + w) % ACCOUNTS + 1;
                    let to = (i * 13 + 3 * w + 1) % ACCOUNTS + 1;
                    let amount = Value::Integer(i % 37 + 1);
                    conn.execute_batch(&[
                        Statement::with_params(
                            "UPDATE acct SET balance = balance - ?1 WHERE id = ?2",
                            Params::Positional(vec![amount.clone(), Value::Integer(from)]),
                        ),
                        Statement::with_params(
                            "UPDATE acct SET balance = balance + ?1 WHERE id = ?2",
                            Params::Positional(vec![amount, Value::Integer(to)]),
                        ),
                    ])
                    .unwrap();
                }
            })
        })
        .collect();

    // Readers check the sum, twice inside one read transaction, until the writers are done.
    let reads = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (engine, done, reads) = (engine.clone(), writers_done.clone(), reads.clone());
            std::thread::spawn(move || {
                let mut conn = open(&engine, "bank");
                loop {
                    let finished = done.load(Ordering::Acquire);
                    exec(&mut conn, "BEGIN");
                    let first = int(&mut conn, "SELECT sum(balance) FROM acct");
                    let rows = query(&mut conn, "SELECT balance FROM acct ORDER BY id");
                    let second: i64 =
                        rows.rows.iter().map(|r| if let Value::Integer(v) = r[0] { v } else { 0 }).sum();
                    exec(&mut conn, "COMMIT");
                    assert_eq!(first, total);
                    assert_eq!(second, total);
                    reads.fetch_add(1, Ordering::Relaxed);
                    if finished {
                        break;
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    writers_done.store(true, Ordering::Release);
    for reader in readers {
        reader.join().unwrap();
    }
    assert!(reads.load(Ordering::Relaxed) >= 2);
    assert_eq!(int(&mut conn, "SELECT sum(balance) FROM acct"), total);
    assert_integrity(&mut conn);
}

/// Local commits, or an error while `fail` is set.
struct FlakySink {
    fail: AtomicBool,
}

impl FrameSink for FlakySink {
    fn commit(
        &self,
        db: &Db,
        frames: &[(u32, &[u8])],
        db_page_count: u32,
        read_index: u64,
    ) -> Result<u64, SinkError> {
        if self.fail.load(Ordering::Acquire) {
            return Err(SinkError::Rejected { reason: "test sink refuses".into() });
        }
        LocalSink.commit(db, frames, db_page_count, read_index)
    }
}

#[test]
fn failing_sink_rolls_back_and_database_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(FlakySink { fail: AtomicBool::new(false) });
    let engine = engine_with_sink(dir.path(), sink.clone());
    let mut conn = open(&engine, "f");
    exec(&mut conn, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)");
    exec(&mut conn, "INSERT INTO t VALUES (1, 'one')");
    let applied = engine.manager().applied_index();

    // The sink fails: batch and autocommit statement both report it, nothing is committed.
    sink.fail.store(true, Ordering::Release);
    let err = conn
        .execute_batch(&[
            Statement::new("INSERT INTO t VALUES (2, 'two')"),
            Statement::new("UPDATE t SET v = 'x'"),
        ])
        .unwrap_err();
    assert!(err.to_string().contains("test sink refuses"), "{err}");
    let err = conn.execute("INSERT INTO t VALUES (3, 'three')", &Params::None).unwrap_err();
    assert!(matches!(err, SqlError::Sqlite { .. }), "{err}");
    assert!(conn.is_autocommit());
    assert_eq!(engine.manager().applied_index(), applied);

    // The sink works again: the next transaction commits, the failed ones are invisible.
    sink.fail.store(false, Ordering::Release);
    exec(&mut conn, "INSERT INTO t VALUES (4, 'four')");
    let rows = query(&mut conn, "SELECT id, v FROM t ORDER BY id");
    assert_eq!(
        rows.rows,
        vec![
            vec![Value::Integer(1), Value::Text("one".into())],
            vec![Value::Integer(4), Value::Text("four".into())]
        ]
    );
    let mut other = open(&engine, "f");
    assert_eq!(query(&mut other, "SELECT id FROM t ORDER BY id").rows.len(), 2);
    assert_integrity(&mut conn);
}

#[test]
fn bad_sql_returns_sqlite_message_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let mut conn = open(&engine, "b");
    exec(&mut conn, "CREATE TABLE t(id INTEGER PRIMARY KEY)");
    let applied = engine.manager().applied_index();

    // A valid insert followed by a statement on a missing table, then a syntax error.
    let err = conn
        .execute_batch(&[
            Statement::new("INSERT INTO t VALUES (1)"),
            Statement::new("INSERT INTO nope VALUES (1)"),
        ])
        .unwrap_err();
    assert!(err.to_string().contains("no such table: nope"), "{err}");
    let err = conn.execute_batch(&[Statement::new("INSRT INTO t VALUES (2)")]).unwrap_err();
    assert!(err.to_string().contains("syntax error"), "{err}");
    let err = conn.query("SELECT missing FROM t", &Params::None).unwrap_err();
    assert!(err.to_string().contains("no such column: missing"), "{err}");

    // Nothing reached the page store.
    assert_eq!(engine.manager().applied_index(), applied);
    assert_eq!(int(&mut conn, "SELECT count(*) FROM t"), 0);
    assert!(conn.is_autocommit());
}

#[test]
fn bop_checkpoint_between_transactions_changes_nothing_visible() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let mut conn = open(&engine, "c");
    setup_accounts(&mut conn);
    exec(&mut conn, "UPDATE acct SET balance = balance + id");
    let db = engine.manager().open_database("c").unwrap();
    let dump = |conn: &mut bop_sql::Connection| query(conn, "SELECT * FROM acct ORDER BY id");
    let before = dump(&mut conn);

    // Checkpoint between transactions.
    assert!(db.checkpoint().unwrap().is_some());
    assert_eq!(dump(&mut conn), before);

    // A reader holds a read transaction across a commit and a checkpoint.
    let mut reader = open(&engine, "c");
    exec(&mut reader, "BEGIN");
    assert_eq!(dump(&mut reader), before);
    exec(&mut conn, "UPDATE acct SET balance = 0 WHERE id = 1");
    db.checkpoint().unwrap();
    assert_eq!(dump(&mut reader), before);
    exec(&mut reader, "COMMIT");
    assert_eq!(int(&mut reader, "SELECT balance FROM acct WHERE id = 1"), 0);
    db.checkpoint().unwrap();
    assert_eq!(dump(&mut reader), dump(&mut conn));
    assert_integrity(&mut conn);
}

#[test]
fn transaction_over_frame_bound_fails_full_and_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SqlConfig::new(dir.path().join("sql"));
    config.pending_bytes_max = 64 * 4096;
    let engine = SqlEngine::local(manager(dir.path()), config).unwrap();
    let mut conn = open(&engine, "full");
    exec(&mut conn, "CREATE TABLE t(v BLOB)");
    let applied = engine.manager().applied_index();

    // About 100 pages of blobs in one transaction: more than 64 pages of frames.
    let err = conn
        .execute("INSERT INTO t SELECT zeroblob(4000) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 100) SELECT x FROM c)", &Params::None)
        .unwrap_err();
    assert!(matches!(err, SqlError::Sqlite { code, .. } if code & 0xff == 13), "{err}");
    assert_eq!(engine.manager().applied_index(), applied);

    // Small transactions still work.
    exec(&mut conn, "INSERT INTO t VALUES (zeroblob(10))");
    assert_eq!(int(&mut conn, "SELECT count(*) FROM t"), 1);
    assert_integrity(&mut conn);
}

/// A transaction that runs out of room while a statement spills pages to the WAL (a small page cache) puts
/// SQLite's pager in its error state, which ends the read transaction without ending the write transaction
/// first (stock SQLite's WAL ends both). bop's WAL kept the database's write lock (and, in a debug build,
/// aborted on an assertion): every later writer got `SQLITE_BUSY`. It must end the write transaction too.
#[test]
fn a_transaction_out_of_room_in_the_middle_of_a_statement_releases_the_write_lock() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SqlConfig::new(dir.path().join("sql"));
    config.pending_bytes_max = 24 * 4096;
    config.busy_timeout_ms = 200;
    let engine = SqlEngine::local(manager(dir.path()), config).unwrap();
    let mut conn = open(&engine, "spill");
    exec(&mut conn, "CREATE TABLE t(v BLOB)");
    exec(&mut conn, "PRAGMA cache_size=8");
    exec(&mut conn, "BEGIN");
    let full =
        (0..50).find_map(|_| conn.execute("INSERT INTO t VALUES (zeroblob(12000))", &Params::None).err());
    let err = full.expect("24 pages run out within 50 rows of 3 pages");
    assert!(matches!(err, SqlError::Sqlite { code, .. } if code & 0xff == 13), "{err}");
    assert!(conn.is_autocommit(), "the transaction is rolled back");

    // Another connection, then this one, write again.
    let mut other = open(&engine, "spill");
    exec(&mut other, "INSERT INTO t VALUES (zeroblob(10))");
    exec(&mut conn, "INSERT INTO t VALUES (zeroblob(10))");
    assert_eq!(int(&mut conn, "SELECT count(*) FROM t"), 2);
    assert_integrity(&mut conn);
}

#[test]
fn statements_that_would_leave_bops_wal_or_attach_files_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manager =
        bop_storage::page_store::Manager::open(bop_storage::page_store::ManagerConfig::new(dir.path()))
            .expect("manager");
    let engine =
        bop_sql::SqlEngine::local(manager, bop_sql::SqlConfig::new(dir.path().join("sql"))).expect("engine");
    let mut conn = engine.open("guarded", bop_sql::OpenMode::CreateIfMissing).expect("open");
    for sql in
        ["PRAGMA journal_mode=DELETE", "PRAGMA locking_mode=EXCLUSIVE", "ATTACH DATABASE 'other.db' AS other"]
    {
        let err = conn.execute(sql, &bop_sql::Params::None).expect_err("refused");
        assert!(err.to_string().contains("not authorized"), "{sql}: {err}");
    }
    // Reading the journal mode is fine, and it is still bop's WAL.
    let rows = conn.query("PRAGMA journal_mode", &bop_sql::Params::None).expect("read").rows;
    assert_eq!(rows, vec![vec![bop_sql::Value::Text("wal".into())]]);
}

#[test]
fn request_batches_mix_reads_and_writes_and_reads_are_classified() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let mut conn = open(&engine, "r");
    exec(&mut conn, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)");

    // Classification per SQLite: every statement of the text must only read.
    assert!(conn.is_read_only("SELECT * FROM t; SELECT 1").unwrap());
    assert!(!conn.is_read_only("SELECT 1; INSERT INTO t(v) VALUES ('a')").unwrap());
    assert!(!conn.is_read_only("DELETE FROM t").unwrap());
    assert!(conn.is_read_only("SELECT * FROM nope").unwrap_err().to_string().contains("no such table"));

    // One transaction: rows for statements with columns, outcomes for all.
    let out = conn
        .request_batch(&[
            Statement::new("INSERT INTO t(v) VALUES ('a')"),
            Statement::new("SELECT v FROM t"),
            Statement::new("INSERT INTO t(v) VALUES ('b')"),
        ])
        .unwrap();
    assert_eq!(out.len(), 3);
    assert!(out[0].0.is_none() && out[0].1.rows_affected == 1);
    assert_eq!(out[1].0.as_ref().map(|r| r.rows.clone()), Some(vec![vec![Value::Text("a".into())]]));
    assert_eq!(out[2].1.last_insert_rowid, 2);

    // A failing statement rolls the whole batch back, reads included.
    let applied = engine.manager().applied_index();
    let err = conn
        .request_batch(&[
            Statement::new("INSERT INTO t(v) VALUES ('c')"),
            Statement::new("SELECT * FROM nope"),
        ])
        .unwrap_err();
    assert!(err.to_string().contains("no such table"), "{err}");
    assert_eq!(engine.manager().applied_index(), applied);
    assert_eq!(int(&mut conn, "SELECT count(*) FROM t"), 2);
    assert!(conn.is_autocommit());
}

#[test]
fn backup_is_a_consistent_ordinary_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let mut conn = open(&engine, "bk");
    exec(&mut conn, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)");
    for i in 0..500 {
        conn.execute(
            "INSERT INTO t(v) VALUES (?)",
            &Params::Positional(vec![Value::Blob(vec![i as u8; 300])]),
        )
        .unwrap();
    }
    let target = dir.path().join("backup.db");
    conn.backup_to(&target).unwrap();
    assert!(conn.backup_to(&target).unwrap_err().to_string().contains("already exists"));

    // A stock SQLite file in rollback-journal mode (header bytes 18 and 19 are 1), holding every row.
    let bytes = std::fs::read(&target).unwrap();
    assert_eq!(&bytes[..16], b"SQLite format 3\0");
    assert_eq!((bytes[18], bytes[19]), (1, 1));
    let mut copy = bop_sql::Connection::open_stock(&target).unwrap();
    let check = copy.query("PRAGMA integrity_check", &Params::None).unwrap();
    assert_eq!(check.rows, vec![vec![Value::Text("ok".into())]]);
    assert_eq!(int(&mut copy, "SELECT count(*) FROM t"), 500);
    assert_eq!(int(&mut copy, "SELECT sum(length(v)) FROM t"), 500 * 300);
    // The source is unchanged and still writable.
    exec(&mut conn, "DELETE FROM t WHERE id <= 100");
    assert_eq!(int(&mut conn, "SELECT count(*) FROM t"), 400);
    assert_eq!(int(&mut copy, "SELECT count(*) FROM t"), 500);
}

#[test]
fn request_each_undoes_only_the_failed_statement() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let mut conn = open(&engine, "each");
    exec(&mut conn, "CREATE TABLE t(x INTEGER UNIQUE)");
    let applied = engine.manager().applied_index();
    let out = conn
        .request_each(&[
            Statement::new("INSERT INTO t VALUES (1)"),
            // Fails halfway: its first row violates nothing, its second does; both are undone.
            Statement::new("INSERT INTO t VALUES (2), (1)"),
            Statement::new("SELECT count(*) FROM t"),
            Statement::new("INSERT INTO t VALUES (3)"),
        ])
        .unwrap();
    assert!(out[0].is_ok() && out[3].is_ok());
    assert!(out[1].as_ref().unwrap_err().to_string().contains("UNIQUE"), "{:?}", out[1]);
    let counted = out[2].as_ref().unwrap().0.as_ref().map(|r| r.rows.clone());
    assert_eq!(counted, Some(vec![vec![Value::Integer(1)]]), "the failed statement left nothing behind");
    // One commit for the whole batch.
    assert_eq!(engine.manager().applied_index(), applied + 1);
    assert_eq!(int(&mut conn, "SELECT sum(x) FROM t"), 4);
    assert!(conn.is_autocommit());
}
