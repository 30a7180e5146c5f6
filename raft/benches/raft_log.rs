//! Durable entries/s through openraft with `LogStore` in a single-node Raft (client writes, each awaited
//! until applied), against raw WAL appends (`append` + wait for durability) of the same size, measured in
//! the same run. Run: `cargo bench -p bop-raft --bench raft_log` (`BOP_BENCH_SECS`, default 2).

#[path = "../examples/kv/state_machine.rs"]
#[allow(dead_code)]
mod state_machine;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bop_raft::{LocalRouter, LogStore};
use bop_storage::io::BufferedIo;
use bop_storage::manifest::{Manifest, ManifestConfig};
use bop_storage::wal::{NewEntry, WalConfig, WalStore};
use openraft::{Config, Raft};
use state_machine::{KvConfig, KvStateMachine, Put};

fn secs() -> f64 {
    std::env::var("BOP_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0)
}

/// Raw WAL: `writers` threads each appending one entry of `size` bytes and waiting until it is durable.
fn raw_wal(dir: &std::path::Path, writers: usize, size: usize) -> f64 {
    let wal = Arc::new(WalStore::open(Arc::new(BufferedIo::new()), WalConfig::new(dir)).expect("wal"));
    let next = Arc::new(parking_lot::Mutex::new(1u64));
    let deadline = Instant::now() + Duration::from_secs_f64(secs());
    let start = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..writers)
        .map(|_| {
            let (wal, next, done) = (Arc::clone(&wal), Arc::clone(&next), Arc::clone(&done));
            std::thread::spawn(move || {
                while Instant::now() < deadline {
                    let ticket = {
                        let mut next = next.lock();
                        let entry = NewEntry { index: *next, term: 1, payload: vec![7u8; size] };
                        *next += 1;
                        wal.append(vec![entry]).expect("append")
                    };
                    ticket.wait().expect("durable");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer");
    }
    let rate = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    wal.close().expect("close");
    rate
}

/// A single-node Raft on `LogStore`; `writers` tasks each doing client writes (awaited until applied).
async fn raft(dir: &std::path::Path, writers: usize) -> (f64, usize, f64) {
    let wal = WalStore::open(Arc::new(BufferedIo::new()), WalConfig::new(dir.join("wal"))).expect("wal");
    let manifest = Arc::new(Manifest::open(dir, ManifestConfig::default()).expect("manifest"));
    let store = LogStore::<KvConfig>::new(Arc::new(wal), manifest).expect("store");
    let config = Arc::new(
        Config {
            heartbeat_interval: 100,
            election_timeout_min: 300,
            election_timeout_max: 600,
            ..Default::default()
        }
        .validate()
        .expect("config"),
    );
    let router = LocalRouter::new();
    let raft = Raft::new(1, config, router.network(1), store.clone(), KvStateMachine::default())
        .await
        .expect("raft");
    router.add(1, raft.clone());
    raft.initialize(BTreeSet::from([1u64])).await.expect("init");
    raft.wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.state.is_leader() && m.last_applied.map(|l| l.index) == m.last_log_index, "leader")
        .await
        .expect("leader");
    let deadline = Instant::now() + Duration::from_secs_f64(secs());
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let raft = raft.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    raft.client_write(Put { key: format!("k{w}"), value: "v".repeat(16) })
                        .await
                        .expect("write");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0u64;
    for t in tasks {
        total += t.await.expect("task");
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    let metrics = store.wal().metrics();
    let last = store.wal().state().last.map_or(0, |p| p.index);
    let entry_bytes = store.wal().read(last).expect("read").map_or(0, |e| e.payload.len());
    raft.shutdown().await.expect("shutdown");
    store.close().expect("close");
    (rate, entry_bytes, metrics.records_per_fsync)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let base = std::env::current_dir().expect("cwd");
    let tmp = tempfile::tempdir_in(&base).expect("bench dir");
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    println!("Raft log benchmark ({} s per case) in {}", secs(), tmp.path().display());
    println!("| writers | raw WAL appends/s | Raft entries/s | entry bytes | records/fsync (Raft) | overhead (raw ÷ Raft) |");
    println!("|---|---|---|---|---|---|");
    for writers in [1usize, 64] {
        let (raft_rate, entry_bytes, rpf) =
            runtime.block_on(raft(&tmp.path().join(format!("raft-{writers}")), writers));
        let raw = raw_wal(&tmp.path().join(format!("raw-{writers}")), writers, entry_bytes.max(1));
        println!(
            "| {writers} | {raw:.0} | {raft_rate:.0} | {entry_bytes} | {rpf:.1} | {:.2} |",
            raw / raft_rate
        );
    }
}
