//! Group commit: concurrent committers share one LMDB transaction and one fsync.
//!
//! Protocol (no background thread):
//! 1. A committer pushes its work into a bounded FIFO queue (`commit_queue_batches_max`); when
//!    the queue is full it waits (`commit`) or gets `Backpressure` (`try_commit`).
//! 2. If no leader is active, the committer becomes the leader: it takes up to
//!    `group_batches_max` queued items, releases the queue lock, applies them in queue order in
//!    one write transaction, runs feed maintenance, and commits.
//! 3. The leader publishes each item's result and wakes everyone; a committer returns only when
//!    its own result is published, i.e. after the LMDB commit holding its work returned success.
//!    Whoever still has queued work becomes the next leader.
//!
//! Durability: nothing is acknowledged before `mdb_txn_commit` returned (data pages and meta
//! page written and fsynced; the environment is never opened with NO_SYNC or NO_META_SYNC).
//! Work waiting in the queue lives only in the memory of callers that are still blocked, so a
//! crash loses only unacknowledged work, and no journal or replay is needed.
//!
//! A rejected item (validation or decode error) may be found after earlier items of the group
//! were written. LMDB has no savepoint we use here, so the leader aborts the transaction and
//! retries the group without the rejected item; each retry removes one item, so a group of
//! `k` items needs at most `k` retries. Map-full aborts, grows the map, and retries the group;
//! a failed commit poisons the handle.
//!
//! Lack of space (ENOSPC or EDQUOT from LMDB while beginning, applying or committing) is not a
//! failure of the manifest: the transaction is aborted (LMDB wrote no meta page, so the previous
//! state stands), the space alarm is raised, and the leader retries the same group after a backoff
//! (10 ms doubling to 1 s) until it commits; its callers stay blocked meanwhile, and the bounded
//! queue holds everyone else. The first successful commit clears the alarm.
//! `stop_waiting_for_space` (for shutdown) makes a held group, and any later one that meets a full
//! disk, fail with `NoSpace` instead.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::apply::apply_batch;
use super::batch::{Batch, CommitOutcome};
use super::change_feed::{self, CursorOp, FeedStats};
use super::config::ManifestConfig;
use super::error::{ManifestError, Result};
use super::store::Store;

/// One item of work for the commit pipeline.
pub(crate) enum Work {
    Batch(Batch),
    Cursor(CursorOp),
}

/// The result of one item.
#[derive(Debug)]
pub(crate) enum Done {
    Batch(CommitOutcome),
    Cursor,
}

struct Pending {
    ticket: u64,
    work: Work,
}

struct QueueState {
    queue: VecDeque<Pending>,
    leader_active: bool,
    finished: HashMap<u64, Result<Done>>,
    next_ticket: u64,
    poisoned: Option<String>,
    /// A group that meets a full disk fails instead of waiting (`stop_waiting_for_space`).
    stop_waiting_for_space: bool,
}

/// First wait before a group that met a full file system is retried; it doubles up to
/// [`NO_SPACE_RETRY_MAX`].
const NO_SPACE_RETRY_FIRST: Duration = Duration::from_millis(10);
/// Longest wait between two retries of a group held for space.
const NO_SPACE_RETRY_MAX: Duration = Duration::from_secs(1);

/// Whether a submission waits for queue space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WhenFull {
    Wait,
    Fail,
}

/// The queue and the leader election.
pub(crate) struct Pipeline {
    state: Mutex<QueueState>,
    /// Signalled when the queue shrinks.
    space: Condvar,
    /// Signalled when a leader published results.
    progress: Condvar,
    /// Signalled when the manifest stops waiting for space (wakes a leader holding a group).
    held: Condvar,
    queue_max: usize,
    group_max: usize,
}

enum Step {
    Committed(Vec<(usize, Done)>, FeedStats),
    Rejected(usize, ManifestError),
    MapFull,
    /// The file system had no space; the transaction was aborted and nothing was written.
    NoSpace(ManifestError),
    Failed {
        error: ManifestError,
        poison: bool,
    },
}

