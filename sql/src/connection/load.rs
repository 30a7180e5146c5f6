//! Loading a whole database (rqlite's `/db/load`): an SQL script read and run statement by statement, so
//! that a dump of any size takes memory for one statement only; and a database whose whole contents are
//! replaced by an ordinary SQLite file's, in one write transaction (one commit).

use std::io::BufRead;
use std::path::Path;

use libsql_sys::ffi;

use super::{path_cstring, result, Connection, Params};
use crate::error::SqlError;

/// What [`Connection::run_script`] ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScriptOutcome {
    /// Statements run.
    pub statements: u64,
    /// Bytes of script read.
    pub bytes: u64,
}

impl Connection {
    /// Opens an ordinary SQLite file (stock WAL and VFS) to run SQL that nobody vouches for (an uploaded
    /// dump) in a scratch database of bop's page size and at most `pages_max` pages: no rollback journal
    /// on disk and no fsync (the file is thrown away if anything fails), and the authorizer refuses what a
    /// bop connection may not do (attaching a named file, changing the journal mode or the page bound).
    /// Its calls are bounded by `limits`.
    pub fn open_scratch(
        path: impl AsRef<Path>,
        pages_max: u32,
        limits: crate::Limits,
    ) -> Result<Connection, SqlError> {
        let mut conn = Connection::open_stock(path)?;
        let setup = format!(
            "PRAGMA page_size={}; PRAGMA max_page_count={pages_max}; PRAGMA journal_mode=MEMORY; \
             PRAGMA synchronous=OFF; PRAGMA temp_store=MEMORY",
            bop_storage::page_store::PAGE_SIZE
        );
        conn.run(&setup, &Params::None)?;
        conn.guard_sql();
        conn.set_limits(limits);
        Ok(conn)
    }

    /// Runs the SQL script that `script` yields, each statement as soon as it is complete (SQLite's own
    /// test, `sqlite3_complete`, on the text read so far whenever a line ends in `;`), as one call under
    /// this connection's limits. A statement longer than `statement_bytes_max` bytes, text that is not
    /// UTF-8, or any statement's error ends the script with that error (what ran before stays; the
    /// caller throws a scratch database away). Rows a statement returns are counted against the limits
    /// and dropped.
    pub fn run_script(
        &mut self,
        script: &mut dyn BufRead,
        statement_bytes_max: usize,
    ) -> Result<ScriptOutcome, SqlError> {
        self.call(|conn| {
            let mut outcome = ScriptOutcome::default();
            let mut pending: Vec<u8> = Vec::new();
            // `complete`: the text ends a statement (counted); the script's last text may not (a comment, or
            // a statement cut short, which SQLite refuses as incomplete).
            let run =
                |conn: &mut Connection, text: &mut Vec<u8>, outcome: &mut ScriptOutcome, complete: bool| {
                    let sql = std::str::from_utf8(text).map_err(|e| {
                        SqlError::invalid(format!(
                            "the script is not UTF-8 text (after {} bytes): {e}",
                            outcome.bytes
                        ))
                    })?;
                    if !sql.trim().is_empty() {
                        conn.run(sql, &Params::None).map_err(|e| match e {
                            SqlError::Sqlite { code, message } => SqlError::Sqlite {
                                code,
                                message: format!(
                                    "{message} (in statement {} of the script)",
                                    outcome.statements + 1
                                ),
                            },
                            other => other,
                        })?;
                        outcome.statements += u64::from(complete);
                    }
                    text.clear();
                    Ok::<(), SqlError>(())
                };
            loop {
                let before = pending.len();
                let read = script
                    .read_until(b'\n', &mut pending)
                    .map_err(|e| SqlError::invalid(format!("reading the script: {e}")))?;
                if read == 0 {
                    break;
                }
                outcome.bytes += read as u64;
                if pending.len() > statement_bytes_max {
                    return Err(SqlError::invalid(format!(
                        "a statement of the script is longer than {statement_bytes_max} bytes (statement {})",
                        outcome.statements + 1
                    )));
                }
                let line = pending[before..].trim_ascii_end();
                if line.ends_with(b";") && is_complete(&pending)? {
                    run(conn, &mut pending, &mut outcome, true)?;
                }
            }
            let complete = is_complete(&pending)?;
            run(conn, &mut pending, &mut outcome, complete)?;
            Ok(outcome)
        })
    }

    /// Replaces this database's whole contents (every table, index, view and trigger, and its size) by
    /// those of the ordinary SQLite file at `source`, with SQLite's online backup API: one write
    /// transaction, so one commit through the sink, all or nothing. `source` must use this database's
    /// page size (4096 bytes for a bop database) and must not change while this runs.
    pub fn restore_from(&mut self, source: impl AsRef<Path>) -> Result<(), SqlError> {
        let source = source.as_ref();
        if self.guard.shutting_down() {
            return Err(SqlError::ShuttingDown);
        }
        // Opening would create a missing file.
        if !source.is_file() {
            return Err(SqlError::invalid(format!("restore source {} is not a file", source.display())));
        }
        path_cstring(source)?;
        let from = Connection::open_stock(source)?;
        let main = c"main";
        // SAFETY: both handles are open, distinct and used only by this thread for the backup's duration.
        let backup = unsafe { ffi::sqlite3_backup_init(self.raw, main.as_ptr(), from.raw, main.as_ptr()) };
        if backup.is_null() {
            // SAFETY: `self.raw` is open; the error of a failed init is left on the destination.
            return Err(self.error(unsafe { ffi::sqlite3_errcode(self.raw) }));
        }
        // SAFETY: `backup` is live until `sqlite3_backup_finish`, which is called exactly once.
        let (step, finish) = unsafe {
            let step = ffi::sqlite3_backup_step(backup, -1);
            (step, ffi::sqlite3_backup_finish(backup))
        };
        if step != ffi::SQLITE_DONE {
            return Err(if step == ffi::SQLITE_OK { self.error(finish) } else { self.error(step) });
        }
        result(self.raw, finish, self.conn.as_deref())
    }
}

