//! What a read waits for before it runs on this node's page store: the consistency levels (`level=`),
//! `freshness`, and a read-your-writes position (`min_index`).

use std::collections::HashMap;
use std::time::Duration;

use hyper::StatusCode;
use openraft::async_runtime::WatchReceiver;
use openraft::raft::ReadPolicy;
use openraft::LinearizerOption;

use super::forward::not_leader;
use super::*;
use crate::node::rqlite::error_result;
use crate::node::NodeShared;

/// How long a read with `min_index` waits for this node to apply that index, unless `timeout` says.
pub(super) const MIN_INDEX_WAIT_DEFAULT: Duration = Duration::from_secs(5);

/// Whether a read runs on the node that received it, leader or not: `level=none`; a `weak` read (the
/// default level) that names a `min_index` — the caller asked for a position it has seen, not for the
/// leader's view; and a `linearizable` or `strong` one, for which a follower asks the leader only for its
/// read index (unless the caller asked for `redirect`, rqlite's "send me to the leader").
pub(super) fn reads_locally(params: &HashMap<String, String>) -> bool {
    match params.get("level").map(String::as_str).unwrap_or("weak") {
        "none" => true,
        "weak" => params.contains_key("min_index"),
        "linearizable" | "strong" => !params.contains_key("redirect"),
        _ => false,
    }
}

/// Waits until a read may run here at the requested level, or answers why it may not: `min_index` first
/// (this node must have applied that log index, waiting at most `timeout` or [`MIN_INDEX_WAIT_DEFAULT`]),
/// then the level — `none` (with `freshness`, this node must have heard from a leader that recently), `weak`
/// (this node leads, unless `min_index` made it local), `linearizable` (leadership confirmed by a quorum —
/// a heartbeat round, or the lease when the node has `--read-lease` — and everything committed before the
/// read applied here; `linearizable_timeout` bounds the wait for the quorum), `strong` (as `linearizable`,
/// always with a heartbeat round).
pub(super) async fn consistency(
    node: &std::sync::Arc<NodeShared>,
    params: &HashMap<String, String>,
    authorization: Option<&hyper::header::HeaderValue>,
    pretty: bool,
) -> Result<(), HttpResponse> {
    let level = params.get("level").map(String::as_str).unwrap_or("weak");
    if params.contains_key("freshness_strict") && !params.contains_key("freshness") {
        return Err(error(StatusCode::BAD_REQUEST, "freshness_strict needs freshness=DURATION"));
    }
    if let Some(min_index) = params.get("min_index") {
        let Ok(min_index) = min_index.parse::<u64>() else {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("min_index {min_index:?} is not a log index"),
            ));
        };
        let wait = params.get("timeout").and_then(|t| parse_duration(t)).unwrap_or(MIN_INDEX_WAIT_DEFAULT);
        let min_index = if bop_storage::bugs::min_index_ignored() { 0 } else { min_index };
        if let Err(reason) = applied_at_least(node, min_index, wait).await {
            return Err(respond(StatusCode::OK, &error_result(&reason), pretty));
        }
    }
    match level {
        "none" => {
            let Some(limit) = params.get("freshness") else { return Ok(()) };
            let Some(limit) = parse_duration(limit) else {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    format!("freshness {limit:?} is not a duration (e.g. 500ms, 1s, 2m)"),
                ));
            };
            if node.is_leader() {
                return Ok(());
            }
            match node.contact.since() {
                Some(since) if since <= limit => {
                    if params.contains_key("freshness_strict") {
                        if let Err(reason) = caught_up(node, limit - since).await {
                            return Err(respond(StatusCode::OK, &error_result(&reason), pretty));
                        }
                    }
                    Ok(())
                }
                since => {
                    let heard = since.map_or("never".to_owned(), |d| format!("{} ms ago", d.as_millis()));
                    Err(respond(
                        StatusCode::OK,
                        &error_result(&format!(
                            "stale read: last heard from a leader {heard}, freshness is {} ms",
                            limit.as_millis()
                        )),
                        pretty,
                    ))
                }
            }
        }
        "weak" => {
            if node.is_leader() || params.contains_key("min_index") {
                Ok(())
            } else {
                Err(not_leader(node, pretty))
            }
        }
        "linearizable" | "strong" if !node.is_leader() => {
            let strong = level == "strong";
            let index =
                node.read_indexes.ask(node, strong, params, authorization).await.map_err(|refusal| {
                    match refusal {
                        Refusal::NotLeader => not_leader(node, pretty),
                        Refusal::Answer(status, json) => respond(status, &json, pretty),
                    }
                })?;
            let wait = params
                .get("linearizable_timeout")
                .and_then(|t| parse_duration(t))
                .filter(|t| !t.is_zero())
                .unwrap_or(MIN_INDEX_WAIT_DEFAULT);
            applied_at_least(node, index, wait).await.map_err(|reason| {
                error(StatusCode::SERVICE_UNAVAILABLE, format!("linearizable read: {reason}"))
            })
        }
        "linearizable" | "strong" => {
            let option = linearizer_option(node, level == "strong", params);
            node.raft.ensure_linearizable(option).await.map(|_| ()).map_err(|e| unconfirmed(node, &e, pretty))
        }
        other => Err(error(
            StatusCode::BAD_REQUEST,
            format!("unknown level {other:?} (none, weak, linearizable, strong, auto)"),
        )),
    }
}

