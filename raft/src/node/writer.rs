//! One writer per database. Write requests queue for their database's writer; whenever it is free it takes
//! whatever is queued (up to [`GROUP_REQUESTS_MAX`] requests and [`GROUP_BYTES_MAX`] bytes, no timer) and
//! runs it as one SQL transaction (`Connection::request_group`), so that one Raft entry commits them all.
//! Every request is answered once that entry is applied on this node. A writer that has had nothing to do
//! for `NodeLimits::writer_idle` ends, and the next write to its database starts a new one. A load
//! (`/db/load`) goes through the same queue, so that it is ordered with the writes around it, and runs
//! alone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use bop_sql::{GroupRequest, InterruptHandle, Limits, OpenMode, RequestOutcome, Statement};
use tokio::sync::{mpsc, oneshot};

use super::bounds::Queued;
use super::NodeShared;

/// Most requests one group (one transaction, one Raft entry) takes.
pub(super) const GROUP_REQUESTS_MAX: usize = 256;
/// Most request-body bytes one group takes (it may pass them by its last request).
pub(super) const GROUP_BYTES_MAX: usize = 16 << 20;

/// One write request, queued for its database's writer.
pub(super) struct WriteJob {
    pub(super) statements: Vec<Statement>,
    /// rqlite's `transaction`: all or nothing.
    pub(super) transaction: bool,
    pub(super) limits: Limits,
    /// Used when the client goes away: the request fails alone (at once, if it has not started).
    pub(super) interrupt: InterruptHandle,
    /// Its place in the node's bound on queued writes, given back when the job is answered (or dropped).
    pub(super) place: Queued,
    pub(super) answer: oneshot::Sender<WriteAnswer>,
}

/// A write's outcome, and the log index of the commit it went out in (rqlite's `raft_index`; 0 when it
/// committed nothing).
pub(super) type WriteAnswer = (RequestOutcome, u64);

/// A load queued for its database's writer: the database's whole contents replaced by those of `source`
/// (an ordinary SQLite file, checked already) in one commit.
pub(super) struct RestoreJob {
    pub(super) source: std::path::PathBuf,
    pub(super) answer: oneshot::Sender<Result<(), bop_sql::SqlError>>,
}

/// What a writer runs.
pub(super) enum Job {
    Write(WriteJob),
    Restore(RestoreJob),
}

impl Job {
    fn is_closed(&self) -> bool {
        match self {
            Job::Write(job) => job.answer.is_closed(),
            Job::Restore(job) => job.answer.is_closed(),
        }
    }
}

/// The node's writers, by database name.
#[derive(Default)]
pub(super) struct Writers {
    /// Each running writer's queue, with the writer's number (so that a writer that ends removes its own
    /// entry, not a successor's). A job is only ever sent under its entry's lock (a shard lock of the map),
    /// which a writer that ends also takes to look at its queue one last time.
    queues: dashmap::DashMap<String, (u64, mpsc::Sender<Job>)>,
    started: AtomicU64,
    /// Groups run, and the requests in them (for `/metrics`).
    groups: AtomicU64,
    grouped: AtomicU64,
}

impl Writers {
    /// Queues `job` for `db`'s writer, starting one if none runs; an error (for a 503) if its queue is
    /// full. `queue_max` bounds each writer's queue (the node's bound on queued writes is already held by
    /// the job's place, so it is never the tighter one).
    pub(super) fn submit(
        &self,
        node: &Arc<NodeShared>,
        db: &str,
        job: Job,
        queue_max: usize,
    ) -> Result<(), String> {
        use dashmap::mapref::entry::Entry;
        use mpsc::error::TrySendError;
        let full = || format!("write queue of database {db} full ({queue_max} requests); retry");
        // The common case under a shard's read lock, without making a key.
        let job = match self.queues.get(db) {
            Some(running) => match running.1.try_send(job) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(_)) => return Err(full()),
                Err(TrySendError::Closed(job)) => job,
            },
            None => job,
        };
        // Again under the write lock, which orders this with a writer that ends.
        let entry = self.queues.entry(db.to_owned());
        let job = match &entry {
            Entry::Occupied(occupied) => match occupied.get().1.try_send(job) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(_)) => return Err(full()),
                // The writer ended without taking it (it stopped, or its task was dropped): start another.
                Err(TrySendError::Closed(job)) => job,
            },
            Entry::Vacant(_) => job,
        };
        let (queue, jobs) = mpsc::channel(queue_max.max(1));
        let id = self.started.fetch_add(1, Ordering::Relaxed);
        if queue.try_send(job).is_err() {
            return Err("write queue closed; retry".into());
        }
        entry.insert((id, queue));
        tokio::spawn(run_writer(Arc::downgrade(node), db.to_owned(), id, jobs));
        Ok(())
    }

    /// Stops taking writes: every writer ends once its queue is empty (a job queued now is answered by
    /// nobody; its handler reports the writer gone).
    pub(super) fn stop(&self) {
        self.queues.clear();
    }

    /// Writers running now.
    pub(super) fn running(&self) -> usize {
        self.queues.len()
    }

    /// Groups run so far, and the requests in them.
    pub(super) fn grouped(&self) -> (u64, u64) {
        (self.groups.load(Ordering::Relaxed), self.grouped.load(Ordering::Relaxed))
    }
}

