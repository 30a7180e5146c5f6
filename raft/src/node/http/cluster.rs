//! Membership calls (`POST /join`, `DELETE /remove`, `POST /leader`) and the cluster's state: `GET /status`, `/nodes`,
//! `/readyz` (in rqlite's shapes beside bop's own fields) and `/metrics`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::Extension;
use hyper::{Response, StatusCode};
use openraft::async_runtime::WatchReceiver;
use serde_json::json;

use super::forward::not_leader;
use super::*;
use crate::node::NodeShared;

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

/// How long `/join` waits for the new node to catch up unless `timeout` says otherwise (below the 60 s
/// `bop node --join` waits for an answer).
const MEMBERSHIP_WAIT: Duration = Duration::from_secs(30);

/// `POST /join {"id", "addr" (Raft address), "voter" (default true)}`: adds the node as a learner, waits
/// (at most `timeout`, 30 s by default) until it acknowledged the log up to its own addition (through a
/// snapshot if the log it needs is purged), then promotes it to voter. A node that does not catch up in
/// time (not running, unreachable, a wrong address) stays a learner and the call is a 503: it is never
/// made a voter, which would count a dead node in every quorum. (openraft's own wait, its lag threshold of
/// 5000 entries, let a small cluster promote an address where nothing ran at once.)
async fn join_node(node: &Arc<NodeShared>, call: &Call, bytes: &[u8]) -> HttpResponse {
    let pretty = call.pretty;
    let request: JoinRequest = match serde_json::from_slice(bytes) {
        Ok(r) => r,
        Err(e) => {
            return error(StatusCode::BAD_REQUEST, format!("join wants {{\"id\", \"addr\", \"voter\"}}: {e}"))
        }
    };
    // A voter needs `join`; `join-read-only` adds non-voters only.
    let perms: &[Perm] = if request.voter { &[Perm::Join] } else { &[Perm::Join, Perm::JoinReadOnly] };
    if let Some(refused) = call.refusal(node, perms, false) {
        return refused;
    }
    if !node.is_leader() {
        return not_leader(node, pretty);
    }
    let id = request.id;
    let learner = openraft::impls::BasicNode::new(request.addr.clone());
    let added = match node.raft.add_learner(id, learner, false).await {
        Ok(added) => added,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("adding learner {id}: {e}")),
    };
    if id != node.id {
        let upto = added.log_id.index;
        let wait = timeout_of(call, MEMBERSHIP_WAIT);
        let caught_up = node
            .raft
            .wait(Some(wait))
            .metrics(
                |m| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&id))
                        .is_some_and(|matched| matched.as_ref().is_some_and(|l| l.index >= upto))
                },
                "the new node caught up",
            )
            .await;
        if caught_up.is_err() {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "node {id} at {} did not catch up with the log within {wait:?} (is it running, and is the \
                     address its Raft address?); it stays a learner, not a voter: /join again once it runs, \
                     or /remove it",
                    request.addr
                ),
            );
        }
    }
    if request.voter {
        let voters = std::collections::BTreeSet::from([id]);
        if let Err(e) = node.raft.change_membership(openraft::ChangeMembers::AddVoterIds(voters), false).await
        {
            return error(StatusCode::SERVICE_UNAVAILABLE, format!("promoting {id}: {e}"));
        }
    }
    respond(StatusCode::OK, &json!({ "joined": id, "voter": request.voter }), pretty)
}

/// `DELETE /remove {"id"}`: removes the node from the membership (voter and learner).
async fn remove_node(node: &Arc<NodeShared>, bytes: &[u8], pretty: bool) -> HttpResponse {
    let request: RemoveRequest = match serde_json::from_slice(bytes) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("remove wants {{\"id\"}}: {e}")),
    };
    if !node.is_leader() {
        return not_leader(node, pretty);
    }
    if let Err(e) = node.remove_member(request.id).await {
        return error(StatusCode::SERVICE_UNAVAILABLE, format!("removing node {}: {e}", request.id));
    }
    respond(StatusCode::OK, &json!({ "removed": request.id }), pretty)
}

/// How long `POST /leader` waits for leadership to move unless `timeout` says otherwise.
const TRANSFER_WAIT: Duration = Duration::from_secs(10);

