//! A child process inserting one row per transaction is SIGKILLed; after reopening, every row it reported
//! committed is there, none it did not report (beyond the one in flight), and the database is intact.
//!
//! What it cannot show: that commits were fsynced. The kernel's page cache survives SIGKILL, so a missing
//! fdatasync would go unnoticed here; power-loss claims rest on the simulated disk's crash tests.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use bop_sql::{OpenMode, Params, SqlConfig, SqlEngine, Value};
use common::*;

const CHILD_ENV: &str = "BOP_SQL_CRASH_CHILD_DIR";
const CYCLES: usize = 10;

/// In the child: insert rows forever, printing each id after its commit returned.
fn child(dir: &str) -> ! {
    let dir = std::path::Path::new(dir);
    let engine = SqlEngine::local(manager(dir), SqlConfig::new(dir.join("sql"))).unwrap();
    let mut conn = engine.open("crash", OpenMode::CreateIfMissing).unwrap();
    exec(&mut conn, "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, pad TEXT)");
    let mut next = int(&mut conn, "SELECT coalesce(max(id), 0) + 1 FROM t");
    loop {
        conn.execute(
            "INSERT INTO t VALUES (?1, printf('%0300d', ?1))",
            &Params::Positional(vec![Value::Integer(next)]),
        )
        .unwrap();
        println!("{next}");
        next += 1;
    }
}

#[test]
fn sigkill_keeps_every_committed_row() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(&dir);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut committed: Vec<i64> = Vec::new();
    for cycle in 0..CYCLES {
        // Run the child until it has reported a number of commits that varies per cycle, then kill it.
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "sigkill_keeps_every_committed_row", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let target = 20 + cycle * 7;
        let mut seen = 0;
        while seen < target {
            let line = lines.next().expect("child exited early").unwrap();
            let Ok(id) = line.trim().parse::<i64>() else { continue };
            committed.push(id);
            seen += 1;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // Lines the child printed before it died are commits too.
        for line in lines {
            let Ok(line) = line else { break };
            if let Ok(id) = line.trim().parse::<i64>() {
                committed.push(id);
            }
        }

        // Reopen: every reported row present; at most one more (committed, killed before printing).
        let engine = SqlEngine::local(manager(dir.path()), SqlConfig::new(dir.path().join("sql"))).unwrap();
        let mut conn = engine.open("crash", OpenMode::Existing).unwrap();
        assert_integrity(&mut conn);
        let ids: Vec<i64> = query(&mut conn, "SELECT id FROM t ORDER BY id")
            .rows
            .into_iter()
            .map(|r| if let Value::Integer(v) = r[0] { v } else { panic!("{r:?}") })
            .collect();
        let reported_max = *committed.last().unwrap();
        assert!(ids.len() as i64 >= reported_max, "cycle {cycle}: lost rows");
        assert_eq!(ids[..], (1..=ids.len() as i64).collect::<Vec<_>>()[..], "cycle {cycle}: gap");
        assert!(ids.len() as i64 <= reported_max + 1, "cycle {cycle}: rows nobody committed");
        // The next child continues after what is in the database.
        committed = ids;
        engine.manager().close().unwrap();
    }
}
