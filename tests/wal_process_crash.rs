//! A real process crash: this test binary re-runs itself as a child that appends from several threads and
//! prints every index whose durability was reported; the parent kills it with SIGKILL at a random moment,
//! reopens the log and checks that every acknowledged entry is there and whole. 50 cycles on one log,
//! alternating buffered and direct I/O.
//!
//! What this does not prove: SIGKILL kills the process, not the machine. The kernel's page cache
//! survives it, so an entry acknowledged without a working fdatasync would still be read back here; this
//! test catches lost, torn or misordered records at the process level (the writer's ordering, the
//! completer, recovery of a batch in flight), not a missing or failed fsync. Durability across power loss
//! is tested on the simulated disk, which drops everything not synced: `wal_crash_sim.rs`,
//! `wal_fsyncgate.rs`, `wal_unfinished_segment.rs`, `wal_model.rs`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bop_storage::io::{BufferedIo, DirectIo, Io};
use bop_storage::wal::{WalConfig, WalStore};
use common::{check_payload, entry};
use parking_lot::Mutex;

const CHILD_DIR: &str = "BOP_CRASH_CHILD_DIR";
const CHILD_DIRECT: &str = "BOP_CRASH_CHILD_DIRECT";
const TEST_NAME: &str = "sigkill_during_appends_keeps_every_acknowledged_entry";
const CYCLES: u64 = 50;

fn config(dir: &str) -> WalConfig {
    let mut config = WalConfig::new(dir);
    config.segment_size_bytes = 256 * 1024;
    config
}

fn io(direct: bool) -> Arc<dyn Io> {
    if direct {
        Arc::new(DirectIo::new())
    } else {
        Arc::new(BufferedIo::new())
    }
}

/// The child: append until killed (or a bounded number of appends), printing `ACK <index>` per durable
/// entry.
fn child(dir: &str, direct: bool) {
    let store = Arc::new(WalStore::open(io(direct), config(dir)).expect("child open"));
    let next = Arc::new(Mutex::new(store.state().last.map_or(1, |p| p.index + 1)));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (store, next) = (Arc::clone(&store), Arc::clone(&next));
            std::thread::spawn(move || {
                for round in 0..5_000u64 {
                    let len = 8 + ((t * 7919 + round * 104_729) % 3000) as usize;
                    let (ticket, index) = {
                        let mut next = next.lock();
                        let index = *next;
                        let ticket = store.append(vec![entry(index, 1, len)]).expect("append");
                        *next += 1;
                        (ticket, index)
                    };
                    ticket.wait().expect("durable");
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {index}").expect("stdout");
                    out.flush().expect("flush");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("appender");
    }
}

/// See the module comment: a process crash, which cannot detect a missing fsync.
#[test]
fn sigkill_during_appends_keeps_every_acknowledged_entry() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        child(&dir, std::env::var(CHILD_DIRECT).is_ok());
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let dir_str = dir.path().to_str().expect("utf-8 path").to_owned();
    let exe = std::env::current_exe().expect("test binary");
    let mut acked_max = 0u64;
    let mut rng = 0x1234_5678_9abc_def1u64;
    for cycle in 0..CYCLES {
        let direct = cycle % 2 == 1;
        // Set-up: a child appending to the log.
        let mut cmd = Command::new(&exe);
        cmd.args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, &dir_str)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if direct {
            cmd.env(CHILD_DIRECT, "1");
        }
        let mut child = cmd.spawn().expect("spawn child");
        let stdout = child.stdout.take().expect("piped stdout");
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let acks_before_kill = 1 + (rng % 300) as usize;
        // Action: kill it with SIGKILL once it has acknowledged a random number of entries.
        let mut lines = BufReader::new(stdout).lines();
        let mut acked = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked.len() < acks_before_kill && Instant::now() < deadline {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(index) = line.strip_prefix("ACK ").and_then(|s| s.parse::<u64>().ok()) {
                        acked.push(index);
                    }
                }
                _ => break,
            }
        }
        child.kill().expect("SIGKILL");
        // Lines printed before the kill were acknowledged too.
        for line in lines.map_while(Result::ok) {
            if let Some(index) = line.strip_prefix("ACK ").and_then(|s| s.parse::<u64>().ok()) {
                acked.push(index);
            }
        }
        child.wait().expect("reap child");
        assert!(!acked.is_empty(), "cycle {cycle}: the child acknowledged nothing");
        acked_max = acked_max.max(acked.iter().copied().max().unwrap_or(0));

        // Property: every acknowledged entry is present and whole; nothing present is half-written.
        let store = WalStore::open(io(!direct), config(&dir_str)).expect("reopen after SIGKILL");
        let last = store.state().last.map_or(0, |p| p.index);
        assert!(last >= acked_max, "cycle {cycle}: acknowledged {acked_max} but the log ends at {last}");
        for index in 1..=last {
            let got =
                store.read(index).expect("read").unwrap_or_else(|| panic!("cycle {cycle}: hole at {index}"));
            assert_eq!(check_payload(&got.payload), Some((index, 1)), "cycle {cycle}: entry {index} whole");
        }
    }
}
