//! bop's own state machine (the replicated page store) under openraft: the storage suite, clusters whose
//! nodes end up with the same page contents (including a learner that catches up through a snapshot), and
//! restarts that keep the applied state and the pages.

use std::path::Path;
use std::time::Duration;

mod common;

use bop_raft::{BopConfig, BopStateMachine, Command, LocalRouter, LogStore, Response};
use bop_storage::page_store::encode_commit;
use common::bop::{commit, contents, create, members, open_node, page, BopRaft};
use openraft::async_runtime::WatchReceiver;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::{Raft, StorageError};

const WAIT: Option<Duration> = Some(Duration::from_secs(30));

struct Builder;

impl StoreBuilder<BopConfig, LogStore<BopConfig>, BopStateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore<BopConfig>, BopStateMachine), StorageError<BopConfig>> {
        let dir = tempfile::tempdir().map_err(|e| StorageError::read(BopConfig::err_from_error(&e)))?;
        let (store, sm) = open_node(dir.path());
        Ok((dir, store, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes_with_bops_state_machine() {
    Suite::test_all(Builder).await.expect("openraft's storage suite");
}

struct Node {
    raft: BopRaft,
    store: LogStore<BopConfig>,
    sm: BopStateMachine,
}

async fn start(router: &LocalRouter<BopConfig, BopStateMachine>, dir: &Path, id: u64) -> Node {
    let (store, sm) = open_node(&dir.join(format!("node-{id}")));
    let raft = Raft::new(id, common::fast_config(), router.network(id), store.clone(), sm.clone())
        .await
        .expect("raft");
    router.add(id, raft.clone());
    Node { raft, store, sm }
}

async fn ready_leader(raft: &BopRaft) {
    raft.wait(WAIT)
        .metrics(
            |m| m.state.is_leader() && m.last_applied.map(|l| l.index) == m.last_log_index,
            "leader ready",
        )
        .await
        .expect("leader ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_applies_commits_to_the_same_pages_and_a_new_node_catches_up_by_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let router = LocalRouter::new();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start(&router, dir.path(), id).await);
    }
    nodes[0].raft.initialize(members(&[1, 2, 3])).await.expect("initialize");
    let m = nodes[0].raft.wait(WAIT).metrics(|m| m.current_leader.is_some(), "leader").await.expect("leader");
    let leader = router.get(&m.current_leader.expect("leader id")).expect("leader handle");
    ready_leader(&leader).await;

    // Two databases, several commits each, one shrinking.
    let a = create(&leader, "a").await;
    let b = create(&leader, "b").await;
    for version in 1..=20u64 {
        commit(&leader, a, &[1, 2, (version % 6 + 3) as u32], version, 8).await;
        commit(&leader, b, &[1, (version % 3 + 2) as u32], version, 4).await;
    }
    // A bad commit (a page twice) is refused the same way on every node and changes nothing.
    let images = [page(b, 1, 99), page(b, 1, 98)];
    let bad = encode_commit(b, 4, &[(1, &images[0][..]), (1, &images[1][..])]);
    let response =
        leader.client_write(Command::Commit { read_index: u64::MAX, record: bad }).await.expect("write");
    assert!(matches!(response.data, Response::Refused { .. }), "{:?}", response.data);
    // A commit built on a view older than b's newest commit would undo it: refused, identically.
    let stale_view = commit(&leader, b, &[1], 21, 4).await - 1;
    let image = page(b, 2, 97);
    let stale = encode_commit(b, 4, &[(2, &image[..])]);
    let response =
        leader.client_write(Command::Commit { read_index: stale_view, record: stale }).await.expect("write");
    assert!(
        matches!(&response.data, Response::Refused { reason } if reason.contains("stale transaction")),
        "{:?}",
        response.data
    );
    let last = commit(&leader, b, &[1], 22, 2).await;
    for node in &nodes {
        node.raft.wait(WAIT).applied_index_at_least(Some(last), "applied").await.expect("applied");
    }
    let expected = contents(&nodes[0].sm);
    assert_eq!(expected.len(), 8 + 2, "a has 8 pages, b shrank to 2");
    for node in &nodes {
        assert_eq!(contents(&node.sm), expected, "every node holds the same pages");
    }

    // Snapshot and purge on the leader, then a new node joins and must catch up through the snapshot.
    leader.trigger().snapshot().await.expect("snapshot");
    leader
        .wait(WAIT)
        .metrics(|m| m.snapshot.is_some_and(|s| s.index >= last), "snapshot built")
        .await
        .expect("snapshot built");
    leader.trigger().purge_log(last).await.expect("purge");
    leader.wait(WAIT).metrics(|m| m.purged.is_some_and(|p| p.index >= last), "purged").await.expect("purged");
    let node4 = start(&router, dir.path(), 4).await;
    leader.add_learner(4, Default::default(), true).await.expect("add learner");
    let a_before = last - 3;
    let last = commit(&leader, a, &[3], 23, 8).await;
    node4.raft.wait(WAIT).applied_index_at_least(Some(last), "learner caught up").await.expect("caught up");
    let installed = node4.raft.metrics().borrow_watched().snapshot;
    assert!(installed.is_some(), "the learner installed a snapshot");
    // Staleness is judged from the log alone: the learner, which only has the snapshot of what came before,
    // refuses a commit read before a's newest commit exactly as the others do, and a fresh one is applied.
    let image = page(a, 4, 96);
    let stale = encode_commit(a, 8, &[(4, &image[..])]);
    let response =
        leader.client_write(Command::Commit { read_index: a_before, record: stale }).await.expect("write");
    assert!(matches!(response.data, Response::Refused { .. }), "{:?}", response.data);
    let last = commit(&leader, a, &[4], 24, 8).await;
    node4.raft.wait(WAIT).applied_index_at_least(Some(last), "learner applied").await.expect("applied");
    nodes[0].raft.wait(WAIT).applied_index_at_least(Some(last), "applied").await.expect("applied");
    assert_eq!(contents(&node4.sm), contents(&nodes[0].sm), "the learner holds the same pages");
    nodes.push(node4);
    for node in &nodes {
        node.raft.shutdown().await.expect("shutdown");
        node.store.close().expect("close");
    }
}

/// A snapshot's checkpoint (every database's generation file written and fsynced) runs beside applies: with
/// the page store's disk holding its fdatasyncs, a snapshot is begun and commits still apply (before, the
/// build held the state machine's lock through the checkpoint, and every apply waited for the disk: the
/// tail latency of writes under load). Once the disk goes on, the snapshot is at an index before them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_apply_while_a_snapshot_is_written() {
    use bop_storage::io::SimDisk;
    use bop_storage::manifest::{Manifest, ManifestConfig};
    use bop_storage::page_store::{Manager, ManagerConfig};
    use bop_storage::wal::{WalConfig, WalStore};
    use std::sync::Arc;
    let dir = tempfile::tempdir().expect("tempdir");
    // The log on real files, the page store's generation files on a simulated disk whose syncs can be held.
    let pages_disk = SimDisk::new(11);
    let mut wal_config = WalConfig::new(dir.path().join("wal"));
    wal_config.segment_size_bytes = 1 << 20;
    let wal =
        Arc::new(WalStore::open(Arc::new(bop_storage::io::BufferedIo::new()), wal_config).expect("wal"));
    let manifest_config = ManifestConfig { map_size_initial_bytes: 1 << 20, ..ManifestConfig::default() };
    let manifest = Arc::new(Manifest::open(dir.path(), manifest_config).expect("manifest"));
    let store = LogStore::new(Arc::clone(&wal), Arc::clone(&manifest)).expect("log store");
    let manager_config = ManagerConfig { io: Arc::new(pages_disk.clone()), ..ManagerConfig::new(dir.path()) };
    let manager = Manager::open_replicated(manager_config, Arc::clone(&wal), manifest).expect("page store");
    let sm = BopStateMachine::open(manager, wal).expect("state machine");
    let router = LocalRouter::new();
    let raft = Raft::new(1, common::fast_config(), router.network(1), store.clone(), sm.clone())
        .await
        .expect("raft");
    router.add(1, raft.clone());
    raft.initialize(members(&[1])).await.expect("initialize");
    ready_leader(&raft).await;
    let db = create(&raft, "main").await;
    let mut before = 0;
    for version in 1..=10u64 {
        before = commit(&raft, db, &[1, (version % 4 + 2) as u32], version, 6).await;
    }

    pages_disk.pause_syncs();
    raft.trigger().snapshot().await.expect("snapshot");
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while pages_disk.syncs_held() == 0 {
        assert!(std::time::Instant::now() < until, "the snapshot's checkpoint did not reach its fdatasync");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let applied = tokio::time::timeout(Duration::from_secs(5), async {
        for version in 11..=15u64 {
            commit(&raft, db, &[2, 3], version, 6).await;
        }
    })
    .await;
    pages_disk.resume_syncs();
    assert!(applied.is_ok(), "commits waited for the snapshot's checkpoint");
    let m = raft.wait(WAIT).metrics(|m| m.snapshot.is_some(), "snapshot").await.expect("snapshot");
    let snapshot = m.snapshot.expect("snapshot").index;
    assert!(
        snapshot >= before && snapshot < before + 5,
        "snapshot at {snapshot}, commits before it end at {before}"
    );
    raft.shutdown().await.expect("shutdown");
    store.close().expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_keeps_its_applied_state_and_pages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let router = LocalRouter::new();
    let node = start(&router, dir.path(), 1).await;
    node.raft.initialize(members(&[1])).await.expect("initialize");
    ready_leader(&node.raft).await;
    let db = create(&node.raft, "main").await;
    for version in 1..=30u64 {
        commit(&node.raft, db, &[1, (version % 5 + 2) as u32], version, 6).await;
    }
    // A snapshot in the middle: the restart restores from it and re-applies the log after it.
    node.raft.trigger().snapshot().await.expect("snapshot");
    node.raft.wait(WAIT).metrics(|m| m.snapshot.is_some(), "snapshot").await.expect("snapshot");
    let mut last = 0;
    for version in 31..=40u64 {
        last = commit(&node.raft, db, &[2, 3], version, 6).await;
    }
    let before = contents(&node.sm);
    node.raft.shutdown().await.expect("shutdown");
    node.store.close().expect("close");
    router.remove(&1);
    drop(node);

    let node = start(&router, dir.path(), 1).await;
    node.raft.wait(WAIT).applied_index_at_least(Some(last), "re-applied").await.expect("re-applied");
    assert_eq!(contents(&node.sm), before, "the same pages after the restart");
    let applied = node.raft.metrics().borrow_watched().last_applied;
    assert_eq!(applied.map(|l| l.index), Some(last));
    node.raft.shutdown().await.expect("shutdown");
    node.store.close().expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_fails_verification_leaves_the_old_page_store_in_force() {
    use openraft::storage::RaftStateMachine;

    // Set-up: node A with a snapshot of database "x"; node B, elsewhere, with database "y".
    let dir = tempfile::tempdir().expect("tempdir");
    let (router_a, router_b) = (LocalRouter::new(), LocalRouter::new());
    let a = start(&router_a, &dir.path().join("a"), 1).await;
    a.raft.initialize(members(&[1])).await.expect("initialize");
    ready_leader(&a.raft).await;
    let x = create(&a.raft, "x").await;
    commit(&a.raft, x, &[1, 2, 3], 1, 3).await;
    a.raft.trigger().snapshot().await.expect("snapshot");
    a.raft.wait(WAIT).metrics(|m| m.snapshot.is_some(), "snapshot").await.expect("snapshot");
    let mut sm_a = a.sm.clone();
    let snapshot = sm_a.get_current_snapshot().await.expect("read").expect("a snapshot");

    let b = start(&router_b, &dir.path().join("b"), 1).await;
    b.raft.initialize(members(&[1])).await.expect("initialize");
    ready_leader(&b.raft).await;
    let y = create(&b.raft, "y").await;
    commit(&b.raft, y, &[1], 7, 1).await;
    let before = contents(&b.sm);

    // Action: a bit of A's generation file rots before B receives it.
    let file = &snapshot.snapshot.databases[0].generations[0].0;
    let mut bytes = std::fs::read(&file.path).expect("read generation");
    bytes[4096 + 100] ^= 0x20;
    std::fs::write(&file.path, &bytes).expect("write generation");
    let mut sm_b = b.sm.clone();
    let result = sm_b.install_snapshot(&snapshot.meta, snapshot.snapshot.clone()).await;

    // Property: the install fails, B's page store is untouched, nothing received is left behind.
    assert!(result.is_err(), "a damaged snapshot is refused");
    assert_eq!(contents(&b.sm), before);
    let pages_dir = dir.path().join("b/node-1/pages");
    let leftovers: Vec<_> = std::fs::read_dir(&pages_dir)
        .expect("ls")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("-s"))
        .collect();
    assert!(leftovers.is_empty(), "no received file stays: {leftovers:?}");
    for node in [&a, &b] {
        node.raft.shutdown().await.expect("shutdown");
        node.store.close().expect("close");
    }
}

/// The commit record is serialized as one run of bytes (`serde_bytes`), which bincode encodes exactly as it
/// did the record element by element: entries already in a log decode unchanged, and the record's bytes still
/// end the serialized command.
#[test]
fn a_commit_command_encodes_as_before() {
    #[derive(serde::Serialize)]
    #[allow(dead_code)]
    enum Before {
        CreateDatabase { name: String },
        DropDatabase { name: String },
        Commit { read_index: u64, record: Vec<u8> },
    }
    let record: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let config = bincode::config::standard();
    let now =
        bincode::serde::encode_to_vec(Command::Commit { read_index: 77, record: record.clone() }, config)
            .expect("encode");
    let before =
        bincode::serde::encode_to_vec(Before::Commit { read_index: 77, record: record.clone() }, config)
            .expect("encode");
    assert_eq!(now, before);
    assert!(now.ends_with(&record));
    let (decoded, _): (Command, usize) = bincode::serde::decode_from_slice(&before, config).expect("decode");
    assert_eq!(decoded, Command::Commit { read_index: 77, record });
}
