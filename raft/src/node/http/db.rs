//! The SQL calls: `/db/execute`, `/db/query`, `/db/request`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::Extension;
use hyper::{Method, StatusCode};
use serde_json::{json, Value as Json};

use super::forward::{not_leader, to_leader};
use super::*;
use crate::node::NodeShared;
use bop_sql::{InterruptHandle, Limits, Rows, SqlError};

use crate::node::bounds::{may_create_database, request_limits, Cancel, InterruptOnDrop};
use crate::node::rqlite::{error_result, exec_result, parse_statements, query_result, Shape};
use crate::node::writer::{Job, WriteJob};

fn sql_failure(node: &NodeShared, e: &SqlError, pretty: bool) -> HttpResponse {
    let message = e.to_string();
    if message.contains("not the leader") {
        return not_leader(node, pretty);
    }
    respond(StatusCode::OK, &error_result(&message), pretty)
}

async fn execute_statements(
    node: &Arc<NodeShared>,
    db: &str,
    bytes: &[u8],
    params: &HashMap<String, String>,
    pretty: bool,
) -> HttpResponse {
    let statements = match parse_statements(bytes) {
        Ok(statements) => statements,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    write_batch(node, db, statements, bytes.len(), params, false, pretty).await
}

/// Runs a batch with writes on this node (the leader), through its database's writer: queued there, it runs
/// with the other requests queued at the time as one transaction, committed as one Raft entry, and is
/// answered once that entry is applied here. With `transaction` it is all or nothing (the first error is the
/// answer); without, as rqlite does, each statement stands alone and a failed one is reported in its place
/// while the others commit. Either way its answer is what it would get on its own. `rows` answers rows for
/// statements that return them (`/db/request`) instead of only `last_insert_id`/`rows_affected`
/// (`/db/execute`).
async fn write_batch(
    node: &Arc<NodeShared>,
    db: &str,
    statements: Vec<bop_sql::Statement>,
    request_bytes: usize,
    params: &HashMap<String, String>,
    rows: bool,
    pretty: bool,
) -> HttpResponse {
    let started = std::time::Instant::now();
    if let Some(refused) = disk_refusal(node) {
        return refused;
    }
    let node_limits = node.limits;
    let place = match node.writer_queue.enter(
        request_bytes,
        node_limits.writers_queued_max,
        node_limits.writer_queue_bytes_max,
    ) {
        Ok(place) => place,
        Err(e) => return busy(e),
    };
    if let Err(e) = may_create_database(&node.manager, db, node_limits.databases_max) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let transaction = params.contains_key("transaction");
    let shape = Shape::of(params);
    let limits = match request_limits(&node.engine, params) {
        Ok(limits) => limits,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let interrupt = InterruptHandle::new();
    let (answer, answered) = tokio::sync::oneshot::channel();
    let job = WriteJob {
        statements,
        transaction,
        limits,
        interrupt: interrupt.clone(),
        place,
        answer,
        queued: std::time::Instant::now(),
    };
    if let Err(e) = node.writers.submit(node, db, Job::Write(job), node_limits.writers_queued_max) {
        return busy(e);
    }
    // rqlite's `queue`: answered once queued, with a sequence number, and written with the next group;
    // with `wait` too, answered once it is applied. The outcome of a queued write is not reported.
    if params.contains_key("queue") {
        let sequence_number = next_sequence_number();
        let queued = json!({ "results": [], "sequence_number": sequence_number });
        if !params.contains_key("wait") {
            // The write no longer has a client: it is neither dropped nor interrupted when the call ends.
            let database = db.to_owned();
            tokio::spawn(async move {
                match answered.await {
                    Ok((Ok(_), _)) => {}
                    Ok((Err(e), _)) => {
                        tracing::warn!(db = %database, sequence_number, "a queued write failed: {e}")
                    }
                    Err(_) => tracing::warn!(
                        db = %database,
                        sequence_number,
                        "a queued write's outcome is unknown (the writer stopped)"
                    ),
                }
            });
            return respond(StatusCode::OK, &queued, pretty);
        }
        let _interrupt_on_drop = InterruptOnDrop(interrupt);
        return match answered.await {
            Ok((Ok(_), _)) => respond(StatusCode::OK, &queued, pretty),
            Ok((Err(e), _)) => sql_failure(node, &e, pretty),
            Err(_) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the database's writer stopped before the queued write was applied: its outcome is unknown",
            ),
        };
    }
    let _interrupt_on_drop = InterruptOnDrop(interrupt);
    let answered = answered.await;
    node.latencies.write(started.elapsed());
    match answered {
        Ok((Ok(outcomes), index)) => {
            let results: Vec<Json> = outcomes
                .iter()
                .map(|outcome| match outcome {
                    Ok((Some(found), _)) if rows => query_result(found, shape),
                    Ok((_, done)) => exec_result(done),
                    Err(e) => json!({ "error": e.to_string() }),
                })
                .collect();
            let mut answer = json!({ "results": results });
            // rqlite's `raft_index`: the log index of the entry the write went out in (when it wrote).
            if params.contains_key("raft_index") && index > 0 {
                answer["raft_index"] = json!(index);
            }
            respond(StatusCode::OK, &answer, pretty)
        }
        Ok((Err(e), _)) => sql_failure(node, &e, pretty),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the database's writer stopped before answering (node shutting down, or a failure): the \
             write's outcome is unknown",
        ),
    }
}

