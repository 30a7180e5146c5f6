//! The node's HTTP API, compatible with rqlite's for the calls below (documented in docs/design.md).
//!
//! `POST /db/execute`, `GET|POST /db/query`, `POST /db/request` (reads and writes mixed), `GET /db/backup` (`level=none|weak|linearizable|strong`, `associative`,
//! `pretty`, `timings`, `db=NAME` for a named database, `q=SQL` for GET), `GET /status`, `GET /nodes`,
//! `GET /readyz`. Bodies are bounded; malformed input is a 4xx with a JSON error and writes nothing.

mod backup;
mod cluster;
mod db;
mod forward;
mod read;
pub(crate) use read::ReadIndexBatches;
mod restore;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Frame;
use hyper::server::conn::http1;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value as Json};

use super::NodeShared;
use crate::auth::{Caller, Denied, Perm};
use crate::net::Listener;
use forward::to_leader;

/// Largest request body accepted.
pub const BODY_BYTES_MAX: usize = 4 << 20;
/// Bytes of a streamed body (a backup, or an answer passed on from the leader) read and sent at a time.
pub const STREAM_CHUNK_BYTES: usize = 1 << 20;
/// Longest wait for the leader's head, and for each chunk of its body, when forwarding.
pub(super) const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Longest wait for a connection to the leader when forwarding (a leader whose machine is down never
/// answers the connection attempt at all).
pub(super) const FORWARD_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);
/// Longest wait for the head of a forwarded backup (the leader copies the whole database first).
pub(super) const BACKUP_HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);
/// Marks a request one node forwarded to another (its value is the forwarding node's id).
pub(super) const FORWARDED_HEADER: &str = "x-bop-forwarded-by";
/// The database used when a request names none.
pub const DEFAULT_DATABASE: &str = "main";

pub(super) type HttpBody = BoxBody<Bytes, std::io::Error>;
pub(super) type HttpResponse = Response<HttpBody>;

/// A body held whole in memory.
pub(super) fn full(bytes: impl Into<Bytes>) -> HttpBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// A body streamed from `stream` in chunks (memory bounded by one chunk).
pub(super) fn streamed(
    stream: impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static,
) -> HttpBody {
    use futures_util::StreamExt;
    BodyExt::boxed(StreamBody::new(stream.map(|chunk| chunk.map(Frame::data))))
}

pub(super) fn respond(status: StatusCode, body: &Json, pretty: bool) -> HttpResponse {
    let text =
        if pretty { serde_json::to_vec_pretty(body) } else { serde_json::to_vec(body) }.unwrap_or_default();
    let mut response = Response::new(full(text));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    response
}

pub(super) fn error(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    respond(status, &json!({ "error": message.into() }), false)
}

/// 503 with `Retry-After: 1`: a bound is full for now.
pub(super) fn busy(message: impl Into<String>) -> HttpResponse {
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, message);
    response.headers_mut().insert(hyper::header::RETRY_AFTER, hyper::header::HeaderValue::from_static("1"));
    response
}

/// A query string's key or value decoded as a form encodes it: `+` is a space, `%XX` a byte (a `%` not
/// followed by two hex digits stays), invalid UTF-8 replaced.
pub(super) fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned()
}

/// The read consistency levels (`level=`), compared without regard to case as rqlite does. `auto` is
/// rqlite's "the node decides": `none` on a non-voter (a learner), `weak` on a voter; [`front`] resolves it.
pub(super) const LEVELS: &[&str] = &["none", "weak", "linearizable", "strong", "auto"];

/// Parameters whose values are Go-style durations (rqlite's `time.ParseDuration`).
const DURATION_PARAMS: &[&str] = &["timeout", "freshness", "db_timeout", "linearizable_timeout"];

/// The version every answer names in [`VERSION_HEADER`].
pub(super) const VERSION: &str = concat!("bop-", env!("CARGO_PKG_VERSION"));
/// rqlite's version header, which clients use to recognise a node.
pub(super) const VERSION_HEADER: &str = "x-rqlite-version";

