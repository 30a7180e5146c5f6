//! Removal of dead members (optional, `NodeEnv::remove_dead_after`; rqlite's reap timeout): the leader
//! removes from the membership a voter or non-voter that has not acknowledged a heartbeat or an append for
//! that long, one member at a time, so that a node gone for good stops counting in every quorum.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;

use super::NodeShared;

/// Longest a membership change may take (a leader that lost its quorum cannot commit it).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

impl NodeShared {
    /// Removes member `id` from the membership in one change: a voter outright, a learner as a node.
    pub(super) async fn remove_member(&self, id: u64) -> Result<(), String> {
        let ids = std::collections::BTreeSet::from([id]);
        let voter =
            self.raft.metrics().borrow_watched().membership_config.membership().voter_ids().any(|v| v == id);
        // One membership change either way: a voter is removed outright (`retain = false` keeps it on as a
        // learner otherwise). A second change after removing a voter would, when the voter is this leader,
        // be asked of a node that has just stepped down (the simulation found openraft asserting on it).
        let change = if voter {
            openraft::ChangeMembers::RemoveVoters(ids)
        } else {
            openraft::ChangeMembers::RemoveNodes(ids)
        };
        self.raft.change_membership(change, false).await.map(|_| ()).map_err(|e| e.to_string())
    }
}

/// While this node leads, removes every other member silent for `after` (checked every second, or every
/// quarter of `after` when that is shorter). A member the leader never heard from counts from the moment
/// this task first saw it silent in this leadership. Ends when Raft stops.
pub(super) async fn remove_dead_members(node: Arc<NodeShared>, after: Duration) {
    let every = (after / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut silent_since: HashMap<u64, tokio::time::Instant> = HashMap::new();
    loop {
        tokio::time::sleep(every).await;
        if !node.raft_running() {
            return;
        }
        if !node.is_leader() {
            silent_since.clear();
            continue;
        }
        let (heartbeats, members) = {
            let metrics = node.raft.metrics();
            let m = metrics.borrow_watched();
            let members: Vec<u64> = m.membership_config.membership().nodes().map(|(id, _)| *id).collect();
            (m.heartbeat.clone(), members)
        };
        let Some(heartbeats) = heartbeats else { continue };
        let now = tokio::time::Instant::now();
        let dead = members.into_iter().filter(|id| *id != node.id).find(|id| {
            let silent_for = match heartbeats.get(id) {
                Some(Some(acked)) => openraft::Instant::elapsed(&**acked),
                _ => now.saturating_duration_since(*silent_since.entry(*id).or_insert(now)),
            };
            silent_for >= after
        });
        let Some(id) = dead else { continue };
        tracing::warn!(node = node.id, dead = id, after = ?after, "removing member {id}: silent for longer than the dead-member timeout");
        match tokio::time::timeout(CHANGE_TIMEOUT, node.remove_member(id)).await {
            Ok(Ok(())) => {
                silent_since.remove(&id);
                tracing::warn!(node = node.id, removed = id, "member {id} removed");
            }
            Ok(Err(e)) => tracing::warn!(node = node.id, dead = id, "removing member {id} failed: {e}"),
            Err(_) => tracing::warn!(
                node = node.id,
                dead = id,
                "removing member {id} took longer than {CHANGE_TIMEOUT:?}"
            ),
        }
    }
}
