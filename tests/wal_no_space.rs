//! A full disk (ENOSPC, EDQUOT) before anything was acknowledged is not a durability failure. Creating,
//! reserving or preparing a segment, or writing a batch, that fails for lack of space does not poison the
//! store: the WAL raises its space alarm, holds the batch (appends stay in flight), and finishes it once
//! space returns — by itself with the writer threads, at the next submission or `retry_now` inline. A
//! failed fdatasync still poisons, whatever its errno. Also: `io_stalled_for` shows a hung fdatasync.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bop_storage::io::{CrashMode, Io, SimDisk};
use bop_storage::wal::{DurableCallback, WalError, WalStore, WriterMode};
use common::{check_payload, entry, payload, small_config};
use parking_lot::{Condvar, Mutex};

const LEN: usize = 1000;
const WAIT: Duration = Duration::from_secs(20);

fn open(disk: &SimDisk, writer: WriterMode) -> WalStore {
    let io: Arc<dyn Io> = Arc::new(disk.clone());
    let mut config = small_config("/wal");
    config.writer = writer;
    WalStore::open(io, config).expect("open")
}

/// Polls `cond` (bounded): the tests never sleep a fixed time and assume something happened.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The outcomes of append callbacks, by index of the append's last entry, in the order they fired.
#[derive(Default)]
struct Acks {
    fired: Mutex<Vec<(u64, Result<(), String>)>>,
    cv: Condvar,
}

impl Acks {
    fn callback(self: &Arc<Self>, index: u64) -> DurableCallback {
        let acks = Arc::clone(self);
        Box::new(move |result: Result<(), WalError>| {
            acks.fired.lock().push((index, result.map_err(|e| e.to_string())));
            acks.cv.notify_all();
        })
    }

    fn count(&self) -> usize {
        self.fired.lock().len()
    }

    fn wait_for(&self, count: usize) {
        let deadline = Instant::now() + WAIT;
        let mut fired = self.fired.lock();
        while fired.len() < count {
            let timed_out = self.cv.wait_until(&mut fired, deadline).timed_out();
            assert!(!timed_out || fired.len() >= count, "{} of {count} callbacks fired", fired.len());
        }
    }

    fn ok(&self) -> Vec<u64> {
        self.fired.lock().iter().filter(|(_, r)| r.is_ok()).map(|(i, _)| *i).collect()
    }

    fn failed(&self) -> Vec<(u64, String)> {
        self.fired.lock().iter().filter_map(|(i, r)| r.clone().err().map(|e| (*i, e))).collect()
    }
}

/// Every readable entry, index to payload; each must be whole.
fn readable(store: &WalStore) -> BTreeMap<u64, Vec<u8>> {
    let state = store.state();
    let (Some(first), Some(last)) = (state.first_index, state.last) else { return BTreeMap::new() };
    (first..=last.index)
        .map(|i| {
            let e = store.read(i).expect("read").unwrap_or_else(|| panic!("hole at {i}"));
            assert!(check_payload(&e.payload).is_some(), "entry {i} is whole");
            (i, e.payload)
        })
        .collect()
}

fn expect_log(store: &WalStore, upto: u64) {
    let log = readable(store);
    let want: BTreeMap<u64, Vec<u8>> = (1..=upto).map(|i| (i, payload(i, 1, LEN))).collect();
    assert_eq!(log.keys().next_back(), want.keys().next_back(), "last index");
    assert!(log == want, "the log is exactly entries 1..={upto}");
}

