//! The node's HTTP API, compatible with rqlite's for the calls below (documented in docs/design.md).
//!
//! `POST /db/execute`, `GET|POST /db/query`, `POST /db/request` (reads and writes mixed), `GET /db/backup` (`level=none|weak|linearizable|strong`, `associative`,
//! `pretty`, `timings`, `db=NAME` for a named database, `q=SQL` for GET), `GET /status`, `GET /nodes`,
//! `GET /readyz`. Bodies are bounded; malformed input is a 4xx with a JSON error and writes nothing.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use crate::net::Listener;
use bop_sql::{OpenMode, Rows, SqlError};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use openraft::async_runtime::WatchReceiver;
use serde_json::{json, Value as Json};

use super::bounds::{backup_space, may_create_database, request_limits, Cancel};
use super::rqlite::{error_result, exec_result, parse_statements, query_result};
use super::NodeShared;

/// Largest request body accepted.
pub const BODY_BYTES_MAX: usize = 4 << 20;
/// Bytes of a streamed body (a backup, or an answer passed on from the leader) read and sent at a time.
pub const STREAM_CHUNK_BYTES: usize = 1 << 20;
/// Largest head of an answer from the leader when forwarding.
const FORWARD_HEAD_BYTES_MAX: usize = 64 << 10;
/// Longest wait for the leader's head, and for each chunk of its body, when forwarding.
const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Longest wait for a connection to the leader when forwarding (a leader whose machine is down never
/// answers the connection attempt at all).
const FORWARD_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);
/// Longest wait for the head of a forwarded backup (the leader copies the whole database first).
const BACKUP_HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);
/// Marks a request one node forwarded to another (its value is the forwarding node's id).
const FORWARDED_HEADER: &str = "x-bop-forwarded-by";
/// The database used when a request names none.
pub const DEFAULT_DATABASE: &str = "main";

type HttpBody = BoxBody<Bytes, std::io::Error>;
type HttpResponse = Response<HttpBody>;

/// A body held whole in memory.
fn full(bytes: impl Into<Bytes>) -> HttpBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// A body streamed from `stream` in chunks (memory bounded by one chunk).
fn streamed(
    stream: impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static,
) -> HttpBody {
    use futures_util::StreamExt;
    BodyExt::boxed(StreamBody::new(stream.map(|chunk| chunk.map(Frame::data))))
}

fn respond(status: StatusCode, body: &Json, pretty: bool) -> HttpResponse {
    let text =
        if pretty { serde_json::to_vec_pretty(body) } else { serde_json::to_vec(body) }.unwrap_or_default();
    let mut response = Response::new(full(text));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    response
}

fn error(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    respond(status, &json!({ "error": message.into() }), false)
}

/// 503 with `Retry-After: 1`: a bound is full for now.
fn busy(message: impl Into<String>) -> HttpResponse {
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, message);
    response.headers_mut().insert(hyper::header::RETRY_AFTER, hyper::header::HeaderValue::from_static("1"));
    response
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

const KNOWN_PARAMS: &[&str] = &[
    "q",
    "level",
    "associative",
    "pretty",
    "timings",
    "db",
    "transaction",
    "freshness",
    "freshness_strict",
    "redirect",
    "fmt",
    "db_timeout",
];

fn query_params(query: Option<&str>) -> Result<HashMap<String, String>, String> {
    let mut params = HashMap::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key);
        if !KNOWN_PARAMS.contains(&key.as_str()) {
            return Err(format!("unknown parameter {key:?} (known: {})", KNOWN_PARAMS.join(", ")));
        }
        params.insert(key, percent_decode(value));
    }
    Ok(params)
}

