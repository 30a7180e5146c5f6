//! Behaviour of the WAL chunk store on each backend: append, read, reopen, roll, truncate, purge, bounds,
//! and every injected fault.

mod common;

use std::sync::Arc;

use bop_storage::io::{BufferedIo, CrashMode, DirectIo, Io, SimDisk};
use bop_storage::wal::{LogPos, RecoveryMode, WalConfig, WalError, WalStore, WriterMode};
use common::{check_payload, entry, payload, sim_store, sim_store_with, small_config};

fn append_read_reopen(io: Arc<dyn Io>, dir: &std::path::Path) {
    // Set-up: a store with small segments so that 300 entries of 700 bytes span several of them.
    let store = WalStore::open(Arc::clone(&io), small_config(dir)).expect("open");
    for index in 1..=300u64 {
        store.append(vec![entry(index, 1 + index / 100, 700)]).expect("append").wait().expect("durable");
    }
    assert!(store.segment_count() >= 3, "rolled into {} segments", store.segment_count());
    // Every fdatasync of the write path is in the latency histogram, in the bucket of its own time.
    let metrics = store.metrics();
    assert!(metrics.fsyncs >= 300, "{} fdatasyncs for 300 appends waited on in turn", metrics.fsyncs);
    assert_eq!(metrics.fsync_buckets.iter().sum::<u64>(), metrics.fsyncs, "{:?}", metrics.fsync_buckets);
    let bound = |i: usize| bop_storage::wal::FSYNC_BUCKET_BOUNDS.get(i).copied().unwrap_or(f64::INFINITY);
    let lowest = (0..metrics.fsync_buckets.len())
        .map(|i| metrics.fsync_buckets[i] as f64 * if i == 0 { 0.0 } else { bound(i - 1) })
        .sum::<f64>();
    assert!(
        lowest <= metrics.fsync_seconds,
        "each counted at or below its time: {lowest} s > {} s",
        metrics.fsync_seconds
    );
    let check = |store: &WalStore| {
        for index in 1..=300u64 {
            let got = store.read(index).expect("read").expect("present");
            assert_eq!(got.payload, payload(index, 1 + index / 100, 700), "entry {index}");
        }
        assert_eq!(store.read(301).expect("read"), None);
        assert_eq!(store.state().last, Some(LogPos { index: 300, term: 4 }));
    };
    // Property: everything reads back, before and after reopening.
    check(&store);
    store.close().expect("close");
    drop(store);
    let store = WalStore::open(io, small_config(dir)).expect("reopen");
    assert_eq!(store.recovery_report().torn_tail, None);
    check(&store);
}

#[test]
fn buffered_store_round_trips_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    append_read_reopen(Arc::new(BufferedIo::new()), dir.path());
}

#[test]
fn direct_store_round_trips_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    append_read_reopen(Arc::new(DirectIo::new()), dir.path());
}

#[test]
fn sim_store_round_trips_across_reopen() {
    let disk = SimDisk::new(1);
    append_read_reopen(Arc::new(disk), std::path::Path::new("/wal"));
}

#[test]
fn store_reopened_in_the_other_io_mode_reads_everything() {
    // Direct-I/O batches leave block-aligned gaps; a buffered reopen must skip them, and vice versa.
    let dir = tempfile::tempdir().expect("tempdir");
    let direct: Arc<dyn Io> = Arc::new(DirectIo::new());
    let buffered: Arc<dyn Io> = Arc::new(BufferedIo::new());
    let mut next = 1u64;
    for round in 0..4 {
        let io = if round % 2 == 0 { &direct } else { &buffered };
        let store = WalStore::open(Arc::clone(io), small_config(dir.path())).expect("open");
        for _ in 0..25 {
            store.append(vec![entry(next, 1, 50)]).expect("append").wait().expect("durable");
            next += 1;
        }
        for index in 1..next {
            let got = store.read(index).expect("read").expect("present");
            assert_eq!(check_payload(&got.payload), Some((index, 1)), "round {round}, entry {index}");
        }
    }
}