/// A full or stalled disk under the log: writes are refused before anything is proposed (reads go on).
pub(super) fn disk_refusal(node: &NodeShared) -> Option<HttpResponse> {
    let trouble = node.disk_trouble()?;
    Some(if trouble.full {
        error(StatusCode::INSUFFICIENT_STORAGE, trouble.message)
    } else {
        busy(trouble.message)
    })
}

/// The next queued write's `sequence_number` (rqlite's): increasing on this node, also across restarts
/// (it starts from the clock's nanoseconds), so a client can order the numbers it was given.
fn next_sequence_number() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: std::sync::OnceLock<AtomicU64> = std::sync::OnceLock::new();
    let next = NEXT.get_or_init(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        AtomicU64::new(u64::try_from(now.as_nanos()).unwrap_or(u64::MAX / 2))
    });
    next.fetch_add(1, Ordering::Relaxed)
}

async fn query(
    node: &Arc<NodeShared>,
    db: &str,
    statements: Vec<bop_sql::Statement>,
    params: &HashMap<String, String>,
    authorization: Option<&hyper::header::HeaderValue>,
    pretty: bool,
) -> HttpResponse {
    if let Err(refused) = super::read::consistency(node, params, authorization, pretty).await {
        return refused;
    }
    let shape = Shape::of(params);
    let limits = match request_limits(&node.engine, params) {
        Ok(limits) => limits,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    // A point read on an idle pooled connection is answered right here, on the async task, if it finishes
    // within `INLINE_READ_TIME` (handing it to a blocking thread and back costs more than the read). One
    // that needs longer is run again, from the start, on a blocking thread with the request's own limits:
    // a read has no effect, so its first try is simply forgotten. In the lockstep simulation the read is
    // always answered here, without the time budget, so that a run does not depend on the host's speed.
    let lockstep = node.blocking == crate::blocking::Blocking::Lockstep;
    if let Some(mut conn) = node.engine.idle_reader(db) {
        let budget =
            (!lockstep && limits.time_max.is_none_or(|t| t > INLINE_READ_TIME)).then_some(INLINE_READ_TIME);
        let first = Limits { time_max: budget.or(limits.time_max), ..limits };
        match answer_query(&mut conn, &statements, first, shape) {
            Err(SqlError::Timeout { .. }) if budget.is_some() => {
                node.reads_moved.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            outcome => {
                node.reads_inline.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                node.count_stopped(outcome.as_ref().err());
                return query_answer(Ok(outcome), pretty);
            }
        }
    }
    let cancel = Cancel::default();
    let _cancel_on_drop = cancel.on_drop();
    let shared = Arc::clone(node);
    let db = db.to_owned();
    let outcome = node
        .blocking
        .run(move || {
            // A pooled read connection: `query_only`, its prepared statements kept from earlier reads.
            let mut conn = shared.engine.reader(&db)?;
            cancel.attach(&conn);
            let outcome = answer_query(&mut conn, &statements, limits, shape);
            shared.count_stopped(outcome.as_ref().err());
            outcome
        })
        .await;
    query_answer(outcome, pretty)
}

/// How long a read may run on the async task before it is moved to a blocking thread (see `query`).
const INLINE_READ_TIME: std::time::Duration = std::time::Duration::from_millis(1);

/// Runs a query's statements on `conn`, a read-only connection, within `limits`: the `results` body, or
/// the error that stopped the whole call.
fn answer_query(
    conn: &mut bop_sql::Connection,
    statements: &[bop_sql::Statement],
    mut limits: Limits,
    shape: Shape,
) -> Result<Json, SqlError> {
    // A query only reads (as in rqlite): a batch with a write runs none of it. Statements that do not
    // prepare are answered with their own error below. The reader's `query_only` stops anything that
    // slipped past the check (e.g. a write inside an explicit transaction).
    for statement in statements {
        if let Ok(false) = conn.is_read_only(&statement.sql) {
            return Ok(error_result(&format!(
                "attempt to change the database through a query: /db/query runs read-only statements; \
                 send {:?} to /db/execute or /db/request",
                statement.sql
            )));
        }
    }
    // One answer budget and one deadline for the whole request, over all its statements.
    conn.set_limits(limits);
    let mut results = Vec::new();
    for statement in statements {
        let rows: Result<Rows, SqlError> = conn.query(&statement.sql, &statement.params);
        match &rows {
            Err(e) if e.stops_call() => return Err(rows.err().unwrap_or(SqlError::Interrupted)),
            Ok(found) => {
                let (rows_used, bytes_used) = found.answer_size();
                limits.rows_max = limits.rows_max.map(|m| m.saturating_sub(rows_used));
                limits.bytes_max = limits.bytes_max.map(|m| m.saturating_sub(bytes_used));
                conn.set_limits(limits);
            }
            Err(_) => {}
        }
        results.push(match rows {
            Ok(rows) => query_result(&rows, shape),
            Err(e) => json!({ "error": e.to_string() }),
        });
    }
    Ok(json!({ "results": results }))
}

fn query_answer(
    outcome: Result<Result<Json, SqlError>, crate::blocking::BlockingError>,
    pretty: bool,
) -> HttpResponse {
    match outcome {
        Ok(Ok(body)) => respond(StatusCode::OK, &body, pretty),
        Ok(Err(e)) => respond(StatusCode::OK, &error_result(&e.to_string()), pretty),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("query task: {e}")),
    }
}

/// rqlite's unified endpoint: a batch of only reads is a query (at the requested level, forwarded like one);
/// a batch with any write runs on the leader in one transaction, answering rows for the statements that
/// return them and `last_insert_id`/`rows_affected` for the others.
async fn run_request(
    node: &Arc<NodeShared>,
    call: &Call,
    path_and_query: String,
    body: axum::body::Body,
) -> HttpResponse {
    let (params, db, pretty) = (&call.params, call.db.as_str(), call.pretty);
    let bytes = match read_body(body).await {
        Ok(bytes) => bytes,
        Err(response) => return response,
    };
    let statements = match parse_statements(&bytes) {
        Ok(statements) => statements,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let leader = node.is_leader();
    if !leader && !super::read::reads_locally(params) {
        return to_leader(node, call, &Method::POST, &path_and_query, &bytes).await;
    }
    // Classified on a local connection; a database this node does not have yet counts as a write.
    let engine = Arc::clone(&node.engine);
    let name = db.to_owned();
    let classified = node
        .blocking
        .run(move || {
            let read_only = (|| {
                let mut conn = engine.reader(&name).ok()?;
                let mut all = true;
                for statement in &statements {
                    all &= conn.is_read_only(&statement.sql).ok()?;
                }
                Some(all)
            })();
            (read_only.unwrap_or(false), statements)
        })
        .await;
    let (read_only, statements) = match classified {
        Ok(classified) => classified,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("classify task: {e}")),
    };
    if !read_only && !leader {
        return to_leader(node, call, &Method::POST, &path_and_query, &bytes).await;
    }
    // Only reads need `query`; a batch with a write needs `execute`.
    let perm = if read_only { Perm::Query } else { Perm::Execute };
    if let Some(refused) = call.refusal(node, &[perm], true) {
        return refused;
    }
    if read_only {
        return query(node, db, statements, params, call.authorization.as_ref(), pretty).await;
    }
    write_batch(node, db, statements, bytes.len(), params, true, pretty).await
}

type Node = State<Arc<NodeShared>>;
type CallOf = Extension<Arc<Call>>;

/// `POST /db/execute`.
pub(super) async fn execute(
    State(node): Node,
    Extension(call): CallOf,
    body: axum::body::Body,
) -> HttpResponse {
    match read_body(body).await {
        Ok(bytes) => execute_statements(&node, &call.db, &bytes, &call.params, call.pretty).await,
        Err(response) => response,
    }
}

/// `GET /db/query?q=SQL`.
pub(super) async fn query_get(State(node): Node, Extension(call): CallOf) -> HttpResponse {
    match call.params.get("q") {
        Some(q) => {
            let statements = vec![bop_sql::Statement::new(q.as_str())];
            query(&node, &call.db, statements, &call.params, call.authorization.as_ref(), call.pretty).await
        }
        None => error(StatusCode::BAD_REQUEST, "GET /db/query needs q=SQL"),
    }
}

/// `POST /db/query` with a JSON list of statements.
pub(super) async fn query_post(
    State(node): Node,
    Extension(call): CallOf,
    body: axum::body::Body,
) -> HttpResponse {
    let bytes = match read_body(body).await {
        Ok(bytes) => bytes,
        Err(response) => return response,
    };
    match parse_statements(&bytes) {
        Ok(statements) => {
            query(&node, &call.db, statements, &call.params, call.authorization.as_ref(), call.pretty).await
        }
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// `POST /db/request`: reads and writes mixed.
pub(super) async fn request(
    State(node): Node,
    Extension(call): CallOf,
    uri: hyper::Uri,
    body: axum::body::Body,
) -> HttpResponse {
    let path_and_query = uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
    run_request(&node, &call, path_and_query, body).await
}