/// Serves the HTTP API on `listener` until it fails (or the future is dropped).
///
/// At most `http_connections_max` connections are served at once; one more is answered 503 (with
/// `Retry-After`) and closed. A connection that does not send a whole request head within
/// `http_header_timeout`, including a kept-alive one idle that long, is closed. A failed `accept` pauses
/// and retries; it never ends the server.
pub async fn serve_http(mut listener: Box<dyn Listener>, node: Arc<NodeShared>) -> std::io::Result<()> {
    let limits = node.limits;
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.http_connections_max));
    // Refusals are short (one small write, bounded in time), and bounded in number too.
    let refusals = Arc::new(tokio::sync::Semaphore::new(64));
    let mut connections = tokio::task::JoinSet::new();
    let mut backoff = None;
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, _) = crate::net::accept_retrying(listener.as_mut(), &mut backoff, "http").await;
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            if let Ok(refusal) = Arc::clone(&refusals).try_acquire_owned() {
                connections.spawn(async move {
                    let _refusal = refusal;
                    refuse_connection(stream, limits.http_connections_max).await;
                });
            }
            continue;
        };
        let node = Arc::clone(&node);
        connections.spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| handle(Arc::clone(&node), req));
            let _ = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.http_header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Answers a connection past the limit with 503 and closes it (at most one second spent on it).
async fn refuse_connection(mut stream: crate::net::BoxStream, max: usize) {
    use tokio::io::AsyncWriteExt;
    let body = json!({ "error": format!("too many connections (at most {max}); retry") }).to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

async fn body(req: Request<Incoming>) -> Result<Bytes, HttpResponse> {
    match Limited::new(req.into_body(), BODY_BYTES_MAX).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body: {e} (limit {BODY_BYTES_MAX} bytes)"),
        )),
    }
}

/// Sends the request to the leader's HTTP API and passes its answer on (rqlite forwards writes and weak
/// reads sent to a follower): status and content type from the head, the body streamed through chunk by
/// chunk (a backup can be gigabytes). Fails when the leader or its HTTP address is unknown, cannot be
/// connected to within [`FORWARD_CONNECT_TIMEOUT`], or does not answer with a head in time.
async fn forward(
    node: &NodeShared,
    method: &Method,
    path_and_query: &str,
    body: &[u8],
) -> Result<HttpResponse, ForwardFailure> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (leader, addr) = node.leader().ok_or(ForwardFailure::Other)?;
    let target = crate::tcp::http_addr_of(&addr).ok_or(ForwardFailure::Other)?.to_owned();
    // Nothing was sent if this fails, so the request may go to another leader.
    let mut stream = match tokio::time::timeout(FORWARD_CONNECT_TIMEOUT, node.net.connect(&target)).await {
        Ok(Ok(stream)) => stream,
        _ => return Err(ForwardFailure::Unreachable(leader)),
    };
    let exchange = async {
        let head = format!(
            "{method} {path_and_query} HTTP/1.1\r\nHost: {target}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{FORWARDED_HEADER}: {}\r\nConnection: close\r\n\r\n",
            body.len(),
            node.id
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        // Read until the end of the head (bounded); what follows it is the start of the body.
        let mut raw = Vec::new();
        let mut chunk = vec![0u8; 16 << 10];
        loop {
            if let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok((stream, raw, split));
            }
            if raw.len() > FORWARD_HEAD_BYTES_MAX {
                return Err(std::io::Error::other("the leader's answer has an oversized head"));
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
            raw.extend_from_slice(&chunk[..n]);
        }
    };
    // The leader builds a backup before it answers (its head carries the length), which takes a while for
    // a large database.
    let head_timeout =
        if path_and_query.starts_with("/db/backup") { BACKUP_HEAD_TIMEOUT } else { FORWARD_TIMEOUT };
    let (stream, raw, split) = match tokio::time::timeout(head_timeout, exchange).await {
        Ok(Ok(answer)) => answer,
        _ => return Err(ForwardFailure::Other),
    };
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or(ForwardFailure::Other)?;
    let header = |wanted: &str| {
        head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case(wanted).then(|| value.trim().to_owned())
        })
    };
    let content_type = header("content-type")
        .and_then(|v| hyper::header::HeaderValue::from_str(&v).ok())
        .unwrap_or(hyper::header::HeaderValue::from_static("application/json"));
    // bop's answers carry a length (hyper sets it for whole bodies; backups set it themselves).
    let length: Option<u64> = header("content-length").and_then(|v| v.parse().ok());
    if header("transfer-encoding").is_some() {
        return Ok(error(
            StatusCode::BAD_GATEWAY,
            "the leader's answer is chunked; bop forwards sized bodies",
        ));
    }
    let first = Bytes::from(raw).slice(split + 4..);
    let remaining = length.map(|len| len.saturating_sub(first.len() as u64));
    // The start of the body, then the rest of the connection, until the length (or the end of the stream).
    let rest = futures_util::stream::unfold((stream, remaining), |(mut stream, remaining)| async move {
        if remaining == Some(0) {
            return None;
        }
        let want = remaining.map_or(STREAM_CHUNK_BYTES, |r| r.min(STREAM_CHUNK_BYTES as u64) as usize);
        let mut buf = vec![0u8; want];
        match tokio::time::timeout(FORWARD_TIMEOUT, stream.read(&mut buf)).await {
            Ok(Ok(0)) if remaining.is_none() => None,
            Ok(Ok(0)) => {
                Some((Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)), (stream, Some(0))))
            }
            Ok(Ok(n)) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), (stream, remaining.map(|r| r - n as u64))))
            }
            Ok(Err(e)) => Some((Err(e), (stream, Some(0)))),
            Err(_) => Some((Err(std::io::Error::from(std::io::ErrorKind::TimedOut)), (stream, Some(0)))),
        }
    });
    use futures_util::StreamExt;
    let body = futures_util::stream::iter((!first.is_empty()).then_some(Ok(first))).chain(rest);
    let mut response = Response::new(streamed(body));
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, content_type);
    if let Some(len) = length {
        response.headers_mut().insert(hyper::header::CONTENT_LENGTH, hyper::header::HeaderValue::from(len));
    }
    Ok(response)
}