/// Ten durable entries, then a capacity that leaves room for the active segment's data (it is
/// preallocated) but not for another segment: appends with callbacks from 11 on, until the store holds a
/// batch for space. Returns the acknowledgements and the next index to append.
fn fill_until_held(disk: &SimDisk, store: &WalStore, acks: &Arc<Acks>) -> u64 {
    for i in 1..=10 {
        store.append_durable(vec![entry(i, 1, LEN)]).expect("durable");
    }
    disk.set_capacity_bytes(Some(disk.used_bytes() + 16 * 1024));
    let mut next = 11;
    // A 64 KiB segment holds about 60 such entries.
    while !store.metrics().writes_held_for_space {
        assert!(next < 200, "the disk must fill");
        store.append_with(vec![entry(next, 1, LEN)], acks.callback(next)).expect("accepted");
        next += 1;
        if store.config().writer == WriterMode::Threads && next == 150 {
            wait_until("a batch is held for space", || store.metrics().writes_held_for_space);
        }
    }
    next
}

#[test]
fn threads_hold_appends_while_the_disk_is_full_and_finish_them_once_space_returns() {
    for seed in [1u64, 2, 3] {
        let disk = SimDisk::new(seed);
        let store = open(&disk, WriterMode::Threads);
        let acks = Arc::new(Acks::default());
        let mut next = fill_until_held(&disk, &store, &acks);
        // More appends are still accepted: they stay in flight behind the held batch.
        for _ in 0..5 {
            store.append_with(vec![entry(next, 1, LEN)], acks.callback(next)).expect("accepted");
            next += 1;
        }
        let last = next - 1;

        // Property: not poisoned, alarm up, everything appended readable, nothing failed, not all done.
        assert!(store.poisoned().is_none(), "{:?}", store.poisoned());
        assert!(store.space_alarm());
        let metrics = store.metrics();
        assert!(metrics.space_alarm && metrics.no_space_events >= 1, "{metrics:?}");
        assert!(metrics.last_no_space.as_deref().is_some_and(|m| m.contains("No space")), "{metrics:?}");
        for i in 1..=last {
            assert_eq!(store.read(i).expect("read while full").map(|e| e.payload), Some(payload(i, 1, LEN)));
        }
        assert!(acks.failed().is_empty(), "{:?}", acks.failed());
        let acked_while_full = acks.count();
        assert!(acked_while_full < (last - 10) as usize, "some appends wait for space");

        // Action: space returns. Property: every waiting append completes Ok, once, in order.
        disk.set_capacity_bytes(None);
        acks.wait_for((last - 10) as usize);
        assert_eq!(acks.ok(), (11..=last).collect::<Vec<_>>(), "each append acknowledged once, in order");
        wait_until("the alarm clears", || !store.space_alarm());
        assert!(store.poisoned().is_none());
        for i in last + 1..=last + 10 {
            store.append_durable(vec![entry(i, 1, LEN)]).expect("durable after space returned");
        }
        let last = last + 10;
        expect_log(&store, last);

        // Property: after power loss every acknowledged entry is intact, and nothing else appears.
        let crashed = disk.crash(CrashMode::TornSectors);
        drop(store);
        let store = open(&crashed, WriterMode::Threads);
        expect_log(&store, last);
    }
}

#[test]
fn inline_holds_the_batch_until_a_submission_or_retry_after_space_returns() {
    let disk = SimDisk::new(4);
    let store = open(&disk, WriterMode::Inline);
    let acks = Arc::new(Acks::default());
    let mut next = fill_until_held(&disk, &store, &acks);
    let held = next - 1;
    // Inline: everything before the held append is acknowledged, the held one is not.
    assert_eq!(acks.ok(), (11..held).collect::<Vec<_>>());
    assert!(store.space_alarm() && store.poisoned().is_none());
    // Later submissions queue behind it (each retries first, and fails to get space again).
    for _ in 0..3 {
        store.append_with(vec![entry(next, 1, LEN)], acks.callback(next)).expect("accepted");
        next += 1;
    }
    // A blocking wait cannot block forever with no other thread to write: it says NoSpace, retryably,
    // and the append stays queued.
    let err = store.append_durable(vec![entry(next, 1, LEN)]).expect_err("no space");
    assert!(matches!(err, WalError::NoSpace(_)) && err.is_retryable() && err.is_no_space(), "{err}");
    next += 1;
    let last = next - 1;
    assert_eq!(acks.count(), (held - 11) as usize, "nothing more acknowledged while full");
    for i in 1..=last {
        assert_eq!(store.read(i).expect("read while full").map(|e| e.payload), Some(payload(i, 1, LEN)));
    }

    // Action: space returns. Property: deterministic — nothing happens until asked.
    disk.set_capacity_bytes(None);
    assert_eq!(acks.count(), (held - 11) as usize);
    assert!(store.space_alarm(), "the inline writer retries only when asked");
    store.retry_now();
    assert_eq!(acks.ok(), (11..last).collect::<Vec<_>>(), "every waiting append acknowledged, in order");
    assert!(acks.failed().is_empty());
    assert!(!store.space_alarm());
    expect_log(&store, last);
    let crashed = disk.crash(CrashMode::TornSectors);
    drop(store);
    expect_log(&open(&crashed, WriterMode::Inline), last);
}