#[test]
fn truncate_is_durable_and_the_suffix_can_be_rewritten() {
    let disk = SimDisk::new(2);
    let store = sim_store(&disk);
    let entries: Vec<_> = (1..=20).map(|i| entry(i, 1, 100)).collect();
    store.append(entries).expect("append").wait().expect("durable");

    store.truncate_after(12).expect("truncate");
    assert_eq!(store.read(13).expect("read"), None, "truncated entries vanish at once");
    store.append((13..=15).map(|i| entry(i, 2, 100)).collect()).expect("append").wait().expect("durable");

    // Property: after a crash that loses everything unsynced, the truncation and the new suffix hold.
    let disk = disk.crash(CrashMode::LoseUnsynced);
    drop(store);
    let store = sim_store(&disk);
    assert_eq!(store.state().last, Some(LogPos { index: 15, term: 2 }));
    for index in 1..=15u64 {
        let term = if index <= 12 { 1 } else { 2 };
        assert_eq!(store.read(index).expect("read").map(|e| e.payload), Some(payload(index, term, 100)));
    }
}

#[test]
fn purge_deletes_whole_segments_and_survives_reopen() {
    let disk = SimDisk::new(3);
    let store = sim_store(&disk);
    for index in 1..=400u64 {
        store.append(vec![entry(index, 1, 500)]).expect("append").wait().expect("durable");
    }
    let before = store.segment_count();
    let outcome = store.purge_upto(LogPos { index: 300, term: 1 }).expect("purge");
    assert!(!outcome.segments_deleted.is_empty(), "whole segments below 300 are deleted");
    assert_eq!(store.segment_count(), before - outcome.segments_deleted.len());
    assert_eq!(store.read(300).expect("read"), None);
    assert_eq!(store.state().first_index, Some(301));
    // Appends go on after the purge.
    store.append(vec![entry(401, 1, 500)]).expect("append").wait().expect("durable");

    let disk = disk.crash(CrashMode::LoseUnsynced);
    drop(store);
    let store = sim_store(&disk);
    let state = store.state();
    assert_eq!(state.purged, Some(LogPos { index: 300, term: 1 }));
    assert_eq!(state.first_index, Some(301));
    assert_eq!(state.last, Some(LogPos { index: 401, term: 1 }));
    assert_eq!(store.read(350).expect("read").map(|e| e.payload), Some(payload(350, 1, 500)));
}

#[test]
fn purge_past_the_end_moves_the_next_index() {
    let disk = SimDisk::new(4);
    let store = sim_store(&disk);
    store.append((1..=5).map(|i| entry(i, 1, 10)).collect()).expect("append").wait().expect("durable");
    store.purge_upto(LogPos { index: 50, term: 3 }).expect("purge");
    let err = store.append(vec![entry(6, 3, 10)]).expect_err("gap");
    assert!(matches!(err, WalError::NonContiguous { expected: 51, got: 6 }), "{err}");
    store.append(vec![entry(51, 3, 10)]).expect("append").wait().expect("durable");
    drop(store);
    let store = sim_store(&disk.crash(CrashMode::LoseUnsynced));
    assert_eq!(store.state().first_index, Some(51));
    assert_eq!(store.state().purged, Some(LogPos { index: 50, term: 3 }));
}

#[test]
fn full_queue_refuses_try_append_and_blocks_append() {
    // Set-up: writes are held, so nothing leaves the queue.
    let disk = SimDisk::new(5);
    let io: Arc<dyn Io> = Arc::new(disk.clone());
    let mut config = small_config("/wal");
    config.queue_records_max = 4;
    let store = Arc::new(WalStore::open(io, config).expect("open"));
    disk.pause_writes();
    let mut tickets = Vec::new();
    for index in 1..=4 {
        tickets.push(store.try_append(vec![entry(index, 1, 10)]).expect("fits"));
    }
    // Property: the fifth is refused with a typed, retryable error...
    let err = store.try_append(vec![entry(5, 1, 10)]).expect_err("full");
    assert!(err.is_retryable() && matches!(err, WalError::Backpressure { .. }), "{err}");
    assert_eq!(store.metrics().backpressure_rejections, 1);
    // ...and a blocking append waits until space frees, then goes through.
    let blocked = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || store.append(vec![entry(5, 1, 10)]).and_then(|t| t.wait()))
    };
    disk.resume_writes();
    for ticket in tickets {
        ticket.wait().expect("durable");
    }
    blocked.join().expect("thread").expect("the blocked append completes");
    assert!(store.metrics().queue_depth_peak <= 4, "the bound held");
}

