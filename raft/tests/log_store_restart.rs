//! What openraft's suite does not check: a `LogStore` reopened after appends, truncations, purges, votes
//! and committed ids gives the same state; entries whose flush callback fired survive a crash of the
//! simulated disk; a poisoned store fails the callbacks instead of hanging.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bop_raft::LogStore;
use bop_storage::io::{BufferedIo, CrashMode, Io, SimDisk};
use common::{open_store, KvConfig};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::testing::{blank_ent, log_id};
use openraft::type_config::alias::VoteOf;
use openraft::type_config::TypeConfigExt;
use openraft::RaftLogReader;

type C = KvConfig;

async fn append_durably(store: &mut LogStore<C>, term: u64, indexes: std::ops::RangeInclusive<u64>) {
    let entries: Vec<_> = indexes.map(|i| blank_ent::<C>(term, 0, i)).collect();
    let (tx, rx) = C::oneshot();
    store.append(entries, IOFlushed::signal(tx)).await.expect("append");
    rx.await.expect("callback").expect("durable");
}

async fn snapshot_of(store: &mut LogStore<C>) -> impl PartialEq + std::fmt::Debug {
    let state = store.get_log_state().await.expect("state");
    let mut reader = store.get_log_reader().await;
    let entries: Vec<_> =
        reader.try_get_log_entries(0..100).await.expect("entries").iter().map(|e| e.log_id()).collect();
    let vote = reader.read_vote().await.expect("vote");
    let committed = store.read_committed().await.expect("committed");
    (state.last_purged_log_id, state.last_log_id, entries, vote, committed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_gives_the_same_log_state_vote_and_committed_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let io: Arc<dyn Io> = Arc::new(BufferedIo::new());
    let before = {
        let mut store = open_store(dir.path(), Arc::clone(&io));
        append_durably(&mut store, 1, 0..=30).await;
        store.save_vote(&VoteOf::<C>::new_committed(2, 1)).await.expect("vote");
        store.save_committed(Some(log_id::<C>(1, 0, 12))).await.expect("committed");
        store.truncate_after(Some(log_id::<C>(1, 0, 20))).await.expect("truncate");
        append_durably(&mut store, 2, 21..=25).await;
        store.purge(log_id::<C>(1, 0, 8)).await.expect("purge");
        let before = snapshot_of(&mut store).await;
        store.close().expect("close");
        before
    };
    let mut store = open_store(dir.path(), io);
    assert_eq!(snapshot_of(&mut store).await, before);
    let state = store.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id, Some(log_id::<C>(1, 0, 8)));
    assert_eq!(state.last_log_id, Some(log_id::<C>(2, 0, 25)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncating_everything_and_purging_past_the_end_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let io: Arc<dyn Io> = Arc::new(BufferedIo::new());
    {
        let mut store = open_store(dir.path(), Arc::clone(&io));
        append_durably(&mut store, 1, 0..=5).await;
        store.truncate_after(None).await.expect("truncate all");
        assert_eq!(store.get_log_state().await.expect("state").last_log_id, None);
        append_durably(&mut store, 3, 0..=2).await;
        // A snapshot install purges beyond the last entry.
        store.purge(log_id::<C>(4, 1, 50)).await.expect("purge past the end");
        store.close().expect("close");
    }
    let mut store = open_store(dir.path(), io);
    let state = store.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id, Some(log_id::<C>(4, 1, 50)));
    assert_eq!(state.last_log_id, Some(log_id::<C>(4, 1, 50)));
    append_durably(&mut store, 4, 51..=52).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_entry_whose_callback_fired_survives_a_crash() {
    for seed in 0..10u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = SimDisk::new(seed);
        let mut store = open_store(dir.path(), Arc::new(disk.clone()));
        // Appends are not awaited one by one: many are in flight, sharing fdatasyncs.
        let mut receivers = Vec::new();
        for index in 0..200u64 {
            let (tx, rx) = C::oneshot();
            store.append([blank_ent::<C>(1, 0, index)], IOFlushed::signal(tx)).await.expect("append");
            receivers.push((index, rx));
            if index == 100 + seed * 7 {
                break;
            }
        }
        // The first 50 are acknowledged before the crash (so the check below cannot pass vacuously);
        // then crash while later ones may still be in flight and collect what was acknowledged.
        let mut acked = BTreeSet::new();
        let later = receivers.split_off(50);
        for (index, rx) in receivers {
            let flushed = tokio::time::timeout(Duration::from_secs(10), rx).await;
            assert!(matches!(flushed, Ok(Ok(Ok(())))), "seed {seed}: entry {index} flushed before the crash");
            acked.insert(index);
        }
        let crashed = disk.crash(CrashMode::TornSectors);
        for (index, rx) in later {
            if let Ok(Ok(Ok(()))) = tokio::time::timeout(Duration::from_secs(10), rx).await {
                acked.insert(index);
            }
        }
        drop(store);
        let mut store = open_store(dir.path(), Arc::new(crashed));
        let end = store.get_log_state().await.expect("state").last_log_id.map_or(0, |id| id.index + 1);
        let entries = store.get_log_reader().await.try_get_log_entries(0..end).await.expect("entries");
        let present: BTreeSet<u64> = entries.iter().map(|e| e.index()).collect();
        assert!(acked.len() >= 50, "seed {seed}: only {} acknowledgements", acked.len());
        assert!(acked.is_subset(&present), "seed {seed}: acknowledged {acked:?} not all in {present:?}");
        assert_eq!(present.len() as u64, end, "seed {seed}: no holes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_fails_the_callbacks_instead_of_hanging() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SimDisk::new(3);
    let mut store = open_store(dir.path(), Arc::new(disk.clone()));
    append_durably(&mut store, 1, 0..=3).await;
    disk.fail_sync_after(0);
    let (tx, rx) = C::oneshot();
    store.append([blank_ent::<C>(1, 0, 4)], IOFlushed::signal(tx)).await.expect("accepted");
    let result =
        tokio::time::timeout(Duration::from_secs(10), rx).await.expect("no hang").expect("callback ran");
    assert!(result.is_err(), "the flush callback reports the failure");
    let (tx, _rx) = C::oneshot();
    assert!(store.append([blank_ent::<C>(1, 0, 5)], IOFlushed::signal(tx)).await.is_err(), "poisoned");
}