/// A database's writer: takes what is queued, runs it as a group (a load alone), again and again, until it
/// has been idle for `NodeLimits::writer_idle` or the node is gone.
async fn run_writer(node: Weak<NodeShared>, db: String, id: u64, mut jobs: mpsc::Receiver<Job>) {
    let Some(idle) = node.upgrade().map(|node| node.limits.writer_idle) else { return };
    // A load taken while a group was being gathered: it runs next, after the group.
    let mut held: Option<Job> = None;
    loop {
        let first = match held.take() {
            Some(job) => job,
            None => match tokio::time::timeout(idle, jobs.recv()).await {
                Ok(Some(job)) => job,
                Ok(None) => return,
                Err(_) => {
                    let Some(node) = node.upgrade() else { return };
                    // Under the entry's lock, which submitters hold while they send: either a job arrived
                    // before, or our entry goes and the next submitter starts a new writer.
                    let mut arrived = None;
                    node.writers.queues.remove_if(&db, |_, (entry, _)| match jobs.try_recv() {
                        Ok(job) => {
                            arrived = Some(job);
                            false
                        }
                        Err(_) => *entry == id,
                    });
                    // No entry (or another writer's): nobody can send to this queue any more, but a
                    // submitter may have before the entry changed.
                    match arrived.map(Ok).unwrap_or_else(|| jobs.try_recv()) {
                        Ok(job) => job,
                        Err(_) => return,
                    }
                }
            },
        };
        // A job whose client has gone and that has not started is not run at all.
        if first.is_closed() {
            continue;
        }
        let first = match first {
            Job::Restore(job) => {
                let Some(node) = node.upgrade() else { return };
                run_restore(&node, &db, job).await;
                continue;
            }
            Job::Write(job) => job,
        };
        let mut group = vec![first];
        let mut bytes = group[0].place.bytes();
        while group.len() < GROUP_REQUESTS_MAX && bytes < GROUP_BYTES_MAX {
            match jobs.try_recv() {
                Ok(Job::Write(job)) => {
                    bytes += job.place.bytes();
                    group.push(job);
                }
                Ok(restore) => {
                    held = Some(restore);
                    break;
                }
                Err(_) => break,
            }
        }
        group.retain(|job| !job.answer.is_closed());
        if group.is_empty() {
            continue;
        }
        let Some(node) = node.upgrade() else { return };
        run_group(&node, &db, group).await;
    }
}

/// Runs a load: the database replaced in one commit, answered once that commit is applied here.
async fn run_restore(node: &Arc<NodeShared>, db: &str, job: RestoreJob) {
    node.leadership_applied().await;
    let engine = Arc::clone(&node.engine);
    let name = db.to_owned();
    let RestoreJob { source, answer } = job;
    let done = node
        .blocking
        .run(move || {
            let restored =
                engine.open(&name, OpenMode::CreateIfMissing).and_then(|mut conn| conn.restore_from(&source));
            let _ = answer.send(restored);
        })
        .await;
    if let Err(e) = done {
        tracing::warn!(db, error = %e, "a load failed");
    }
}

/// Runs `jobs` as one group on a fresh connection, answering each as soon as its outcome is final.
async fn run_group(node: &Arc<NodeShared>, db: &str, jobs: Vec<WriteJob>) {
    node.leadership_applied().await;
    node.writers.groups.fetch_add(1, Ordering::Relaxed);
    node.writers.grouped.fetch_add(jobs.len() as u64, Ordering::Relaxed);
    let shared = Arc::clone(node);
    let name = db.to_owned();
    // If the work fails (a panic), the jobs go with it: the handlers of those not answered yet see their
    // answers dropped.
    let done = node
        .blocking
        .run(move || {
            // The job's place in the queue bound is given back with its answer.
            let (jobs, mut answers): (Vec<_>, Vec<_>) = jobs
                .into_iter()
                .map(|job| {
                    (
                        (job.statements, job.transaction, job.limits, job.interrupt),
                        Some((job.answer, job.place)),
                    )
                })
                .unzip();
            // A request is delivered once its outcome is final: after the commit it went out in, whose
            // index is then the database's newest one made here (this writer makes all of them).
            let mut deliver = |i: usize, outcome: RequestOutcome, index: u64| {
                shared.count_stopped(outcome.as_ref().err());
                if let Some((answer, _place)) = answers.get_mut(i).and_then(Option::take) {
                    let _ = answer.send((outcome, index));
                }
            };
            match shared.engine.open(&name, OpenMode::CreateIfMissing) {
                Ok(mut conn) => {
                    let requests: Vec<GroupRequest> = jobs
                        .iter()
                        .map(|(statements, transaction, limits, interrupt)| GroupRequest {
                            statements,
                            transaction: *transaction,
                            limits: *limits,
                            interrupt: Some(interrupt.clone()),
                        })
                        .collect();
                    let commits = conn.commit_index();
                    let before = commits.as_ref().map_or(0, |c| c.last());
                    conn.request_group_with(&requests, &mut |i, outcome| {
                        // 0 when nothing was committed since the group started (a request that wrote nothing).
                        let index = commits.as_ref().map_or(0, |c| c.last());
                        deliver(i, outcome, if index > before { index } else { 0 })
                    });
                }
                Err(e) => (0..jobs.len()).for_each(|i| deliver(i, Err(e.duplicate()), 0)),
            }
        })
        .await;
    if let Err(e) = done {
        tracing::warn!(db, error = %e, "a write group failed");
    }
}