/// Whether `text` ends with a complete SQL statement (SQLite's `sqlite3_complete`: a `;` outside any
/// string, identifier, comment or trigger body).
fn is_complete(text: &[u8]) -> Result<bool, SqlError> {
    let Ok(text) = std::ffi::CString::new(text) else {
        return Err(SqlError::invalid("the script contains a NUL byte"));
    };
    // SAFETY: `text` is NUL-terminated and outlives the call, which only reads it.
    Ok(unsafe { ffi::sqlite3_complete(text.as_ptr()) } != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Limits;

    fn count(conn: &mut Connection, sql: &str) -> i64 {
        match &conn.query(sql, &Params::None).expect("query").rows[0][0] {
            crate::Value::Integer(n) => *n,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_script_runs_statement_by_statement_including_ones_spanning_lines_and_semicolons_in_strings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut conn = Connection::open_scratch(dir.path().join("s.db"), 1000, Limits::NONE).expect("open");
        let script = "PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\nCREATE TABLE t(a,\n b);\n\
                      INSERT INTO t VALUES(1,'x;\ny;');\nINSERT INTO t VALUES(2,'z'); INSERT INTO t VALUES(3,'w');\n\
                      CREATE TRIGGER tr AFTER INSERT ON t BEGIN\n  UPDATE t SET b = b || ';';\nEND;\nCOMMIT;\n-- done\n";
        let outcome = conn.run_script(&mut script.as_bytes(), 1 << 20).expect("script");
        assert_eq!(outcome.bytes, script.len() as u64);
        assert_eq!(outcome.statements, 7, "lines with statements (two on one line run as one call)");
        assert_eq!(count(&mut conn, "SELECT count(*) FROM t"), 3);
        assert_eq!(count(&mut conn, "SELECT count(*) FROM t WHERE b = 'x;\ny;'"), 1);
    }

    #[test]
    fn a_bad_script_is_an_error_naming_where_and_attaching_files_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut conn = Connection::open_scratch(dir.path().join("s.db"), 1000, Limits::NONE).expect("open");
        let e = conn.run_script(&mut "CREATE TABLE t(a);\nINSERT INTO nope VALUES(1);\n".as_bytes(), 1 << 20);
        assert!(e.as_ref().is_err_and(|e| e.to_string().contains("statement 2")), "{e:?}");
        let e = conn.run_script(&mut "INSERT INTO t VALUES(1".as_bytes(), 1 << 20);
        assert!(e.is_err(), "a statement cut short is an error: {e:?}");
        let outside = dir.path().join("outside.db");
        let e = conn.run_script(&mut format!("ATTACH '{}' AS o;\n", outside.display()).as_bytes(), 1 << 20);
        assert!(e.is_err(), "ATTACH of a named file ran: {e:?}");
        assert!(!outside.exists(), "the attached file was created");
        let e = conn.run_script(&mut "SELECT 'aaaaaaaaaaaaaaaa';\n".as_bytes(), 8);
        assert!(e.is_err_and(|e| e.to_string().contains("longer than 8 bytes")));
        let e = conn.run_script(&mut b"SELECT '\xff';\n".as_slice(), 1 << 20);
        assert!(e.is_err_and(|e| e.to_string().contains("UTF-8")));
        let bounded = Limits { rows_max: Some(10), ..Limits::NONE };
        let mut conn = Connection::open_scratch(dir.path().join("b.db"), 1000, bounded).expect("open");
        let e = conn.run_script(
            &mut "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT x FROM c;\n"
                .as_bytes(),
            1 << 20,
        );
        assert!(
            e.is_err_and(|e| matches!(e, SqlError::AnswerTooLarge { .. })),
            "rows of a script are bounded"
        );
        // The page bound holds, and the script cannot lift it.
        let e = conn.run_script(&mut "PRAGMA max_page_count=1000000;\n".as_bytes(), 1 << 20);
        assert!(e.is_err(), "max_page_count was raised: {e:?}");
        let e = conn.run_script(
            &mut "CREATE TABLE big(x);\nINSERT INTO big WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n+1 FROM c \
                  LIMIT 100000) SELECT randomblob(1000) FROM c;\n"
                .as_bytes(),
            1 << 20,
        );
        assert!(e.is_err_and(|e| e.to_string().contains("full")), "the scratch database is bounded");
    }

    #[test]
    fn restoring_replaces_the_whole_database_in_one_transaction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = dir.path().join("source.db");
        let mut from = Connection::open_stock(&source).expect("open");
        from.execute("CREATE TABLE s(x); INSERT INTO s VALUES (7), (8)", &Params::None).expect("fill");
        drop(from);
        let mut into = Connection::open_stock(dir.path().join("into.db")).expect("open");
        into.execute("CREATE TABLE old(y); INSERT INTO old VALUES (1)", &Params::None).expect("fill");
        into.restore_from(&source).expect("restore");
        assert_eq!(count(&mut into, "SELECT sum(x) FROM s"), 15);
        assert!(into.query("SELECT * FROM old", &Params::None).is_err(), "the old table is gone");
        assert!(into.restore_from(dir.path().join("missing.db")).is_err());
        assert!(!dir.path().join("missing.db").exists());
    }
}
