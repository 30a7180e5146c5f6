//! SIGKILL crash test: the test binary re-runs itself as a child that commits batches from 16
//! threads and prints every acknowledged batch; the parent kills it with SIGKILL mid-stream,
//! reopens, and checks that every acknowledged batch is present and none was applied twice.
//!
//! What this does not prove: SIGKILL kills the process, not the machine. The kernel's page cache
//! survives it, so a batch acknowledged without a working fsync would still be read back here; the test
//! catches lost, torn or doubly applied batches at the process level, not a missing or failed fsync.
//! Power loss is simulated only for the storage built on the simulated disk (`bop_storage::io::SimDisk`);
//! the manifest runs on LMDB over the real file system and has no power-loss test.

mod manifest_support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bop_storage::manifest::{Change, FeedEntry, Manifest, PreviousShutdown, Vote};
use manifest_support::{create, small_config};

const CHILD_DIR_ENV: &str = "BOP_MANIFEST_CRASH_CHILD_DIR";
const CHILD_CYCLE_ENV: &str = "BOP_MANIFEST_CRASH_CHILD_CYCLE";
/// The child re-runs the parent test itself: with the environment set, it is the workload, not the check.
const CHILD_TEST_NAME: &str = "sigkill_during_commits_loses_no_acknowledged_batch";
const CYCLES: u64 = 24;
const COMMITTERS: u64 = 16;
const ACK_WAIT: Duration = Duration::from_secs(20);
const TEST_TIME_MAX: Duration = Duration::from_secs(60);

/// The child: commits until killed. Run only in the child process, by the parent test, which tells it its
/// directory through the environment; not a test of its own.
fn child_workload(dir: &str) {
    let cycle: u64 = std::env::var(CHILD_CYCLE_ENV).ok().and_then(|value| value.parse().ok()).unwrap_or(0);
    let manifest = Arc::new(Manifest::open(dir, small_config()).expect("child open"));
    let committers: Vec<_> = (0..COMMITTERS)
        .map(|committer| {
            let manifest = Arc::clone(&manifest);
            std::thread::spawn(move || {
                for index in 0u64.. {
                    // One batch = one database row (keyed by the batch id) + a vote.
                    let batch_id = format!("c{cycle}-t{committer}-{index}");
                    let mut batch = create(&batch_id);
                    batch.set_vote(Vote { term: cycle, node_id: committer, committed: index % 2 == 0 });
                    match manifest.commit(batch) {
                        Ok(outcome) => {
                            // One write(2) of a short line: atomic on a pipe. The END marker
                            // lets the parent ignore a line cut by the kill.
                            let line = format!("\nACK {batch_id} {} END\n", outcome.seq);
                            let mut out = std::io::stdout().lock();
                            out.write_all(line.as_bytes()).expect("stdout");
                            out.flush().expect("stdout");
                        }
                        Err(error) => {
                            eprintln!("child commit failed: {error}");
                            std::process::exit(3);
                        }
                    }
                }
            })
        })
        .collect();
    for committer in committers {
        let _ = committer.join();
    }
}

/// Parses `ACK <batch id> <seq> END`.
fn parse_ack(line: &str) -> Option<(String, u64)> {
    let mut words = line.split_whitespace();
    if words.next()? != "ACK" {
        return None;
    }
    let batch_id = words.next()?.to_owned();
    let seq = words.next()?.parse().ok()?;
    (words.next()? == "END").then_some((batch_id, seq))
}

/// See the module comment: a process crash, which cannot detect a missing fsync.
#[test]
fn sigkill_during_commits_loses_no_acknowledged_batch() {
    if let Ok(dir) = std::env::var(CHILD_DIR_ENV) {
        // In the child process: be the workload.
        child_workload(&dir);
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acknowledged: BTreeMap<String, u64> = BTreeMap::new();
    let mut committed_not_acknowledged = 0;

    for cycle in 0..CYCLES {
        // Run the child until it has acknowledged a cycle-dependent number of batches.
        let kill_after_acks = 3 + (cycle * 37) % 150;
        let mut child = Command::new(&exe)
            .args(["--exact", CHILD_TEST_NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR_ENV, dir.path())
            .env(CHILD_CYCLE_ENV, cycle.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (lines_tx, lines_rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut acked_this_cycle = 0;
        while acked_this_cycle < kill_after_acks {
            let line = match lines_rx.recv_timeout(ACK_WAIT) {
                Ok(line) => line,
                Err(error) => {
                    let _ = child.kill();
                    panic!("cycle {cycle}: child gave no ack within {ACK_WAIT:?}: {error}");
                }
            };
            if let Some((batch_id, seq)) = parse_ack(&line) {
                acknowledged.insert(batch_id, seq);
                acked_this_cycle += 1;
            }
        }

        // SIGKILL in the middle of the commit stream.
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "cycle {cycle}: child was not killed");
        reader.join().unwrap();
        // Acks printed before the kill are acknowledged too.
        for line in lines_rx.try_iter() {
            if let Some((batch_id, seq)) = parse_ack(&line) {
                acknowledged.insert(batch_id, seq);
            }
        }

        // Reopen: the crash is detected, and every acknowledged batch is there.
        let manifest = Manifest::open(dir.path(), small_config()).unwrap();
        assert_eq!(manifest.previous_shutdown(), PreviousShutdown::Unclean, "cycle {cycle}");
        manifest
            .read(|r| {
                for (batch_id, seq) in &acknowledged {
                    let db = r.database_by_name(batch_id)?;
                    let Some(db) = db else {
                        panic!("cycle {cycle}: acknowledged batch {batch_id} is missing");
                    };
                    // Its feed entry (same transaction) names the same database.
                    let entry = r.feed_entries(*seq, 1)?;
                    let expected = FeedEntry {
                        seq: *seq,
                        changes: vec![Change::DatabaseCreated { id: db.id }, Change::VoteSet],
                    };
                    assert_eq!(entry, vec![expected], "cycle {cycle}: batch {batch_id}");
                }

                // No batch applied twice: each batch bumps two counters (database id,
                // feed head) and adds one row; all three agree.
                let rows = r.database_count()?;
                let ids_allocated = r.next_database_id()?.0 - 1;
                let (_, feed_head) = r.feed_bounds()?;
                assert_eq!(rows, ids_allocated, "cycle {cycle}");
                assert_eq!(rows, feed_head, "cycle {cycle}");
                assert!(rows >= acknowledged.len() as u64, "cycle {cycle}");
                committed_not_acknowledged = rows - acknowledged.len() as u64;
                Ok(())
            })
            .unwrap();
        manifest.close().unwrap();
        assert!(
            started.elapsed() < TEST_TIME_MAX,
            "crash test too slow: {:?} after {} cycles",
            started.elapsed(),
            cycle + 1
        );
    }
    eprintln!(
        "{CYCLES} kill cycles, {} acknowledged batches verified ({} more committed but \
         unacknowledged when killed) in {:?}",
        acknowledged.len(),
        committed_not_acknowledged,
        started.elapsed()
    );
}