#[test]
fn failed_fsync_poisons_fails_every_waiter_and_reopen_recovers_the_durable_prefix() {
    let disk = SimDisk::new(6);
    let store = sim_store(&disk);
    for index in 1..=10 {
        store.append(vec![entry(index, 1, 100)]).expect("append").wait().expect("durable");
    }
    // Action: the next fsync fails while several appends wait on it.
    disk.pause_writes();
    disk.fail_sync_after(0);
    let tickets: Vec<_> =
        (11..=20).map(|i| store.append(vec![entry(i, 1, 100)]).expect("accepted")).collect();
    disk.resume_writes();
    for ticket in tickets {
        let err = ticket.wait().expect_err("every waiter gets the error");
        assert!(matches!(err, WalError::Poisoned(_)), "{err}");
    }
    // Property: poisoned for good — no retry, no new work.
    assert!(store.poisoned().is_some());
    assert!(matches!(store.append(vec![entry(21, 1, 1)]), Err(WalError::Poisoned(_))));
    assert_eq!(store.metrics().permanent_failures, 1);

    // Property: reopening after the crash keeps all ten acknowledged entries.
    drop(store);
    let store = sim_store(&disk.crash(CrashMode::TornSectors));
    for index in 1..=10 {
        assert_eq!(store.read(index).expect("read").map(|e| e.payload), Some(payload(index, 1, 100)));
    }
}

#[test]
fn writer_panic_is_caught_with_context_and_poisons() {
    let disk = SimDisk::new(7);
    let store = sim_store(&disk);
    store.append(vec![entry(1, 1, 10)]).expect("append").wait().expect("durable");
    disk.panic_on_write_after(0);
    let err = store.append(vec![entry(2, 1, 10)]).expect("accepted").wait().expect_err("poisoned");
    let WalError::Poisoned(cause) = err else { panic!("expected poison") };
    let text = cause.to_string();
    assert!(
        text.contains("simulated panic") && text.contains("sim.rs"),
        "cause names payload and place: {text}"
    );
    let last_panic = store.metrics().last_panic.expect("recorded");
    // The flusher may be the writer thread or the waiting appender itself (leader/follower).
    assert!(last_panic.contains("panic in thread") && last_panic.contains("sim.rs"), "{last_panic}");
    assert!(matches!(store.append(vec![entry(3, 1, 10)]), Err(WalError::Poisoned(_))));
}

#[test]
fn interrupted_writes_are_retried_a_bounded_number_of_times() {
    let disk = SimDisk::new(8);
    let store = sim_store(&disk);
    disk.interrupt_next_writes(3);
    store.append(vec![entry(1, 1, 10)]).expect("append").wait().expect("durable after retries");
    assert_eq!(store.metrics().retries, 3);
    // More interruptions than the policy allows: a permanent failure, not a spin.
    disk.interrupt_next_writes(1000);
    let err = store.append(vec![entry(2, 1, 10)]).expect("accepted").wait().expect_err("gives up");
    assert!(matches!(err, WalError::Poisoned(_)), "{err}");
    assert_eq!(store.metrics().retries, 3 + 8);
}

// A full disk no longer poisons the store: tests/wal_no_space.rs.

