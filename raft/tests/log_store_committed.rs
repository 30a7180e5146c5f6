//! The committed log id is written behind (raft/src/log_store.rs, docs/design.md "The Raft log"): openraft's
//! commit path no longer waits for an LMDB commit (an fsync) after the entries' own fdatasync, saves in
//! quick succession share one manifest commit, `close` writes the newest one, and a saved id never names an
//! entry the log does not hold durably. Likewise the segments a purge leaves behind are deleted behind:
//! `purge` returns once the purge record is durable.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bop_raft::LogStore;
use bop_storage::io::{BufferedIo, Io, IoFile, IoResult, OpenMode, SimDisk};
use bop_storage::manifest::RaftBlob;
use common::{open_store, KvConfig};
use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage};
use openraft::testing::{blank_ent, log_id};
use openraft::type_config::TypeConfigExt;

type C = KvConfig;

async fn append_durably(store: &mut LogStore<C>, indexes: std::ops::RangeInclusive<u64>) {
    let entries: Vec<_> = indexes.map(|i| blank_ent::<C>(1, 0, i)).collect();
    let (tx, rx) = C::oneshot();
    store.append(entries, IOFlushed::signal(tx)).await.expect("append");
    rx.await.expect("callback").expect("durable");
}

/// 200 saves one after another: each returns without its own manifest commit (before, each was one LMDB
/// commit, an fsync, on openraft's commit path), and after `close` a reopened store reads the last one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saves_of_the_committed_id_share_manifest_commits_and_close_writes_the_newest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let io: Arc<dyn Io> = Arc::new(BufferedIo::new());
    {
        let mut store = open_store(dir.path(), Arc::clone(&io));
        append_durably(&mut store, 0..=200).await;
        let manifest = store.manifest().clone();
        let before = manifest.metrics().commits;
        for index in 1..=200 {
            store.save_committed(Some(log_id::<C>(1, 0, index))).await.expect("save committed");
        }
        let commits = manifest.metrics().commits - before;
        assert!(commits < 200, "200 saves made {commits} manifest commits: each waited for its own");
        assert_eq!(store.read_committed().await.expect("read"), Some(log_id::<C>(1, 0, 200)));
        store.close().expect("close");
    }
    let mut store = open_store(dir.path(), io);
    assert_eq!(store.read_committed().await.expect("read"), Some(log_id::<C>(1, 0, 200)));
}

/// The committed id the manifest holds, as a crash would leave it.
fn saved_committed(store: &LogStore<C>) -> Option<u64> {
    let blob =
        store.manifest().read(|r| r.raft_blob(RaftBlob::LogStoreCommitted)).expect("read the manifest")?;
    let (id, _): (Option<openraft::type_config::alias::LogIdOf<C>>, usize) =
        bincode::serde::decode_from_slice(&blob, bincode::config::standard()).expect("decode");
    id.map(|id| id.index)
}

/// While the disk holds its fdatasyncs, entries appended since are not durable: `save_committed` naming
/// them returns at once (before, it waited for their fdatasync and then an LMDB commit, on openraft's
/// commit path), and the manifest does not hold it, so a crash cannot leave a committed id past the log.
/// Once the syncs go through, the manifest holds it; after `close` a reopened store reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_id_is_written_behind_only_once_its_entries_are_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SimDisk::new(7);
    let io: Arc<dyn Io> = Arc::new(disk.clone());
    {
        let mut store = open_store(dir.path(), Arc::clone(&io));
        append_durably(&mut store, 0..=9).await;
        store.save_committed(Some(log_id::<C>(1, 0, 9))).await.expect("save committed");
        wait_until(|| saved_committed(&store) == Some(9), "the manifest holds 9").await;

        disk.pause_syncs();
        let (tx, flushed) = C::oneshot();
        let entries: Vec<_> = (10..=19).map(|i| blank_ent::<C>(1, 0, i)).collect();
        store.append(entries, IOFlushed::signal(tx)).await.expect("append");
        let saved =
            tokio::time::timeout(Duration::from_secs(5), store.save_committed(Some(log_id::<C>(1, 0, 19))))
                .await;
        if !matches!(saved, Ok(Ok(()))) {
            disk.resume_syncs(); // else the WAL's writer, held in its fdatasync, never lets the store close
            panic!("save_committed waited for the held fdatasync: {saved:?}");
        }
        wait_until(|| disk.syncs_held() > 0, "an fdatasync is held").await;
        for _ in 0..10 {
            assert_eq!(saved_committed(&store), Some(9), "a committed id naming entries not durable");
            tokio::time::sleep(Duration::from_millis(30)).await;
        }

        disk.resume_syncs();
        flushed.await.expect("callback").expect("durable");
        wait_until(|| saved_committed(&store) == Some(19), "the manifest holds 19 once durable").await;
        store.close().expect("close");
    }
    let mut store = open_store(dir.path(), io);
    assert_eq!(store.read_committed().await.expect("read"), Some(log_id::<C>(1, 0, 19)));
}