/// `POST /leader`, optionally `{"id": N}` (a number, or a string as rqlite's ids are): this leader hands
/// leadership to that voter, or to the voter whose log is the most up to date, and answers once the
/// cluster has the new leader (`{"leader": N}`), within `timeout` (10 s by default; then 503). Followers
/// pass the call to the leader. 400 when there is no other voter or `id` is not one.
pub(super) async fn leader(
    State(node): Node,
    Extension(call): CallOf,
    body: axum::body::Body,
) -> HttpResponse {
    let bytes = match read_body(body).await {
        Ok(bytes) => bytes,
        Err(response) => return response,
    };
    let wanted = if bytes.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let id = serde_json::from_slice::<serde_json::Value>(&bytes).ok().and_then(|v| match &v["id"] {
            serde_json::Value::Number(n) => n.as_u64().map(Some),
            serde_json::Value::String(s) => s.parse::<u64>().ok().map(Some),
            serde_json::Value::Null => Some(None),
            _ => None,
        });
        match id {
            Some(id) => id,
            None => return error(StatusCode::BAD_REQUEST, "leader wants no body, or {\"id\": N}"),
        }
    };
    if !node.is_leader() {
        return not_leader(&node, call.pretty);
    }
    let wait = timeout_of(&call, TRANSFER_WAIT);
    match node.transfer_leadership(wanted, wait).await {
        Ok(to) => respond(StatusCode::OK, &json!({ "leader": to }), call.pretty),
        Err(crate::node::TransferError::Refused(why)) => error(StatusCode::BAD_REQUEST, why),
        Err(crate::node::TransferError::NotMoved(why)) => error(StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

type Node = State<Arc<NodeShared>>;
type CallOf = Extension<Arc<Call>>;

/// `POST /join`.
pub(super) async fn join(State(node): Node, Extension(call): CallOf, body: axum::body::Body) -> HttpResponse {
    match read_body(body).await {
        Ok(bytes) => join_node(&node, &call, &bytes).await,
        Err(response) => response,
    }
}

/// `DELETE /remove` (or `POST`).
pub(super) async fn remove(
    State(node): Node,
    Extension(call): CallOf,
    body: axum::body::Body,
) -> HttpResponse {
    match read_body(body).await {
        Ok(bytes) => remove_node(&node, &bytes, call.pretty).await,
        Err(response) => response,
    }
}

/// How long `/nodes` and `/readyz` wait for a node to answer unless `timeout` says otherwise (rqlite's
/// default).
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// The `timeout` parameter (checked by the front layer), or `default`.
fn timeout_of(call: &Call, default: Duration) -> Duration {
    call.params.get("timeout").and_then(|t| parse_duration(t)).unwrap_or(default)
}

/// The Raft address in a membership address (`RAFT_ADDR http=HTTP_ADDR`).
fn raft_addr_of(member_addr: &str) -> &str {
    member_addr.split_whitespace().next().unwrap_or_default()
}

/// Contacts the HTTP API at `http_addr` (`GET /readyz?noleader`) within `timeout`: whether it answered,
/// and how long that took in seconds. Any HTTP answer counts: the node is reachable.
async fn probe(node: &NodeShared, http_addr: &str, timeout: Duration) -> (Result<(), String>, f64) {
    let started = Instant::now();
    let attempt = async {
        let stream = connect_node(node, http_addr).await.map_err(|e| format!("connecting: {e}"))?;
        let mut conn =
            crate::http_client::HttpConn::over(stream, http_addr).await.map_err(|e| e.to_string())?;
        conn.call(hyper::Method::GET, "/readyz?noleader", bytes::Bytes::new(), 4096)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let result = match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    };
    (result, started.elapsed().as_secs_f64())
}

/// `GET /status`: bop's fields, and rqlite's `store.leader` (`node_id` as a string, the leader's Raft
/// `addr`; both empty while no leader is known) and `build.version`, which client libraries read to find
/// the leader.
pub(super) async fn status(State(node): Node, Extension(call): CallOf) -> HttpResponse {
    let mut status = node.status();
    let (node_id, addr) = match node.leader() {
        Some((id, addr)) => (id.to_string(), raft_addr_of(&addr).to_owned()),
        None => (String::new(), String::new()),
    };
    status["store"] = json!({ "leader": { "node_id": node_id, "addr": addr } });
    status["build"] = json!({ "version": VERSION });
    status["http"]["addr"] = json!(node.http_addr);
    respond(StatusCode::OK, &status, call.pretty)
}

/// `GET /nodes`: the cluster's voters (and learners too with `nonvoters`), each contacted over its HTTP API
/// at once, within `timeout` (30 s by default). Keyed by id, or with `ver=2` as `{"nodes": [...]}` in id
/// order. Each has rqlite's fields — `id` (a string), `api_addr` (`http://HOST:PORT`), `addr` (Raft),
/// `voter`, `reachable`, `leader`, `time` (seconds the contact took) and `error` when unreachable — and
/// bop's `raft_addr` (the membership address).
pub(super) async fn nodes(State(node): Node, Extension(call): CallOf) -> HttpResponse {
    let (members, voters) = {
        let metrics = node.raft.metrics();
        let m = metrics.borrow_watched();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let members: Vec<(u64, String)> = membership.nodes().map(|(id, n)| (*id, n.addr.clone())).collect();
        (members, voters)
    };
    let nonvoters = call.params.contains_key("nonvoters");
    let members: Vec<(u64, String)> =
        members.into_iter().filter(|(id, _)| nonvoters || voters.contains(id)).collect();
    let leader = node.leader().map(|(id, _)| id);
    let timeout = timeout_of(&call, PROBE_TIMEOUT);
    let probes = futures_util::future::join_all(members.iter().map(|(_, addr)| {
        let node = &node;
        async move {
            match crate::tcp::http_addr_of(addr) {
                Some(http_addr) => probe(node, http_addr, timeout).await,
                None => (Err("the membership has no HTTP address for this node".to_owned()), 0.0),
            }
        }
    }))
    .await;
    let mut entries: Vec<(u64, Json)> = members
        .iter()
        .zip(probes)
        .map(|((id, addr), (reached, time))| {
            let api_addr = crate::tcp::http_addr_of(addr)
                .map(|h| format!("{}://{h}", scheme(&node)))
                .unwrap_or_default();
            let mut entry = json!({
                "id": id.to_string(),
                "api_addr": api_addr,
                "addr": raft_addr_of(addr),
                "raft_addr": addr,
                "voter": voters.contains(id),
                "reachable": reached.is_ok(),
                "leader": leader == Some(*id),
                "time": time,
            });
            if let Err(e) = reached {
                entry["error"] = json!(e);
            }
            (*id, entry)
        })
        .collect();
    entries.sort_by_key(|(id, _)| *id);
    let body = if call.params.get("ver").is_some_and(|v| v == "2") {
        json!({ "nodes": entries.into_iter().map(|(_, e)| e).collect::<Vec<_>>() })
    } else {
        Json::Object(entries.into_iter().map(|(id, e)| (id.to_string(), e)).collect())
    };
    respond(StatusCode::OK, &body, call.pretty)
}

/// `GET /metrics`: Prometheus text.
pub(super) async fn metrics(State(node): Node) -> HttpResponse {
    let mut response = Response::new(full(node.metrics_text()));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(crate::node::metrics::CONTENT_TYPE),
    );
    response
}

/// `GET /readyz`: 200 when the node can serve: its disk is healthy, its Raft runs and knows a leader, and
/// that leader answers over HTTP within `timeout` (30 s by default); otherwise 503 with the reason. With
/// `noleader` only the node itself is checked (up, disk healthy). With `sync` the node must also have
/// applied everything the leader had reported committed when the request arrived, waiting for that until
/// the timeout. As rqlite's `/readyz`.
pub(super) async fn readyz(State(node): Node, Extension(call): CallOf) -> HttpResponse {
    let started = Instant::now();
    let timeout = timeout_of(&call, PROBE_TIMEOUT);
    if let Some(trouble) = node.disk_trouble() {
        return error(StatusCode::SERVICE_UNAVAILABLE, trouble.message);
    }
    if call.params.contains_key("noleader") {
        return respond(StatusCode::OK, &json!({ "ready": true, "noleader": true }), call.pretty);
    }
    let (leader, addr) = match node.leader() {
        Some(leader) => leader,
        None if !node.raft_running() => return error(StatusCode::SERVICE_UNAVAILABLE, "raft has stopped"),
        None => return error(StatusCode::SERVICE_UNAVAILABLE, "no leader"),
    };
    if leader == node.id {
        // A leader cut off from its quorum keeps naming itself leader (openraft does not step it down), and
        // writes to it hang: it is ready only while a quorum acknowledged it within two election timeouts.
        let metrics = node.raft.metrics().borrow_watched().clone();
        let voters = metrics.membership_config.membership().voter_ids().count();
        let bound = Duration::from_millis(2 * node.raft.config().election_timeout_max);
        let acked = metrics.last_quorum_acked.as_ref().map(|at| openraft::Instant::elapsed(&**at));
        if voters > 1 && acked.is_none_or(|since| since >= bound) {
            let since = acked.map_or("never".to_owned(), |since| format!("{since:?} ago"));
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("this leader has not heard from a quorum of its {voters} voters (last {since})"),
            );
        }
    } else {
        let Some(http_addr) = crate::tcp::http_addr_of(&addr) else {
            return error(StatusCode::SERVICE_UNAVAILABLE, format!("leader {leader} has no HTTP address"));
        };
        if let (Err(e), _) = probe(&node, http_addr, timeout).await {
            return error(StatusCode::SERVICE_UNAVAILABLE, format!("leader {leader} not contactable: {e}"));
        }
    }
    if call.params.contains_key("sync") {
        let (committed, applied) = {
            let metrics = node.raft.metrics();
            let m = metrics.borrow_watched();
            (m.cluster_committed.as_ref().map(|c| c.index), m.last_applied.as_ref().map(|a| a.index))
        };
        if applied < committed {
            let left = timeout.saturating_sub(started.elapsed());
            let synced = node.raft.wait(Some(left)).applied_index_at_least(committed, "readyz sync").await;
            if synced.is_err() {
                let message = format!(
                    "not synced within {timeout:?}: applied {} of the {} entries the leader reported committed",
                    applied.unwrap_or(0),
                    committed.unwrap_or(0)
                );
                return error(StatusCode::SERVICE_UNAVAILABLE, message);
            }
        }
    }
    respond(StatusCode::OK, &json!({ "ready": true, "leader": leader }), call.pretty)
}