/// A request's query parameters. Like rqlite, unknown parameters are ignored (clients send `retries`,
/// `queue`, keys of their own); the values of known ones are checked, and a bad one is an error naming it:
/// `level` must be a known level (its case does not matter; it is kept in lower case), the durations must
/// parse, `retries` is an integer and `q`, when present, is not empty. A zero `freshness` or `db_timeout`
/// (Go's zero duration, which some clients send by default) sets no bound, so it is dropped.
pub(crate) fn query_params(query: Option<&str>) -> Result<HashMap<String, String>, String> {
    let mut params = HashMap::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        // The first value of a repeated key counts, as in rqlite.
        params.entry(percent_decode(key)).or_insert_with(|| percent_decode(value));
    }
    if let Some(level) = params.get_mut("level") {
        *level = level.to_ascii_lowercase();
        if !LEVELS.contains(&level.as_str()) {
            return Err(format!("unknown level {level:?} ({})", LEVELS.join(", ")));
        }
    }
    for key in DURATION_PARAMS {
        if let Some(value) = params.get(*key) {
            match parse_duration(value) {
                Some(d) if d.is_zero() && matches!(*key, "freshness" | "db_timeout") => {
                    params.remove(*key);
                }
                Some(_) => {}
                None => {
                    return Err(format!("{key} {value:?} is not a valid duration (e.g. 500ms, 2s, 1m30s)"))
                }
            }
        }
    }
    if let Some(min_index) = params.get("min_index") {
        if min_index.parse::<u64>().is_err() {
            return Err(format!("min_index {min_index:?} is not a log index (a non-negative integer)"));
        }
    }
    if let Some(retries) = params.get("retries") {
        if retries.parse::<u32>().is_err() {
            return Err(format!("retries {retries:?} is not a valid integer"));
        }
    }
    if params.get("q").is_some_and(String::is_empty) {
        return Err("q is empty: GET /db/query needs q=SQL".into());
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
    let routes = router(Arc::clone(&node));
    // Dropped with the server, which ends the watch.
    let _reloads = node.http_tls.clone().map(|tls| AbortOnDrop(tokio::spawn(tls.watch())));
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
        let service = hyper_util::service::TowerToHyperService::new(routes.clone());
        let tls = node.http_tls.clone();
        connections.spawn(async move {
            let _permit = permit;
            let stream: crate::net::BoxStream = match tls {
                None => stream,
                // The handshake shares the head's deadline: a client that never finishes it is dropped.
                Some(tls) => match tokio::time::timeout(limits.http_header_timeout, tls.accept(stream)).await
                {
                    Ok(Ok(stream)) => Box::new(stream),
                    Ok(Err(e)) => {
                        tracing::debug!("HTTP TLS handshake refused: {e}");
                        return;
                    }
                    Err(_) => return,
                },
            };
            let _ = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.http_header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Stops a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Connects to another node's HTTP API at `addr` (over TLS when this node's API speaks it).
pub(super) async fn connect_node(node: &NodeShared, addr: &str) -> std::io::Result<crate::net::BoxStream> {
    let stream = node.net.connect(addr).await?;
    match &node.http_tls {
        None => Ok(stream),
        Some(tls) => Ok(Box::new(crate::https::connect(&tls.client(), stream, addr).await?)),
    }
}

/// The scheme of this node's (and so every node's) HTTP API.
pub(super) fn scheme(node: &NodeShared) -> &'static str {
    if node.http_tls.is_some() {
        "https"
    } else {
        "http"
    }
}

/// Answers a connection past the limit with 503 and closes it (at most one second spent on it).
pub(super) async fn refuse_connection(mut stream: crate::net::BoxStream, max: usize) {
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

/// A request's body, at most [`BODY_BYTES_MAX`] bytes (413 past it).
pub(super) async fn read_body(body: axum::body::Body) -> Result<Bytes, HttpResponse> {
    match Limited::new(body, BODY_BYTES_MAX).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body: {e} (limit {BODY_BYTES_MAX} bytes)"),
        )),
    }
}

/// What the front layer parsed for a call's handler: its query parameters and the two everyone uses, and
/// who sent it.
#[derive(Debug, Clone)]
pub(super) struct Call {
    pub(super) params: HashMap<String, String>,
    pub(super) pretty: bool,
    pub(super) db: String,
    /// Another node forwarded the call here (it is never forwarded again).
    pub(super) forwarded: bool,
    /// The caller's `Authorization` header, passed on when the call is forwarded to the leader (which
    /// judges its permissions again).
    pub(super) authorization: Option<hyper::header::HeaderValue>,
    /// Who sent it, when the node checks permissions.
    pub(super) caller: Option<Caller>,
}

