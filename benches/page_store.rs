//! Page store benchmark: page read latency from the cache, from a log frame and from a base generation,
//! and checkpoint throughput as a ratio to raw sequential write + fsync of the same bytes, in one run.
//!
//! Run: `cargo bench -p bop-storage --bench page_store` (`BOP_BENCH_PAGES=N` sets the database size,
//! default 16384 pages = 64 MiB).

use std::time::{Duration, Instant};

use bop_storage::io::{AlignedBuf, BufferedIo, Io, OpenMode};
use bop_storage::page_store::{Db, Manager, ManagerConfig, PAGE_SIZE};

fn pages() -> u32 {
    std::env::var("BOP_BENCH_PAGES").ok().and_then(|s| s.parse().ok()).unwrap_or(16_384)
}

fn p50(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

fn open(dir: &std::path::Path, cache_bytes: usize) -> Manager {
    let mut config = ManagerConfig::new(dir);
    config.cache.capacity_bytes = cache_bytes;
    config.generation_chain_max = 1;
    Manager::open(config).expect("open")
}

fn fill(db: &Db, count: u32) {
    let image = vec![0x5au8; PAGE_SIZE];
    let mut page_no = 1u32;
    while page_no <= count {
        let end = (page_no + 255).min(count);
        let frames: Vec<(u32, &[u8])> = (page_no..=end).map(|p| (p, &image[..])).collect();
        db.commit(&frames, count).expect("commit");
        page_no = end + 1;
    }
}

fn read_p50(db: &Db, page_nos: impl Iterator<Item = u32>) -> Duration {
    let view = db.snapshot().expect("pin");
    let samples: Vec<Duration> = page_nos
        .map(|p| {
            let t = Instant::now();
            let page = view.read_page(p).expect("read").expect("present");
            let elapsed = t.elapsed();
            assert_eq!(page.len(), PAGE_SIZE);
            elapsed
        })
        .collect();
    p50(samples)
}

/// Raw sequential write of `bytes` in 256 KiB writes, then fsync: MiB/s.
fn raw_write_mib_s(dir: &std::path::Path, bytes: u64) -> f64 {
    let io = BufferedIo::new();
    let path = dir.join("raw");
    let file = io.open(&path, OpenMode::CreateNew).expect("create");
    let buf = AlignedBuf::zeroed(256 * 1024);
    let t = Instant::now();
    let mut offset = 0u64;
    while offset < bytes {
        file.write_at(&buf, offset).expect("write");
        offset += buf.len() as u64;
    }
    file.sync_all().expect("fsync");
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    bytes as f64 / (1 << 20) as f64 / secs
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let base = std::env::current_dir().expect("cwd");
    let tmp = tempfile::tempdir_in(&base).expect("bench dir");
    let count = pages();
    println!(
        "page store benchmark: {count} pages ({} MiB) in {}",
        (count as usize * PAGE_SIZE) >> 20,
        tmp.path().display()
    );

    // Reads: uncached manager (capacity 0) so every read goes to disk.
    let dir = tmp.path().join("reads");
    let manager = open(&dir, 0);
    let db = manager.create_database("bench").expect("create");
    fill(&db, count);
    let sample = (1..=count).step_by(7).take(2000);
    let from_log = read_p50(&db, sample.clone());
    db.checkpoint().expect("checkpoint");
    let from_generation = read_p50(&db, sample.clone());
    manager.close().expect("close");
    drop((db, manager));
    let manager = open(&dir, 256 << 20);
    let db = manager.open_database("bench").expect("open");
    let _ = read_p50(&db, sample.clone());
    let from_cache = read_p50(&db, sample);
    manager.close().expect("close");
    drop((db, manager));
    println!();
    println!("| page read from | p50 µs |");
    println!("|---|---|");
    println!("| cache | {:.2} |", from_cache.as_secs_f64() * 1e6);
    println!("| log frame | {:.2} |", from_log.as_secs_f64() * 1e6);
    println!("| base generation | {:.2} |", from_generation.as_secs_f64() * 1e6);

    // Checkpoint throughput against raw sequential write + fsync of the same bytes; three alternating rounds
    // (this machine's fsync time varies a lot), medians reported.
    let dir = tmp.path().join("ckpt");
    let manager = open(&dir, 0);
    let db = manager.create_database("bench").expect("create");
    let (mut raw, mut ckpt, mut write) = (Vec::new(), Vec::new(), Vec::new());
    let mut last = None;
    for _ in 0..3 {
        fill(&db, count);
        // Both measurements start with nothing dirty in the page cache, so neither pays for the other's
        // write-back.
        rustix::fs::sync();
        let t = Instant::now();
        let outcome = db.checkpoint().expect("checkpoint").expect("pages to write");
        let mib = outcome.size_bytes as f64 / (1 << 20) as f64;
        ckpt.push(mib / t.elapsed().as_secs_f64());
        write.push(mib / outcome.write_duration.as_secs_f64());
        println!(
            "  round: write {:?}, publish {:?}, cleanup {:?}",
            outcome.write_duration, outcome.publish_duration, outcome.cleanup_duration
        );
        last = Some(outcome);
        rustix::fs::sync();
        raw.push(raw_write_mib_s(tmp.path(), count as u64 * PAGE_SIZE as u64));
    }
    raw.sort_by(f64::total_cmp);
    ckpt.sort_by(f64::total_cmp);
    write.sort_by(f64::total_cmp);
    let (raw, ckpt, write) = (raw[1], ckpt[1], write[1]);
    let outcome = last.expect("three rounds");
    println!();
    println!("| checkpoint | MiB | generation write MiB/s | whole checkpoint MiB/s | raw write+fsync MiB/s | ratio (write) | ratio (whole) |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| full, {} pages | {:.1} | {write:.0} | {ckpt:.0} | {raw:.0} | {:.2} | {:.2} |",
        outcome.pages,
        outcome.size_bytes as f64 / (1 << 20) as f64,
        write / raw,
        ckpt / raw
    );
    manager.close().expect("close");
}