/// Why a request could not be passed to the leader.
enum ForwardFailure {
    /// The leader (this node id) could not be reached; nothing was sent.
    Unreachable(u64),
    /// No leader or address is known, or the leader did not answer in time.
    Other,
}

async fn handle(node: Arc<NodeShared>, req: Request<Incoming>) -> Result<HttpResponse, Infallible> {
    let started = Instant::now();
    let params = match query_params(req.uri().query()) {
        Ok(params) => params,
        Err(e) => return Ok(error(StatusCode::BAD_REQUEST, e)),
    };
    // Writes and leader reads sent to a follower go to the leader, unless the client asked for a redirect.
    let path = req.uri().path().to_owned();
    let level = params.get("level").map(String::as_str).unwrap_or("weak");
    let needs_leader = path == "/db/execute"
        || path == "/db/backup"
        || path == "/join"
        || path == "/remove"
        || (path == "/db/query" && level != "none");
    if needs_leader && !node.is_leader() {
        let forwarded = req.headers().contains_key(FORWARDED_HEADER);
        let method = req.method().clone();
        let path_and_query = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or(path);
        let bytes = match body(req).await {
            Ok(bytes) => bytes,
            Err(response) => return Ok(response),
        };
        return Ok(to_leader(&node, &params, forwarded, &method, &path_and_query, &bytes).await);
    }
    let pretty = params.contains_key("pretty");
    let db = params.get("db").cloned().unwrap_or_else(|| DEFAULT_DATABASE.to_owned());
    let response = match (req.method().clone(), req.uri().path()) {
        (Method::POST, "/db/execute") => match body(req).await {
            Ok(bytes) => execute(&node, &db, &bytes, &params, pretty).await,
            Err(response) => response,
        },
        (Method::POST, "/db/request") => request(&node, req, &params, &db, pretty).await,
        (method @ (Method::GET | Method::POST), "/db/query") => {
            let statements = if method == Method::GET {
                match params.get("q") {
                    Some(q) => Ok(vec![bop_sql::Statement::new(q.as_str())]),
                    None => Err(error(StatusCode::BAD_REQUEST, "GET /db/query needs q=SQL")),
                }
            } else {
                match body(req).await {
                    Ok(bytes) => parse_statements(&bytes).map_err(|e| error(StatusCode::BAD_REQUEST, e)),
                    Err(response) => Err(response),
                }
            };
            match statements {
                Ok(statements) => query(&node, &db, statements, &params, pretty).await,
                Err(response) => response,
            }
        }
        (Method::POST, "/join") => match body(req).await {
            Ok(bytes) => join(&node, &bytes, pretty).await,
            Err(response) => response,
        },
        (Method::DELETE | Method::POST, "/remove") => match body(req).await {
            Ok(bytes) => remove(&node, &bytes, pretty).await,
            Err(response) => response,
        },
        (Method::GET, "/db/backup") => backup(&node, &db, &params).await,
        (Method::GET, "/status") => respond(StatusCode::OK, &node.status(), pretty),
        (Method::GET, "/nodes") => respond(StatusCode::OK, &node.nodes(), pretty),
        (Method::GET, "/metrics") => {
            let mut response = Response::new(full(node.metrics_text()));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        (Method::GET, "/readyz") => match node.leader() {
            Some(_) => respond(StatusCode::OK, &json!({ "ready": true }), pretty),
            None if !node.raft_running() => error(StatusCode::SERVICE_UNAVAILABLE, "raft has stopped"),
            None => error(StatusCode::SERVICE_UNAVAILABLE, "no leader"),
        },
        (_, path) => error(StatusCode::NOT_FOUND, format!("no route for {path}")),
    };
    let mut response = response;
    if params.contains_key("timings") {
        let took = started.elapsed().as_secs_f64();
        response.headers_mut().insert(
            "x-bop-time-s",
            hyper::header::HeaderValue::from_str(&format!("{took:.6}"))
                .unwrap_or(hyper::header::HeaderValue::from_static("0")),
        );
    }
    node.record_latency(started.elapsed());
    Ok(response)
}

/// A Go-style duration as rqlite takes it: a number and a unit (`ns`, `us`, `ms`, `s`, `m`, `h`), e.g.
/// `500ms`, `1.5s`; `None` when it is not one.
pub(super) fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let secs = match unit {
        "ns" => value / 1e9,
        "us" | "µs" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return None,
    };
    std::time::Duration::try_from_secs_f64(secs).ok()
}

