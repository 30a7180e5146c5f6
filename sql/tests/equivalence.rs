//! The same SQL workload through bop and through stock SQLite gives identical results.

mod common;

use bop_sql::{Connection, OpenMode, Params, Rows, SqlConfig, SqlEngine, Statement, Value};
use common::*;

/// Deterministic bytes (xorshift), so both databases get the same blobs.
fn blob(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

const CHECKS: &[&str] = &[
    "SELECT count(*), sum(k), sum(length(payload)), min(id), max(id) FROM big",
    "SELECT id, k, payload FROM big WHERE id % 97 = 0 ORDER BY id",
    "SELECT k, count(*) FROM big WHERE k < 200 GROUP BY k ORDER BY k",
    "SELECT id, length(b), hex(substr(b, 1, 16)), b FROM blobs ORDER BY id",
    "SELECT name, sql FROM sqlite_schema ORDER BY name",
    "SELECT count(*) FROM big INDEXED BY big_k WHERE k BETWEEN 100 AND 5000",
];

fn checks(conn: &mut Connection) -> Vec<Rows> {
    CHECKS.iter().map(|sql| query(conn, sql)).collect()
}

/// Runs the workload, returning the check results after every phase. Small page cache so that large
/// transactions spill frames to the WAL before commit, inside savepoints too.
fn workload(conn: &mut Connection) -> Vec<Rows> {
    let mut results = Vec::new();
    exec(conn, "PRAGMA cache_size=20");
    // Schema with indexes.
    conn.execute_batch(&[
        Statement::new("CREATE TABLE big(id INTEGER PRIMARY KEY, k INTEGER NOT NULL, payload TEXT)"),
        Statement::new("CREATE INDEX big_k ON big(k)"),
        Statement::new("CREATE TABLE blobs(id INTEGER PRIMARY KEY, b BLOB)"),
        Statement::new("CREATE UNIQUE INDEX big_payload_k ON big(k, id)"),
    ])
    .unwrap();
    // Grow to thousands of pages in one transaction.
    exec(
        conn,
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 16000) \
         INSERT INTO big(id, k, payload) SELECT x, (x * 7919) % 10007, printf('%0500d', x) FROM c",
    );
    assert!(int(conn, "PRAGMA page_count") > 2000);
    results.extend(checks(conn));
    // Blobs larger than a page, with positional and named parameters.
    for i in 0..20u64 {
        let params = if i % 2 == 0 {
            Params::Positional(vec![
                Value::Integer(i as i64),
                Value::Blob(blob(i, 5_000 + 3_000 * i as usize)),
            ])
        } else {
            Params::Named(vec![
                (":id".into(), Value::Integer(i as i64)),
                ("b".into(), Value::Blob(blob(i, 5_000 + 3_000 * i as usize))),
            ])
        };
        let sql =
            if i % 2 == 0 { "INSERT INTO blobs VALUES (?, ?)" } else { "INSERT INTO blobs VALUES (:id, :b)" };
        conn.execute(sql, &params).unwrap();
    }
    // Updates and deletes.
    exec(conn, "UPDATE big SET payload = printf('%0300d', id), k = k + 1 WHERE id % 3 = 0");
    exec(conn, "DELETE FROM big WHERE id % 5 = 0");
    exec(conn, "UPDATE blobs SET b = substr(b, 1, 100) WHERE id % 4 = 0");
    results.extend(checks(conn));
    // A transaction rolled back.
    exec(conn, "BEGIN");
    exec(conn, "DELETE FROM big WHERE id < 6000");
    exec(conn, "INSERT INTO blobs VALUES (1000, zeroblob(100000))");
    exec(conn, "ROLLBACK");
    results.extend(checks(conn));
    // Savepoints: an inner one rolled back after large changes, the outer one kept.
    exec(conn, "BEGIN");
    exec(conn, "SAVEPOINT a");
    exec(conn, "INSERT INTO big(id, k, payload) SELECT id + 100000, k, payload FROM big WHERE id % 2 = 0");
    exec(conn, "SAVEPOINT b");
    exec(conn, "DELETE FROM big WHERE id < 8000");
    exec(conn, "UPDATE blobs SET b = zeroblob(20000)");
    exec(conn, "ROLLBACK TO b");
    exec(conn, "UPDATE big SET payload = 'after-rollback-to' WHERE id % 11 = 0");
    exec(conn, "RELEASE a");
    exec(conn, "SAVEPOINT c");
    exec(conn, "DELETE FROM blobs");
    exec(conn, "ROLLBACK TO c");
    exec(conn, "COMMIT");
    results.extend(checks(conn));
    // Shrink and VACUUM.
    exec(conn, "DELETE FROM big WHERE id > 3000");
    exec(conn, "VACUUM");
    results.extend(checks(conn));
    results.push(query(conn, "PRAGMA page_count"));
    results.push(query(conn, "PRAGMA freelist_count"));
    // Grow again after the shrink.
    exec(
        conn,
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000) \
         INSERT INTO big(id, k, payload) SELECT x + 200000, x, printf('%0200d', x) FROM c",
    );
    results.extend(checks(conn));
    results
}

