//! The node's cluster identity: kept in the manifest, fixed at bootstrap or adopted from the first peer
//! that contacts a node that has none ([`crate::tcp::handshake`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use bop_storage::manifest::{Batch, Manifest, RaftBlob};

use super::NodeError;
use crate::blocking::Blocking;
use crate::tcp::handshake::IdentityError;
use crate::tcp::tls::TransportTls;
use crate::tcp::{raft_addr_of, ClusterId, ClusterIdentity};

/// Node `id`'s identity as its manifest holds it; ids fixed or adopted later are committed to it.
/// With `tls`, the transport speaks mutual TLS.
pub(super) fn open(
    id: u64,
    manifest: &Arc<Manifest>,
    tls: Option<TransportTls>,
) -> Result<Arc<ClusterIdentity>, NodeError> {
    let stored = manifest
        .read(|r| r.raft_blob(RaftBlob::ClusterId))
        .map_err(|e| NodeError::Storage(format!("reading the cluster id: {e}")))?;
    let cluster = match stored {
        Some(bytes) => Some(ClusterId::from_bytes(&bytes).ok_or_else(|| {
            NodeError::Storage(format!("the manifest's cluster id has {} bytes, not 16", bytes.len()))
        })?),
        None => None,
    };
    let manifest = Arc::clone(manifest);
    let persist = Box::new(move |cluster: ClusterId| {
        let mut batch = Batch::new();
        batch.set_raft_blob(RaftBlob::ClusterId, cluster.0.to_vec());
        manifest.commit(batch).map(|_| ()).map_err(std::io::Error::other)
    });
    let identity = ClusterIdentity::new(id, cluster).persisted_by(persist);
    Ok(Arc::new(match tls {
        Some(tls) => identity.with_tls(tls),
        None => identity,
    }))
}

/// The cluster id a bootstrap of `members` (id → member address) names.
pub(super) fn of_members(members: &BTreeMap<u64, String>) -> ClusterId {
    ClusterId::of_members(members.iter().map(|(id, addr)| (*id, raft_addr_of(addr))))
}

/// Fixes `cluster` as the node's cluster id (on `blocking`: it commits the manifest).
pub(super) async fn fix(
    identity: &Arc<ClusterIdentity>,
    blocking: Blocking,
    cluster: ClusterId,
) -> Result<(), NodeError> {
    let identity = Arc::clone(identity);
    match blocking.run(move || identity.fix(cluster)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(IdentityError::OtherCluster { have, wanted })) => Err(NodeError::Config(format!(
            "the bootstrap member list describes cluster {wanted}, but this node belongs to cluster {have} \
             (a peer of that cluster contacted it first); start it with that cluster's member list, or with an \
             empty data directory"
        ))),
        Ok(Err(e)) => Err(NodeError::Storage(e.to_string())),
        Err(e) => Err(NodeError::Storage(format!("keeping the cluster id: {e}"))),
    }
}