/// A call this follower cannot answer: with `redirect`, 503 naming the leader; otherwise the leader's own
/// answer, forwarded (503 naming it if it cannot be reached).
async fn to_leader(
    node: &NodeShared,
    params: &HashMap<String, String>,
    forwarded: bool,
    method: &Method,
    path_and_query: &str,
    bytes: &[u8],
) -> HttpResponse {
    let pretty = params.contains_key("pretty");
    // A request another node forwarded here is never forwarded again: two nodes that each believe the
    // other leads would otherwise pass it back and forth.
    if params.contains_key("redirect") || forwarded {
        return not_leader(node, pretty);
    }
    match forward(node, method, path_and_query, bytes).await {
        Ok(response) => response,
        Err(ForwardFailure::Unreachable(tried)) => {
            // If the cluster already has another leader (the connection attempt may have taken a while),
            // try it once: nothing was sent to the first, so this cannot apply the request twice. Otherwise
            // the client hears at once that there is no reachable leader, and retries when it chooses.
            match node.leader() {
                Some((id, _)) if id != tried => forward(node, method, path_and_query, bytes)
                    .await
                    .unwrap_or_else(|_| not_leader(node, pretty)),
                _ => not_leader(node, pretty),
            }
        }
        Err(ForwardFailure::Other) => not_leader(node, pretty),
    }
}

/// 503 naming the leader (its Raft address), for a write or a weak read sent to a follower.
fn not_leader(node: &NodeShared, pretty: bool) -> HttpResponse {
    let leader = node.leader();
    respond(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({ "error": "not the leader", "leader": leader.map(|(id, addr)| json!({ "id": id, "raft_addr": addr })) }),
        pretty,
    )
}

fn sql_failure(node: &NodeShared, e: &SqlError, pretty: bool) -> HttpResponse {
    let message = e.to_string();
    if message.contains("not the leader") {
        return not_leader(node, pretty);
    }
    respond(StatusCode::OK, &error_result(&message), pretty)
}

