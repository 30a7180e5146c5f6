//! An openraft application that uses `bop_raft::LogStore` as its log storage with its own state machine:
//! three nodes in one process (in-process network), a few hundred writes, every node checked.
//!
//! Run: `cargo run --release -p bop-raft --example kv`

mod state_machine;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bop_raft::{LocalRouter, LogStore};
use bop_storage::io::BufferedIo;
use bop_storage::manifest::{Manifest, ManifestConfig};
use bop_storage::wal::{WalConfig, WalStore};
use openraft::{Config, Raft};
use state_machine::{KvConfig, KvStateMachine, Put};

type KvRaft = Raft<KvConfig, KvStateMachine>;

/// Opens one node's log storage in `dir`: a WAL in `dir/wal` and the manifest (vote, committed id).
fn open_log_store(dir: &std::path::Path) -> Result<LogStore<KvConfig>, Box<dyn std::error::Error>> {
    let wal = WalStore::open(Arc::new(BufferedIo::new()), WalConfig::new(dir.join("wal")))?;
    let manifest = Arc::new(Manifest::open(dir, ManifestConfig::default())?);
    Ok(LogStore::new(Arc::new(wal), manifest)?)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data = tempfile::tempdir()?;
    let config = Arc::new(
        Config {
            heartbeat_interval: 100,
            election_timeout_min: 300,
            election_timeout_max: 600,
            ..Default::default()
        }
        .validate()?,
    );
    let router = LocalRouter::<KvConfig, KvStateMachine>::new();
    let mut nodes: Vec<(u64, KvRaft, LogStore<KvConfig>, KvStateMachine)> = Vec::new();
    for id in 1..=3u64 {
        let store = open_log_store(&data.path().join(format!("node-{id}")))?;
        let sm = KvStateMachine::default();
        let raft = Raft::new(id, Arc::clone(&config), router.network(id), store.clone(), sm.clone()).await?;
        router.add(id, raft.clone());
        nodes.push((id, raft, store, sm));
    }

    // Form the cluster and wait for a leader.
    nodes[0].1.initialize(BTreeSet::from([1u64, 2, 3])).await?;
    let metrics = nodes[0]
        .1
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.current_leader.is_some(), "a leader")
        .await?;
    let leader_id = metrics.current_leader.ok_or("no leader")?;
    let leader = router.get(&leader_id).ok_or("leader not registered")?;
    // The new leader serves writes once its own first entry is applied.
    leader
        .wait(Some(Duration::from_secs(10)))
        .metrics(
            |m| {
                m.state.is_leader()
                    && m.last_applied.is_some()
                    && m.last_applied.map(|l| l.index) == m.last_log_index
            },
            "leader ready",
        )
        .await?;
    println!("leader: node {leader_id}");

    // Writes go through the leader; concurrent writes share fdatasyncs in the WAL.
    let writes = 300u64;
    let mut tasks = Vec::new();
    for i in 0..writes {
        let leader = leader.clone();
        tasks.push(tokio::spawn(async move {
            leader.client_write(Put { key: format!("key-{:04}", i % 100), value: format!("value-{i}") }).await
        }));
    }
    let mut last_index = 0;
    for task in tasks {
        let response = task.await??;
        last_index = last_index.max(response.log_id.index);
    }

    // Every node applies every write.
    for (id, raft, store, sm) in &nodes {
        raft.wait(Some(Duration::from_secs(10)))
            .applied_index_at_least(Some(last_index), "all applied")
            .await?;
        let keys = sm.state.lock().map.len();
        let wal = store.wal().metrics();
        println!(
            "node {id}: applied up to {last_index}, {keys} keys, {} records in {} fdatasyncs ({:.1} per fsync)",
            wal.records, wal.fsyncs, wal.records_per_fsync
        );
        if keys != 100 {
            return Err(format!("node {id} holds {keys} keys, expected 100").into());
        }
    }
    for (_, raft, store, _) in &nodes {
        raft.shutdown().await?;
        store.close()?;
    }
    println!("ok: 3 nodes agree on {writes} writes");
    Ok(())
}