async fn wait_until(mut done: impl FnMut() -> bool, what: &str) {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < until, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `close` waits until the writer behind has let go of the store: the manifest can be opened again as
/// soon as the closed store is dropped (a restart in the same process met `AlreadyOpen` when the writer's
/// task still held it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_store_reopens_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let io: Arc<dyn Io> = Arc::new(BufferedIo::new());
    let mut next = 0;
    for round in 0..30u64 {
        let mut store = open_store(dir.path(), Arc::clone(&io));
        append_durably(&mut store, next..=next + 4).await;
        for index in next..=next + 4 {
            store.save_committed(Some(log_id::<C>(1, 0, index))).await.expect("save committed");
        }
        next += 5;
        store.close().expect("close");
        drop(store);
        let mut reopened = open_store(dir.path(), Arc::clone(&io));
        assert_eq!(
            reopened.read_committed().await.expect("read").map(|id| id.index),
            Some(next - 1),
            "round {round}"
        );
        reopened.close().expect("close");
    }
}

/// A file system whose `remove_file` waits while the gate is held (a slow unlink on a busy disk).
#[derive(Debug)]
struct HeldRemovals {
    inner: Arc<dyn Io>,
    held: Mutex<bool>,
    opened: Condvar,
    waiting: AtomicUsize,
}

impl HeldRemovals {
    fn release(&self) {
        *self.held.lock().expect("gate") = false;
        self.opened.notify_all();
    }
}

impl Io for HeldRemovals {
    fn open(&self, path: &Path, mode: OpenMode) -> IoResult<Arc<dyn IoFile>> {
        self.inner.open(path, mode)
    }
    fn remove_file(&self, path: &Path) -> IoResult<()> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut held = self.held.lock().expect("gate");
        while *held {
            held = self.opened.wait(held).expect("gate");
        }
        drop(held);
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        self.inner.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> IoResult<()> {
        self.inner.rename(from, to)
    }
    fn create_dir_all(&self, path: &Path) -> IoResult<()> {
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> IoResult<Vec<String>> {
        self.inner.list_dir(path)
    }
    fn sync_dir(&self, path: &Path) -> IoResult<()> {
        self.inner.sync_dir(path)
    }
    fn name(&self) -> &'static str {
        "held-removals"
    }
}

fn segment_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("wal"))
        .expect("list the log directory")
        .filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".wal")))
        .count()
}

/// Regression test for the write stall at every snapshot: openraft's core awaits `purge` before it
/// replicates or commits anything else, and `purge` used to wait for the unlinks of the purged segments and
/// the directory fsync (up to hundreds of ms on a shared disk). With every unlink held, `purge` now returns
/// once the purge is durable, appends go on, and the segments go once the unlinks can run; a reopen finds
/// the purge and every entry above it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_returns_without_waiting_for_its_segments_to_be_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let io = Arc::new(HeldRemovals {
        inner: Arc::new(BufferedIo::new()),
        held: Mutex::new(false),
        opened: Condvar::new(),
        waiting: AtomicUsize::new(0),
    });
    {
        let mut store = open_store(dir.path(), Arc::clone(&io) as Arc<dyn Io>);
        append_durably(&mut store, 0..=6000).await;
        let before = segment_files(dir.path());
        assert!(before >= 3, "the log spans {before} segments");

        *io.held.lock().expect("gate") = true;
        let purged = tokio::time::timeout(Duration::from_secs(5), store.purge(log_id::<C>(1, 0, 5000))).await;
        if !matches!(purged, Ok(Ok(()))) {
            io.release(); // else the held unlink never lets the store close
            panic!("purge waited for the deletion of its segments: {purged:?}");
        }
        wait_until(|| io.waiting.load(Ordering::SeqCst) > 0, "an unlink is held behind").await;
        append_durably(&mut store, 6001..=6010).await;
        let state = store.get_log_state().await.expect("log state");
        assert_eq!(state.last_purged_log_id, Some(log_id::<C>(1, 0, 5000)));
        assert_eq!(segment_files(dir.path()), before, "nothing deleted while the unlinks are held");

        io.release();
        wait_until(|| segment_files(dir.path()) < before, "the purged segments are deleted").await;
        store.close().expect("close");
    }
    let mut store = open_store(dir.path(), Arc::new(BufferedIo::new()));
    let state = store.get_log_state().await.expect("log state");
    assert_eq!(state.last_purged_log_id, Some(log_id::<C>(1, 0, 5000)));
    assert_eq!(state.last_log_id, Some(log_id::<C>(1, 0, 6010)));
    let mut reader = store.get_log_reader().await;
    let entries = reader.try_get_log_entries(5001..6011).await.expect("read");
    assert_eq!(entries.len(), 1010, "every entry above the purge survives");
}