#[test]
fn bad_appends_get_typed_errors() {
    let disk = SimDisk::new(10);
    let store = sim_store(&disk);
    store.append(vec![entry(5, 1, 1)]).expect("first index is free").wait().expect("durable");
    assert!(matches!(
        store.append(vec![entry(7, 1, 1)]),
        Err(WalError::NonContiguous { expected: 6, got: 7 })
    ));
    assert!(matches!(
        store.append(vec![entry(6, 1, 1), entry(8, 1, 1)]),
        Err(WalError::NonContiguous { expected: 7, got: 8 })
    ));
    let huge = bop_storage::wal::NewEntry { index: 6, term: 1, payload: vec![0; 70_000] };
    assert!(matches!(store.append(vec![huge]), Err(WalError::TooLarge { .. })));
    store.purge_upto(LogPos { index: 5, term: 1 }).expect("purge");
    assert!(matches!(store.truncate_after(3), Err(WalError::TruncateBelowPurged { index: 3, purged: 5 })));
    let mut config = WalConfig::new("/other");
    config.queue_records_max = 0;
    let io: Arc<dyn Io> = Arc::new(disk.clone());
    assert!(matches!(WalStore::open(io, config), Err(WalError::InvalidConfig { .. })));
}

fn segment_path(seq: u64) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/wal/{seq:016x}.wal"))
}

#[test]
fn corruption_in_a_sealed_segment_is_a_typed_error_naming_segment_and_offset() {
    let disk = SimDisk::new(11);
    let store = sim_store(&disk);
    for index in 1..=200u64 {
        store.append(vec![entry(index, 1, 600)]).expect("append").wait().expect("durable");
    }
    drop(store);
    // A bit flip inside the first record's payload of segment 1.
    assert!(disk.corrupt(&segment_path(1), 4096 + 40, 0x10));
    for mode in [RecoveryMode::TolerateTornTail, RecoveryMode::AbsoluteConsistency] {
        let mut config = small_config("/wal");
        config.recovery_mode = mode;
        let io: Arc<dyn Io> = Arc::new(disk.clone());
        let err = WalStore::open(io, config).expect_err("corruption is refused");
        assert!(matches!(err, WalError::Corruption { segment: 1, offset: 4096, .. }), "{mode:?}: {err}");
    }
}

#[test]
fn corruption_before_a_later_batch_of_the_last_segment_is_not_mistaken_for_a_torn_tail() {
    let disk = SimDisk::new(12);
    let store = sim_store(&disk);
    for index in 1..=10u64 {
        store.append(vec![entry(index, 1, 100)]).expect("append").wait().expect("durable");
    }
    drop(store);
    assert!(disk.corrupt(&segment_path(1), 4096 + 3 * 136 + 50, 0x01));
    let io: Arc<dyn Io> = Arc::new(disk.clone());
    let err = WalStore::open(io, small_config("/wal")).expect_err("mid-log corruption");
    assert!(
        matches!(err, WalError::Corruption { segment: 1, offset, .. } if offset == 4096 + 3 * 136),
        "{err}"
    );
}

#[test]
fn reads_verify_checksums() {
    let disk = SimDisk::new(13);
    let store = sim_store(&disk);
    store.append(vec![entry(1, 1, 100)]).expect("append").wait().expect("durable");
    assert!(disk.corrupt(&segment_path(1), 4096 + 60, 0x80));
    let err = store.read(1).expect_err("bit rot is detected on read");
    assert!(matches!(err, WalError::Corruption { segment: 1, offset: 4096, .. }), "{err}");
}