/// How a linearizable read confirms this node leads: with a lease, a quorum acknowledgement younger than
/// [`crate::node::ReadLease::max_age`] will do (else it waits for a fresh one, sending heartbeats at once);
/// without (or for `strong`), a heartbeat round sent after the read arrived. `linearizable_timeout` bounds
/// the wait for that acknowledgement (openraft's default: one election timeout).
fn linearizer_option(node: &NodeShared, strong: bool, params: &HashMap<String, String>) -> LinearizerOption {
    let option = match node.read_lease {
        Some(lease) if !strong => {
            LinearizerOption::new(Some(lease.max_age(node.raft.config().election_timeout_max)), true)
        }
        _ => LinearizerOption::from(ReadPolicy::ReadIndex),
    };
    match params.get("linearizable_timeout").and_then(|t| parse_duration(t)) {
        Some(wait) if !wait.is_zero() => option.with_wait_timeout(wait),
        _ => option,
    }
}

/// `GET /read-index?level=linearizable|strong&db=DB` (a follower's call, `Perm::Query` on `db`): once this leader has
/// confirmed it leads (as for its own linearizable reads), the log index a node must have applied to answer
/// a read that arrived before the call linearizably: `{"index": N}`. Never forwarded: a node that does not
/// lead answers 503 naming the leader.
pub(super) async fn read_index(
    axum::extract::State(node): axum::extract::State<std::sync::Arc<NodeShared>>,
    axum::Extension(call): axum::Extension<std::sync::Arc<Call>>,
) -> HttpResponse {
    if !node.is_leader() {
        return not_leader(&node, call.pretty);
    }
    let strong = call.params.get("level").is_some_and(|l| l == "strong");
    let option = linearizer_option(&node, strong, &call.params);
    match node.raft.get_read_linearizer(option).await {
        Ok(linearizer) => respond(
            StatusCode::OK,
            &serde_json::json!({ "index": linearizer.read_log_id().index() }),
            call.pretty,
        ),
        Err(e) => unconfirmed(&node, &e, call.pretty),
    }
}

