//! Passing a call a follower cannot answer to the leader's HTTP API (or naming the leader instead).

use std::collections::HashMap;

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
pub(super) enum ForwardFailure {
    /// The leader (this node id) could not be reached; nothing was sent.
    Unreachable(u64),
    /// No leader or address is known, or the leader did not answer in time.
    Other,
}

/// A call this follower cannot answer: with `redirect`, 503 naming the leader; otherwise the leader's own
/// answer, forwarded (503 naming it if it cannot be reached).
pub(super) async fn to_leader(
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
pub(super) fn not_leader(node: &NodeShared, pretty: bool) -> HttpResponse {
    let leader = node.leader();
    respond(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({ "error": "not the leader", "leader": leader.map(|(id, addr)| json!({ "id": id, "raft_addr": addr })) }),
        pretty,
    )
}
