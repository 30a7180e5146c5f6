//! `POST /db/load`: a database restored from an uploaded SQLite file or SQL dump, through Raft.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::Extension;
use bop_sql::{Connection, Limits, Params, SqlError, Value};
use hyper::StatusCode;
use serde_json::json;

use super::db::disk_refusal;
use super::*;
use crate::node::bounds::{backup_space, may_create_database, request_limits, Cancel};
use crate::node::writer::{Job, RestoreJob};
use crate::node::NodeShared;

/// An upload may be this many times the largest database a load can write (a dump is longer than the
/// pages it fills, and a file may hold free pages that VACUUM drops).
const UPLOAD_FACTOR: u64 = 4;
/// Longest one statement of a dump may be.
const STATEMENT_BYTES_MAX: usize = BODY_BYTES_MAX;
/// Longest the upload may pause between two pieces of its body.
const UPLOAD_STALL_MAX: std::time::Duration = std::time::Duration::from_secs(30);
/// Longest a dump's SQL may run, unless `db_timeout` says otherwise.
const DUMP_TIME_MAX: std::time::Duration = std::time::Duration::from_secs(600);
/// The first 16 bytes of every SQLite database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// `POST /db/load` (rqlite's): the database (`db`, default `main`) is replaced, whole, by the uploaded
/// SQLite file (`application/octet-stream`; any body that starts with SQLite's header) or by the database
/// an SQL dump (`text/plain`, e.g. from `/db/backup?fmt=sql` or `sqlite3 .dump`) builds in an empty
/// database. It goes through the database's writer as one commit, one Raft entry, so every node gets it,
/// ordered with the writes around it, and is answered once applied here.
///
/// Memory stays bounded by one piece of the body (or one statement of a dump): the upload is written to a
/// file in the data directory (unlinked when done, removed at the next start after a crash), checked by
/// stock SQLite (a dump runs into a scratch database there), made bop's page size and rollback-journal
/// mode, and must pass `integrity_check`; anything wrong is refused (400; 413 past the size bounds) with
/// the database unchanged. One load runs at a time on a node; a follower passes the upload on to the
/// leader as it arrives.
pub(super) async fn load(
    State(node): State<Arc<NodeShared>>,
    Extension(call): Extension<Arc<Call>>,
    request: Request,
) -> HttpResponse {
    let (node, db, params, pretty) = (&node, call.db.as_str(), &call.params, call.pretty);
    if let Some(refused) = disk_refusal(node) {
        return refused;
    }
    if let Err(e) = may_create_database(&node.manager, db, node.limits.databases_max) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let mut limits = match request_limits(&node.engine, params) {
        Ok(limits) => limits,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if !params.contains_key("db_timeout") {
        limits.time_max = Some(DUMP_TIME_MAX);
    }
    let Ok(_permit) = node.restoring.try_acquire() else {
        return busy("a load is running on this node; retry when it is done");
    };
    let pages_max = node.commit_pages_max as u64;
    let database_max = pages_max * bop_storage::page_store::PAGE_SIZE as u64;
    let upload_max = database_max.saturating_mul(UPLOAD_FACTOR);
    let declared = request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(length) = declared.filter(|length| *length > upload_max) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "a load of {length} bytes: bop loads uploads up to {upload_max} bytes, for a database of at \
                 most {database_max} bytes (what one log entry carries)"
            ),
        );
    }
    let content_type = request
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    // The upload, then at most one copy of the database beside it (a scratch database, or VACUUM's).
    let space = declared.unwrap_or(upload_max).saturating_add(database_max.saturating_mul(2));
    if let Err(e) = backup_space(&node.data_dir, space, node.limits.backup_space_reserve_bytes) {
        return error(StatusCode::INSUFFICIENT_STORAGE, e);
    }
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let stem = format!("restore-{}-{seq}", std::process::id());
    let upload = node.data_dir.join(format!("{stem}.upload.tmp"));
    let mut files = TempFiles(vec![upload.clone()]);
    let (length, head) = match receive(request.into_body(), &upload, upload_max).await {
        Ok(received) => received,
        Err(refusal) => return refusal,
    };
    let binary = head.starts_with(SQLITE_HEADER);
    let dump = match content_type.as_deref() {
        _ if binary => false,
        Some("application/octet-stream")
        | Some("application/x-sqlite3")
        | Some("application/vnd.sqlite3") => return error(
            StatusCode::BAD_REQUEST,
            "the upload is not an SQLite database file (it does not start with SQLite's header); send an \
                 SQL dump as text/plain",
        ),
        _ => true,
    };
    let scratch = node.data_dir.join(format!("{stem}.scratch.tmp"));
    files.0.push(scratch.clone());
    let cancel = Cancel::default();
    let _interrupt_on_drop = cancel.on_drop();
    let checking = cancel.clone();
    let pages_bound = u32::try_from(pages_max).unwrap_or(u32::MAX);
    let checked = node
        .blocking
        .run(move || -> Result<Checked, (StatusCode, String)> {
            let refused = |e: SqlError| (StatusCode::BAD_REQUEST, format!("the upload was refused: {e}"));
            let (source, statements) = if dump {
                let bounded = Limits { rows_max: Some(10_000), bytes_max: Some(16 << 20), ..limits };
                let mut conn = Connection::open_scratch(&scratch, pages_bound, bounded).map_err(internal)?;
                checking.attach(&conn);
                let file = std::fs::File::open(&upload).map_err(internal)?;
                let mut reader = std::io::BufReader::with_capacity(64 << 10, file);
                let ran = conn.run_script(&mut reader, STATEMENT_BYTES_MAX).map_err(|e| match e {
                    e if e.to_string().contains("full") => (
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!(
                            "the dump builds a database larger than one load can write ({pages_max} pages of \
                             {} bytes): {e}",
                            bop_storage::page_store::PAGE_SIZE
                        ),
                    ),
                    e => refused(e),
                })?;
                (scratch, Some(ran.statements))
            } else {
                (upload, None)
            };
            let pages = check_source(&source, pages_max).map_err(|e| match e {
                CheckError::Refused(why) => {
                    (StatusCode::BAD_REQUEST, format!("the upload was refused: {why}"))
                }
                CheckError::TooLarge(why) => (StatusCode::PAYLOAD_TOO_LARGE, why),
            })?;
            Ok(Checked { source, pages, statements })
        })
        .await;
    let checked = match checked {
        Ok(Ok(checked)) => checked,
        Ok(Err((status, message))) => return error(status, message),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("checking the upload: {e}")),
    };
    let (answer, answered) = tokio::sync::oneshot::channel();
    let job = Job::Restore(RestoreJob { source: checked.source.clone(), answer });
    if let Err(e) = node.writers.submit(node, db, job, node.limits.writers_queued_max) {
        return busy(e);
    }
    let outcome = answered.await;
    drop(files);
    match outcome {
        Ok(Ok(())) => {
            let mut loaded = json!({
                "db": db,
                "format": if dump { "sql" } else { "sqlite" },
                "upload_bytes": length,
                "pages": checked.pages,
            });
            if let Some(statements) = checked.statements {
                loaded["statements"] = json!(statements);
            }
            respond(StatusCode::OK, &json!({ "results": [], "loaded": loaded }), pretty)
        }
        Ok(Err(e)) if e.to_string().contains("not the leader") => super::forward::not_leader(node, pretty),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, format!("the load was not committed: {e}")),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the database's writer stopped before the load was committed: its outcome is unknown",
        ),
    }
}

