//! WAL chunk store benchmark: durable appends against the physical limit measured in the same run.
//!
//! Run: `cargo bench --bench wal` (`BOP_BENCH_SECS=N` sets seconds per case, default 1;
//! `BOP_BENCH_DIR` the directory, default a temp dir under the current directory's file system).
//! Reports, per case, durable appends/s, p50/p99 latency, records per fsync, and the ratio
//! achieved / (raw fdatasync rate × records per fsync), plus peak RSS.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bop_storage::io::{AlignedBuf, BufferedIo, DirectIo, Io, OpenMode};
use bop_storage::wal::{NewEntry, WalConfig, WalStore};
use parking_lot::Mutex;

fn secs() -> f64 {
    std::env::var("BOP_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

struct Raw {
    rate: f64,
    p50: Duration,
}

/// How the raw baseline's file is prepared.
#[derive(Clone, Copy, PartialEq)]
enum RawFile {
    /// Empty: every write grows it.
    Growing,
    /// fallocated: unwritten extents, converted by the first write to each block.
    Allocated,
    /// Zeros written and fsynced over the whole file first (how the WAL prepares segments by default).
    ZeroFilled,
}

/// Sequential write + fdatasync of `size` bytes, the physical limit of a durable append.
fn raw(dir: &std::path::Path, size: usize, kind: RawFile, direct: bool) -> Raw {
    let io: Box<dyn Io> = if direct { Box::new(DirectIo::new()) } else { Box::new(BufferedIo::new()) };
    let path = dir.join(format!("raw-{size}-{}-{direct}", kind as u8));
    let file = io.open(&path, OpenMode::CreateNew).expect("create");
    match kind {
        RawFile::Growing => {}
        RawFile::Allocated => file.allocate(0, 256 << 20).expect("fallocate"),
        RawFile::ZeroFilled => {
            let zeros = AlignedBuf::zeroed(1 << 20);
            for i in 0..256u64 {
                file.write_at(&zeros, i << 20).expect("zero-fill");
            }
        }
    }
    file.sync_all().expect("sync");
    // Direct I/O writes whole blocks: the same bytes, padded as the WAL pads them.
    let len = if file.alignment() > 1 { size.next_multiple_of(file.alignment()) } else { size };
    let mut buf = AlignedBuf::zeroed(len);
    buf[..size].fill(0xa5);
    let mut lat = Vec::new();
    let start = Instant::now();
    let mut offset = 0u64;
    while start.elapsed().as_secs_f64() < secs() {
        let t = Instant::now();
        file.write_at(&buf, offset).expect("write");
        file.sync_data().expect("fdatasync");
        lat.push(t.elapsed());
        offset += len as u64;
    }
    lat.sort();
    drop(file);
    let _ = std::fs::remove_file(&path);
    // The median is robust against this kind of machine's occasional multi-millisecond flush stalls, so
    // the rate used as the physical limit is 1 / p50.
    let p50 = percentile(&lat, 0.5);
    Raw { rate: 1.0 / p50.as_secs_f64().max(1e-9), p50 }
}

struct Run {
    rate: f64,
    p50: Duration,
    p99: Duration,
    records_per_fsync: f64,
}

/// A fresh store in `dir` with 256 MiB segments (and `BOP_BENCH_WAIT_US` as the group-commit wait, if set).
fn open_fresh(dir: &std::path::Path, io: Arc<dyn Io>) -> Arc<WalStore> {
    let _ = std::fs::remove_dir_all(dir);
    let mut config = WalConfig::new(dir);
    config.segment_size_bytes = 256 << 20;
    if let Some(wait_us) = std::env::var("BOP_BENCH_WAIT_US").ok().and_then(|s| s.parse().ok()) {
        config.group_commit_wait_us_max = wait_us;
    }
    Arc::new(WalStore::open(io, config).expect("open"))
}

/// Closes the store and summarises the latencies of a run that began at `start`.
fn finish(store: &WalStore, mut lat: Vec<Duration>, start: Instant) -> Run {
    let elapsed = start.elapsed().as_secs_f64();
    let metrics = store.metrics();
    store.close().expect("close");
    lat.sort();
    Run {
        rate: lat.len() as f64 / elapsed,
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        records_per_fsync: metrics.records_per_fsync,
    }
}

fn wal(dir: &std::path::Path, io: Arc<dyn Io>, size: usize, appenders: usize) -> Run {
    let store = open_fresh(dir, io);
    let next = Arc::new(Mutex::new(1u64));
    let deadline = Instant::now() + Duration::from_secs_f64(secs());
    let start = Instant::now();
    let threads: Vec<_> = (0..appenders)
        .map(|_| {
            let (store, next) = (Arc::clone(&store), Arc::clone(&next));
            std::thread::spawn(move || {
                let payload = vec![0x5au8; size];
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let ticket = {
                        let mut next = next.lock();
                        let entry = NewEntry { index: *next, term: 1, payload: payload.clone() };
                        *next += 1;
                        store.append(vec![entry]).expect("append")
                    };
                    ticket.wait().expect("durable");
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let lat: Vec<Duration> = threads.into_iter().flat_map(|t| t.join().expect("appender")).collect();
    finish(&store, lat, start)
}

/// The same measurement with appenders as async tasks on a 2-thread runtime (how openraft and a node use
/// the WAL): each task appends with `try_append` and awaits the durability ticket.
fn wal_tasks(dir: &std::path::Path, io: Arc<dyn Io>, size: usize, appenders: usize) -> Run {
    let store = open_fresh(dir, io);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let next = Arc::new(Mutex::new(1u64));
    let deadline = Instant::now() + Duration::from_secs_f64(secs());
    let start = Instant::now();
    let lat: Vec<Duration> = runtime.block_on(async {
        let tasks: Vec<_> = (0..appenders)
            .map(|_| {
                let (store, next) = (Arc::clone(&store), Arc::clone(&next));
                tokio::spawn(async move {
                    let payload = vec![0x5au8; size];
                    let mut lat = Vec::new();
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        let ticket = {
                            let mut next = next.lock();
                            let entry = NewEntry { index: *next, term: 1, payload: payload.clone() };
                            *next += 1;
                            store.try_append(vec![entry]).expect("append")
                        };
                        ticket.await.expect("durable");
                        lat.push(t.elapsed());
                    }
                    lat
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.expect("task"));
        }
        all
    });
    finish(&store, lat, start)
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let base = std::env::var("BOP_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::current_dir().expect("cwd"));
    let tmp = tempfile::tempdir_in(&base).expect("bench dir");
    let dir = tmp.path();
    println!("WAL benchmark in {} ({} s per case)", dir.display(), secs());
    println!();
    println!("physical limit: sequential write + fdatasync");
    println!("| io | size | file | ops/s (1/p50) | p50 µs |");
    println!("|---|---|---|---|---|");
    // Warm the device and file system up before measuring anything.
    let _ = raw(dir, 4096, RawFile::Allocated, false);
    let mut raw_by_case = Vec::new();
    for direct in [false, true] {
        for size in [256usize, 4096] {
            for kind in [RawFile::Growing, RawFile::Allocated, RawFile::ZeroFilled] {
                let r = raw(dir, size, kind, direct);
                let name = match kind {
                    RawFile::Growing => "growing",
                    RawFile::Allocated => "fallocated",
                    RawFile::ZeroFilled => "zero-filled",
                };
                let io = if direct { "direct" } else { "buffered" };
                println!("| {io} | {size} B | {name} | {:.0} | {:.0} |", r.rate, r.p50.as_secs_f64() * 1e6);
                if kind == RawFile::ZeroFilled {
                    raw_by_case.push((direct, size, r));
                }
            }
        }
    }
    println!();
    println!("durable appends (ratio = appends/s ÷ (zero-filled raw ops/s × records per fsync); p50/raw = p50 ÷ raw p50)");
    println!("| io | size | appenders | appends/s | p50 µs | p99 µs | records/fsync | ratio | p50/raw | ×1-appender |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let ios: [(&str, Arc<dyn Io>); 2] =
        [("buffered", Arc::new(BufferedIo::new())), ("direct", Arc::new(DirectIo::new()))];
    let table = |run: fn(&std::path::Path, Arc<dyn Io>, usize, usize) -> Run, counts: &[usize]| {
        for (name, io) in &ios {
            let direct = *name == "direct";
            for (_, size, raw) in raw_by_case.iter().filter(|(d, _, _)| *d == direct) {
                let mut single = 0.0;
                for &appenders in counts {
                    let r = run(&dir.join("wal"), Arc::clone(io), *size, appenders);
                    if appenders == 1 {
                        single = r.rate;
                    }
                    let ratio = r.rate / (raw.rate * r.records_per_fsync.max(1.0));
                    println!(
                        "| {name} | {size} B | {appenders} | {:.0} | {:.0} | {:.0} | {:.1} | {:.2} | {:.2} | {:.1} |",
                        r.rate,
                        r.p50.as_secs_f64() * 1e6,
                        r.p99.as_secs_f64() * 1e6,
                        r.records_per_fsync,
                        ratio,
                        r.p50.as_secs_f64() / raw.p50.as_secs_f64(),
                        r.rate / single,
                    );
                }
            }
        }
    };
    table(wal, &[1, 8, 64]);
    println!();
    println!("durable appends from async tasks on a 2-thread runtime (same columns)");
    println!(
        "| io | size | tasks | appends/s | p50 µs | p99 µs | records/fsync | ratio | p50/raw | ×1-task |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    table(wal_tasks, &[1, 64]);
    println!();
    println!("peak RSS: {} MiB", peak_rss_kib() / 1024);
}
