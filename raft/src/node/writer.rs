//! One writer per database. Write requests queue for their database's writer; whenever it is free it takes
//! whatever is queued (up to [`GROUP_REQUESTS_MAX`] requests and [`GROUP_BYTES_MAX`] bytes, no timer) and
//! runs it as one SQL transaction (`Connection::request_group`), so that one Raft entry commits them all.
//! Every request is answered once that entry is applied on this node. A writer that has had nothing to do
//! for `NodeLimits::writer_idle` ends, and the next write to its database starts a new one. A load
//! (`/db/load`) goes through the same queue, so that it is ordered with the writes around it, and runs
//! alone. A writer keeps its connection from one group to the next (its prepared statements and SQLite's
//! page cache with it), and drops it for a load or when it ends.
//!
//! Pipelining (`NodeLimits::pipeline_depth` above 1): the writer's connection is pipelined, so a group's
//! commit returns once it is proposed and the next group runs on top of it at once. The group's answers go
//! to the writer's answerer, which waits, in order, until each of the group's commits is applied here and
//! only then answers; if one was refused or its fate is unknown, every request that ran on top of it (in its
//! group and after) gets that error instead of its answer (apply refuses whatever was built on it, so
//! nothing of them is written). At most `pipeline_depth` groups are unanswered, and at most
//! [`PIPELINE_BYTES_MAX`] bytes of pages proposed and not applied.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use bop_sql::{
    Connection, GroupRequest, InterruptHandle, Limits, OpenMode, Pipeline, RequestOutcome, SqlEngine,
    SqlError, Statement,
};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::bounds::Queued;
use super::NodeShared;

/// Most requests one group (one transaction, one Raft entry) takes.
pub(super) const GROUP_REQUESTS_MAX: usize = 256;
/// Most request-body bytes one group takes (it may pass them by its last request).
pub(super) const GROUP_BYTES_MAX: usize = 16 << 20;

/// Most bytes of pages one database's proposed, unapplied commits may hold: past it the writer waits for
/// their answers before it runs the next group.
pub(super) const PIPELINE_BYTES_MAX: usize = 64 << 20;

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
    /// When it was queued.
    pub(super) queued: Instant,
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
    /// Pipelined groups handed to their answerers and not answered yet.
    unanswered: AtomicU64,
    /// Pipelined commits refused or of unknown fate.
    pipeline_failures: AtomicU64,
    /// Connections writers opened.
    opened: AtomicU64,
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

    /// Pipelined groups whose answers wait for their commits.
    pub(super) fn unanswered(&self) -> u64 {
        self.unanswered.load(Ordering::Relaxed)
    }

    /// Pipelined commits refused or of unknown fate, so far.
    pub(super) fn pipeline_failures(&self) -> u64 {
        self.pipeline_failures.load(Ordering::Relaxed)
    }

    /// Connections writers opened so far.
    pub(super) fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Groups run so far, and the requests in them.
    pub(super) fn grouped(&self) -> (u64, u64) {
        (self.groups.load(Ordering::Relaxed), self.grouped.load(Ordering::Relaxed))
    }
}