/// A store with entry 1 durable and entries 2..=20 (one batch over several sectors) written but not yet
/// synced, crashed between the write and its fsync: the disk as it comes back, torn as `seed` decides.
fn crash_between_write_and_fsync(seed: u64) -> SimDisk {
    let disk = SimDisk::new(seed);
    let store = sim_store(&disk);
    store.append(vec![entry(1, 1, 100)]).expect("append").wait().expect("durable");
    let writes = disk.write_count();
    disk.pause_syncs();
    let big: Vec<_> = (2..=20).map(|i| entry(i, 1, 400)).collect();
    let ticket = store.append(big).expect("accepted");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while disk.write_count() == writes {
        assert!(std::time::Instant::now() < deadline, "the batch was never written");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let crashed = disk.crash(CrashMode::TornSectors);
    disk.resume_syncs();
    assert!(ticket.wait().is_err(), "the batch's fsync never succeeded");
    drop(store);
    crashed
}

#[test]
fn torn_tail_is_cut_when_tolerated_and_refused_under_absolute_consistency() {
    // Set-up: for each of several seeds, a fresh disk crashed with a multi-sector batch unsynced; find
    // one whose tear leaves a damaged record (not just a clean prefix).
    let mut images = std::collections::BTreeSet::new();
    let mut crashed = None;
    let mut clean_prefixes = 0;
    // Odd seeds: the simulated disk's generator starts from `seed | 1`.
    let seeds: Vec<u64> = (0..16).map(|i| 2 * i + 1).collect();
    for &seed in &seeds {
        let candidate = crash_between_write_and_fsync(seed);
        images.insert(candidate.file_bytes(&segment_path(1)).expect("segment 1"));
        let mut strict = small_config("/wal");
        strict.recovery_mode = RecoveryMode::AbsoluteConsistency;
        let io: Arc<dyn Io> = Arc::new(candidate.clone());
        match WalStore::open(io, strict) {
            Err(WalError::Corruption { reason: bop_storage::wal::CorruptionReason::TornTail(_), .. }) => {
                crashed.get_or_insert(candidate);
            }
            Ok(store) => {
                clean_prefixes += 1;
                drop(store);
            }
            Err(other) => panic!("seed {seed}: unexpected error {other}"),
        }
    }
    // Each iteration was a different crash.
    assert_eq!(images.len(), seeds.len(), "every seed tore the batch differently");
    assert!(clean_prefixes < seeds.len(), "some tear damages a record");
    let disk = crashed.expect("some tear damages a record");
    // Property: the tolerant mode cuts it, keeps the durable entry and only whole records.
    let store = sim_store(&disk);
    assert!(store.recovery_report().torn_tail.is_some());
    assert_eq!(store.read(1).expect("read").map(|e| e.payload), Some(payload(1, 1, 100)));
    let last = store.state().last.expect("entry 1 at least").index;
    for index in 1..=last {
        let got = store.read(index).expect("read").expect("present");
        assert_eq!(check_payload(&got.payload), Some((index, 1)));
    }
    // Appends continue after the cut, and a second reopen is clean.
    store.append(vec![entry(last + 1, 2, 10)]).expect("append").wait().expect("durable");
    drop(store);
    let store = sim_store(&disk.crash(CrashMode::LoseUnsynced));
    assert_eq!(store.recovery_report().torn_tail, None);
    assert_eq!(store.state().last, Some(LogPos { index: last + 1, term: 2 }));
}

#[test]
fn async_append_waits_for_space_without_blocking() {
    use std::time::Duration;
    // Set-up: writes are held, so the two records admitted fill the in-flight bound and stay in flight.
    let disk = SimDisk::new(15);
    let io: Arc<dyn Io> = Arc::new(disk.clone());
    let mut config = small_config("/wal");
    config.queue_records_max = 2;
    let store = Arc::new(WalStore::open(io, config).expect("open"));
    disk.pause_writes();
    // Writes resume in the end whatever happens, so that a regression fails instead of hanging.
    {
        let disk = disk.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(30));
            disk.resume_writes();
        });
    }
    let tickets: Vec<_> = (1..=2).map(|i| store.try_append(vec![entry(i, 1, 10)]).expect("fits")).collect();
    let full = store.try_append(vec![entry(3, 1, 10)]);
    assert!(matches!(full, Err(WalError::Backpressure { .. })), "the bound is full: {full:?}");
    let rejections = store.metrics().backpressure_rejections;

    // Action: an async append on a runtime with a single thread, which meanwhile runs another task.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
    runtime.block_on(async {
        let waiting = tokio::spawn({
            let store = Arc::clone(&store);
            async move { store.append_async(vec![entry(3, 1, 10)]).await }
        });
        let started = std::time::Instant::now();
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Property: the waiting append holds neither the thread nor the runtime...
        assert!(started.elapsed() < Duration::from_secs(10), "the runtime's thread was held");
        assert!(!waiting.is_finished(), "no space has freed, so the append is still waiting");
        assert!(store.metrics().backpressure_rejections > rejections, "it was refused for space and waits");
        assert_eq!(store.metrics().queue_depth, 2, "it was not admitted past the bound");
        // ...and completes once space frees.
        disk.resume_writes();
        let ticket = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("admitted once space frees")
            .expect("task")
            .expect("append");
        tokio::time::timeout(Duration::from_secs(10), ticket)
            .await
            .expect("durable in time")
            .expect("durable");
    });
    for t in tickets {
        t.wait().expect("durable");
    }
    assert_eq!(store.read(3).expect("read").map(|e| check_payload(&e.payload)), Some(Some((3, 1))));
}

