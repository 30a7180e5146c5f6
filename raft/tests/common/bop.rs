//! Helpers for tests of bop's own state machine.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bop_raft::{BopConfig, BopStateMachine, Command, LogStore, Response};
use bop_storage::io::BufferedIo;
use bop_storage::manifest::{Manifest, ManifestConfig};
use bop_storage::page_store::{encode_commit, Manager, ManagerConfig, PAGE_SIZE};
use bop_storage::wal::{WalConfig, WalStore};
use openraft::Raft;

/// A node's Raft handle.
pub type BopRaft = Raft<BopConfig, BopStateMachine>;

/// Opens one node's storage in `dir`: one WAL (the Raft log, which the page store points into), one
/// manifest, the page store in replicated mode.
pub fn open_node(dir: &Path) -> (LogStore<BopConfig>, BopStateMachine) {
    let mut wal_config = WalConfig::new(dir.join("wal"));
    wal_config.segment_size_bytes = 1 << 20;
    let wal = Arc::new(WalStore::open(Arc::new(BufferedIo::new()), wal_config).expect("wal"));
    let manifest_config = ManifestConfig { map_size_initial_bytes: 1 << 20, ..ManifestConfig::default() };
    let manifest = Arc::new(Manifest::open(dir, manifest_config).expect("manifest"));
    let store = LogStore::new(Arc::clone(&wal), Arc::clone(&manifest)).expect("log store");
    let manager =
        Manager::open_replicated(ManagerConfig::new(dir), Arc::clone(&wal), manifest).expect("page store");
    let sm = BopStateMachine::open(manager, wal).expect("state machine");
    (store, sm)
}

pub fn members(ids: &[u64]) -> BTreeMap<u64, openraft::impls::BasicNode> {
    ids.iter().map(|id| (*id, openraft::impls::BasicNode::default())).collect()
}

pub fn page(db: u64, page_no: u32, version: u64) -> Vec<u8> {
    let mut p = vec![(version % 251) as u8; PAGE_SIZE];
    p[0..8].copy_from_slice(&db.to_le_bytes());
    p[8..12].copy_from_slice(&page_no.to_le_bytes());
    p[12..20].copy_from_slice(&version.to_le_bytes());
    p
}

pub async fn create(leader: &BopRaft, name: &str) -> u64 {
    let response = leader.client_write(Command::CreateDatabase { name: name.into() }).await.expect("create");
    match response.data {
        Response::Created { id } => id,
        other => panic!("create answered {other:?}"),
    }
}

/// Commits `pages` of database `db` at `version`, through Raft; returns the log index.
pub async fn commit(leader: &BopRaft, db: u64, pages: &[u32], version: u64, count: u32) -> u64 {
    let images: Vec<Vec<u8>> = pages.iter().map(|&p| page(db, p, version)).collect();
    let frames: Vec<(u32, &[u8])> = pages.iter().zip(&images).map(|(&p, i)| (p, &i[..])).collect();
    let record = encode_commit(db, count, &frames);
    // Written blind: as if read after everything (never stale).
    let read_index = u64::MAX;
    let response = leader.client_write(Command::Commit { read_index, record }).await.expect("commit");
    let expected = Response::Committed {
        index: response.log_id.index,
        db: Some(db),
        pages: pages.len() as u32,
        db_page_count: count,
    };
    assert_eq!(response.data, expected);
    response.log_id.index
}

/// Every page of every database, as `(db name, page_no, bytes)`: what "the same page contents" compares.
pub fn contents(sm: &BopStateMachine) -> Vec<(String, u32, Vec<u8>)> {
    let manager = sm.manager();
    let mut out = Vec::new();
    for (name, _) in manager.list_databases().expect("list") {
        let db = manager.open_database(&name).expect("db");
        let view = db.snapshot().expect("pin");
        for page_no in 1..=view.page_count() {
            let bytes = view.read_page(page_no).expect("read").map(|p| p.to_vec()).unwrap_or_default();
            out.push((name.clone(), page_no, bytes));
        }
    }
    out
}