/// A database's writer: takes what is queued, runs it as a group (a load alone), again and again, until it
/// has been idle for `NodeLimits::writer_idle` or the node is gone.
async fn run_writer(node: Weak<NodeShared>, db: String, id: u64, mut jobs: mpsc::Receiver<Job>) {
    let Some((idle, depth, sink)) = node
        .upgrade()
        .map(|node| (node.limits.writer_idle, node.limits.pipeline_depth, Arc::clone(&node.sink)))
    else {
        return;
    };
    let mut pipelining = (depth > 1).then(|| Pipelining::start(Weak::clone(&node), sink, depth));
    // The connection groups run on, kept from one group to the next (see `run_jobs`).
    let mut conn: Option<Connection> = None;
    // A load taken while a group was being gathered: it runs next, after the group.
    let mut held: Option<Job> = None;
    loop {
        let first = match held.take() {
            Some(job) => job,
            None => match tokio::time::timeout(idle, jobs.recv()).await {
                Ok(Some(job)) => job,
                Ok(None) => return,
                Err(_) => {
                    // Nothing unanswered may outlive this writer: a successor's requests would run on top
                    // of commits whose fate only this writer's answerer learns.
                    if let Some(pipelining) = &mut pipelining {
                        pipelining.drain().await;
                    }
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
                if let Some(pipelining) = &mut pipelining {
                    pipelining.drain().await;
                }
                let Some(node) = node.upgrade() else { return };
                conn = None;
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
        let permit = match &mut pipelining {
            Some(pipelining) => Some(pipelining.room().await),
            None => None,
        };
        let Some(node) = node.upgrade() else { return };
        conn = match (permit, &mut pipelining) {
            (Some(permit), Some(pipelining)) => {
                run_pipelined_group(&node, &db, group, conn.take(), permit, pipelining).await
            }
            _ => run_group(&node, &db, group, conn.take()).await,
        };
    }
}

/// A writer's pipelining: its bound on unanswered groups, and its answerer.
struct Pipelining {
    depth: usize,
    permits: Arc<Semaphore>,
    answerer: mpsc::UnboundedSender<InFlight>,
    /// The database's pipeline, once a connection handed it out.
    pipeline: Option<Pipeline>,
}

/// A group whose answers wait for its commits (and those it ran on top of).
struct InFlight {
    /// Its commits' log indexes, in order.
    proposed: Vec<u64>,
    answers: Vec<Held>,
    pipeline: Option<Pipeline>,
    /// Its place among the writer's unanswered groups.
    _permit: OwnedSemaphorePermit,
    /// When its SQL was done.
    ran: Instant,
}

/// A request's answer held until the commit it depends on is applied.
struct Held {
    answer: oneshot::Sender<WriteAnswer>,
    place: Queued,
    outcome: RequestOutcome,
    /// Its commit's log index (rqlite's `raft_index`), 0 for none.
    raft_index: u64,
    /// The newest commit proposed when its outcome was final: its own, or the one it ran on top of.
    depends_on: u64,
}

impl Pipelining {
    fn start(node: Weak<NodeShared>, sink: Arc<crate::sql_sink::RaftSink>, depth: usize) -> Self {
        let (answerer, groups) = mpsc::unbounded_channel();
        tokio::spawn(answer_in_order(node, sink, groups));
        Pipelining { depth, permits: Arc::new(Semaphore::new(depth)), answerer, pipeline: None }
    }

    /// Room for one more group: waits while `depth` groups are unanswered, or until every one is when the
    /// proposed commits hold too many bytes.
    async fn room(&mut self) -> OwnedSemaphorePermit {
        if self.pipeline.as_ref().is_some_and(|p| p.bytes() > PIPELINE_BYTES_MAX) {
            self.drain().await;
        }
        // The semaphore is never closed.
        Arc::clone(&self.permits).acquire_owned().await.expect("writer's pipeline semaphore is never closed")
    }

    /// Waits until every group handed to the answerer is answered.
    async fn drain(&mut self) {
        let all = u32::try_from(self.depth).unwrap_or(u32::MAX);
        drop(self.permits.acquire_many(all).await);
    }
}

/// Answers the writer's groups in the order they ran, each once the commits it depends on are applied;
/// tells the pipeline what became of each commit.
async fn answer_in_order(
    node: Weak<NodeShared>,
    sink: Arc<crate::sql_sink::RaftSink>,
    mut groups: mpsc::UnboundedReceiver<InFlight>,
) {
    // The outcomes of the newest group's commits that proposed any (a later group ran on top of them).
    let mut verdicts: HashMap<u64, Result<(), String>> = HashMap::new();
    while let Some(group) = groups.recv().await {
        let InFlight { proposed, mut answers, pipeline, _permit, ran } = group;
        let commits = !proposed.is_empty();
        if bop_storage::bugs::answer_on_propose() {
            for held in answers.drain(..) {
                let _ = held.answer.send((held.outcome, held.raft_index));
            }
        }
        let mut outcomes = HashMap::new();
        for index in proposed {
            let verdict = sink.outcome(index).await.map_err(|e| e.to_string());
            match (&verdict, &pipeline) {
                (Ok(()), Some(pipeline)) => pipeline.applied(index),
                (Ok(()), None) => {}
                (Err(reason), pipeline) => {
                    tracing::debug!(index, %reason, "a pipelined commit failed");
                    if let Some(pipeline) = pipeline {
                        pipeline.failed();
                    }
                    if let Some(node) = node.upgrade() {
                        node.writers.pipeline_failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            outcomes.insert(index, verdict);
        }
        let node = node.upgrade();
        for held in answers {
            let verdict = outcomes.get(&held.depends_on).or_else(|| verdicts.get(&held.depends_on));
            let outcome = match verdict {
                Some(Err(reason)) => Err(SqlError::commit_failed(reason)),
                _ => held.outcome,
            };
            if let Some(node) = &node {
                node.count_stopped(outcome.as_ref().err());
            }
            let _ = held.answer.send((outcome, held.raft_index));
            drop(held.place);
        }
        if !outcomes.is_empty() {
            verdicts = outcomes;
        }
        if let Some(node) = &node {
            if commits {
                node.latencies.group_commit(ran.elapsed());
            }
            node.writers.unanswered.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Runs `jobs` as one group on a pipelined connection (`conn`, or a new one) and hands their answers to
/// the answerer; gives back the connection to keep.
async fn run_pipelined_group(
    node: &Arc<NodeShared>,
    db: &str,
    jobs: Vec<WriteJob>,
    conn: Option<Connection>,
    permit: OwnedSemaphorePermit,
    pipelining: &mut Pipelining,
) -> Option<Connection> {
    if !bop_storage::bugs::accept_wrong_base() {
        node.leadership_applied().await;
    }
    let started = node.group_starts(&jobs, conn.is_none());
    let engine = Arc::clone(&node.engine);
    let name = db.to_owned();
    let (jobs, places): (Vec<_>, Vec<_>) = jobs.into_iter().map(WriteJob::split).unzip();
    let ran = node
        .blocking
        .run(move || {
            let mut outcomes: Vec<Option<(RequestOutcome, u64, u64)>> =
                (0..jobs.len()).map(|_| None).collect();
            let (conn, pipeline) =
                run_jobs(&engine, &name, conn, true, &jobs, &mut |i, outcome, index, last| {
                    outcomes[i] = Some((outcome, index, last));
                });
            let outcomes: Vec<_> = outcomes
                .into_iter()
                .map(|o| {
                    o.unwrap_or_else(|| {
                        (Err(SqlError::Invalid { reason: "request was not run".into() }), 0, 0)
                    })
                })
                .collect();
            (outcomes, conn, pipeline)
        })
        .await;
    node.latencies.group_run(started.elapsed());
    let (outcomes, conn, pipeline) = match ran {
        Ok(ran) => ran,
        Err(e) => {
            // The work failed (a panic): the jobs' answers are dropped, and what it proposed is unknown.
            tracing::warn!(db, error = %e, "a write group failed");
            if let Some(pipeline) = &pipelining.pipeline {
                pipeline.failed();
            }
            return None;
        }
    };
    if pipeline.is_some() {
        pipelining.pipeline = pipeline;
    }
    let mut proposed: Vec<u64> =
        outcomes.iter().map(|(_, raft_index, _)| *raft_index).filter(|i| *i > 0).collect();
    proposed.sort_unstable();
    proposed.dedup();
    let answers = outcomes
        .into_iter()
        .zip(places)
        .map(|((outcome, raft_index, depends_on), (answer, place))| Held {
            answer,
            place,
            outcome,
            raft_index,
            depends_on,
        })
        .collect();
    let pipeline = pipelining.pipeline.clone();
    let group = InFlight { proposed, answers, pipeline, _permit: permit, ran: Instant::now() };
    node.writers.unanswered.fetch_add(1, Ordering::Relaxed);
    if let Err(mpsc::error::SendError(group)) = pipelining.answerer.send(group) {
        node.writers.unanswered.fetch_sub(1, Ordering::Relaxed);
        // The answerer is gone (it cannot be while the writer runs): nobody can vouch for these answers.
        for held in group.answers {
            let _ = held.answer.send((Err(SqlError::commit_failed("writer stopped; outcome unknown")), 0));
        }
        return None;
    }
    conn
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

/// Runs `jobs` as one group on `conn` (or a new connection), answering each as soon as its outcome is
/// final; gives back the connection to keep.
async fn run_group(
    node: &Arc<NodeShared>,
    db: &str,
    jobs: Vec<WriteJob>,
    conn: Option<Connection>,
) -> Option<Connection> {
    node.leadership_applied().await;
    let started = node.group_starts(&jobs, conn.is_none());
    let shared = Arc::clone(node);
    let name = db.to_owned();
    // If the work fails (a panic), the jobs go with it: the handlers of those not answered yet see their
    // answers dropped.
    let done = node
        .blocking
        .run(move || {
            // The job's place in the queue bound is given back with its answer.
            let (jobs, answers): (Vec<_>, Vec<_>) = jobs.into_iter().map(WriteJob::split).unzip();
            let mut answers: Vec<_> = answers.into_iter().map(Some).collect();
            // A request is delivered once its outcome is final: after the commit it went out in, whose
            // index is then the database's newest one made here (this writer makes all of them).
            let engine = Arc::clone(&shared.engine);
            run_jobs(&engine, &name, conn, false, &jobs, &mut |i, outcome, index, _| {
                shared.count_stopped(outcome.as_ref().err());
                if let Some((answer, _place)) = answers.get_mut(i).and_then(Option::take) {
                    let _ = answer.send((outcome, index));
                }
            })
            .0
        })
        .await;
    node.latencies.group_run(started.elapsed());
    done.unwrap_or_else(|e| {
        tracing::warn!(db, error = %e, "a write group failed");
        None
    })
}

/// What a write request runs: its statements, `transaction`, limits and interrupt handle.
type JobRun = (Vec<Statement>, bool, Limits, InterruptHandle);

impl WriteJob {
    /// What runs, and where its answer goes.
    fn split(self) -> (JobRun, (oneshot::Sender<WriteAnswer>, Queued)) {
        ((self.statements, self.transaction, self.limits, self.interrupt), (self.answer, self.place))
    }
}

/// Runs `jobs` as one group (`Connection::request_group_with`) on `conn`, or on a new connection to `name`
/// (pipelined if `pipelined`), handing `deliver` each request's outcome as soon as it is final, with the
/// log index of the commit it went out in (0 if none was made since the group started) and the newest
/// commit made by then. Gives back the connection for the next group (none when it is not fit to keep:
/// a transaction left open, or the engine shutting down) and, when it opened a pipelined one, the
/// database's pipeline.
///
/// A connection kept between groups keeps its prepared statements and SQLite's page cache: a session is
/// made fresh between requests whatever group they are in (the group does so), and the virtual WAL
/// empties SQLite's cache whenever the database is not at the version the connection last saw —
/// including a proposed commit of its own that was lost and whose index another commit took.
fn run_jobs(
    engine: &SqlEngine,
    name: &str,
    conn: Option<Connection>,
    pipelined: bool,
    jobs: &[JobRun],
    deliver: &mut dyn FnMut(usize, RequestOutcome, u64, u64),
) -> (Option<Connection>, Option<Pipeline>) {
    let opened = match conn {
        Some(conn) => Ok((conn, None)),
        None => engine.open(name, OpenMode::CreateIfMissing).and_then(|mut conn| {
            let pipeline = if pipelined { Some(conn.set_pipelined(true)?) } else { None };
            Ok((conn, pipeline))
        }),
    };
    let (mut conn, pipeline) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            (0..jobs.len()).for_each(|i| deliver(i, Err(e.duplicate()), 0, 0));
            return (None, None);
        }
    };
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
        let last = commits.as_ref().map_or(0, |c| c.last());
        deliver(i, outcome, if last > before { last } else { 0 }, last)
    });
    let keep = conn.is_autocommit() && !engine.is_shutting_down();
    (keep.then_some(conn), pipeline)
}

impl NodeShared {
    /// Counts a group of `jobs` about to run (on a new connection if `opens`) and records how long each
    /// waited in the queue; the time it starts.
    fn group_starts(&self, jobs: &[WriteJob], opens: bool) -> Instant {
        let now = Instant::now();
        self.writers.groups.fetch_add(1, Ordering::Relaxed);
        self.writers.grouped.fetch_add(jobs.len() as u64, Ordering::Relaxed);
        if opens {
            self.writers.opened.fetch_add(1, Ordering::Relaxed);
        }
        for job in jobs {
            self.latencies.write_wait(now.saturating_duration_since(job.queued));
        }
        now
    }
}