#[test]
fn inline_retries_a_held_batch_at_the_next_submission() {
    let disk = SimDisk::new(5);
    let store = open(&disk, WriterMode::Inline);
    let acks = Arc::new(Acks::default());
    let next = fill_until_held(&disk, &store, &acks);
    disk.set_capacity_bytes(None);
    store.append_with(vec![entry(next, 1, LEN)], acks.callback(next)).expect("accepted");
    assert_eq!(acks.ok(), (11..=next).collect::<Vec<_>>());
    assert!(!store.space_alarm());
    expect_log(&store, next);
}

#[test]
fn close_while_waiting_for_space_fails_the_waiting_appends_without_poisoning() {
    for writer in [WriterMode::Threads, WriterMode::Inline] {
        let disk = SimDisk::new(6);
        let store = Arc::new(open(&disk, writer));
        let acks = Arc::new(Acks::default());
        let next = fill_until_held(&disk, &store, &acks);
        let acked_before = acks.ok();

        // Action: close while the batch is held. Property: it returns (bounded), saying NoSpace.
        let (tx, rx) = std::sync::mpsc::channel();
        let closer = Arc::clone(&store);
        std::thread::spawn(move || {
            let _ = tx.send(closer.close());
        });
        let closed = rx.recv_timeout(WAIT).expect("close returns while the disk is full");
        assert!(matches!(closed, Err(WalError::NoSpace(_))), "{writer:?}: {closed:?}");
        assert!(store.poisoned().is_none());
        // Every append got an answer: the waiting ones NoSpace, none twice.
        acks.wait_for((next - 11) as usize);
        assert_eq!(acks.count(), (next - 11) as usize);
        let failed = acks.failed();
        assert!(!failed.is_empty(), "{writer:?}");
        assert!(failed.iter().all(|(_, e)| e.contains("no space")), "{failed:?}");
        let acked = acks.ok();
        assert!(acked.starts_with(&acked_before));
        let acked_last = acked.last().copied().unwrap_or(10);
        assert_eq!(acked, (11..=acked_last).collect::<Vec<_>>(), "{writer:?}");
        drop(store);

        // Property: a reopen in the same boot, and one after power loss, hold exactly what was
        // acknowledged — nothing that failed, whole or half-written.
        disk.set_capacity_bytes(None);
        let store = open(&disk, writer);
        expect_log(&store, acked_last);
        drop(store);
        expect_log(&open(&disk.crash(CrashMode::TornSectors), writer), acked_last);
    }
}