/// A checked upload, ready to be written.
struct Checked {
    source: PathBuf,
    pages: u32,
    statements: Option<u64>,
}

/// Files removed when the call ends, however it ends.
struct TempFiles(Vec<PathBuf>);

impl Drop for TempFiles {
    fn drop(&mut self) {
        for path in &self.0 {
            for suffix in ["", "-journal", "-wal", "-shm"] {
                let mut name = path.clone().into_os_string();
                name.push(suffix);
                let _ = std::fs::remove_file(name);
            }
        }
    }
}

fn internal(e: impl std::fmt::Display) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, format!("load: {e}"))
}

/// Writes the request's body to `path` (at most `max` bytes: 413 past it; each piece within
/// [`UPLOAD_STALL_MAX`]: 408 after), fsync not needed (it is read back before the call ends or never);
/// returns its length and its first 16 bytes.
async fn receive(body: axum::body::Body, path: &Path, max: u64) -> Result<(u64, Vec<u8>), HttpResponse> {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    let file = tokio::fs::File::create(path)
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, format!("load: {}: {e}", path.display())))?;
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut stream = body.into_data_stream();
    let (mut length, mut head) = (0u64, Vec::with_capacity(16));
    loop {
        let piece = match tokio::time::timeout(UPLOAD_STALL_MAX, stream.next()).await {
            Err(_) => {
                return Err(error(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("the upload stalled for {UPLOAD_STALL_MAX:?}"),
                ))
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(error(StatusCode::BAD_REQUEST, format!("reading the upload: {e}")))
            }
            Ok(Some(Ok(piece))) => piece,
        };
        length += piece.len() as u64;
        if length > max {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the upload passed {max} bytes, the most a load takes"),
            ));
        }
        let wanted = 16usize.saturating_sub(head.len()).min(piece.len());
        head.extend_from_slice(&piece[..wanted]);
        out.write_all(&piece)
            .await
            .map_err(|e| error(StatusCode::INSUFFICIENT_STORAGE, format!("writing the upload: {e}")))?;
    }
    out.flush()
        .await
        .map_err(|e| error(StatusCode::INSUFFICIENT_STORAGE, format!("writing the upload: {e}")))?;
    if length == 0 {
        return Err(error(StatusCode::BAD_REQUEST, "the upload is empty"));
    }
    Ok((length, head))
}

