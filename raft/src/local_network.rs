//! An in-process Raft network: every node of a cluster lives in the same process and RPCs are direct calls
//! into the target's `Raft` handle. For tests, examples and benchmarks; bop's TCP transport replaces it in a
//! real node. A node can be cut off (both directions) to test partitions.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;

use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::storage::RaftStateMachine;
use openraft::type_config::alias::{SnapshotOf, VoteOf};
use openraft::{OptionalSend, Raft, RaftNetworkFactory, RaftTypeConfig};
use parking_lot::Mutex;

struct Routes<C: RaftTypeConfig, SM: RaftStateMachine<C>> {
    nodes: HashMap<C::NodeId, Raft<C, SM>>,
    isolated: BTreeSet<C::NodeId>,
}

/// The nodes of an in-process cluster. Cloning shares the router.
pub struct LocalRouter<C: RaftTypeConfig, SM: RaftStateMachine<C>> {
    routes: Arc<Mutex<Routes<C, SM>>>,
}

impl<C: RaftTypeConfig, SM: RaftStateMachine<C>> Clone for LocalRouter<C, SM> {
    fn clone(&self) -> Self {
        LocalRouter { routes: Arc::clone(&self.routes) }
    }
}

impl<C: RaftTypeConfig, SM: RaftStateMachine<C>> Default for LocalRouter<C, SM> {
    fn default() -> Self {
        LocalRouter {
            routes: Arc::new(Mutex::new(Routes { nodes: HashMap::new(), isolated: BTreeSet::new() })),
        }
    }
}

impl<C: RaftTypeConfig, SM: RaftStateMachine<C>> LocalRouter<C, SM> {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers (or replaces, after a restart) a node's Raft handle.
    pub fn add(&self, id: C::NodeId, raft: Raft<C, SM>) {
        self.routes.lock().nodes.insert(id, raft);
    }

    /// Unregisters a node (it is down).
    pub fn remove(&self, id: &C::NodeId) -> Option<Raft<C, SM>> {
        self.routes.lock().nodes.remove(id)
    }

    /// Cuts a node off from every other node (`true`) or heals it (`false`).
    pub fn isolate(&self, id: C::NodeId, isolated: bool) {
        let mut routes = self.routes.lock();
        if isolated {
            routes.isolated.insert(id);
        } else {
            routes.isolated.remove(&id);
        }
    }

    /// A node's Raft handle, if it is registered.
    pub fn get(&self, id: &C::NodeId) -> Option<Raft<C, SM>> {
        self.routes.lock().nodes.get(id).cloned()
    }

    /// The network factory for node `from`.
    pub fn network(&self, from: C::NodeId) -> LocalNetwork<C, SM> {
        LocalNetwork { router: self.clone(), from }
    }

    fn target(&self, from: &C::NodeId, to: &C::NodeId) -> Result<Raft<C, SM>, Unreachable<C>> {
        let routes = self.routes.lock();
        if routes.isolated.contains(from) || routes.isolated.contains(to) {
            return Err(Unreachable::from_string(format!("{from} and {to} are partitioned")));
        }
        routes.nodes.get(to).cloned().ok_or_else(|| Unreachable::from_string(format!("node {to} is down")))
    }
}

/// The network factory of one node of a [`LocalRouter`].
pub struct LocalNetwork<C: RaftTypeConfig, SM: RaftStateMachine<C>> {
    router: LocalRouter<C, SM>,
    from: C::NodeId,
}

/// A connection from one node to another through a [`LocalRouter`].
pub struct LocalConnection<C: RaftTypeConfig, SM: RaftStateMachine<C>> {
    router: LocalRouter<C, SM>,
    from: C::NodeId,
    to: C::NodeId,
}

impl<C: RaftTypeConfig, SM: RaftStateMachine<C>> RaftNetworkFactory<C> for LocalNetwork<C, SM> {
    type Network = LocalConnection<C, SM>;

    async fn new_client(&mut self, target: C::NodeId, _node: &C::Node) -> Self::Network {
        LocalConnection { router: self.router.clone(), from: self.from.clone(), to: target }
    }
}

fn unreachable<C: RaftTypeConfig>(e: impl std::fmt::Display) -> Unreachable<C> {
    Unreachable::from_string(e.to_string())
}

impl<C: RaftTypeConfig, SM: RaftStateMachine<C>> RaftNetworkV2<C> for LocalConnection<C, SM> {
    type SnapshotData = SM::SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        let target = self.router.target(&self.from, &self.to)?;
        target.append_entries(rpc).await.map_err(|e| RPCError::Unreachable(unreachable(e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<C>,
        _option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        let target = self.router.target(&self.from, &self.to)?;
        target.vote(rpc).await.map_err(|e| RPCError::Unreachable(unreachable(e)))
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<C>,
        snapshot: SnapshotOf<C, Self::SnapshotData>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let target = self.router.target(&self.from, &self.to)?;
        target
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| StreamingError::Unreachable(unreachable(e)))
    }
}