impl Pipeline {
    pub(crate) fn new(config: &ManifestConfig) -> Pipeline {
        Pipeline {
            state: Mutex::new(QueueState {
                queue: VecDeque::new(),
                leader_active: false,
                finished: HashMap::new(),
                next_ticket: 0,
                poisoned: None,
                stop_waiting_for_space: false,
            }),
            space: Condvar::new(),
            progress: Condvar::new(),
            held: Condvar::new(),
            queue_max: config.commit_queue_batches_max,
            group_max: config.group_batches_max,
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // The state is only mutated in short sections that cannot panic halfway.
        self.state.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Test hook: pretend a leader is (or is no longer) running.
    #[cfg(test)]
    pub(crate) fn set_fake_leader(&self, active: bool) {
        let mut state = self.lock();
        state.leader_active = active;
        self.progress.notify_all();
    }

    /// Test hook: number of queued items.
    #[cfg(test)]
    pub(crate) fn queued_len(&self) -> usize {
        self.lock().queue.len()
    }

    /// The reason the pipeline refuses writes, if it does.
    pub(crate) fn poisoned(&self) -> Option<String> {
        self.lock().poisoned.clone()
    }

    /// From now on a group that meets a full file system fails with `NoSpace` instead of waiting;
    /// a group waiting now fails at once.
    pub(crate) fn stop_waiting_for_space(&self) {
        let mut state = self.lock();
        state.stop_waiting_for_space = true;
        self.held.notify_all();
    }

    /// Waits `delay` before a group held for space is retried; false (at once) if the manifest
    /// no longer waits for space.
    fn hold(&self, delay: Duration) -> bool {
        let deadline = Instant::now() + delay;
        let mut state = self.lock();
        loop {
            if state.stop_waiting_for_space {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            state =
                self.held.wait_timeout(state, deadline - now).unwrap_or_else(|poison| poison.into_inner()).0;
        }
    }

    /// Submits `works` together (they enter the queue contiguously) and blocks until each has
    /// its result.
    pub(crate) fn submit(
        &self,
        store: &Store,
        config: &ManifestConfig,
        works: Vec<Work>,
        when_full: WhenFull,
    ) -> Result<Vec<Result<Done>>> {
        let count = works.len();
        if count > self.queue_max {
            return Err(ManifestError::BatchTooLarge { ops: count, ops_max: self.queue_max });
        }
        let mut state = self.lock();
        loop {
            if let Some(reason) = &state.poisoned {
                return Err(ManifestError::Poisoned { reason: reason.clone() });
            }
            if state.queue.len() + count <= self.queue_max {
                break;
            }
            if when_full == WhenFull::Fail {
                return Err(ManifestError::Backpressure { queue_batches_max: self.queue_max });
            }
            state = self.space.wait(state).unwrap_or_else(|poison| poison.into_inner());
        }
        let first_ticket = state.next_ticket;
        state.next_ticket += count as u64;
        for (offset, work) in works.into_iter().enumerate() {
            state.queue.push_back(Pending { ticket: first_ticket + offset as u64, work });
        }
        let tickets = first_ticket..first_ticket + count as u64;
        loop {
            if tickets.clone().all(|ticket| state.finished.contains_key(&ticket)) {
                let results = tickets
                    .clone()
                    .map(|ticket| {
                        state
                            .finished
                            .remove(&ticket)
                            .unwrap_or_else(|| unreachable!("ticket {ticket} was checked to be finished"))
                    })
                    .collect();
                return Ok(results);
            }
            if state.leader_active {
                state = self.progress.wait(state).unwrap_or_else(|poison| poison.into_inner());
                continue;
            }
            // Lead: our unfinished tickets are queued (results are published before the
            // previous leader stepped down), so the group is not empty.
            state.leader_active = true;
            let take = state.queue.len().min(self.group_max);
            let group: Vec<Pending> = state.queue.drain(..take).collect();
            assert!(!group.is_empty(), "a leader found an empty queue");
            let poisoned = state.poisoned.clone();
            self.space.notify_all();
            drop(state);

            let (results, poison) = match poisoned {
                Some(reason) => {
                    let error = ManifestError::Poisoned { reason };
                    let results = group.iter().map(|pending| (pending.ticket, Err(error.clone()))).collect();
                    (results, None)
                }
                None => {
                    let outcome = catch_unwind(AssertUnwindSafe(|| self.lead(store, config, &group)));
                    match outcome {
                        Ok(outcome) => outcome,
                        Err(_) => {
                            let reason = "a commit leader panicked".to_owned();
                            let error = ManifestError::Poisoned { reason: reason.clone() };
                            let results =
                                group.iter().map(|pending| (pending.ticket, Err(error.clone()))).collect();
                            (results, Some(reason))
                        }
                    }
                }
            };

            state = self.lock();
            for (ticket, result) in results {
                state.finished.insert(ticket, result);
            }
            if let Some(reason) = poison {
                tracing::error!(%reason, "manifest poisoned");
                state.poisoned.get_or_insert(reason);
            }
            state.leader_active = false;
            self.progress.notify_all();
        }
    }

    /// Runs one group to completion: returns a result per ticket and, if the handle must be
    /// poisoned, why.
    fn lead(
        &self,
        store: &Store,
        config: &ManifestConfig,
        group: &[Pending],
    ) -> (Vec<(u64, Result<Done>)>, Option<String>) {
        let mut settled: Vec<Option<Result<Done>>> = group.iter().map(|_| None).collect();
        let mut poison = None;
        let mut no_space_wait = NO_SPACE_RETRY_FIRST;
        let mut held_since: Option<Instant> = None;
        loop {
            if settled.iter().all(Option::is_some) {
                break;
            }
            match attempt(store, config, group, &settled) {
                Step::Committed(outcomes, stats) => {
                    let metrics = &store.metrics;
                    metrics.commits.fetch_add(1, Ordering::Relaxed);
                    for (index, done) in outcomes {
                        match done {
                            Done::Batch(_) => metrics.batches.fetch_add(1, Ordering::Relaxed),
                            Done::Cursor => metrics.cursor_ops.fetch_add(1, Ordering::Relaxed),
                        };
                        settled[index] = Some(Ok(done));
                    }
                    metrics.record_feed(&stats);
                    if metrics.space_alarm.swap(false, Ordering::Relaxed) {
                        tracing::info!(
                            held_ms = held_since.map_or(0, |since| since.elapsed().as_millis() as u64),
                            "manifest space alarm cleared: a commit held for lack of space was made"
                        );
                    }
                    break;
                }
                Step::Rejected(index, error) => {
                    if matches!(group[index].work, Work::Batch(_)) {
                        store.metrics.batches_rejected.fetch_add(1, Ordering::Relaxed);
                    }
                    store.metrics.group_retries.fetch_add(1, Ordering::Relaxed);
                    settled[index] = Some(Err(error));
                }
                Step::MapFull => {
                    if let Err(error) = store.grow() {
                        settle_rest(&mut settled, &error);
                        break;
                    }
                }
                Step::NoSpace(error) => {
                    let metrics = &store.metrics;
                    metrics.no_space_retries.fetch_add(1, Ordering::Relaxed);
                    held_since.get_or_insert_with(Instant::now);
                    if !metrics.space_alarm.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            %error,
                            path = %store.path.display(),
                            "manifest space alarm: no space for a commit; its callers wait while it is retried"
                        );
                    }
                    if !self.hold(no_space_wait) {
                        settle_rest(&mut settled, &ManifestError::NoSpace { cause: error.to_string() });
                        break;
                    }
                    no_space_wait = (no_space_wait * 2).min(NO_SPACE_RETRY_MAX);
                }
                Step::Failed { error, poison: poison_now } => {
                    if poison_now {
                        poison = Some(format!("LMDB commit failed: {error}"));
                    }
                    settle_rest(&mut settled, &error);
                    break;
                }
            }
        }
        let results = group
            .iter()
            .zip(settled)
            .map(|(pending, result)| {
                let result = result.unwrap_or_else(|| unreachable!("every item is settled"));
                (pending.ticket, result)
            })
            .collect();
        (results, poison)
    }
}

fn settle_rest(settled: &mut [Option<Result<Done>>], error: &ManifestError) {
    for slot in settled.iter_mut().filter(|slot| slot.is_none()) {
        *slot = Some(Err(error.clone()));
    }
}

/// One transaction over the items not yet settled.
fn attempt(
    store: &Store,
    config: &ManifestConfig,
    group: &[Pending],
    settled: &[Option<Result<Done>>],
) -> Step {
    let classify = |index: usize, error: ManifestError| {
        if error.is_lmdb_map_full() {
            Step::MapFull
        } else if error.is_no_space() {
            Step::NoSpace(error)
        } else if error.is_rejection() {
            Step::Rejected(index, error)
        } else {
            Step::Failed { poison: error.is_lmdb_panic(), error }
        }
    };
    let tables = &store.tables;
    let mut txn = match store.begin_write() {
        Ok(txn) => txn,
        Err(error) if error.is_no_space() => return Step::NoSpace(error),
        // MDB_PANIC: an earlier failure (a meta page write) made the environment unusable.
        Err(error) => return Step::Failed { poison: error.is_lmdb_panic(), error },
    };
    let mut outcomes = Vec::with_capacity(group.len());
    for (index, pending) in group.iter().enumerate() {
        if settled[index].is_some() {
            continue;
        }
        let result = match &pending.work {
            Work::Batch(batch) => apply_batch(tables, &mut txn, batch, config).and_then(|applied| {
                let seq = change_feed::append(tables, &mut txn, applied.changes)?;
                Ok(Done::Batch(CommitOutcome { seq, created_databases: applied.created_databases }))
            }),
            Work::Cursor(op) => {
                change_feed::apply_cursor_op(tables, &mut txn, op, config).map(|()| Done::Cursor)
            }
        };
        match result {
            Ok(done) => outcomes.push((index, done)),
            Err(error) => return classify(index, error),
        }
    }
    let stats = match change_feed::maintain(tables, &mut txn, config) {
        Ok(stats) => stats,
        Err(error) if error.is_lmdb_map_full() => return Step::MapFull,
        Err(error) if error.is_no_space() => return Step::NoSpace(error),
        Err(error) => return Step::Failed { poison: error.is_lmdb_panic(), error },
    };
    match txn.commit() {
        Ok(()) => Step::Committed(outcomes, stats),
        Err(error) if error.is_lmdb_map_full() => Step::MapFull,
        // Lack of space while LMDB wrote the transaction's pages or fdatasynced them: the meta page
        // was not written (LMDB writes it only after both succeeded), so the previous state stands
        // and the retry is a new transaction that writes and syncs all its pages again. A failed
        // meta page write makes LMDB mark the environment fatal: the retry's begin then gets
        // MDB_PANIC and poisons (docs/design.md, Manifest, "Lack of space").
        Err(error) if error.is_no_space() => Step::NoSpace(error),
        // The commit may or may not have reached the disk; nothing on this handle can know.
        Err(error) => Step::Failed { error, poison: true },
    }
}