/// The answer when this node could not confirm it leads: 503 naming the leader if it no longer does, else
/// 503 with openraft's reason (no quorum answered in time, Raft stopped).
fn unconfirmed(
    node: &NodeShared,
    e: &openraft::error::RaftError<
        crate::BopConfig,
        openraft::error::LinearizableReadError<crate::BopConfig>,
    >,
    pretty: bool,
) -> HttpResponse {
    match e.forward_to_leader() {
        Some(_) => not_leader(node, pretty),
        None => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Answers bounding a read index's: small JSON.
const READ_INDEX_ANSWER_MAX: usize = 4096;

/// Why a follower has no read index from the leader.
#[derive(Clone)]
pub(crate) enum Refusal {
    /// No leader is known or reachable, or it no longer leads.
    NotLeader,
    /// The leader's answer, passed on.
    Answer(StatusCode, serde_json::Value),
}

/// A follower's linearizable reads waiting for the leader's read index, asked for in batches: while one
/// call to the leader is out, the reads that arrive wait for the next, which starts when it ends — so every
/// read's index comes from a confirmation that began after the read arrived, and one call serves as many
/// reads as arrived during the one before. One batch per level (`strong` always takes a heartbeat round on
/// the leader). The waiting reads are bounded by the node's HTTP requests in flight.
#[derive(Default)]
pub(crate) struct ReadIndexBatches {
    linearizable: parking_lot::Mutex<Batch>,
    strong: parking_lot::Mutex<Batch>,
}

#[derive(Default)]
struct Batch {
    /// A call to the leader is out (its task takes every waiting read when it starts the next).
    asking: bool,
    waiting: Vec<Waiting>,
}

/// A read waiting for an index: its answer, and what the call is made with (the credentials of one of the
/// batch's callers, each of which this node already allowed to query; the leader checks them again).
struct Waiting {
    answer: tokio::sync::oneshot::Sender<Result<u64, Refusal>>,
    authorization: Option<hyper::header::HeaderValue>,
    params: HashMap<String, String>,
}

impl ReadIndexBatches {
    /// The leader's read index for a read that arrived now (see [`ReadIndexBatches`]).
    pub(super) async fn ask(
        &self,
        node: &std::sync::Arc<NodeShared>,
        strong: bool,
        params: &HashMap<String, String>,
        authorization: Option<&hyper::header::HeaderValue>,
    ) -> Result<u64, Refusal> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let start = {
            let mut batch = self.batch(strong).lock();
            batch.waiting.push(Waiting {
                answer,
                authorization: authorization.cloned(),
                params: params.clone(),
            });
            !std::mem::replace(&mut batch.asking, true)
        };
        if start {
            let node = std::sync::Arc::clone(node);
            tokio::spawn(async move { node.read_indexes.run(&node, strong).await });
        }
        answered.await.unwrap_or(Err(Refusal::NotLeader))
    }

    fn batch(&self, strong: bool) -> &parking_lot::Mutex<Batch> {
        if strong {
            &self.strong
        } else {
            &self.linearizable
        }
    }

    /// Calls the leader for every read waiting when the call starts, again and again until none waits.
    async fn run(&self, node: &NodeShared, strong: bool) {
        loop {
            let waiting = {
                let mut batch = self.batch(strong).lock();
                if batch.waiting.is_empty() {
                    batch.asking = false;
                    return;
                }
                std::mem::take(&mut batch.waiting)
            };
            let first = &waiting[0];
            let level = if strong { "strong" } else { "linearizable" };
            let index = leaders_read_index(node, level, &first.params, first.authorization.as_ref()).await;
            for read in waiting {
                let _ = read.answer.send(index.clone());
            }
        }
    }
}

/// The leader's read index for a read at `level`, asked with `authorization` ([`read_index`]).
async fn leaders_read_index(
    node: &NodeShared,
    level: &str,
    params: &HashMap<String, String>,
    authorization: Option<&hyper::header::HeaderValue>,
) -> Result<u64, Refusal> {
    let encode =
        |v: &str| percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string();
    let mut path = format!("/read-index?level={level}");
    // The leader judges the credentials' `query` permission on the read's database.
    if let Some(db) = params.get("db") {
        path.push_str(&format!("&db={}", encode(db)));
    }
    if let Some(wait) = params.get("linearizable_timeout") {
        path.push_str(&format!("&linearizable_timeout={}", encode(wait)));
    }
    let mut body = super::forward::Outgoing::Bytes(bytes::Bytes::new());
    // Bounded however long the reads may wait: the batch behind this call waits for it, and a leader cut
    // off mid-call would otherwise hold every read of this node for the forwarding timeout (30 s).
    let bound = Duration::from_millis(2 * node.raft.config().election_timeout_max);
    let timeout = params.get("timeout").and_then(|t| parse_duration(t)).map_or(bound, |t| t.min(bound));
    let answer =
        super::forward::forward(node, &hyper::Method::GET, &path, &mut body, authorization, Some(timeout))
            .await
            .map_err(|_| Refusal::NotLeader)?;
    let status = answer.status();
    let limited = http_body_util::Limited::new(answer.into_body(), READ_INDEX_ANSWER_MAX);
    let bytes = http_body_util::BodyExt::collect(limited).await.map(|c| c.to_bytes()).map_err(|e| {
        Refusal::Answer(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "error": format!("the leader's read index: {e}") }),
        )
    })?;
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    match (status, json["index"].as_u64()) {
        (StatusCode::OK, Some(index)) => Ok(index),
        (StatusCode::SERVICE_UNAVAILABLE, _) if json["error"] == "not the leader" => Err(Refusal::NotLeader),
        _ => Err(Refusal::Answer(status, json)),
    }
}

/// Waits at most `wait` until this node applied log index `index`.
async fn applied_at_least(node: &NodeShared, index: u64, wait: Duration) -> Result<(), String> {
    let applied = node.raft.metrics().borrow_watched().last_applied.as_ref().map_or(0, |a| a.index);
    if applied >= index {
        return Ok(());
    }
    node.raft.wait(Some(wait)).applied_index_at_least(Some(index), "min_index").await.map(|_| ()).map_err(
        |_| {
            let applied = node.raft.metrics().borrow_watched().last_applied.as_ref().map_or(0, |a| a.index);
            format!(
                "not caught up: this node applied log index {applied}, min_index is {index} (waited {} ms)",
                wait.as_millis()
            )
        },
    )
}

/// `freshness_strict`: beyond having heard from a leader within the freshness bound, this node must have
/// applied everything that leader had reported committed by then; it waits for that at most `budget` (what
/// is left of the bound), so that a read served is at least as fresh as a moment within the bound.
async fn caught_up(node: &NodeShared, budget: Duration) -> Result<(), String> {
    let (committed, applied) = {
        let metrics = node.raft.metrics();
        let m = metrics.borrow_watched();
        (m.cluster_committed.as_ref().map_or(0, |c| c.index), m.last_applied.as_ref().map_or(0, |a| a.index))
    };
    applied_at_least(node, committed, budget).await.map_err(|_| {
        format!("stale read: applied {applied} of the {committed} entries the leader reported committed")
    })
}
