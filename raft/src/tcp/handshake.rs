//! The first frame of every connection: who is calling whom, in which cluster.
//!
//! A client's first frame is a [`Hello`] naming the protocol version, the sender's cluster id (if it has
//! one), its node id and the node id it means to reach; the server answers [`Welcome`] or a refusal with
//! the reason, and on a refusal closes the connection before reading any Raft message. A server refuses:
//! another protocol version, another cluster id, a hello meant for another node id (an address that now
//! belongs to a different node), and a sender with no cluster id once it has one. A node that has no
//! cluster id yet (it was never bootstrapped and has not been contacted; it is about to be joined) adopts
//! the first one a peer names, durably, before it answers.
//!
//! Without TLS these are claims, not proofs: they stop stray and misconfigured peers (a node of another
//! cluster left on a reused address, a process from an old run), not an attacker who can read traffic.

use std::fmt;
use std::io;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};

use super::frame::{read_frame, write_frame};
use super::{decode, encode};

/// The transport protocol version a [`Hello`] names; a peer speaking another is refused.
pub const PROTOCOL_VERSION: u16 = 1;

/// Identifies one cluster: fixed when it is formed, kept by every member (the manifest in a node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClusterId(pub [u8; 16]);

impl ClusterId {
    /// The id of a cluster formed from `members` (node id and Raft address; order does not matter): the
    /// first 16 bytes of SHA-256 over `bop cluster v1` and the sorted `id=raft_addr` lines. Nodes that
    /// bootstrap the same cluster at the same moment all derive the same id without talking to each other
    /// (as etcd derives its cluster id from the initial member list). Two clusters formed from identical
    /// member lists share an id.
    pub fn of_members<'a>(members: impl IntoIterator<Item = (u64, &'a str)>) -> ClusterId {
        let mut lines: Vec<String> = members.into_iter().map(|(id, addr)| format!("{id}={addr}\n")).collect();
        lines.sort();
        let mut hash = Sha256::new();
        hash.update(b"bop cluster v1\n");
        for line in &lines {
            hash.update(line.as_bytes());
        }
        let digest = hash.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        ClusterId(id)
    }

    /// The id from its 16 bytes as stored; `None` for any other length.
    pub fn from_bytes(bytes: &[u8]) -> Option<ClusterId> {
        Some(ClusterId(bytes.try_into().ok()?))
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Keeps an adopted cluster id durably before the node answers the peer that named it.
pub type PersistClusterId = Box<dyn Fn(ClusterId) -> io::Result<()> + Send + Sync>;

/// This node's identity on the transport: its node id and its cluster's id, once known. Shared by the
/// client side (which names them in every hello) and the server side (which checks hellos against them).
pub struct ClusterIdentity {
    node_id: u64,
    cluster: OnceLock<ClusterId>,
    persist: Option<PersistClusterId>,
    /// TLS on the transport, if it is on.
    tls: Option<super::tls::TransportTls>,
    /// Serialises adoption, so two peers naming different clusters cannot both be adopted.
    adopting: parking_lot::Mutex<()>,
}

impl fmt::Debug for ClusterIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterIdentity")
            .field("node_id", &self.node_id)
            .field("cluster", &self.cluster())
            .finish()
    }
}

/// Why a cluster id could not be fixed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The node already belongs to another cluster.
    #[error("this node belongs to cluster {have}, not {wanted}")]
    OtherCluster {
        /// The id the node has.
        have: ClusterId,
        /// The id asked for.
        wanted: ClusterId,
    },
    /// Keeping the id failed.
    #[error("keeping the cluster id: {0}")]
    Persist(#[from] io::Error),
}

impl ClusterIdentity {
    /// Node `node_id`, of cluster `cluster` if it has one (ids adopted later are kept only in memory).
    pub fn new(node_id: u64, cluster: Option<ClusterId>) -> ClusterIdentity {
        let identity = ClusterIdentity {
            node_id,
            cluster: OnceLock::new(),
            persist: None,
            tls: None,
            adopting: parking_lot::Mutex::new(()),
        };
        if let Some(id) = cluster {
            let _ = identity.cluster.set(id);
        }
        identity
    }

    /// Ids fixed or adopted later are kept by `persist` (called off the async workers' hot path only
    /// once per node life: at bootstrap or at the first contact) before they are used.
    pub fn persisted_by(mut self, persist: PersistClusterId) -> ClusterIdentity {
        self.persist = Some(persist);
        self
    }

    /// Speaks mutual TLS with `tls` to every peer ([`super::tls`]).
    pub fn with_tls(mut self, tls: super::tls::TransportTls) -> ClusterIdentity {
        self.tls = Some(tls);
        self
    }

