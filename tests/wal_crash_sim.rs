//! Crashes of the simulated disk at arbitrary moments while several threads append: every entry whose
//! durability was reported survives intact, and nothing appears half-written.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bop_storage::io::{CrashMode, SimDisk};
use bop_storage::wal::WalStore;
use common::{check_payload, entry, sim_store};
use parking_lot::Mutex;

const APPENDERS: usize = 4;

/// Runs appenders until `acks_before_crash` acknowledgements, crashes the disk under them, and returns
/// the crashed disk with the set of acknowledged indexes.
fn run_until_crash(
    disk: &SimDisk,
    store: Arc<WalStore>,
    acks_before_crash: usize,
    seed: u64,
) -> (SimDisk, BTreeSet<u64>) {
    let next = Arc::new(Mutex::new(store.state().next_index.unwrap_or(1)));
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..APPENDERS)
        .map(|t| {
            let (store, next, acked, stop) =
                (Arc::clone(&store), Arc::clone(&next), Arc::clone(&acked), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut round = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    round += 1;
                    // Sizes vary so that records straddle sectors and segments.
                    let len = 16 + ((seed as usize + t * 131 + round * 977) % 1500);
                    let ticket = {
                        let mut next = next.lock();
                        let batch = 1 + (round + t) % 3;
                        let entries: Vec<_> =
                            (*next..*next + batch as u64).map(|i| entry(i, 1, len)).collect();
                        match store.append(entries) {
                            Ok(ticket) => {
                                let range = *next..*next + batch as u64;
                                *next += batch as u64;
                                (ticket, range)
                            }
                            Err(_) => return,
                        }
                    };
                    match ticket.0.wait() {
                        Ok(()) => acked.lock().extend(ticket.1),
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().len() < acks_before_crash {
        assert!(Instant::now() < deadline, "appenders made no progress");
        std::thread::yield_now();
    }
    // The crash happens while the appenders are still running.
    let crashed = disk.crash(CrashMode::TornSectors);
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().expect("appender");
    }
    let acked = acked.lock().clone();
    (crashed, acked)
}

fn check_recovered(store: &WalStore, acked: &BTreeSet<u64>) {
    let state = store.state();
    let last = state.last.map_or(0, |p| p.index);
    for &index in acked {
        assert!(index <= last, "acknowledged entry {index} lost (log ends at {last})");
    }
    let first = state.first_index.unwrap_or(1);
    for index in first..=last {
        let got = store.read(index).expect("read").unwrap_or_else(|| panic!("hole at {index}"));
        assert_eq!(check_payload(&got.payload), Some((index, 1)), "entry {index} is whole");
    }
}

#[test]
fn every_acknowledged_entry_survives_a_crash_at_any_moment() {
    for seed in 0..60u64 {
        // Half the seeds demand direct-I/O alignment, so the block-aligned batch layout is crashed too.
        let disk = if seed % 2 == 0 { SimDisk::new(seed) } else { SimDisk::new_direct(seed) };
        let store = Arc::new(sim_store(&disk));
        let acks = 5 + (seed as usize * 37) % 200;
        let (crashed, acked) = run_until_crash(&disk, Arc::clone(&store), acks, seed);
        drop(store);
        let store = sim_store(&crashed);
        check_recovered(&store, &acked);
    }
}

#[test]
fn repeated_crashes_of_the_same_log_keep_every_acknowledged_entry() {
    let mut disk = SimDisk::new_direct(99);
    let mut all_acked = BTreeSet::new();
    for round in 0..15u64 {
        let store = Arc::new(sim_store(&disk));
        check_recovered(&store, &all_acked);
        let (crashed, acked) =
            run_until_crash(&disk, Arc::clone(&store), 20 + (round as usize * 13) % 80, round);
        drop(store);
        all_acked.extend(acked);
        disk = crashed;
    }
    let store = sim_store(&disk);
    check_recovered(&store, &all_acked);
}

#[test]
fn a_new_logs_directories_survive_a_crash() {
    // The log's directory and its parent are both new: each is an entry of its own parent, durable only
    // once that parent is fsynced.
    let disk = SimDisk::new(5);
    let io: Arc<dyn bop_storage::io::Io> = Arc::new(disk.clone());
    let store = WalStore::open(Arc::clone(&io), common::small_config("/node/wal")).expect("open");
    store.append_durable(vec![entry(1, 1, 100)]).expect("append");
    drop(store);
    let crashed = disk.crash(CrashMode::LoseUnsynced);
    let io: Arc<dyn bop_storage::io::Io> = Arc::new(crashed);
    let store = WalStore::open(io, common::small_config("/node/wal")).expect("reopen");
    let got = store.read(1).expect("read").expect("the acknowledged entry survives");
    assert_eq!(check_payload(&got.payload), Some((1, 1)));
}