#[test]
fn inline_writer_is_durable_before_the_submission_returns() {
    let disk = SimDisk::new(7);
    let store = sim_store_with(&disk, WriterMode::Inline);
    let called = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&called);
    store
        .append_with(
            vec![entry(1, 1, 100)],
            Box::new(move |result| {
                result.expect("durable");
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
            }),
        )
        .expect("append");
    assert!(called.load(std::sync::atomic::Ordering::SeqCst), "the callback ran before append_with returned");
    let syncs = disk.sync_count();
    // A crash right after the call keeps the entry: it was fsynced on the submitting thread.
    let disk = disk.crash(CrashMode::LoseUnsynced);
    drop(store);
    let store = sim_store_with(&disk, WriterMode::Inline);
    assert_eq!(store.read(1).expect("read").map(|e| check_payload(&e.payload)), Some(Some((1, 1))));
    assert!(syncs >= 1);
}

#[test]
fn inline_writer_poisons_on_a_failed_fsync() {
    let disk = SimDisk::new(8);
    let store = sim_store_with(&disk, WriterMode::Inline);
    store.append_durable(vec![entry(1, 1, 64)]).expect("first append");
    disk.fail_sync_after(0);
    let failed = store.append(vec![entry(2, 1, 64)]).expect("accepted").wait();
    assert!(matches!(failed, Err(WalError::Poisoned(_))), "{failed:?}");
    assert!(store.poisoned().is_some());
    assert!(matches!(store.append_durable(vec![entry(3, 1, 64)]), Err(WalError::Poisoned(_))));
}

#[test]
fn flush_of_a_settled_store_resolves_without_another_fsync() {
    let disk = SimDisk::new(9);
    let store = sim_store(&disk);
    store.append_durable(vec![entry(1, 1, 64)]).expect("append");
    let syncs = disk.sync_count();
    store.flush().expect("flush").wait().expect("durable");
    assert_eq!(disk.sync_count(), syncs, "nothing was pending, so nothing was synced");
    // With an append pending, the barrier covers it.
    let pending = store.append(vec![entry(2, 1, 64)]).expect("append");
    store.flush().expect("flush").wait().expect("durable");
    pending.wait().expect("the append before the barrier is durable");
}