    /// The transport's TLS, if it is on.
    pub fn tls(&self) -> Option<&super::tls::TransportTls> {
        self.tls.as_ref()
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The cluster id, once known.
    pub fn cluster(&self) -> Option<ClusterId> {
        self.cluster.get().copied()
    }

    /// Makes `id` this node's cluster id: kept (durably, if persisted) when the node had none, accepted
    /// when it is the one the node has, refused otherwise. Blocking (it may commit to disk).
    pub fn fix(&self, id: ClusterId) -> Result<(), IdentityError> {
        let _one_at_a_time = self.adopting.lock();
        match self.cluster() {
            Some(have) if have == id => Ok(()),
            Some(have) => Err(IdentityError::OtherCluster { have, wanted: id }),
            None => {
                if let Some(persist) = &self.persist {
                    persist(id)?;
                }
                let _ = self.cluster.set(id);
                Ok(())
            }
        }
    }

    /// Checks a peer's hello against this node. `adopt` runs [`ClusterIdentity::fix`] for a node without
    /// a cluster id (the caller decides where blocking work runs).
    pub(crate) async fn judge<F, Fut>(
        &self,
        hello: &Hello,
        cert: Option<&rustls::pki_types::CertificateDer<'_>>,
        adopt: F,
    ) -> Result<(), String>
    where
        F: FnOnce(ClusterId) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        if hello.magic != MAGIC {
            return Err("not a bop transport hello".into());
        }
        if hello.version != PROTOCOL_VERSION {
            return Err(format!("protocol version {} is not this node's {PROTOCOL_VERSION}", hello.version));
        }
        if hello.to != self.node_id {
            return Err(format!("this is node {}, not node {}", self.node_id, hello.to));
        }
        if let Some(cert) = cert {
            if !super::tls::names_node(cert, hello.from) {
                return Err(format!(
                    "the peer's certificate is not node {}'s (it must name {})",
                    hello.from,
                    super::tls::node_name(hello.from)
                ));
            }
        }
        match (self.cluster(), hello.cluster) {
            (Some(have), Some(theirs)) if have == theirs => Ok(()),
            (Some(have), Some(theirs)) => {
                Err(format!("node {} is of cluster {theirs}; this node is of cluster {have}", hello.from))
            }
            (Some(have), None) => {
                Err(format!("node {} names no cluster; this node is of cluster {have}", hello.from))
            }
            (None, Some(theirs)) => adopt(theirs).await,
            // Neither knows its cluster (a store from before cluster ids): nothing to compare.
            (None, None) => Ok(()),
        }
    }
}

const MAGIC: [u8; 4] = *b"bop\x01";

/// A connection's first frame, from the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    magic: [u8; 4],
    version: u16,
    /// The sender's cluster id, if it has one.
    pub cluster: Option<ClusterId>,
    /// The sender's node id.
    pub from: u64,
    /// The node id the sender means to reach.
    pub to: u64,
}

impl Hello {
    /// A hello from `identity` to node `to`.
    pub fn new(identity: &ClusterIdentity, to: u64) -> Hello {
        Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            cluster: identity.cluster(),
            from: identity.node_id,
            to,
        }
    }
}

/// The server's answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Welcome {
    /// Go on: Raft messages may follow.
    Accepted,
    /// Refused, with the reason; the server closes the connection.
    Refused(String),
}

/// The client side: sends the hello on a fresh `stream` and reads the answer. A refusal is an error
/// naming the server's reason.
pub async fn greet(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    identity: &ClusterIdentity,
    to: u64,
) -> io::Result<()> {
    write_frame(stream, &encode(&Hello::new(identity, to))?).await?;
    match decode::<Welcome>(&read_frame(stream).await?)? {
        Welcome::Accepted => Ok(()),
        Welcome::Refused(reason) => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("peer refused the connection: {reason}"),
        )),
    }
}

/// The server side: reads a hello from `stream` (which must be the connection's first frame), judges it,
/// answers, and returns the sender's node id if it was accepted. Adoption of a cluster id runs on
/// `blocking`.
pub(super) async fn welcome(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    identity: &Arc<ClusterIdentity>,
    blocking: crate::blocking::Blocking,
    cert: Option<&rustls::pki_types::CertificateDer<'_>>,
) -> io::Result<Result<u64, String>> {
    let body = read_frame(stream).await?;
    let verdict = match decode::<Hello>(&body) {
        Ok(hello) => {
            let adopt = |id: ClusterId| {
                let identity = Arc::clone(identity);
                async move {
                    blocking
                        .run(move || identity.fix(id))
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| e.to_string())?;
                    tracing::info!(cluster = %id, from = hello.from, "joined the cluster a peer named");
                    Ok(())
                }
            };
            identity.judge(&hello, cert, adopt).await.map(|()| hello.from)
        }
        Err(_) => {
            Err("the first frame is not a hello (a peer of another bop version, or not bop)".to_owned())
        }
    };
    let answer = match &verdict {
        Ok(_) => Welcome::Accepted,
        Err(reason) => Welcome::Refused(reason.clone()),
    };
    write_frame(stream, &encode(&answer)?).await?;
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_id_depends_on_the_members_not_their_order() {
        let a = ClusterId::of_members([(1, "10.0.0.1:4001"), (2, "10.0.0.2:4001")]);
        let b = ClusterId::of_members([(2, "10.0.0.2:4001"), (1, "10.0.0.1:4001")]);
        let c = ClusterId::of_members([(1, "10.0.0.1:4001"), (3, "10.0.0.2:4001")]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string().len(), 32);
        assert_eq!(ClusterId::from_bytes(&a.0), Some(a));
        assert_eq!(ClusterId::from_bytes(&a.0[..15]), None);
    }

    #[test]
    fn fixing_keeps_the_first_id_and_refuses_another() {
        let kept = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let sink = Arc::clone(&kept);
        let identity = ClusterIdentity::new(1, None).persisted_by(Box::new(move |id| {
            sink.lock().push(id);
            Ok(())
        }));
        let (a, b) = (ClusterId([1; 16]), ClusterId([2; 16]));
        identity.fix(a).expect("first id");
        identity.fix(a).expect("same id again");
        assert!(matches!(identity.fix(b), Err(IdentityError::OtherCluster { .. })));
        assert_eq!(identity.cluster(), Some(a));
        assert_eq!(*kept.lock(), vec![a], "kept once, before use");
    }

    #[test]
    fn an_id_that_cannot_be_kept_is_not_adopted() {
        let identity =
            ClusterIdentity::new(1, None).persisted_by(Box::new(|_| Err(io::Error::other("disk full"))));
        assert!(matches!(identity.fix(ClusterId([1; 16])), Err(IdentityError::Persist(_))));
        assert_eq!(identity.cluster(), None);
    }
}