async fn execute(
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

/// Runs a batch with writes on this node (the leader), in one Raft commit. With `transaction` it is all or
/// nothing (the first error is the answer); without, as rqlite does, each statement stands alone and a failed
/// one is reported in its place while the others commit. `rows` answers rows for statements that return
/// them (`/db/request`) instead of only `last_insert_id`/`rows_affected` (`/db/execute`).
async fn write_batch(
    node: &Arc<NodeShared>,
    db: &str,
    statements: Vec<bop_sql::Statement>,
    request_bytes: usize,
    params: &HashMap<String, String>,
    rows: bool,
    pretty: bool,
) -> HttpResponse {
    let limits = node.limits;
    let _queued = match node.writer_queue.enter(
        request_bytes,
        limits.writers_queued_max,
        limits.writer_queue_bytes_max,
    ) {
        Ok(place) => place,
        Err(e) => return busy(e),
    };
    if let Err(e) = may_create_database(&node.manager, db, limits.databases_max) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let transaction = params.contains_key("transaction");
    let associative = params.contains_key("associative");
    let limits = match request_limits(&node.engine, params) {
        Ok(limits) => limits,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let cancel = Cancel::default();
    let _cancel_on_drop = cancel.on_drop();
    let _turn = node.writer_turn(db).lock().await;
    node.leadership_applied().await;
    let shared = Arc::clone(node);
    let name = db.to_owned();
    let outcome = node
        .blocking
        .run(move || {
            let mut conn = shared.engine.open(&name, OpenMode::CreateIfMissing)?;
            cancel.attach(&conn);
            conn.set_limits(limits);
            let outcome = if transaction {
                conn.request_batch(&statements).map(|done| done.into_iter().map(Ok).collect())
            } else {
                conn.request_each(&statements)
            };
            shared.count_stopped(outcome.as_ref().err());
            outcome
        })
        .await;
    match outcome {
        Ok(Ok(outcomes)) => {
            let results: Vec<Json> = outcomes
                .iter()
                .map(|outcome| match outcome {
                    Ok((Some(found), _)) if rows => query_result(found, associative),
                    Ok((_, done)) => exec_result(done),
                    Err(e) => json!({ "error": e.to_string() }),
                })
                .collect();
            respond(StatusCode::OK, &json!({ "results": results }), pretty)
        }
        Ok(Err(e)) => sql_failure(node, &e, pretty),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("write task: {e}")),
    }
}

/// `freshness_strict`: beyond having heard from a leader within the freshness bound, this node must have
/// applied everything that leader had reported committed by then; it waits for that at most `budget` (what
/// is left of the bound), so that a read served is at least as fresh as a moment within the bound.
async fn caught_up(node: &NodeShared, budget: std::time::Duration) -> Result<(), String> {
    let (committed, applied) = {
        let metrics = node.raft.metrics();
        let m = metrics.borrow_watched();
        (m.cluster_committed.as_ref().map_or(0, |c| c.index), m.last_applied.as_ref().map_or(0, |a| a.index))
    };
    if applied >= committed {
        return Ok(());
    }
    node.raft
        .wait(Some(budget))
        .applied_index_at_least(Some(committed), "freshness_strict")
        .await
        .map(|_| ())
        .map_err(|_| {
            format!("stale read: applied {applied} of the {committed} entries the leader reported committed")
        })
}

async fn query(
    node: &Arc<NodeShared>,
    db: &str,
    statements: Vec<bop_sql::Statement>,
    params: &HashMap<String, String>,
    pretty: bool,
) -> HttpResponse {
    let level = params.get("level").map(String::as_str).unwrap_or("weak");
    if params.contains_key("freshness_strict") && !params.contains_key("freshness") {
        return error(StatusCode::BAD_REQUEST, "freshness_strict needs freshness=DURATION");
    }
    match level {
        "none" => {
            if let Some(limit) = params.get("freshness") {
                let limit = match parse_duration(limit) {
                    Some(limit) => limit,
                    None => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            format!("freshness {limit:?} is not a duration (e.g. 500ms, 1s, 2m)"),
                        )
                    }
                };
                if !node.is_leader() {
                    match node.contact.since() {
                        Some(since) if since <= limit => {
                            if params.contains_key("freshness_strict") {
                                if let Err(reason) = caught_up(node, limit - since).await {
                                    return respond(StatusCode::OK, &error_result(&reason), pretty);
                                }
                            }
                        }
                        since => {
                            let heard =
                                since.map_or("never".to_owned(), |d| format!("{} ms ago", d.as_millis()));
                            return respond(
                                StatusCode::OK,
                                &error_result(&format!(
                                    "stale read: last heard from a leader {heard}, freshness is {} ms",
                                    limit.as_millis()
                                )),
                                pretty,
                            );
                        }
                    }
                }
            }
        }
        "weak" => {
            if !node.is_leader() {
                return not_leader(node, pretty);
            }
        }
        "linearizable" | "strong" => {
            if let Err(e) = node.raft.ensure_linearizable(openraft::raft::ReadPolicy::ReadIndex).await {
                let message = e.to_string();
                return match e.forward_to_leader() {
                    Some(_) => not_leader(node, pretty),
                    None => error(StatusCode::SERVICE_UNAVAILABLE, message),
                };
            }
        }
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("unknown level {other:?} (none, weak, linearizable, strong)"),
            )
        }
    }
    let associative = params.contains_key("associative");
    let mut limits = match request_limits(&node.engine, params) {
        Ok(limits) => limits,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let cancel = Cancel::default();
    let _cancel_on_drop = cancel.on_drop();
    let shared = Arc::clone(node);
    let db = db.to_owned();
    let outcome = node
        .blocking
        .run(move || {
            let mut conn = shared.engine.open(&db, OpenMode::Existing)?;
            cancel.attach(&conn);
            // A query only reads (as in rqlite): a batch with a write runs none of it. Statements that do
            // not prepare are answered with their own error below. `query_only` stops anything that
            // slipped past the check (e.g. a write inside an explicit transaction).
            for statement in &statements {
                if let Ok(false) = conn.is_read_only(&statement.sql) {
                    return Ok(error_result(&format!(
                        "attempt to change the database through a query: /db/query runs read-only \
                         statements; send {:?} to /db/execute or /db/request",
                        statement.sql
                    )));
                }
            }
            conn.execute("PRAGMA query_only = 1", &bop_sql::Params::None)?;
            // One answer budget and one deadline for the whole request, over all its statements.
            conn.set_limits(limits);
            let mut results = Vec::new();
            for statement in &statements {
                let rows: Result<Rows, SqlError> = conn.query(&statement.sql, &statement.params);
                match &rows {
                    Err(e) if e.stops_call() => {
                        shared.count_stopped(Some(e));
                        return Err(rows.err().unwrap_or(SqlError::Interrupted));
                    }
                    Ok(found) => {
                        let (rows_used, bytes_used) = found.answer_size();
                        limits.rows_max = limits.rows_max.map(|m| m.saturating_sub(rows_used));
                        limits.bytes_max = limits.bytes_max.map(|m| m.saturating_sub(bytes_used));
                        conn.set_limits(limits);
                    }
                    Err(_) => {}
                }
                results.push(match rows {
                    Ok(rows) => query_result(&rows, associative),
                    Err(e) => json!({ "error": e.to_string() }),
                });
            }
            Ok::<_, SqlError>(json!({ "results": results }))
        })
        .await;
    match outcome {
        Ok(Ok(body)) => respond(StatusCode::OK, &body, pretty),
        Ok(Err(e)) => respond(StatusCode::OK, &error_result(&e.to_string()), pretty),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("query task: {e}")),
    }
}

