//! Manifest commit throughput against a baseline of one plain LMDB write-transaction commit per
//! call, both measured in this process on the same file system.
//!
//! Run: `cargo bench -p bop-storage --bench manifest`. Environment:
//! - `BOP_BENCH_DIR`: parent directory of the scratch environments (default: the system temp
//!   directory); put it on the file system you want to measure;
//! - `BOP_BENCH_SECS`: seconds per case (default 2).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use bop_storage::manifest::{Batch, Manifest, ManifestConfig, Segment, SegmentState};
use heed::types::Bytes;
use heed::EnvOpenOptions;

const VALUE_BYTES: usize = 64;

struct Measured {
    commits_per_sec: f64,
    calls: u64,
    lmdb_commits: u64,
}

/// Runs `call` from `threads` threads until `duration` passes; returns calls per second (over
/// the wall time from the common start until the last thread finished) and the call count.
fn run(threads: usize, duration: Duration, call: impl Fn(u64, u64) + Send + Sync) -> (f64, u64) {
    let call = &call;
    let total = AtomicU64::new(0);
    let start = Barrier::new(threads + 1);
    let began = std::thread::scope(|scope| {
        for thread in 0..threads as u64 {
            let total = &total;
            let start = &start;
            scope.spawn(move || {
                start.wait();
                let deadline = Instant::now() + duration;
                let mut index = 0u64;
                while Instant::now() < deadline {
                    call(thread, index);
                    index += 1;
                }
                total.fetch_add(index, Ordering::Relaxed);
            });
        }
        start.wait();
        Instant::now()
    });
    // `scope` returned after joining every thread.
    let seconds = began.elapsed().as_secs_f64();
    let calls = total.load(Ordering::Relaxed);
    (calls as f64 / seconds, calls)
}

fn baseline(dir: &Path, threads: usize, duration: Duration) -> Measured {
    let env_dir = dir.join(format!("baseline-{threads}"));
    std::fs::create_dir_all(&env_dir).unwrap();
    // SAFETY: default (durable) flags; nothing else touches this scratch environment.
    let env = unsafe { EnvOpenOptions::new().map_size(1 << 30).max_dbs(1).open(&env_dir).unwrap() };
    let mut txn = env.write_txn().unwrap();
    let db = env.create_database::<Bytes, Bytes>(&mut txn, Some("rows")).unwrap();
    txn.commit().unwrap();
    let value = [7u8; VALUE_BYTES];
    let (commits_per_sec, calls) = run(threads, duration, |thread, index| {
        let key = ((thread << 40) | index).to_be_bytes();
        let mut txn = env.write_txn().unwrap();
        db.put(&mut txn, &key, &value).unwrap();
        txn.commit().unwrap();
    });
    Measured { commits_per_sec, calls, lmdb_commits: calls }
}

fn manifest(dir: &Path, threads: usize, duration: Duration) -> Measured {
    let data_dir = dir.join(format!("manifest-{threads}"));
    let manifest = Manifest::open(
        &data_dir,
        ManifestConfig { map_size_initial_bytes: 1 << 30, ..ManifestConfig::default() },
    )
    .unwrap();
    let (commits_per_sec, calls) = run(threads, duration, |thread, index| {
        // One new row per call, like the baseline (plus the change-feed entry).
        let mut batch = Batch::new();
        batch.put_segment(
            (thread << 40) | index,
            Segment { first_index: index, last_index: Some(index + 100), state: SegmentState::Sealed },
        );
        manifest.commit(batch).unwrap();
    });
    let metrics = manifest.metrics();
    assert_eq!(metrics.batches, calls);
    Measured { commits_per_sec, calls, lmdb_commits: metrics.commits }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let parent =
        std::env::var_os("BOP_BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let seconds: u64 = std::env::var("BOP_BENCH_SECS").ok().and_then(|value| value.parse().ok()).unwrap_or(2);
    let duration = Duration::from_secs(seconds);
    let scratch = tempfile::tempdir_in(&parent).unwrap();
    println!("manifest commit throughput, {seconds} s per case, scratch dir {}", scratch.path().display());
    println!(
        "| committers | plain LMDB commit/call (commits/s) | manifest.commit (commits/s) | LMDB commits | batches/LMDB commit | ratio manifest/plain |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    for threads in [1usize, 16] {
        let plain = baseline(scratch.path(), threads, duration);
        let ours = manifest(scratch.path(), threads, duration);
        println!(
            "| {threads} | {:.0} | {:.0} | {} | {:.2} | {:.2} |",
            plain.commits_per_sec,
            ours.commits_per_sec,
            ours.lmdb_commits,
            ours.calls as f64 / ours.lmdb_commits.max(1) as f64,
            ours.commits_per_sec / plain.commits_per_sec,
        );
    }
}
