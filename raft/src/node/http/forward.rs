//! Passing a call a follower cannot answer to the leader's HTTP API (or naming the leader instead).

use bytes::Bytes;
use hyper::{Method, Response, StatusCode};
use serde_json::json;

use super::*;
use crate::node::NodeShared;

/// Sends the request to the leader's HTTP API and passes its answer on (rqlite forwards writes and weak
/// reads sent to a follower): status and content type from the head, the body streamed through chunk by
/// chunk (a backup can be gigabytes). Fails when the leader or its HTTP address is unknown, cannot be
/// connected to within [`FORWARD_CONNECT_TIMEOUT`], or does not answer with a head in time.
pub(super) async fn forward(
    node: &NodeShared,
    method: &Method,
    path_and_query: &str,
    body: &mut Outgoing,
    authorization: Option<&hyper::header::HeaderValue>,
    timeout: Option<std::time::Duration>,
) -> Result<HttpResponse, ForwardFailure> {
    use futures_util::StreamExt;
    let (leader, addr) = node.leader().ok_or(ForwardFailure::Other)?;
    let target = crate::tcp::http_addr_of(&addr).ok_or(ForwardFailure::Other)?.to_owned();
    // Nothing was sent if this fails, so the request may go to another leader.
    let stream = match tokio::time::timeout(FORWARD_CONNECT_TIMEOUT, connect_node(node, &target)).await {
        Ok(Ok(stream)) => stream,
        _ => return Err(ForwardFailure::Unreachable(leader)),
    };
    // The leader builds a backup before it answers (its head carries the length), which takes a while for
    // a large database; so does a load, which it checks and commits first. rqlite's `timeout` bounds the
    // wait instead when given (the leader gets the parameter too, for its own waits).
    let slow = path_and_query.starts_with("/db/backup") || path_and_query.starts_with("/db/load");
    let head_timeout = timeout.unwrap_or(if slow { BACKUP_HEAD_TIMEOUT } else { FORWARD_TIMEOUT });
    let mut headers = vec![(FORWARDED_HEADER, node.id.to_string())];
    if let Some(value) = authorization.and_then(|v| v.to_str().ok()) {
        headers.push((hyper::header::AUTHORIZATION.as_str(), value.to_owned()));
    }
    let (content_type, outgoing) = body.take().ok_or(ForwardFailure::Other)?;
    if let Some(value) = content_type.as_ref().and_then(|v| v.to_str().ok()) {
        headers.push((hyper::header::CONTENT_TYPE.as_str(), value.to_owned()));
    }
    let exchange = async {
        let mut conn = crate::http_client::HttpConn::over(stream, &target).await?;
        conn.send_body(method.clone(), path_and_query, &headers, outgoing).await
    };
    let answer = match tokio::time::timeout(head_timeout, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => return Err(ForwardFailure::Other),
        Err(_) => return Err(ForwardFailure::TimedOut(leader, head_timeout)),
    };
    let (head, incoming) = answer.into_parts();
    // The body is passed on frame by frame as it arrives, each within FORWARD_TIMEOUT.
    let frames = http_body_util::BodyStream::new(incoming);
    let chunks = futures_util::stream::unfold(frames, |mut frames| async move {
        match tokio::time::timeout(FORWARD_TIMEOUT, frames.next()).await {
            Ok(None) => None,
            Ok(Some(Ok(frame))) => Some((Ok(frame.into_data().unwrap_or_default()), frames)),
            Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e)), frames)),
            Err(_) => Some((Err(std::io::Error::from(std::io::ErrorKind::TimedOut)), frames)),
        }
    })
    .filter(|chunk| std::future::ready(!matches!(chunk, Ok(bytes) if bytes.is_empty())));
    let mut response = Response::new(streamed(chunks));
    *response.status_mut() = head.status;
    for name in [hyper::header::CONTENT_TYPE, hyper::header::CONTENT_LENGTH, hyper::header::RETRY_AFTER] {
        if let Some(value) = head.headers.get(&name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    Ok(response)
}

/// The body of a call passed to the leader: bytes already read (which can be sent again), or the client's
/// upload, passed on as it arrives (once), with its content type.
pub(super) enum Outgoing {
    Bytes(Bytes),
    Stream(Option<(Option<hyper::header::HeaderValue>, axum::body::Body)>),
}

impl Outgoing {
    /// The content type to send and the body, or `None` once a stream was sent.
    fn take(&mut self) -> Option<(Option<hyper::header::HeaderValue>, crate::http_client::OutgoingBody)> {
        use http_body_util::BodyExt;
        match self {
            Outgoing::Bytes(bytes) => Some((None, crate::http_client::bytes_body(bytes.clone()))),
            Outgoing::Stream(upload) => upload.take().map(|(content_type, body)| {
                (content_type, body.map_err(std::io::Error::other).boxed_unsync())
            }),
        }
    }
}

/// Why a request could not be passed to the leader.
pub(super) enum ForwardFailure {
    /// The leader (this node id) could not be reached; nothing was sent.
    Unreachable(u64),
    /// No leader or address is known, or the exchange with the leader failed.
    Other,
    /// The leader (this node id) did not answer within this time (what became of the call is unknown).
    TimedOut(u64, std::time::Duration),
}

/// A call this follower cannot answer: with `redirect`, 301 to the leader's URL for the same path and query
/// (rqlite's contract); otherwise the leader's own answer, forwarded (503 naming it if it cannot be
/// reached).
pub(super) async fn to_leader(
    node: &NodeShared,
    call: &Call,
    method: &Method,
    path_and_query: &str,
    bytes: &[u8],
) -> HttpResponse {
    let body = Outgoing::Bytes(Bytes::copy_from_slice(bytes));
    to_leader_with(node, call, method, path_and_query, body).await
}

/// [`to_leader`] with any body: an upload is passed on as it arrives, and is tried on a second leader only
/// if it was not sent to the first.
pub(super) async fn to_leader_with(
    node: &NodeShared,
    call: &Call,
    method: &Method,
    path_and_query: &str,
    mut body: Outgoing,
) -> HttpResponse {
    let pretty = call.pretty;
    let authorization = call.authorization.as_ref();
    // A request another node forwarded here is never forwarded again: two nodes that each believe the
    // other leads would otherwise pass it back and forth.
    if call.forwarded {
        return not_leader(node, pretty);
    }
    if call.params.contains_key("redirect") {
        return redirect(node, path_and_query, pretty);
    }
    let timeout = call.params.get("timeout").and_then(|t| parse_duration(t));
    match forward(node, method, path_and_query, &mut body, authorization, timeout).await {
        Ok(response) => response,
        Err(ForwardFailure::Unreachable(tried)) => {
            // If the cluster already has another leader (the connection attempt may have taken a while),
            // try it once: nothing was sent to the first, so this cannot apply the request twice. Otherwise
            // the client hears at once that there is no reachable leader, and retries when it chooses.
            match node.leader() {
                Some((id, _)) if id != tried => {
                    forward(node, method, path_and_query, &mut body, authorization, timeout)
                        .await
                        .unwrap_or_else(|_| not_leader(node, pretty))
                }
                _ => not_leader(node, pretty),
            }
        }
        Err(ForwardFailure::Other) => not_leader(node, pretty),
        Err(ForwardFailure::TimedOut(leader, after)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the leader (node {leader}) did not answer within {after:?}; the call's outcome is unknown"
            ),
        ),
    }
}

