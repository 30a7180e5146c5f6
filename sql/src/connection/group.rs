//! Coalesced requests: many requests in one transaction (one commit), each in a savepoint of its own, every
//! one answered as if it had run alone, one after the other in the given order.
//!
//! docs/design.md ("SQL layer", "Coalesced requests") has the rules and why they give those answers.

use std::time::Instant;

use super::{Connection, Failure, InterruptHandle, Limits, Params, Statement, StatementResult};
use crate::error::SqlError;
use crate::limits::{deadline_of, Stop};
use crate::wal::CommitFailure;

/// One request of a group ([`Connection::request_group`]): its statements, rqlite's semantics for them and
/// its own bounds.
#[derive(Debug, Clone)]
pub struct GroupRequest<'a> {
    /// The statements, run in order.
    pub statements: &'a [Statement],
    /// All or nothing (rqlite's `transaction`): the first error is the request's answer and nothing of it
    /// is written. Otherwise each statement stands alone: one that fails is undone and answered in its
    /// place, the others are written.
    pub transaction: bool,
    /// This request's bounds: `time_max` counts from when it first starts running, `deadline` is absolute;
    /// `rows_max`/`bytes_max` bound its answer over all its statements.
    pub limits: Limits,
    /// Stops this request only (e.g. its client went away); checked as the connection's own handle is.
    pub interrupt: Option<InterruptHandle>,
}

/// What one request of a group got: one result per statement (every one `Ok` for a `transaction` request),
/// or the error that failed the whole request, in which case nothing of it was written (or, for a commit
/// whose outcome the sink could not learn, nothing is known).
pub type RequestOutcome = Result<Vec<StatementResult>, SqlError>;

/// A group being run: its requests and what is known of each.
struct Group<'r, 'a, 'd> {
    requests: &'r [GroupRequest<'a>],
    /// Requests that change the session's state: they run alone, on a session of their own.
    own_session: Vec<bool>,
    /// Requests answered. One answered before the others of its transaction committed (it was stopped by
    /// its own bounds, losing the transaction) is passed over when they run again.
    answered: Vec<bool>,
    deliver: &'d mut dyn FnMut(usize, RequestOutcome),
    /// Most answer bytes one transaction holds before it commits (the connection's own answer bound).
    answer_bytes_max: u64,
}

/// How one pass (one transaction over consecutive requests) ended.
enum Pass {
    /// Requests `start..upto` ran and their answers (by index; requests answered already are not among
    /// them) are committed. `upto` may be `start`: the first request must run on its own session.
    Committed { upto: usize, answers: Vec<(usize, RequestOutcome)> },
    /// Request `at` lost the whole transaction (a conflict resolved by `ROLLBACK`, a pager error, or — with
    /// `own` — a write stopped by the request's own time limit or interrupt handle): nothing was committed.
    Lost { at: usize, error: SqlError, own: bool },
    /// Requests `start..upto` ran but their `COMMIT` failed: nothing was committed.
    CommitFailed { upto: usize, error: SqlError, failure: CommitFailure },
    /// The whole call stops (the engine shuts down or interrupts everything, the connection's handle, a
    /// failure of the group's own statements): nothing of this pass was committed.
    Stopped(SqlError),
}

/// How one request inside a pass ended.
enum Run {
    /// It ran; its effects (none, when it failed) stay in the transaction, released from its savepoint.
    Done(RequestOutcome),
    /// It would change the session's state: undone, to be run alone on a session of its own.
    OwnSession,
    /// It ran out of room, which the requests before it in the transaction may have taken: undone, to be
    /// run again first in a transaction of its own.
    Cut,
    /// It lost the whole transaction; `true` if its own bounds stopped it.
    Lost(SqlError, bool),
    /// The whole call stops.
    Stopped(SqlError),
}

/// bop's own table in each session's temp schema: deleting from it (it is always empty) makes `changes()`
/// 0 between requests, as on a fresh connection.
const RESET_TABLE: &str = "bop_session_reset";