#[test]
fn a_batch_write_cut_short_for_space_is_written_again_at_the_same_offset() {
    for (direct, writer) in [
        (false, WriterMode::Threads),
        (true, WriterMode::Threads),
        (false, WriterMode::Inline),
        (true, WriterMode::Inline),
    ] {
        let disk = if direct { SimDisk::new_direct(7) } else { SimDisk::new(7) };
        let store = open(&disk, writer);
        for i in 1..=5 {
            store.append_durable(vec![entry(i, 1, LEN)]).expect("durable");
        }
        // The next write stores half its bytes, then the one after fails with ENOSPC.
        disk.fail_write_partially_after(0, std::io::ErrorKind::StorageFull);
        let acks = Arc::new(Acks::default());
        store.append_with((6..=15).map(|i| entry(i, 1, LEN)).collect(), acks.callback(15)).expect("accepted");
        if writer == WriterMode::Inline {
            assert!(store.space_alarm(), "held after the short write");
            assert_eq!(acks.count(), 0);
            store.retry_now();
        }
        acks.wait_for(1);
        assert_eq!(acks.ok(), vec![15], "{direct} {writer:?}");
        assert!(!store.space_alarm());
        assert!(store.poisoned().is_none());
        assert!(store.metrics().no_space_events >= 1);
        store.append_durable(vec![entry(16, 1, LEN)]).expect("durable");
        expect_log(&store, 16);
        drop(store);
        let store = open(&disk.crash(CrashMode::TornSectors), writer);
        assert_eq!(store.recovery_report().torn_tail, None, "{direct} {writer:?}");
        expect_log(&store, 16);
    }
}

#[test]
fn the_preparer_raises_the_alarm_before_the_active_segment_fills() {
    let disk = SimDisk::new(8);
    let store = open(&disk, WriterMode::Threads);
    // Room for the active segment's data, not for the next segment.
    disk.set_capacity_bytes(Some(disk.used_bytes() + 8 * 1024));
    let mut next = 1;
    // Past half of the 64 KiB segment the preparer starts on the next one, and fails for space.
    while next <= 36 {
        store.append_durable(vec![entry(next, 1, LEN)]).expect("durable");
        next += 1;
    }
    wait_until("the preparer raises the alarm", || store.space_alarm());
    let metrics = store.metrics();
    assert!(!metrics.writes_held_for_space, "the log is not blocked yet: {metrics:?}");
    assert!(metrics.no_space_events >= 1 && metrics.space_alarm);
    // Property: the active segment still takes writes while the alarm is up.
    store.append_durable(vec![entry(next, 1, LEN)]).expect("the active segment has room");
    next += 1;
    assert!(store.space_alarm(), "the preparer still cannot prepare the next segment");
    assert!(store.poisoned().is_none());

    // Action: space returns. Property: the preparer's own retry succeeds and clears the alarm.
    disk.set_capacity_bytes(None);
    wait_until("the alarm clears", || !store.space_alarm());
    assert!(store.metrics().segments_prepared_ahead >= 1);
    // And the roll uses that segment.
    while store.segment_count() < 2 {
        store.append_durable(vec![entry(next, 1, LEN)]).expect("durable");
        next += 1;
    }
    assert_eq!(store.metrics().segments_prepared, 1);
    expect_log(&store, next - 1);
}

#[test]
fn io_stalled_for_grows_while_a_sync_is_held_and_clears_after() {
    for writer in [WriterMode::Threads, WriterMode::Inline] {
        let disk = SimDisk::new(9);
        let store = Arc::new(open(&disk, writer));
        store.append_durable(vec![entry(1, 1, LEN)]).expect("durable");
        assert_eq!(store.io_stalled_for(), None, "idle");

        // Action: the disk hangs in the next fdatasync.
        disk.pause_syncs();
        let appender = Arc::clone(&store);
        let done = std::thread::spawn(move || appender.append_durable(vec![entry(2, 1, LEN)]));
        wait_until("the fdatasync is held", || disk.syncs_held() == 1);
        let first = store.io_stalled_for().expect("a sync is running");
        // Property: the stall grows while the sync is held, and shows in the metrics.
        wait_until("the stall grows", || {
            store.io_stalled_for().is_some_and(|d| d > first + Duration::from_millis(20))
        });
        assert!(store.metrics().io_stalled_for.is_some());
        assert!(!done.is_finished());

        // Action: the disk comes back. Property: the sync completes, nothing is lost, the stall clears.
        disk.resume_syncs();
        done.join().expect("appender").expect("durable once the sync returns");
        assert_eq!(store.io_stalled_for(), None, "{writer:?}");
        assert_eq!(store.metrics().io_stalled_for, None);
        assert!(!store.space_alarm() && store.poisoned().is_none());
        drop(store);
        expect_log(&open(&disk.crash(CrashMode::TornSectors), writer), 2);
    }
}