/// `301 Moved Permanently` with `Location: http://LEADER_HTTP_ADDR/PATH?QUERY`, the URL this request has on
/// the leader (the query kept whole, `redirect` included, as rqlite does), and the leader named in the body
/// too; 503 naming what is known when the leader or its HTTP address is not.
pub(super) fn redirect(node: &NodeShared, path_and_query: &str, pretty: bool) -> HttpResponse {
    let Some((id, addr)) = node.leader() else { return not_leader(node, pretty) };
    let Some(http_addr) = crate::tcp::http_addr_of(&addr) else { return not_leader(node, pretty) };
    let location = format!("{}://{http_addr}{path_and_query}", scheme(node));
    let Ok(value) = hyper::header::HeaderValue::from_str(&location) else { return not_leader(node, pretty) };
    let body = json!({
        "error": "not the leader",
        "leader": { "id": id, "raft_addr": addr },
        "location": location,
    });
    let mut response = respond(StatusCode::MOVED_PERMANENTLY, &body, pretty);
    response.headers_mut().insert(hyper::header::LOCATION, value);
    response
}

/// 503 naming the leader (its Raft address), for a write or a weak read sent to a follower.
pub(super) fn not_leader(node: &NodeShared, pretty: bool) -> HttpResponse {
    let leader = node.leader();
    respond(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({ "error": "not the leader", "leader": leader.map(|(id, addr)| json!({ "id": id, "raft_addr": addr })) }),
        pretty,
    )
}
