//! Single-node durable INSERT of 256-byte rows through bop (virtual WAL → page store, fdatasync per
//! commit or group) against stock SQLite in WAL mode with `synchronous=FULL`, on the same disk, same run.
//!
//! `BOP_BENCH_DIR` picks the directory (default: the current directory, i.e. not a tmpfs /tmp).

use std::time::{Duration, Instant};

use bop_sql::{Connection, OpenMode, Params, SqlConfig, SqlEngine, Statement, Value};
use bop_storage::page_store::{Manager, ManagerConfig};

const ROW_BYTES: usize = 256;
/// Each side runs `ROUNDS` rounds of `ROUND`, alternating, so that drift of the disk's speed during the run
/// affects both alike.
const ROUND: Duration = Duration::from_millis(600);
const ROUNDS: u32 = 5;

fn insert_batch(conn: &mut Connection, next_id: &mut i64, rows_per_txn: usize) {
    let statements: Vec<Statement> = (0..rows_per_txn)
        .map(|_| {
            *next_id += 1;
            Statement::with_params(
                "INSERT INTO t(id, v) VALUES (?1, ?2)",
                Params::Positional(vec![
                    Value::Integer(*next_id),
                    Value::Blob(vec![(*next_id % 251) as u8; ROW_BYTES]),
                ]),
            )
        })
        .collect();
    conn.execute_batch(&statements).unwrap();
}

fn prepare(conn: &mut Connection, next_id: &mut i64, rows_per_txn: usize) {
    conn.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB)", &Params::None).unwrap();
    for _ in 0..10 {
        insert_batch(conn, next_id, rows_per_txn);
    }
}

/// Runs transactions for `ROUND`; returns how many and how long.
fn round(conn: &mut Connection, next_id: &mut i64, rows_per_txn: usize) -> (u64, Duration) {
    let start = Instant::now();
    let mut txns = 0u64;
    while start.elapsed() < ROUND {
        insert_batch(conn, next_id, rows_per_txn);
        txns += 1;
    }
    (txns, start.elapsed())
}

fn main() {
    let base = std::env::var("BOP_BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(|_| ".".into());
    let mut table = Vec::new();
    for rows_per_txn in [1usize, 100] {
        let dir = tempfile::tempdir_in(&base).unwrap();
        let mut stock = Connection::open_stock(dir.path().join("stock.db")).unwrap();
        stock.query("PRAGMA journal_mode=WAL", &Params::None).unwrap();
        stock.execute("PRAGMA synchronous=FULL", &Params::None).unwrap();
        let manager = Manager::open(ManagerConfig::new(dir.path().join("node"))).unwrap();
        let engine = SqlEngine::local(manager, SqlConfig::new(dir.path().join("sql"))).unwrap();
        let mut conn = engine.open("bench", OpenMode::CreateIfMissing).unwrap();
        let (mut stock_id, mut bop_id) = (0, 0);
        prepare(&mut stock, &mut stock_id, rows_per_txn);
        prepare(&mut conn, &mut bop_id, rows_per_txn);
        let (mut stock_txns, mut stock_time, mut bop_txns, mut bop_time) =
            (0, Duration::ZERO, 0, Duration::ZERO);
        for _ in 0..ROUNDS {
            let (txns, time) = round(&mut stock, &mut stock_id, rows_per_txn);
            (stock_txns, stock_time) = (stock_txns + txns, stock_time + time);
            let (txns, time) = round(&mut conn, &mut bop_id, rows_per_txn);
            (bop_txns, bop_time) = (bop_txns + txns, bop_time + time);
        }
        let stock_tps = stock_txns as f64 / stock_time.as_secs_f64();
        let bop_tps = bop_txns as f64 / bop_time.as_secs_f64();
        drop((stock, conn));
        engine.manager().close().unwrap();
        table.push((rows_per_txn, bop_tps, stock_tps));
    }
    println!(
        "| rows/txn | bop txn/s | bop rows/s | stock SQLite (WAL, synchronous=FULL) txn/s | bop / stock |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for (rows, bop, stock) in table {
        println!("| {rows} | {bop:.0} | {:.0} | {stock:.0} | {:.2} |", bop * rows as f64, bop / stock);
    }
}