/// Regression test for the write stall at each roll: the preparer zero-filled the next segment at full speed
/// once the active one was half full, and every node's 64 MiB went to the disk at once, holding the log's
/// fdatasyncs behind it. Now the zeros never run ahead of three times the bytes the log appended since the
/// request (plus two 1 MiB chunks), and the segment is still ready before the roll.
#[test]
fn the_next_segment_is_zero_filled_at_the_pace_of_the_log() {
    const MIB: u64 = 1 << 20;
    let disk = SimDisk::new(5);
    let io: Arc<dyn Io> = Arc::new(disk.clone());
    let mut config = WalConfig::new("/wal");
    config.segment_size_bytes = 8 * MIB;
    let store = WalStore::open(io, config).expect("open");
    let prepared = std::path::Path::new("/wal/next-segment.prepare");
    let zeroed = || disk.file_bytes(prepared).map_or(0, |b| b.len() as u64);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut next = 1u64;
    while store.metrics().bytes <= 4 * MIB {
        store.append_durable(vec![entry(next, 1, 64 * 1024)]).expect("append");
        next += 1;
    }
    // The batch that passed half full asked for the next segment; nothing was appended since.
    let at_request = store.metrics().bytes;
    while zeroed() < MIB {
        assert!(std::time::Instant::now() < deadline, "the preparer did not start within 20 s");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    loop {
        let appended = store.metrics().bytes - at_request;
        let zeros = zeroed();
        assert!(
            zeros <= 3 * appended + 2 * MIB,
            "{zeros} bytes zeroed after the log appended {appended}: the fill ran ahead of the log"
        );
        if store.metrics().segments_prepared_ahead >= 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the segment was not prepared within 20 s");
        if appended < 3 * MIB + 64 * 1024 {
            store.append_durable(vec![entry(next, 1, 16 * 1024)]).expect("append");
            next += 1;
        } else {
            // Past 3/8 of a segment the fill is no longer paced: it finishes on its own.
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    assert_eq!(store.segment_count(), 1, "prepared before the roll");
    while store.segment_count() == 1 {
        store.append_durable(vec![entry(next, 1, 16 * 1024)]).expect("append");
        next += 1;
    }
    let metrics = store.metrics();
    assert_eq!(
        (metrics.segments_created, metrics.segments_prepared),
        (1, 1),
        "the roll took the prepared file"
    );
    for index in 1..next {
        let got = store.read(index).expect("read").expect("present");
        assert_eq!(check_payload(&got.payload), Some((index, 1)), "entry {index}");
    }
}

#[test]
fn the_next_segment_is_prepared_ahead_and_a_leftover_prepared_file_is_removed_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let io: Arc<dyn Io> = Arc::new(BufferedIo::new());
    let prepared = dir.path().join("next-segment.prepare");
    let store = WalStore::open(Arc::clone(&io), small_config(dir.path())).expect("open");
    // 64 KiB segments hold about 85 records of 700 bytes; the preparer is asked once the active segment is
    // half full (about 45), so after 60 a prepared segment must become ready (bounded wait), and the roll
    // takes it. The wait is for the preparer to have finished, not for its file to exist: the file exists
    // from the moment the preparer starts zero-filling it, and a roll before it is finished creates the
    // segment itself.
    let mut next = 1u64;
    for roll in 1..=2usize {
        for _ in 0..60 {
            store.append_durable(vec![entry(next, 1, 700)]).expect("append");
            next += 1;
        }
        assert_eq!(store.segment_count(), roll, "no roll before the segment is full");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while store.metrics().segments_prepared_ahead < roll as u64 {
            assert!(std::time::Instant::now() < deadline, "no segment was prepared within 10 s");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(prepared.exists(), "the prepared segment waits under its own name");
        while store.segment_count() == roll {
            store.append_durable(vec![entry(next, 1, 700)]).expect("append");
            next += 1;
        }
        // Property: the roll installed the prepared file (renamed into place) instead of creating one.
        let metrics = store.metrics();
        assert_eq!((metrics.segments_created, metrics.segments_prepared), (roll as u64, roll as u64));
    }
    store.close().expect("close");
    drop(store);
    // A leftover (here: garbage) prepared file is not a segment and goes at the next open.
    std::fs::write(&prepared, b"not a segment").expect("plant");
    let store = WalStore::open(io, small_config(dir.path())).expect("reopen");
    assert!(!prepared.exists(), "the leftover prepared file was removed");
    assert_eq!(store.recovery_report().torn_tail, None);
    assert_eq!(store.segment_count(), 3);
    for index in 1..next {
        let got = store.read(index).expect("read").expect("present");
        assert_eq!(check_payload(&got.payload), Some((index, 1)), "entry {index}");
    }
}