impl Call {
    /// The answer refusing the call (401 or 403) unless the caller holds one of `perms` (for the call's
    /// database when `per_database`); `None` also when the node checks no permissions.
    pub(super) fn refusal(
        &self,
        node: &NodeShared,
        perms: &[Perm],
        per_database: bool,
    ) -> Option<HttpResponse> {
        let (Some(auth), Some(caller)) = (&node.auth, &self.caller) else { return None };
        let db = per_database.then_some(self.db.as_str());
        auth.require(caller, perms, db).err().map(denied)
    }
}

/// The answer to a refused call: 401 with `WWW-Authenticate` (credentials missing or wrong), or 403.
pub(super) fn denied(why: Denied) -> HttpResponse {
    match why {
        Denied::Unauthenticated(message) => {
            let mut response = error(StatusCode::UNAUTHORIZED, message);
            response.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Basic realm=\"bop\", charset=\"UTF-8\""),
            );
            response
        }
        Denied::Forbidden(message) => error(StatusCode::FORBIDDEN, message),
    }
}

/// The permissions a call needs (any one of them), and whether they are judged per database. `/db/request`
/// and `/join` are judged again by their handlers once the body says which they need (a write or only
/// reads; a voter or a non-voter). Routes not listed need none (they answer 404).
fn needed(path: &str) -> (&'static [Perm], bool) {
    match path {
        "/db/execute" => (&[Perm::Execute], true),
        "/db/query" => (&[Perm::Query], true),
        // The read's database (`db`), which the asking follower names.
        "/read-index" => (&[Perm::Query], true),
        "/db/request" => (&[Perm::Execute, Perm::Query], true),
        "/db/backup" => (&[Perm::Backup], true),
        "/db/load" => (&[Perm::Load], true),
        "/join" => (&[Perm::Join, Perm::JoinReadOnly], false),
        "/remove" => (&[Perm::Remove], false),
        "/leader" => (&[Perm::LeaderOps], false),
        "/status" | "/nodes" | "/metrics" => (&[Perm::Status], false),
        "/readyz" => (&[Perm::Ready], false),
        _ => (&[], false),
    }
}

/// The API's routes and the tower layers around them, outermost first:
///
/// 1. tracing: a span per request (`tower_http=debug` shows each one and its answer);
/// 2. the version header on every answer;
/// 3. at most `http_requests_max` requests at once, one more answered 503 with `Retry-After` at once;
/// 4. [`front`]: parameters checked, calls that need the leader passed to it from a follower, timings and
///    latency recorded;
/// 5. the JSON shape (`{"error": ...}`) for the answers of the two layers below, which have no body;
/// 6. bodies past [`BODY_BYTES_MAX`] refused with 413, before they are read when their length is declared
///    (but a load's upload, which `/db/load` bounds itself);
/// 7. every call but a backup or a load (whose copy of a large database may take long) answered within
///    `http_request_timeout`, or 503 and its work dropped (which stops its SQL).
fn router(node: Arc<NodeShared>) -> Router {
    use tower::ServiceBuilder;
    use tower_http::timeout::TimeoutLayer;
    let limits = node.limits;
    let timed = Router::new()
        .route("/db/execute", post(db::execute))
        .route("/db/query", get(db::query_get).post(db::query_post))
        .route("/db/request", post(db::request))
        .route("/read-index", get(read::read_index))
        .route("/join", post(cluster::join))
        .route("/remove", post(cluster::remove).delete(cluster::remove))
        .route("/leader", post(cluster::leader))
        .route("/status", get(cluster::status))
        .route("/nodes", get(cluster::nodes))
        .route("/metrics", get(cluster::metrics))
        .route("/readyz", get(cluster::readyz))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, limits.http_request_timeout));
    let trace = tower_http::trace::TraceLayer::new_for_http()
        .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG));
    let bounded = Router::new()
        .merge(timed)
        .route("/db/backup", get(backup::backup))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(BODY_BYTES_MAX));
    // A load's upload is bounded by the load itself (the largest database one log entry carries), and it
    // is not timed as a whole (only its pauses are).
    Router::new()
        .merge(bounded)
        .route("/db/load", post(restore::load))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::map_response_with_state(Arc::clone(&node), json_errors))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&node), front))
        .layer(
            ServiceBuilder::new()
                .layer(axum::error_handling::HandleErrorLayer::new(overloaded))
                .load_shed()
                .layer(tower::limit::GlobalConcurrencyLimitLayer::new(limits.http_requests_max)),
        )
        .layer(tower_http::set_header::SetResponseHeaderLayer::overriding(
            hyper::header::HeaderName::from_static(VERSION_HEADER),
            hyper::header::HeaderValue::from_static(VERSION),
        ))
        .layer(cors(&node.cors_origins))
        .layer(trace)
        .with_state(node)
}

