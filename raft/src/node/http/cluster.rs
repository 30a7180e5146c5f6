//! Membership calls: `POST /join`, `DELETE /remove`.

use std::sync::Arc;

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

/// `POST /join {"id", "addr" (Raft address), "voter" (default true)}`: adds the node as a learner, waits
/// until it caught up (through a snapshot if the log it needs is purged), then promotes it to voter.
async fn join_node(node: &Arc<NodeShared>, bytes: &[u8], pretty: bool) -> HttpResponse {
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
async fn remove_node(node: &Arc<NodeShared>, bytes: &[u8], pretty: bool) -> HttpResponse {
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

type Node = State<Arc<NodeShared>>;
type CallOf = Extension<Arc<Call>>;

/// `POST /join`.
pub(super) async fn join(State(node): Node, Extension(call): CallOf, body: axum::body::Body) -> HttpResponse {
    match read_body(body).await {
        Ok(bytes) => join_node(&node, &bytes, call.pretty).await,
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

/// `GET /status`.
pub(super) async fn status(State(node): Node, Extension(call): CallOf) -> HttpResponse {
    respond(StatusCode::OK, &node.status(), call.pretty)
}

/// `GET /nodes`.
pub(super) async fn nodes(State(node): Node, Extension(call): CallOf) -> HttpResponse {
    respond(StatusCode::OK, &node.nodes(), call.pretty)
}

/// `GET /metrics`: Prometheus text.
pub(super) async fn metrics(State(node): Node) -> HttpResponse {
    let mut response = Response::new(full(node.metrics_text()));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

/// `GET /readyz`: 200 once a running Raft knows a leader.
pub(super) async fn readyz(State(node): Node, Extension(call): CallOf) -> HttpResponse {
    if let Some(trouble) = node.disk_trouble() {
        return error(StatusCode::SERVICE_UNAVAILABLE, trouble.message);
    }
    match node.leader() {
        Some(_) => respond(StatusCode::OK, &json!({ "ready": true }), call.pretty),
        None if !node.raft_running() => error(StatusCode::SERVICE_UNAVAILABLE, "raft has stopped"),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "no leader"),
    }
}
