//! Watching the disk under the log, the manifest and the page store: a full disk (the WAL's, the manifest's or
//! a checkpoint's space alarm) or
//! a WAL write or fdatasync slower than the configured deadline makes this node refuse writes, report
//! unhealthy, and hand leadership to a peer; it recovers by itself when the disk does.

use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;

use super::NodeShared;

/// How often the watch looks at the disk.
const WATCH_EVERY: Duration = Duration::from_millis(200);
/// Least time between two leadership transfers asked for by the watch.
const TRANSFER_EVERY: Duration = Duration::from_secs(2);

/// Why this node's disk cannot take writes now.
pub(super) struct DiskTrouble {
    /// The log or the manifest found no space (rather than a stalled write or fdatasync).
    pub(super) full: bool,
    /// What to tell clients and operators.
    pub(super) message: String,
}

impl NodeShared {
    /// Why this node's disk cannot take writes now, if it cannot: the log or the manifest found no space
    /// (each holds the waiting work and goes on once space is freed), or a write or fdatasync has run longer
    /// than `disk_stall_max`.
    pub(super) fn disk_trouble(&self) -> Option<DiskTrouble> {
        if self.wal.space_alarm() {
            let message = "disk full: the log cannot get space for its next segment; free space on the data \
                           directory's file system";
            return Some(DiskTrouble { full: true, message: message.into() });
        }
        if self.manager.manifest().is_some_and(|manifest| manifest.space_alarm()) {
            let message = "disk full: the manifest cannot commit for lack of space; free space on the data \
                           directory's file system";
            return Some(DiskTrouble { full: true, message: message.into() });
        }
        if self.manager.space_alarm() {
            let message = "disk full: a checkpoint cannot write its generation file for lack of space; free \
                           space on the data directory's file system";
            return Some(DiskTrouble { full: true, message: message.into() });
        }
        let message = match self.wal.io_stalled_for() {
            Some(took) if took > self.limits.disk_stall_max => format!(
                "disk stalled: a log write or fdatasync has taken {} ms (limit {} ms)",
                took.as_millis(),
                self.limits.disk_stall_max.as_millis()
            ),
            _ => return None,
        };
        Some(DiskTrouble { full: false, message })
    }

    /// At shutdown: a manifest commit, a log append or a checkpoint held for lack of space (a Raft storage
    /// call or a snapshot build among them) fails instead of waiting, so that stopping Raft does not wait for
    /// space.
    pub(super) fn stop_waiting_for_space(&self) {
        self.manager.stop_waiting_for_space();
        if let Some(manifest) = self.manager.manifest() {
            manifest.stop_waiting_for_space();
        }
        self.wal.stop_waiting_for_space();
    }

    /// A voter to hand leadership to: the one that matched the most of this leader's log.
    fn transfer_target(&self) -> Option<u64> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let voters: Vec<u64> =
            m.membership_config.membership().voter_ids().filter(|v| *v != self.id).collect();
        let matched = |id: &u64| {
            m.replication.as_ref().and_then(|r| r.get(id).cloned().flatten()).map_or(0, |l| l.index)
        };
        voters.into_iter().max_by_key(matched)
    }
}

/// Runs until the node stops: while this node leads and its disk is in trouble, it asks Raft to transfer
/// leadership (at most every [`TRANSFER_EVERY`]).
pub(super) async fn watch_disk(node: Arc<NodeShared>) {
    let mut last_transfer: Option<std::time::Instant> = None;
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        if !node.raft_running() {
            return;
        }
        let Some(trouble) = node.disk_trouble() else { continue };
        if !node.is_leader() || last_transfer.is_some_and(|t| t.elapsed() < TRANSFER_EVERY) {
            continue;
        }
        if let Some(to) = node.transfer_target() {
            tracing::warn!(node = node.id, to, trouble = %trouble.message, "stepping down: handing leadership to a peer");
            let _ = node.raft.trigger().transfer_leader(to).await;
            last_transfer = Some(std::time::Instant::now());
        }
    }
}