#[test]
fn a_failed_fdatasync_poisons_even_when_its_errno_is_enospc() {
    for writer in [WriterMode::Threads, WriterMode::Inline] {
        let disk = SimDisk::new(10);
        let store = open(&disk, writer);
        store.append_durable(vec![entry(1, 1, LEN)]).expect("durable");
        disk.fail_sync_after_with(0, std::io::ErrorKind::StorageFull);
        let err = store.append_durable(vec![entry(2, 1, LEN)]).expect_err("the fdatasync fails");
        let WalError::Poisoned(cause) = &err else { panic!("{writer:?}: {err}") };
        assert!(cause.is_no_space(), "{cause}");
        assert!(store.poisoned().is_some());
        assert!(matches!(store.read(1), Err(WalError::Poisoned(_))));
        drop(store);
        // What was acknowledged survives a reopen and a power loss; the failed batch does not appear.
        let store = open(&disk, writer);
        expect_log(&store, 1);
        drop(store);
        expect_log(&open(&disk.crash(CrashMode::TornSectors), writer), 1);
    }
}

#[test]
fn a_lone_blocking_appender_that_hits_a_full_disk_is_finished_by_the_writer_once_space_returns() {
    // A lone appender waiting on its ticket writes its own batch (leader/follower group commit), so it is
    // the one that meets ENOSPC; the writer thread must take over the retries.
    let disk = SimDisk::new(11);
    let store = Arc::new(open(&disk, WriterMode::Threads));
    disk.set_capacity_bytes(Some(disk.used_bytes() + 16 * 1024));
    let appender = Arc::clone(&store);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for i in 1..=100 {
            let result = appender.append_durable(vec![entry(i, 1, LEN)]);
            let _ = tx.send((i, result.map_err(|e| e.to_string())));
        }
    });
    wait_until("a batch is held for space", || store.metrics().writes_held_for_space);
    assert!(store.poisoned().is_none());
    disk.set_capacity_bytes(None);
    for want in 1..=100u64 {
        let (i, result) = rx.recv_timeout(WAIT).expect("the blocked append completes");
        assert_eq!((i, result), (want, Ok(())));
    }
    assert!(!store.metrics().writes_held_for_space);
    drop(store);
    expect_log(&open(&disk.crash(CrashMode::TornSectors), WriterMode::Threads), 100);
}

#[test]
fn stop_waiting_for_space_fails_the_held_appends_before_close() {
    for writer in [WriterMode::Threads, WriterMode::Inline] {
        let disk = SimDisk::new(7);
        let store = open(&disk, writer);
        let acks = Arc::new(Acks::default());
        let next = fill_until_held(&disk, &store, &acks);
        // Action: give up on the held batch (a node stopping Raft does this before close). Property: every
        // append is answered without close, the held ones with NoSpace, and nothing is poisoned.
        store.stop_waiting_for_space();
        acks.wait_for((next - 11) as usize);
        let failed = acks.failed();
        assert!(!failed.is_empty(), "{writer:?}: the held appends failed");
        assert!(failed.iter().all(|(_, e)| e.contains("no space")), "{failed:?}");
        assert!(store.poisoned().is_none());
        assert!(store.append_with(vec![entry(next, 1, LEN)], acks.callback(next)).is_err(), "then it closes");
        let acked_last = acks.ok().last().copied().unwrap_or(10);
        let _ = store.close();
        drop(store);
        disk.set_capacity_bytes(None);
        expect_log(&open(&disk, writer), acked_last);
    }
}