/// rqlite's unified endpoint: a batch of only reads is a query (at the requested level, forwarded like one);
/// a batch with any write runs on the leader in one transaction, answering rows for the statements that
/// return them and `last_insert_id`/`rows_affected` for the others.
async fn request(
    node: &Arc<NodeShared>,
    req: Request<Incoming>,
    params: &HashMap<String, String>,
    db: &str,
    pretty: bool,
) -> HttpResponse {
    let path_and_query = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let forwarded = req.headers().contains_key(FORWARDED_HEADER);
    let bytes = match body(req).await {
        Ok(bytes) => bytes,
        Err(response) => return response,
    };
    let statements = match parse_statements(&bytes) {
        Ok(statements) => statements,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let level = params.get("level").map(String::as_str).unwrap_or("weak");
    let leader = node.is_leader();
    if !leader && level != "none" {
        return to_leader(node, params, forwarded, &Method::POST, &path_and_query, &bytes).await;
    }
    // Classified on a local connection; a database this node does not have yet counts as a write.
    let engine = Arc::clone(&node.engine);
    let name = db.to_owned();
    let classified = node
        .blocking
        .run(move || {
            let read_only = (|| {
                let mut conn = engine.open(&name, OpenMode::Existing).ok()?;
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
        return to_leader(node, params, forwarded, &Method::POST, &path_and_query, &bytes).await;
    }
    if read_only {
        return query(node, db, statements, params, pretty).await;
    }
    write_batch(node, db, statements, bytes.len(), params, true, pretty).await
}

/// `GET /db/backup`: a consistent copy of the database, taken on the leader: an ordinary SQLite file, or
/// with `fmt=sql` the SQL text that rebuilds it. The copy is written to a file in the data directory,
/// unlinked as soon as it is complete and open (only the descriptor keeps it; a crash before leaves a file
/// removed at the next start) and streamed from there, so memory stays bounded by one chunk whatever the
/// database's size. The leader's disk needs room for the copy while it is made and sent.
async fn backup(node: &Arc<NodeShared>, db: &str, params: &HashMap<String, String>) -> HttpResponse {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let sql = match params.get("fmt").map(String::as_str) {
        None | Some("binary") => false,
        Some("sql") => true,
        Some(other) => {
            return error(StatusCode::BAD_REQUEST, format!("fmt {other:?}: bop backs up as binary or sql"))
        }
    };
    // At most `backups_max` copies exist at once (each takes disk until it is sent), and none that would
    // leave the log without room.
    let Ok(permit) = Arc::clone(&node.backups).try_acquire_owned() else {
        return busy(format!("{} backups are being made; retry", node.limits.backups_max));
    };
    let db_bytes = match node.manager.open_database(db).and_then(|d| d.snapshot()) {
        Ok(snapshot) => u64::from(snapshot.page_count()) * bop_storage::page_store::PAGE_SIZE as u64,
        Err(e) => return error(StatusCode::NOT_FOUND, format!("database {db:?}: {e}")),
    };
    // An SQL dump can be larger than the pages it describes; count it twice.
    let copy_bytes = if sql { db_bytes.saturating_mul(2) } else { db_bytes };
    if let Err(e) = backup_space(&node.data_dir, copy_bytes, node.limits.backup_space_reserve_bytes) {
        return error(StatusCode::INSUFFICIENT_STORAGE, e);
    }
    let engine = Arc::clone(&node.engine);
    let name = db.to_owned();
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let target = node.data_dir.join(format!("backup-{}-{seq}.sqlite.tmp", std::process::id()));
    let outcome = node
        .blocking
        .run(move || {
            let taken = (|| {
                let mut conn = engine
                    .open(&name, OpenMode::Existing)
                    .map_err(|e| (StatusCode::NOT_FOUND, format!("database {name:?}: {e}")))?;
                let internal =
                    |e: &dyn std::fmt::Display| (StatusCode::INTERNAL_SERVER_ERROR, format!("backup: {e}"));
                if sql {
                    let file = std::fs::File::create(&target).map_err(|e| internal(&e))?;
                    let mut out = std::io::BufWriter::new(file);
                    super::dump::dump_sql(&mut conn, &mut out).map_err(|e| match e {
                        super::dump::DumpError::Unsupported(reason) => (StatusCode::BAD_REQUEST, reason),
                        other => internal(&other),
                    })?;
                    std::io::Write::flush(&mut out).map_err(|e| internal(&e))?;
                } else {
                    conn.backup_to(&target).map_err(|e| internal(&e))?;
                }
                let file = std::fs::File::open(&target).map_err(|e| internal(&e))?;
                let len = file.metadata().map_err(|e| internal(&e))?.len();
                Ok((file, len))
            })();
            let _ = std::fs::remove_file(&target);
            taken
        })
        .await;
    let (file, len) = match outcome {
        Ok(Ok(taken)) => taken,
        Ok(Err((status, message))) => return error(status, message),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("backup task: {e}")),
    };
    // The permit travels with the body: the copy's disk is in use until the last chunk is sent.
    let chunks = futures_util::stream::unfold(
        (tokio::fs::File::from_std(file), len, permit),
        |(mut file, left, permit)| async move {
            use tokio::io::AsyncReadExt;
            if left == 0 {
                return None;
            }
            let n = left.min(STREAM_CHUNK_BYTES as u64);
            let mut buf = vec![0u8; n as usize];
            match file.read_exact(&mut buf).await {
                Ok(_) => Some((Ok(Bytes::from(buf)), (file, left - n, permit))),
                Err(e) => Some((Err(e), (file, 0, permit))),
            }
        },
    );
    let mut response = Response::new(streamed(chunks));
    let content_type = if sql { "application/sql" } else { "application/octet-stream" };
    let headers = response.headers_mut();
    headers.insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    headers.insert(hyper::header::CONTENT_LENGTH, hyper::header::HeaderValue::from(len));
    response
}

#[derive(serde::Deserialize)]
struct JoinRequest {
    id: u64,
    addr: String,
    #[serde(default = "yes")]
    voter: bool,
}

fn yes() -> bool {
    true
}

#[derive(serde::Deserialize)]
struct RemoveRequest {
    id: u64,
}

/// `POST /join {"id", "addr" (Raft address), "voter" (default true)}`: adds the node as a learner, waits
/// until it caught up (through a snapshot if the log it needs is purged), then promotes it to voter.
async fn join(node: &Arc<NodeShared>, bytes: &[u8], pretty: bool) -> HttpResponse {
    let request: JoinRequest = match serde_json::from_slice(bytes) {
        Ok(r) => r,
        Err(e) => {
            return error(StatusCode::BAD_REQUEST, format!("join wants {{\"id\", \"addr\", \"voter\"}}: {e}"))
        }
    };
    if !node.is_leader() {
        return not_leader(node, pretty);
    }
    let learner = openraft::impls::BasicNode::new(request.addr.clone());
    if let Err(e) = node.raft.add_learner(request.id, learner, true).await {
        return error(StatusCode::SERVICE_UNAVAILABLE, format!("adding learner {}: {e}", request.id));
    }
    if request.voter {
        let voters = std::collections::BTreeSet::from([request.id]);
        if let Err(e) = node.raft.change_membership(openraft::ChangeMembers::AddVoterIds(voters), false).await
        {
            return error(StatusCode::SERVICE_UNAVAILABLE, format!("promoting {}: {e}", request.id));
        }
    }
    respond(StatusCode::OK, &json!({ "joined": request.id, "voter": request.voter }), pretty)
}

/// `DELETE /remove {"id"}`: removes the node from the membership (voter and learner).
async fn remove(node: &Arc<NodeShared>, bytes: &[u8], pretty: bool) -> HttpResponse {
    let request: RemoveRequest = match serde_json::from_slice(bytes) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("remove wants {{\"id\"}}: {e}")),
    };
    if !node.is_leader() {
        return not_leader(node, pretty);
    }
    let ids = std::collections::BTreeSet::from([request.id]);
    let voters = node
        .raft
        .metrics()
        .borrow_watched()
        .membership_config
        .membership()
        .voter_ids()
        .any(|v| v == request.id);
    // One membership change either way: a voter is removed outright (`retain = false` keeps it on as a
    // learner otherwise). A second change after removing a voter would, when the voter is this leader,
    // be asked of a node that has just stepped down (the simulation found openraft asserting on it).
    let change = if voters {
        openraft::ChangeMembers::RemoveVoters(ids)
    } else {
        openraft::ChangeMembers::RemoveNodes(ids)
    };
    if let Err(e) = node.raft.change_membership(change, false).await {
        return error(StatusCode::SERVICE_UNAVAILABLE, format!("removing node {}: {e}", request.id));
    }
    respond(StatusCode::OK, &json!({ "removed": request.id }), pretty)
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_parse_like_rqlite_takes_them() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("10us"), Some(Duration::from_micros(10)));
        for bad in ["", "s", "10", "10 s", "1x", "-1s", "1e999h"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }
}
