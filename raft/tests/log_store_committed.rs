//! The committed log id is written behind (raft/src/log_store.rs, docs/design.md "The Raft log"): openraft's
//! commit path no longer waits for an LMDB commit (an fsync) after the entries' own fdatasync, saves in
//! quick succession share one manifest commit, `close` writes the newest one, and a saved id never names an
//! entry the log does not hold durably.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bop_raft::LogStore;
use bop_storage::io::{BufferedIo, Io, SimDisk};
use bop_storage::manifest::RaftBlob;
use common::{open_store, KvConfig};
use openraft::storage::{IOFlushed, RaftLogStorage};
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
