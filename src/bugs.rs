//! Deliberate bugs for proving the simulation's checks (feature `bug-injection`).
//!
//! Without the feature every switch is a constant `false` and compiles away. With it, a test may turn one
//! on for the current thread (the simulation runs every host on one thread), reintroducing a bug that
//! bop's checks must catch.

#[cfg(feature = "bug-injection")]
thread_local! {
    static SKIP_WAL_FSYNC: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static ACCEPT_STALE_COMMITS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static ACCEPT_WRONG_BASE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static ANSWER_ON_PROPOSE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static LEASE_WITHOUT_DRIFT_MARGIN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static MIN_INDEX_IGNORED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The WAL reports a batch durable without its fdatasync (acknowledging writes a crash can lose).
#[inline]
pub fn skip_wal_fsync() -> bool {
    #[cfg(feature = "bug-injection")]
    {
        SKIP_WAL_FSYNC.with(|b| b.get())
    }
    #[cfg(not(feature = "bug-injection"))]
    {
        false
    }
}

/// Turns the skipped-fsync bug on or off for this thread.
#[cfg(feature = "bug-injection")]
pub fn set_skip_wal_fsync(on: bool) {
    SKIP_WAL_FSYNC.with(|b| b.set(on));
}

/// Replicated commits are applied even when their transaction read a view older than the database's newest
/// commit, and a new leader does not wait to apply its predecessors' entries before running transactions:
/// the lost update the simulation found (`docs/design.md`, SQL on the cluster).
#[inline]
pub fn accept_stale_commits() -> bool {
    #[cfg(feature = "bug-injection")]
    {
        ACCEPT_STALE_COMMITS.with(|b| b.get())
    }
    #[cfg(not(feature = "bug-injection"))]
    {
        false
    }
}

/// Turns the stale-commit bug on or off for this thread.
#[cfg(feature = "bug-injection")]
pub fn set_accept_stale_commits(on: bool) {
    ACCEPT_STALE_COMMITS.with(|b| b.set(on));
}

/// A commit built on another one proposed before it (a pipelined writer's) is applied even when that one is
/// not the database's newest commit (it was refused or lost), and a new leader does not wait to apply its
/// predecessors' entries before running transactions (without that wait a writer never builds on a commit
/// that is then refused, so the first half could do no harm).
#[inline]
pub fn accept_wrong_base() -> bool {
    #[cfg(feature = "bug-injection")]
    {
        ACCEPT_WRONG_BASE.with(|b| b.get())
    }
    #[cfg(not(feature = "bug-injection"))]
    {
        false
    }
}

/// Turns the wrong-base bug on or off for this thread.
#[cfg(feature = "bug-injection")]
pub fn set_accept_wrong_base(on: bool) {
    ACCEPT_WRONG_BASE.with(|b| b.set(on));
}

/// A pipelined writer answers its requests once their commit is proposed, not once it is applied.
#[inline]
pub fn answer_on_propose() -> bool {
    #[cfg(feature = "bug-injection")]
    {
        ANSWER_ON_PROPOSE.with(|b| b.get())
    }
    #[cfg(not(feature = "bug-injection"))]
    {
        false
    }
}

/// Turns the answer-on-propose bug on or off for this thread.
#[cfg(feature = "bug-injection")]
pub fn set_answer_on_propose(on: bool) {
    ANSWER_ON_PROPOSE.with(|b| b.set(on));
}

/// A leader's read lease lasts a whole election timeout of its own clock, without the margin for clocks
/// that run at different rates (a follower whose clock runs faster may elect another leader before it ends).
#[inline]
pub fn lease_without_drift_margin() -> bool {
    #[cfg(feature = "bug-injection")]
    {
        LEASE_WITHOUT_DRIFT_MARGIN.with(|b| b.get())
    }
    #[cfg(not(feature = "bug-injection"))]
    {
        false
    }
}

/// Turns the lease-without-margin bug on or off for this thread.
#[cfg(feature = "bug-injection")]
pub fn set_lease_without_drift_margin(on: bool) {
    LEASE_WITHOUT_DRIFT_MARGIN.with(|b| b.set(on));
}

/// A read with `min_index` runs at once, without waiting for this node to apply that index.
#[inline]
pub fn min_index_ignored() -> bool {
    #[cfg(feature = "bug-injection")]
    {
        MIN_INDEX_IGNORED.with(|b| b.get())
    }
    #[cfg(not(feature = "bug-injection"))]
    {
        false
    }
}

/// Turns the ignored-min_index bug on or off for this thread.
#[cfg(feature = "bug-injection")]
pub fn set_min_index_ignored(on: bool) {
    MIN_INDEX_IGNORED.with(|b| b.set(on));
}
