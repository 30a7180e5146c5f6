//! The log store's size bounds (hardening findings 1 and 10): an append of many entries that each fit is
//! never refused for their sum, and a replication read stays within max(budget, one entry).

mod common;

use std::sync::Arc;

use bop_raft::{LogStore, READ_BATCH_BYTES_MAX};
use bop_storage::io::BufferedIo;
use bop_storage::manifest::{Manifest, ManifestConfig};
use bop_storage::wal::{WalConfig, WalStore};
use common::{KvConfig, Put};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::testing::log_id;
use openraft::type_config::alias::EntryOf;
use openraft::type_config::TypeConfigExt;
use openraft::RaftLogReader;

type C = KvConfig;

fn store(dir: &std::path::Path, segment: u64, queue_bytes: usize) -> LogStore<C> {
    let mut config = WalConfig::new(dir.join("wal"));
    config.segment_size_bytes = segment;
    config.queue_bytes_max = queue_bytes;
    let wal = WalStore::open(Arc::new(BufferedIo::new()), config).expect("wal");
    let manifest =
        Manifest::open(dir, ManifestConfig { map_size_initial_bytes: 1 << 20, ..Default::default() })
            .expect("manifest");
    LogStore::new(Arc::new(wal), Arc::new(manifest)).expect("log store")
}

fn entry(index: u64, value_bytes: usize) -> EntryOf<C> {
    EntryOf::<C>::new_normal(
        log_id::<C>(1, 0, index),
        Put { key: index.to_string(), value: "v".repeat(value_bytes) },
    )
}

async fn append(store: &mut LogStore<C>, entries: Vec<EntryOf<C>>) {
    let (tx, rx) = C::oneshot();
    store.append(entries, IOFlushed::signal(tx)).await.expect("append accepted");
    rx.await.expect("callback").expect("durable");
}

/// openraft hands a follower whatever the leader sent in one append: here ten entries of 300 KiB against
/// a 1 MiB in-flight bound. The WAL refused the whole append as too large, an error fatal to Raft.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_larger_than_the_in_flight_bound_is_split_not_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = store(dir.path(), 8 << 20, 1 << 20);
    assert!(store.entry_bytes_max() <= 1 << 20, "an entry fits the in-flight bound");
    let entries: Vec<_> = (1..=10).map(|i| entry(i, 300 << 10)).collect();
    append(&mut store, entries).await;
    let mut reader = store.get_log_reader().await;
    let read = reader.try_get_log_entries(1..=10).await.expect("read");
    assert_eq!(read.iter().map(|e| e.index()).collect::<Vec<_>>(), (1..=10).collect::<Vec<_>>());
    store.close().expect("close");
}

/// `limited_get_log_entries` added an entry before checking its budget, so a batch could be the budget
/// plus a whole large entry, over the transport's frame maximum. Now a later entry goes only if it fits;
/// the first goes alone if it is larger than the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_batch_stays_within_its_budget_or_is_one_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = store(dir.path(), 64 << 20, 64 << 20);
    let third = READ_BATCH_BYTES_MAX / 3 - 1024;
    append(
        &mut store,
        vec![entry(1, third), entry(2, third), entry(3, third), entry(4, 2 * READ_BATCH_BYTES_MAX)],
    )
    .await;
    let mut reader = store.get_log_reader().await;
    let batch = reader.limited_get_log_entries(1, 5).await.expect("read");
    assert_eq!(batch.len(), 3, "three thirds fit the budget, the large entry does not join them");
    let batch = reader.limited_get_log_entries(4, 5).await.expect("read");
    assert_eq!(batch.len(), 1, "a large entry travels alone");
    let batch = reader.limited_get_log_entries(3, 5).await.expect("read");
    assert_eq!(batch.iter().map(|e| e.index()).collect::<Vec<_>>(), vec![3]);
    store.close().expect("close");
}

/// The largest entry the store accepts fits a transport frame together with an append request's fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_legal_entry_fits_a_transport_frame() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        store(dir.path(), WalConfig::new("x").segment_size_bytes, WalConfig::new("x").queue_bytes_max);
    assert!(store.entry_bytes_max() + (64 << 10) <= bop_raft::tcp::FRAME_BYTES_MAX);
    store.close().expect("close");
}