enum CheckError {
    Refused(String),
    TooLarge(String),
}

/// Makes the SQLite file at `path` fit to be loaded, with stock SQLite: rollback-journal mode, bop's page
/// size (VACUUM converts it), `integrity_check` ok, at most `pages_max` pages. Returns its page count.
fn check_source(path: &Path, pages_max: u64) -> Result<u32, CheckError> {
    let refused = |e: SqlError| CheckError::Refused(e.to_string());
    let mut conn = Connection::open_stock(path).map_err(refused)?;
    let single = |conn: &mut Connection, sql: &str| -> Result<Value, CheckError> {
        let rows = conn.query(sql, &Params::None).map_err(refused)?;
        rows.rows
            .into_iter()
            .next()
            .and_then(|row| row.into_iter().next())
            .ok_or_else(|| CheckError::Refused(format!("{sql} gave no answer")))
    };
    if single(&mut conn, "PRAGMA journal_mode")? == Value::Text("wal".into()) {
        single(&mut conn, "PRAGMA journal_mode=DELETE")?;
    }
    let page_size = bop_storage::page_store::PAGE_SIZE as i64;
    if single(&mut conn, "PRAGMA page_size")? != Value::Integer(page_size) {
        conn.execute(&format!("PRAGMA page_size={page_size}; VACUUM"), &Params::None).map_err(refused)?;
        if single(&mut conn, "PRAGMA page_size")? != Value::Integer(page_size) {
            return Err(CheckError::Refused(format!("its page size could not be made {page_size} bytes")));
        }
    }
    let check = conn.query("PRAGMA integrity_check(20)", &Params::None).map_err(refused)?;
    let problems: Vec<String> = check
        .rows
        .iter()
        .flatten()
        .map(|v| match v {
            Value::Text(t) => t.clone(),
            other => format!("{other:?}"),
        })
        .collect();
    if problems != ["ok"] {
        return Err(CheckError::Refused(format!("integrity_check: {}", problems.join("; "))));
    }
    let pages = match single(&mut conn, "PRAGMA page_count")? {
        Value::Integer(n) => n,
        other => return Err(CheckError::Refused(format!("page_count {other:?}"))),
    };
    if pages as u64 > pages_max {
        return Err(CheckError::TooLarge(format!(
            "the database is {pages} pages of {page_size} bytes; one load writes at most {pages_max} (what one \
             log entry carries)"
        )));
    }
    u32::try_from(pages).map_err(|_| CheckError::Refused(format!("page_count {pages}")))
}