/// CORS for the configured origins (none: no CORS headers, and browsers keep other origins' pages from
/// reading answers): their preflights are answered before any other layer (a preflight carries no
/// credentials), and answers to them say the origin may read them, credentials included.
fn cors(
    origins: &[String],
) -> tower::util::Either<tower_http::cors::CorsLayer, tower::layer::util::Identity> {
    use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
    use hyper::Method;
    let allowed: Vec<HeaderValue> = origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    if allowed.is_empty() {
        return tower::util::Either::Right(tower::layer::util::Identity::new());
    }
    tower::util::Either::Left(
        tower_http::cors::CorsLayer::new()
            .allow_origin(tower_http::cors::AllowOrigin::list(allowed))
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([CONTENT_TYPE, AUTHORIZATION])
            .allow_credentials(true)
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// The answer past `http_requests_max` (the only error the layers under it raise).
async fn overloaded(e: axum::BoxError) -> HttpResponse {
    if e.is::<tower::load_shed::error::Overloaded>() {
        busy("too many requests in flight; retry")
    } else {
        error(StatusCode::INTERNAL_SERVER_ERROR, format!("request failed: {e}"))
    }
}

/// Gives the bodiless answers of the body limit and the request timeout bop's JSON error shape.
async fn json_errors(
    State(node): State<Arc<NodeShared>>,
    response: axum::response::Response,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let is_json = response
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return response;
    }
    match response.status() {
        StatusCode::PAYLOAD_TOO_LARGE => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than the limit of {BODY_BYTES_MAX} bytes"),
        )
        .into_response(),
        StatusCode::SERVICE_UNAVAILABLE => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "request not answered within the limit of {:?}; its work was stopped",
                node.limits.http_request_timeout
            ),
        )
        .into_response(),
        _ => response,
    }
}

async fn no_route(request: Request) -> HttpResponse {
    error(StatusCode::NOT_FOUND, format!("no route for {}", request.uri().path()))
}

async fn wrong_method(request: Request) -> HttpResponse {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not take {}", request.uri().path(), request.method()),
    )
}

/// Runs before every route: refuses bad values of known parameters, identifies the caller and refuses a
/// call it may not make (when the node has users), sends writes, leader reads, backups and membership calls
/// that reach a follower to the leader (unless the client asked for a redirect), and records the call's
/// latency (and `timings`).
async fn front(
    State(node): State<Arc<NodeShared>>,
    request: Request,
    next: Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let started = Instant::now();
    let mut params = match query_params(request.uri().query()) {
        Ok(params) => params,
        Err(e) => return error(StatusCode::BAD_REQUEST, e).into_response(),
    };
    if let Some(level) = params.get_mut("level").filter(|level| *level == "auto") {
        *level = if node.is_voter() { "weak" } else { "none" }.to_owned();
    }
    if let Some(refused) = browser_refusal(&request, &node.cors_origins) {
        return refused.into_response();
    }
    let authorization = request.headers().get(hyper::header::AUTHORIZATION).cloned();
    let caller = match &node.auth {
        None => None,
        Some(auth) => match auth.identify(authorization.as_ref().map(|v| v.as_bytes())).await {
            Ok(caller) => Some(caller),
            Err(why) => return denied(why).into_response(),
        },
    };
    let timings = params.contains_key("timings");
    let path = request.uri().path().to_owned();
    // rqlite's `noleader` asks for the receiving node's own copy of a backup.
    let needs_leader = matches!(path.as_str(), "/db/execute" | "/db/load" | "/join" | "/remove" | "/leader")
        || (path == "/db/backup" && !params.contains_key("noleader"))
        || (path == "/db/query" && !read::reads_locally(&params));
    let pretty = params.contains_key("pretty");
    let db = params.get("db").cloned().unwrap_or_else(|| DEFAULT_DATABASE.to_owned());
    let forwarded = request.headers().contains_key(FORWARDED_HEADER);
    let call = Call { params, pretty, db, forwarded, authorization, caller };
    let (perms, per_database) = needed(&path);
    if let Some(refused) = call.refusal(&node, perms, per_database) {
        return refused.into_response();
    }
    let mut response = if needs_leader && !node.is_leader() {
        let method = request.method().clone();
        let path_and_query =
            request.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| path.clone());
        if path == "/db/load" {
            // An upload is passed on as it arrives (the leader bounds it).
            let content_type = request.headers().get(hyper::header::CONTENT_TYPE).cloned();
            let upload = forward::Outgoing::Stream(Some((content_type, request.into_body())));
            forward::to_leader_with(&node, &call, &method, &path_and_query, upload).await.into_response()
        } else {
            match read_body(request.into_body()).await {
                Ok(bytes) => to_leader(&node, &call, &method, &path_and_query, &bytes).await,
                Err(response) => response,
            }
            .into_response()
        }
    } else {
        let mut request = request;
        request.extensions_mut().insert(Arc::new(call));
        next.run(request).await
    };
    if timings {
        let took = started.elapsed().as_secs_f64();
        response.headers_mut().insert(
            "x-bop-time-s",
            hyper::header::HeaderValue::from_str(&format!("{took:.6}"))
                .unwrap_or(hyper::header::HeaderValue::from_static("0")),
        );
    }
    node.record_latency(started.elapsed());
    response
}