/// Runs the workload through stock SQLite and through bop (with `config`'s held-frame memory bound) and
/// checks they agree, before and after reopening. Returns how many frames bop spilled.
fn agree_and_stay_intact_across_reopen(held_memory_bytes_max: usize) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        let mut config = SqlConfig::new(dir.path().join("sql"));
        config.held_memory_bytes_max = held_memory_bytes_max;
        config
    };

    // Stock SQLite, WAL mode, on a file.
    let mut stock = Connection::open_stock(dir.path().join("stock.db")).unwrap();
    exec(&mut stock, "PRAGMA journal_mode=WAL");
    let expected = workload(&mut stock);
    assert_integrity(&mut stock);

    // The same through bop.
    let engine = SqlEngine::local(manager(dir.path()), config()).unwrap();
    let mut conn = open(&engine, "w");
    let got = workload(&mut conn);
    assert_eq!(got.len(), expected.len());
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, e, "result {i} differs");
    }
    assert_integrity(&mut conn);

    // The placeholder main file was never written: still one zero-filled page.
    let id = engine.manager().open_database("w").unwrap().id();
    let placeholder = std::fs::read(dir.path().join("sql").join(format!("{id:016x}.db"))).unwrap();
    assert_eq!(placeholder, vec![0u8; 4096]);

    // Close everything, reopen the Manager: same results, integrity ok.
    let final_checks = checks(&mut conn);
    let spilled = engine.frames_spilled();
    drop(conn);
    engine.manager().close().unwrap();
    drop(engine);
    let engine = SqlEngine::local(manager(dir.path()), config()).unwrap();
    let mut conn = engine.open("w", OpenMode::Existing).unwrap();
    assert_integrity(&mut conn);
    assert_eq!(checks(&mut conn), final_checks);
    assert_eq!(checks(&mut stock), final_checks);
    // No spill file is left in the directory (each is unlinked as soon as it is open).
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("sql"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("spill-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    spilled
}

#[test]
fn bop_and_stock_sqlite_agree_and_stay_intact_across_reopen() {
    // A 64 MiB bound holds every transaction of the workload in memory. (With the default 8 MiB, its
    // bulk load spills.)
    assert_eq!(agree_and_stay_intact_across_reopen(64 << 20), 0);
}

#[test]
fn held_frames_spilled_to_a_file_give_the_same_results() {
    // Four frames in memory: every larger transaction of the workload (bulk loads, VACUUM, the savepoint
    // rollbacks) spills, reads spilled frames back and truncates them.
    let spilled = agree_and_stay_intact_across_reopen(4 * 4096);
    assert!(spilled > 1_000, "only {spilled} frames were spilled");
}

#[test]
fn page_size_cannot_change() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let mut conn = open(&engine, "p");
    exec(&mut conn, "CREATE TABLE t(a)");
    exec(&mut conn, "INSERT INTO t VALUES (1)");
    // SQLite ignores page-size changes in WAL mode, VACUUM included.
    exec(&mut conn, "PRAGMA page_size=8192");
    exec(&mut conn, "VACUUM");
    assert_eq!(int(&mut conn, "PRAGMA page_size"), 4096);
    assert_integrity(&mut conn);
}
