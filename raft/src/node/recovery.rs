//! Quorum-loss recovery (`bop node --force-new-cluster`, as etcd's flag): when a majority of the voters is
//! gone for good, a survivor restarts as a cluster of one with all its data, and new nodes join it.
//!
//! Before Raft starts, one membership entry naming this node as the only voter is appended to its log,
//! after its last entry and with that entry's leader id (as if the last leader had appended it). openraft
//! takes the newest membership in the log as the effective one, committed or not, so the node sees itself
//! as the whole cluster, elects itself and commits its log — including entries the old cluster may never
//! have committed: what the survivor holds is what the new cluster has. A marker file records the forced
//! entry, and a later start with the flag still set changes nothing (it would otherwise throw out the
//! nodes that joined since); delete the marker to force again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::entry::RaftEntry;
use openraft::storage::RaftLogStorage;
use openraft::RaftTypeConfig;

use super::NodeError;
use crate::state_machine::BopConfig;
use crate::LogStore;

/// Written in the data directory once a start forced a new cluster: the forced entry's index.
pub(super) const FORCED_MARKER: &str = "force-new-cluster.done";

/// Appends the membership of node `id` alone (at membership address `addr`) to `store`'s log, unless a
/// start did so already (the marker); an error if the log is empty (nothing to recover).
pub(super) async fn force_new_cluster(
    store: &LogStore<BopConfig>,
    data_dir: &Path,
    id: u64,
    addr: String,
) -> Result<(), NodeError> {
    let storage = |e: &dyn std::fmt::Display| NodeError::Storage(e.to_string());
    let marker = data_dir.join(FORCED_MARKER);
    if let Ok(done) = std::fs::read_to_string(&marker) {
        tracing::warn!(
            node = id,
            "--force-new-cluster ignored: this node already forced a new cluster ({} at entry {}); \
             delete {} to force again",
            marker.display(),
            done.trim(),
            marker.display()
        );
        return Ok(());
    }
    let mut store = store.clone();
    let state = store.get_log_state().await.map_err(|e| storage(&e))?;
    let Some(last) = state.last_log_id else {
        return Err(NodeError::Config(format!(
            "--force-new-cluster: {} holds no Raft log; it restarts a former member with its data",
            data_dir.display()
        )));
    };
    let node = openraft::impls::BasicNode::new(addr);
    let membership = openraft::Membership::new(vec![BTreeSet::from([id])], BTreeMap::from([(id, node)]))
        .map_err(|e| NodeError::Config(format!("--force-new-cluster: {e}")))?;
    let log_id = openraft::LogId::new(*last.committed_leader_id(), last.index() + 1);
    let entry = <BopConfig as RaftTypeConfig>::Entry::new_membership(log_id, membership);
    store.append_durably(vec![entry]).await.map_err(|e| storage(&e))?;
    let index = last.index() + 1;
    write_marker(&marker, index).map_err(|e| storage(&e))?;
    tracing::warn!(
        node = id,
        index,
        "forced a new cluster: this node is now the only voter, with every entry its log holds (up to {}); \
         join new nodes to it, and never restart the old members with their data",
        last.index()
    );
    Ok(())
}

/// The marker, made durable (written, fsynced, renamed into place, directory fsynced).
fn write_marker(path: &Path, index: u64) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(format!("{index}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