/// Content types of a form, which a browser sends cross-site without asking the server first: refused on
/// every call that may change something. bop takes JSON (`application/json`, or no content type) and text.
const FORM_TYPES: &[&str] = &["application/x-www-form-urlencoded", "multipart/form-data"];

/// Browser safety for a POST, PUT or DELETE (the API has no state-changing GET: `/db/query` refuses writes).
/// A web page may not make a visitor's browser call a node it can reach (with credentials the browser
/// remembered) unless its origin is one of `allowed` (CORS): a call a browser marks as cross-origin
/// (`Sec-Fetch-Site` other than `same-origin` or `none`, or an `Origin` that is not the `Host` it was sent
/// to) from any other origin is 403; a form body is 415 from anyone. Clients other than browsers send
/// neither header.
fn browser_refusal(request: &Request, allowed: &[String]) -> Option<HttpResponse> {
    use hyper::header::{HeaderName, CONTENT_TYPE, HOST, ORIGIN};
    use hyper::Method;
    if !matches!(*request.method(), Method::POST | Method::PUT | Method::DELETE) {
        return None;
    }
    let header = |name: &HeaderName| request.headers().get(name).map(|v| v.to_str().unwrap_or("?"));
    let site = header(&HeaderName::from_static("sec-fetch-site"));
    let cross_site = site.is_some_and(|site| site != "same-origin" && site != "none");
    let foreign_origin = header(&ORIGIN).is_some_and(|origin| {
        let origin_host = origin.split_once("://").map(|(_, host)| host);
        origin_host.is_none() || origin_host != header(&HOST)
    });
    let origin_allowed = header(&ORIGIN).is_some_and(|origin| allowed.iter().any(|a| a == origin));
    if (cross_site || foreign_origin) && !origin_allowed {
        return Some(error(
            StatusCode::FORBIDDEN,
            "a cross-origin call from a browser is refused (its origin is not one this API allows, --http-cors-origin)",
        ));
    }
    let kind = header(&CONTENT_TYPE)?.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    FORM_TYPES.contains(&kind.as_str()).then(|| {
        error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "a body of type {kind} is refused (a browser form's); send Content-Type: application/json"
            ),
        )
    })
}

/// A Go-style duration as rqlite takes it (`time.ParseDuration`): `0`, or one or more numbers each with a
/// unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), e.g. `500ms`, `1.5s`, `1m30s`; `None` when it is not one
/// (negative durations are refused).
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    if text == "0" {
        return Some(std::time::Duration::ZERO);
    }
    let mut rest = text;
    let mut secs = 0.0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let split = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (number, tail) = rest.split_at(split);
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let value: f64 = number.parse().ok()?;
        secs += match unit {
            "ns" => value / 1e9,
            "us" | "µs" => value / 1e6,
            "ms" => value / 1e3,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            _ => return None,
        };
        rest = next;
    }
    std::time::Duration::try_from_secs_f64(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn query_strings_decode_as_forms_encode_them() {
        assert_eq!(super::percent_decode("a+b%20c%2B%zz%4"), "a b c+%zz%4");
        assert_eq!(super::percent_decode("SELECT%20%2A%20FROM%20t"), "SELECT * FROM t");
        assert_eq!(super::percent_decode("%C3%A9%FF"), "\u{e9}\u{fffd}");
    }

    #[test]
    fn durations_parse_like_rqlite_takes_them() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("10us"), Some(Duration::from_micros(10)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h0.5m"), Some(Duration::from_secs(3630)));
        for bad in ["", "s", "10", "10 s", "1x", "-1s", "1e999h", "1s5", "00", "1.2.3s"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }
}
