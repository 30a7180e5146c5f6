//! `GET /db/backup`.

use std::sync::Arc;

use bytes::Bytes;
use hyper::{Response, StatusCode};

use super::*;
use crate::node::NodeShared;
use bop_sql::OpenMode;

use crate::node::bounds::backup_space;

/// `GET /db/backup`: a consistent copy of the database, taken on the leader: an ordinary SQLite file, or
/// with `fmt=sql` the SQL text that rebuilds it. The copy is written to a file in the data directory,
/// unlinked as soon as it is complete and open (only the descriptor keeps it; a crash before leaves a file
/// removed at the next start) and streamed from there, so memory stays bounded by one chunk whatever the
/// database's size. The leader's disk needs room for the copy while it is made and sent. With `compress`
/// (rqlite's parameter) the copy is sent as a gzip file (`application/gzip`), compressed in bounded memory:
/// a dump as it is written, a binary copy into a second unlinked file. rqlite's other parameters:
/// `noleader` (the front layer serves the receiving node's own copy instead of the leader's), `vacuum` (a
/// binary copy is VACUUMed before it is sent: no free pages; a dump has none anyway), and `tables=A,B`
/// with `fmt=sql` (only those tables, their indexes, triggers and `sqlite_sequence` rows).
pub(super) async fn backup(
    axum::extract::State(node): axum::extract::State<Arc<NodeShared>>,
    axum::Extension(call): axum::Extension<Arc<Call>>,
) -> HttpResponse {
    let (node, db, params) = (&node, call.db.as_str(), &call.params);
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let sql = match params.get("fmt").map(String::as_str) {
        None | Some("binary") => false,
        Some("sql") => true,
        Some(other) => {
            return error(StatusCode::BAD_REQUEST, format!("fmt {other:?}: bop backs up as binary or sql"))
        }
    };
    // rqlite's `compress`: the copy (either format) gzip-compressed, as a gzip file.
    let compress = params.contains_key("compress");
    let vacuum = params.contains_key("vacuum") && !sql;
    let tables: Option<Vec<String>> = params
        .get("tables")
        .map(|list| list.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect());
    match &tables {
        Some(_) if !sql => {
            return error(
                StatusCode::BAD_REQUEST,
                "tables= takes fmt=sql: a binary backup is the whole database",
            )
        }
        Some(names) if names.is_empty() => return error(StatusCode::BAD_REQUEST, "tables= names no table"),
        _ => {}
    }
    // At most `backups_max` copies exist at once (each takes disk until it is sent), and none that would
    // leave the log without room.
    let Ok(permit) = Arc::clone(&node.backups).try_acquire_owned() else {
        return busy(format!("{} backups are being made; retry", node.limits.backups_max));
    };
    let db_bytes = match node.manager.open_database(db).and_then(|d| d.snapshot()) {
        Ok(snapshot) => u64::from(snapshot.page_count()) * bop_storage::page_store::PAGE_SIZE as u64,
        Err(e) => return error(StatusCode::NOT_FOUND, format!("database {db:?}: {e}")),
    };
    // An SQL dump can be larger than the pages it describes, and VACUUM writes a second copy beside the
    // first; count those twice.
    let copy_bytes = if sql || vacuum { db_bytes.saturating_mul(2) } else { db_bytes };
    // A compressed binary copy exists beside the uncompressed one until it is complete (a dump is
    // compressed as it is written; counted the same, to be safe); gzip never grows data by more than a
    // small fraction.
    let copy_bytes = if compress { copy_bytes.saturating_mul(2).saturating_add(1 << 20) } else { copy_bytes };
    if let Err(e) = backup_space(&node.data_dir, copy_bytes, node.limits.backup_space_reserve_bytes) {
        return error(StatusCode::INSUFFICIENT_STORAGE, e);
    }
    let engine = Arc::clone(&node.engine);
    let name = db.to_owned();
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let target = node.data_dir.join(format!("backup-{}-{seq}.sqlite.tmp", std::process::id()));
    let gzipped = node.data_dir.join(format!("backup-{}-{seq}.gz.tmp", std::process::id()));
    let outcome = node
        .blocking
        .run(move || {
            let taken = (|| {
                let mut conn = engine
                    .open(&name, OpenMode::Existing)
                    .map_err(|e| (StatusCode::NOT_FOUND, format!("database {name:?}: {e}")))?;
                let internal =
                    |e: &dyn std::fmt::Display| (StatusCode::INTERNAL_SERVER_ERROR, format!("backup: {e}"));
                let sent = if sql {
                    // A dump is written through the compressor when compressed: one file, one pass.
                    let file = std::fs::File::create(&target).map_err(|e| internal(&e))?;
                    let out = std::io::BufWriter::new(file);
                    let mut dumped = |out: &mut dyn std::io::Write| {
                        let tables = tables.as_deref();
                        crate::node::dump::dump_sql(&mut conn, &mut &mut *out, tables).map_err(|e| match e {
                            crate::node::dump::DumpError::Unsupported(reason) => {
                                (StatusCode::BAD_REQUEST, reason)
                            }
                            other => internal(&other),
                        })
                    };
                    let mut out = if compress {
                        let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::default());
                        dumped(&mut encoder)?;
                        encoder.finish().map_err(|e| internal(&e))?
                    } else {
                        let mut out = out;
                        dumped(&mut out)?;
                        out
                    };
                    std::io::Write::flush(&mut out).map_err(|e| internal(&e))?;
                    &target
                } else {
                    // SQLite's backup API writes a file; a compressed copy is made from it.
                    conn.backup_to(&target).map_err(|e| internal(&e))?;
                    if vacuum {
                        // Stock SQLite on the copy, which nothing else has open.
                        let mut copy = bop_sql::Connection::open_stock(&target).map_err(|e| internal(&e))?;
                        copy.execute("VACUUM", &bop_sql::Params::None).map_err(|e| internal(&e))?;
                    }
                    if compress {
                        gzip_file(&target, &gzipped).map_err(|e| internal(&e))?;
                        &gzipped
                    } else {
                        &target
                    }
                };
                let file = std::fs::File::open(sent).map_err(|e| internal(&e))?;
                let len = file.metadata().map_err(|e| internal(&e))?.len();
                Ok((file, len))
            })();
            let _ = std::fs::remove_file(&target);
            let _ = std::fs::remove_file(&gzipped);
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
    let content_type = match (compress, sql) {
        (true, _) => "application/gzip",
        (false, true) => "application/sql",
        (false, false) => "application/octet-stream",
    };
    let headers = response.headers_mut();
    headers.insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    headers.insert(hyper::header::CONTENT_LENGTH, hyper::header::HeaderValue::from(len));
    response
}

/// Writes `from` gzip-compressed to `to`, in bounded memory.
fn gzip_file(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    let mut input = std::io::BufReader::new(std::fs::File::open(from)?);
    let output = std::io::BufWriter::new(std::fs::File::create(to)?);
    let mut encoder = flate2::write::GzEncoder::new(output, flate2::Compression::default());
    std::io::copy(&mut input, &mut encoder)?;
    let mut output = encoder.finish()?;
    std::io::Write::flush(&mut output)
}
