//! The example application's own state machine: a string map, snapshotted whole.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use futures_util::StreamExt;
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::{EntryPayload, OptionalSend};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// A write: set `key` to `value`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Put {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
}

impl std::fmt::Display for Put {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

openraft::declare_raft_types!(
    /// The example's type config: writes are `Put`, responses the previous value.
    pub KvConfig:
        D = Put,
        R = Option<String>,
        NodeId = u64,
        Node = (),
);

/// What the state machine holds.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct KvState {
    /// The last applied log id.
    pub last_applied: Option<LogIdOf<KvConfig>>,
    /// The membership in force.
    pub membership: StoredMembershipOf<KvConfig>,
    /// The data.
    pub map: BTreeMap<String, String>,
}

/// The latest snapshot: its metadata and bytes.
type StoredSnapshot = (SnapshotMetaOf<KvConfig>, Vec<u8>);

/// The state machine: shared state and the latest snapshot.
#[derive(Clone, Default)]
pub struct KvStateMachine {
    /// The state (read it to serve queries).
    pub state: Arc<Mutex<KvState>>,
    snapshot: Arc<Mutex<Option<StoredSnapshot>>>,
}

fn encode(state: &KvState) -> Result<Vec<u8>, std::io::Error> {
    bincode::serde::encode_to_vec(state, bincode::config::standard()).map_err(std::io::Error::other)
}

impl RaftSnapshotBuilder<KvConfig> for KvStateMachine {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<KvConfig, Cursor<Vec<u8>>>, std::io::Error> {
        let state = self.state.lock().clone();
        let bytes = encode(&state)?;
        let meta =
            SnapshotMetaOf::<KvConfig> { last_log_id: state.last_applied, last_membership: state.membership };
        *self.snapshot.lock() = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot { meta, snapshot: Cursor::new(bytes) })
    }
}

impl RaftStateMachine<KvConfig> for KvStateMachine {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<KvConfig>>, StoredMembershipOf<KvConfig>), std::io::Error> {
        let state = self.state.lock();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), std::io::Error>
    where
        Strm: futures_util::Stream<Item = Result<EntryResponder<KvConfig>, std::io::Error>>
            + Unpin
            + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let response = {
                let mut state = self.state.lock();
                state.last_applied = Some(entry.log_id());
                match &entry.payload {
                    EntryPayload::Blank => None,
                    EntryPayload::Normal(put) => state.map.insert(put.key.clone(), put.value.clone()),
                    EntryPayload::Membership(m) => {
                        state.membership =
                            StoredMembershipOf::<KvConfig>::new(Some(entry.log_id()), m.clone());
                        None
                    }
                }
            };
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<KvConfig>,
        snapshot: Cursor<Vec<u8>>,
    ) -> Result<(), std::io::Error> {
        let bytes = snapshot.into_inner();
        let (state, _): (KvState, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
                .map_err(std::io::Error::other)?;
        *self.state.lock() = state;
        *self.snapshot.lock() = Some((meta.clone(), bytes));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<KvConfig, Cursor<Vec<u8>>>>, std::io::Error> {
        Ok(self.snapshot.lock().clone().map(|(meta, bytes)| Snapshot { meta, snapshot: Cursor::new(bytes) }))
    }
}
