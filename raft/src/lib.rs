//! bop Raft layer.