impl Connection {
    /// Runs `requests` as few transactions as it can — normally one, so one commit through the sink — each
    /// request inside a savepoint of its own, and answers every request exactly as running the requests one
    /// at a time, in order, each on a fresh connection with [`Connection::request_batch`] (`transaction`)
    /// or [`Connection::request_each`], would. The answers come back in the requests' order, one per
    /// request; the connection's own limits do not apply (each request carries its own).
    ///
    /// - A request that fails rolls back only its own savepoint and gets its own error; the others commit.
    /// - A statement that loses the whole transaction (`ON CONFLICT ROLLBACK`, `RAISE(ROLLBACK)`, an
    ///   interrupted write, a pager error) takes nothing of the others with it: the requests before it are
    ///   run again in a new transaction and committed, then it runs again first in the next one, where its
    ///   answer is what it would get alone. (A write stopped by its own request's bounds is that request's
    ///   answer at once; the others run again without it.)
    /// - A request that runs out of room (`SQLITE_FULL`: bop's transaction bound) after other requests in
    ///   the transaction is undone; the ones before it commit and it runs again first in the next one.
    /// - If the `COMMIT` fails for reasons of this commit (too large, refused by the sink or the state
    ///   machine, a deferred foreign key), every request of the transaction runs again alone, one
    ///   transaction each, so that each gets its own answer. If the sink takes no commits now, or cannot
    ///   tell what became of the commit, every one of them gets that error (nothing is retried: an entry
    ///   whose outcome is unknown may still be applied).
    /// - A request with a statement that changes the session's state (`BEGIN`, `COMMIT`, `END`,
    ///   `ROLLBACK`, `SAVEPOINT`, `RELEASE`, any `PRAGMA`, `ATTACH`/`DETACH`, the temp schema) runs alone,
    ///   on a fresh session, and the requests after it on another fresh one.
    /// - A request whose time runs out or whose [`GroupRequest::interrupt`] is used fails alone (a stopped
    ///   write loses the transaction, handled as above); the engine's `shutdown`/`interrupt_all` or the
    ///   connection's handle stop the whole call: every request not committed yet gets that error.
    ///
    /// Known difference from separate connections: `total_changes()` counts over the whole session.
    pub fn request_group(&mut self, requests: &[GroupRequest<'_>]) -> Vec<RequestOutcome> {
        let mut outcomes: Vec<Option<RequestOutcome>> = (0..requests.len()).map(|_| None).collect();
        self.request_group_with(requests, &mut |i, outcome| outcomes[i] = Some(outcome));
        outcomes
            .into_iter()
            .map(|outcome| outcome.unwrap_or_else(|| Err(SqlError::invalid("request was not run"))))
            .collect()
    }

    /// [`Connection::request_group`], handing each request's outcome to `deliver` (with the request's
    /// index) as soon as it is final — when its transaction committed, or when it failed alone — instead of
    /// holding every answer until the end. A transaction ends (commits) once the answers of its requests
    /// reach the connection's own answer bound ([`Limits::bytes_max`]), so that what is held at once stays
    /// within it (and one request's own bound).
    pub fn request_group_with(
        &mut self,
        requests: &[GroupRequest<'_>],
        deliver: &mut dyn FnMut(usize, RequestOutcome),
    ) {
        let n = requests.len();
        let mut group = Group {
            requests,
            own_session: vec![false; n],
            answered: vec![false; n],
            deliver,
            answer_bytes_max: self.limits.bytes_max.unwrap_or(u64::MAX),
        };
        let saved_limits = self.limits;
        match self.guard.arm(&Limits::NONE) {
            Ok(()) => {
                self.run_group(&mut group);
                self.guard.clear_request();
                self.guard.disarm();
            }
            Err(e) => group.fail_rest(0, &e),
        }
        self.limits = saved_limits;
    }

    fn run_group(&mut self, group: &mut Group<'_, '_, '_>) {
        let n = group.requests.len();
        // Requests before `next` are answered. A pass runs requests up to `bound` (short of a request that
        // lost a transaction, whose predecessors are run again without it) and one at a time below
        // `alone_until` (the requests of a transaction whose commit failed).
        let (mut next, mut bound, mut alone_until) = (0, n, 0);
        while next < n {
            if group.answered[next] {
                next += 1;
                continue;
            }
            if group.own_session[next] {
                if let Err(e) = self.run_on_own_session(group, next) {
                    group.fail_rest(next, &e);
                    return;
                }
                next += 1;
                continue;
            }
            let end = if next < alone_until { next + 1 } else { bound };
            match self.pass(group, next, end) {
                Pass::Committed { upto, answers } => {
                    for (i, answer) in answers {
                        group.answer(i, answer);
                    }
                    next = upto;
                    bound = n;
                }
                Pass::Lost { at, error, own } if own || at == next => {
                    // Its own bounds stopped it, or it was first in its transaction: what it would get
                    // alone. The others run again without it.
                    group.answer(at, Err(error));
                    bound = n;
                }
                Pass::Lost { at, .. } => bound = at,
                Pass::CommitFailed { upto, error, failure } => {
                    let ran = (next..upto).filter(|&i| !group.answered[i]).count();
                    if ran == 1 || failure != CommitFailure::Specific {
                        for i in next..upto {
                            if !group.answered[i] {
                                group.answer(i, Err(error.duplicate()));
                            }
                        }
                        next = upto;
                    } else {
                        alone_until = upto;
                    }
                    bound = n;
                }
                Pass::Stopped(error) => {
                    group.fail_rest(next, &error);
                    return;
                }
            }
        }
    }

    /// Runs requests `start..end` in one transaction, stopping early where a request must go first in
    /// the next one or on its own session.
    fn pass(&mut self, group: &mut Group<'_, '_, '_>, start: usize, end: usize) -> Pass {
        if self.session_tainted {
            if let Err(e) = self.reopen() {
                return Pass::Stopped(e);
            }
        }
        if !self.reset_table && (self.session_used || end - start > 1) {
            // Made outside the transaction, so that no rollback takes it away.
            if let Err(e) = self.internal(&format!("CREATE TEMP TABLE IF NOT EXISTS {RESET_TABLE}(x)")) {
                return Pass::Stopped(e);
            }
            self.reset_table = true;
        }
        self.guard.clear_request();
        if let Err(e) = self.run("BEGIN IMMEDIATE", &Params::None) {
            self.rollback_if_open();
            return Pass::Stopped(e);
        }
        let mut answers = Vec::new();
        let mut i = start;
        // The answers this transaction holds until it commits, bounded by the connection's answer bound.
        let mut answer_bytes = 0u64;
        while i < end && !group.own_session[i] && answer_bytes < group.answer_bytes_max {
            if group.answered[i] {
                i += 1;
                continue;
            }
            match self.grouped_request(group, i, answers.is_empty()) {
                Run::Done(answer) => {
                    answer_bytes = answer_bytes.saturating_add(self.answer_bytes);
                    answers.push((i, answer));
                    i += 1;
                }
                Run::OwnSession => {
                    group.own_session[i] = true;
                    break;
                }
                Run::Cut => break,
                Run::Lost(error, own) => {
                    self.rollback_if_open();
                    return Pass::Lost { at: i, error, own };
                }
                Run::Stopped(error) => {
                    self.rollback_if_open();
                    return Pass::Stopped(error);
                }
            }
        }
        self.guard.clear_request();
        match self.run("COMMIT", &Params::None) {
            Ok(_) => Pass::Committed { upto: i, answers },
            Err(error) => {
                let failure = self.conn.as_ref().and_then(|conn| conn.commit_failure.lock().take());
                self.rollback_if_open();
                match self.guard.stopped() {
                    Some(stop) if stop.is_call_wide() => Pass::Stopped(stop.error()),
                    _ => Pass::CommitFailed {
                        upto: i,
                        error,
                        failure: failure.unwrap_or(CommitFailure::Specific),
                    },
                }
            }
        }
    }

    /// Sets up request `i`'s bounds (its time limit counts from now: a request run again because of
    /// another gets its whole time again); why it may not run, if it may not.
    fn start_request(&mut self, group: &Group<'_, '_, '_>, i: usize) -> Option<Stop> {
        let limits = group.requests[i].limits;
        let (deadline, limit) = deadline_of(&limits, Instant::now());
        self.limits.rows_max = limits.rows_max;
        self.limits.bytes_max = limits.bytes_max;
        self.answer_rows = 0;
        self.answer_bytes = 0;
        self.guard.set_request(deadline, limit, group.requests[i].interrupt.clone());
        self.guard.check_now()
    }

    /// Runs request `i` inside the open transaction, in a savepoint of its own.
    fn grouped_request(&mut self, group: &mut Group<'_, '_, '_>, i: usize, first: bool) -> Run {
        if let Some(stop) = self.start_request(group, i) {
            return if stop.is_call_wide() {
                Run::Stopped(stop.error())
            } else {
                Run::Done(Err(stop.error()))
            };
        }
        if self.session_used {
            if let Err(e) = self.reset_session() {
                return self.lost_or_stopped(e);
            }
        }
        self.session_used = true;
        let request = &group.requests[i];
        if let Err(e) = self.internal("SAVEPOINT bop_request") {
            return self.lost_or_stopped(e);
        }
        let mut results = Vec::with_capacity(request.statements.len());
        for statement in request.statements {
            if !request.transaction {
                if let Err(e) = self.internal("SAVEPOINT bop_statement") {
                    return self.lost_or_stopped(e);
                }
            }
            let answer_before = (self.answer_rows, self.answer_bytes);
            match self.run_in(&statement.sql, &statement.params, true) {
                Ok((rows, outcome)) => {
                    results.push(Ok(((!rows.columns.is_empty()).then_some(rows), outcome)));
                    if !request.transaction {
                        if let Err(e) = self.internal("RELEASE bop_statement") {
                            return self.lost_or_stopped(e);
                        }
                    }
                }
                Err(Failure::NeedsOwnSession) => {
                    return match self.undo_request() {
                        Ok(()) => Run::OwnSession,
                        Err(e) => self.lost_or_stopped(e),
                    };
                }
                Err(Failure::Sql(e)) => {
                    if let Some(stop) = self.guard.stopped().filter(|stop| stop.is_call_wide()) {
                        return Run::Stopped(stop.error());
                    }
                    if self.is_autocommit() {
                        let own = self.guard.stopped().is_some();
                        return Run::Lost(e, own);
                    }
                    if e.is_full() && !first {
                        return match self.undo_request() {
                            Ok(()) => Run::Cut,
                            Err(e) => self.lost_or_stopped(e),
                        };
                    }
                    if request.transaction || e.stops_call() {
                        return match self.undo_request() {
                            Ok(()) => Run::Done(Err(e)),
                            Err(e) => self.lost_or_stopped(e),
                        };
                    }
                    // Each statement stands alone: only this one is undone, and answered in its place.
                    (self.answer_rows, self.answer_bytes) = answer_before;
                    results.push(Err(e));
                    let undone = self
                        .internal("ROLLBACK TO bop_statement")
                        .and_then(|()| self.internal("RELEASE bop_statement"));
                    if let Err(e) = undone {
                        return self.lost_or_stopped(e);
                    }
                }
            }
        }
        match self.internal("RELEASE bop_request") {
            Ok(()) => Run::Done(Ok(results)),
            Err(e) => self.lost_or_stopped(e),
        }
    }

    /// Runs request `i` alone on a fresh session (the session is not used for anything else afterwards),
    /// exactly as `request_batch`/`request_each` would. An error only if the whole call stops.
    fn run_on_own_session(&mut self, group: &mut Group<'_, '_, '_>, i: usize) -> Result<(), SqlError> {
        if self.session_used || self.session_tainted {
            self.reopen()?;
        }
        if let Some(stop) = self.start_request(group, i) {
            if stop.is_call_wide() {
                return Err(stop.error());
            }
            group.answer(i, Err(stop.error()));
            return Ok(());
        }
        self.session_used = true;
        self.session_tainted = true;
        let request = &group.requests[i];
        let outcome = self.batch(request.statements, !request.transaction);
        if outcome.is_err() {
            if let Some(stop) = self.guard.stopped().filter(|stop| stop.is_call_wide()) {
                return Err(stop.error());
            }
        }
        group.answer(i, outcome);
        Ok(())
    }

    /// Makes the session look fresh to the next request: `last_insert_rowid()` and `changes()` 0.
    fn reset_session(&mut self) -> Result<(), SqlError> {
        // SAFETY: `raw` is open.
        unsafe { libsql_sys::ffi::sqlite3_set_last_insert_rowid(self.raw, 0) };
        self.internal(&format!("DELETE FROM temp.{RESET_TABLE}"))
    }

    /// Undoes the running request (its savepoint), keeping the transaction.
    fn undo_request(&mut self) -> Result<(), SqlError> {
        self.internal("ROLLBACK TO bop_request")?;
        self.internal("RELEASE bop_request")
    }

    /// One of bop's own statements, not subject to the request's bounds.
    fn internal(&mut self, sql: &str) -> Result<(), SqlError> {
        let armed = self.guard.suspend();
        let done = self.run(sql, &Params::None).map(|_| ());
        self.guard.resume(armed);
        done
    }

    /// After bop's own statement failed inside the transaction: the transaction is gone (or given up).
    fn lost_or_stopped(&mut self, e: SqlError) -> Run {
        if let Some(stop) = self.guard.stopped().filter(|stop| stop.is_call_wide()) {
            return Run::Stopped(stop.error());
        }
        self.rollback_if_open();
        Run::Lost(e, false)
    }
}

impl Group<'_, '_, '_> {
    fn answer(&mut self, i: usize, outcome: RequestOutcome) {
        self.answered[i] = true;
        (self.deliver)(i, outcome);
    }

    /// Answers every request from `from` on that has no answer yet with `error`.
    fn fail_rest(&mut self, from: usize, error: &SqlError) {
        for i in from..self.answered.len() {
            if !self.answered[i] {
                self.answer(i, Err(error.duplicate()));
            }
        }
    }
}
