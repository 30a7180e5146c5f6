//! Deterministic simulation of bop clusters.
//!
//! Real bop nodes (storage, Raft, the Raft transport, SQL, the HTTP API) run as turmoil hosts: the network
//! is turmoil's, the WAL and page files live on bop's simulated disk ([`bop_storage::io::SimDisk`]), SQL
//! runs in lockstep with the hosts, and openraft's random draws come from the seed. Client hosts write and
//! read registers over the rqlite-compatible HTTP API while the harness injects faults; the history is then
//! checked for linearizability and the nodes for Raft's and the storage's invariants. One seed, one run —
//! in a fresh process (tokio's process-wide task numbering orders a crashed host's teardown), which is how
//! the `bop-sim` binary runs every seed. See `docs/design.md` (Deterministic simulation) for what is and is
//! not simulated.

pub mod check;
pub mod harness;
pub mod net;

pub use harness::{run, Bug, Options, Report, Rng, ViolationKind};
