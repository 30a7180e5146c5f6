//! `GET /db/backup?fmt=sql`: the SQL text that rebuilds a database, read in one read transaction.
//!
//! The shape is the one SQLite's shell `.dump` writes and rqlite returns: `PRAGMA foreign_keys=OFF;`, then
//! one transaction with each table's `CREATE TABLE` followed by its rows as `INSERT INTO "t" VALUES(...)`,
//! `sqlite_sequence` restored, then indexes, triggers and views. Rows are read in pages of [`PAGE_ROWS`]
//! (by rowid, or by offset for `WITHOUT ROWID` tables), so memory is bounded by a page whatever the table's
//! size; the text goes to `out` as it is made.

use std::io::Write;

use bop_sql::{Connection, Params, SqlError, Value};

/// Rows read at a time.
pub const PAGE_ROWS: i64 = 1000;

/// Why a dump failed.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// Reading the database failed.
    #[error("{0}")]
    Sql(#[from] SqlError),
    /// Writing the text failed.
    #[error("writing the dump: {0}")]
    Io(#[from] std::io::Error),
    /// The database has something the SQL format cannot carry.
    #[error("{0}")]
    Unsupported(String),
}

/// `"name"`, with embedded quotes doubled.
pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A value as an SQL literal that reads back as the same value.
pub fn literal(value: &Value) -> String {
    match value {
        Value::Null => "NULL".to_owned(),
        Value::Integer(i) => i.to_string(),
        Value::Real(r) if r.is_infinite() => if *r > 0.0 { "9.0e999" } else { "-9.0e999" }.to_owned(),
        // Debug is the shortest text that reads back as the same double and keeps a decimal point or an
        // exponent (`1.0`, `1e-7`), so it stays a real. SQLite's own text-to-double conversion is exact for
        // ordinary magnitudes but can land one ulp off near the ends of the range (e.g. 1e-300), as it does
        // for the same text in any SQL script.
        Value::Real(r) => format!("{r:?}"),
        Value::Text(t) => format!("'{}'", t.replace('\'', "''")),
        Value::Blob(b) => {
            let mut hex = String::with_capacity(3 + b.len() * 2);
            hex.push_str("X'");
            for byte in b {
                hex.push_str(&format!("{byte:02X}"));
            }
            hex.push('\'');
            hex
        }
    }
}

fn text(value: &Value) -> &str {
    match value {
        Value::Text(t) => t,
        _ => "",
    }
}

/// Writes the dump of the database behind `conn` to `out`, all of it read in one read transaction: every
/// table, or with `tables` only those (rqlite's `tables=`), with their indexes and triggers and their
/// `sqlite_sequence` rows; a name that is no table is [`DumpError::Unsupported`].
pub fn dump_sql(
    conn: &mut Connection,
    out: &mut impl Write,
    tables: Option<&[String]>,
) -> Result<(), DumpError> {
    conn.execute("BEGIN", &Params::None)?;
    let result = dump_in_transaction(conn, out, tables);
    let ended = conn.execute("ROLLBACK", &Params::None);
    result?;
    ended?;
    Ok(())
}

fn dump_in_transaction(
    conn: &mut Connection,
    out: &mut impl Write,
    tables: Option<&[String]>,
) -> Result<(), DumpError> {
    let schema = conn.query(
        "SELECT type, name, sql, tbl_name FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid",
        &Params::None,
    )?;
    let mut entries: Vec<(String, String, String)> = Vec::new();
    for row in &schema.rows {
        // Views belong to no table: a dump of named tables leaves them out.
        let kept =
            tables.is_none_or(|names| text(&row[0]) != "view" && names.iter().any(|n| n == text(&row[3])));
        if kept {
            entries.push((text(&row[0]).to_owned(), text(&row[1]).to_owned(), text(&row[2]).to_owned()));
        }
    }
    let sequence_wanted = match tables {
        None => true,
        Some(names) => {
            for name in names {
                if !entries.iter().any(|(kind, n, _)| kind == "table" && n == name) {
                    return Err(DumpError::Unsupported(format!("tables: no table named {name:?}")));
                }
            }
            false
        }
    };
    let has_sequence =
        schema.rows.iter().any(|row| text(&row[0]) == "table" && text(&row[1]) == "sqlite_sequence");
    if let Some((_, name, _)) =
        entries.iter().find(|(_, _, sql)| sql.to_ascii_uppercase().starts_with("CREATE VIRTUAL TABLE"))
    {
        return Err(DumpError::Unsupported(format!(
            "virtual table {name:?}: fmt=sql cannot carry virtual tables; use the binary backup"
        )));
    }
    writeln!(out, "PRAGMA foreign_keys=OFF;")?;
    writeln!(out, "BEGIN TRANSACTION;")?;
    for (kind, name, sql) in entries.iter().filter(|(kind, _, _)| kind == "table") {
        if name.starts_with("sqlite_") {
            continue;
        }
        debug_assert_eq!(kind, "table");
        writeln!(out, "{sql};")?;
        dump_rows(conn, name, sql, out)?;
    }
    if has_sequence && sequence_wanted {
        writeln!(out, "DELETE FROM sqlite_sequence;")?;
        dump_rows(conn, "sqlite_sequence", "", out)?;
    } else if let (true, Some(names)) = (has_sequence, tables) {
        // Only the named tables' counters, so that loading the dump leaves other tables' alone.
        for name in names {
            let next = conn.query(
                "SELECT seq FROM sqlite_sequence WHERE name = ?",
                &Params::Positional(vec![Value::Text(name.clone())]),
            )?;
            if let Some(Value::Integer(seq)) = next.rows.first().and_then(|row| row.first()) {
                let name = literal(&Value::Text(name.clone()));
                writeln!(out, "DELETE FROM sqlite_sequence WHERE name = {name};")?;
                writeln!(out, "INSERT INTO sqlite_sequence(name, seq) VALUES({name}, {seq});")?;
            }
        }
    }
    for (_, _, sql) in entries.iter().filter(|(kind, _, _)| kind != "table") {
        writeln!(out, "{sql};")?;
    }
    writeln!(out, "COMMIT;")?;
    Ok(())
}

/// Writes the rows of table `name` (created by `sql`) as INSERT statements, a page at a time.
fn dump_rows(conn: &mut Connection, name: &str, sql: &str, out: &mut impl Write) -> Result<(), DumpError> {
    let table = quote_identifier(name);
    // `table_xinfo` lists generated columns too (hidden 2 and 3): they are computed, not inserted, so the
    // statements then name the stored columns.
    let columns = conn.query(&format!("PRAGMA table_xinfo({table})"), &Params::None)?;
    let stored: Vec<String> = columns
        .rows
        .iter()
        .filter(|row| matches!(row.get(6), Some(Value::Integer(0)) | None))
        .map(|row| text(&row[1]).to_owned())
        .collect();
    let all_stored = stored.len() == columns.rows.len();
    let select_list: Vec<String> = stored.iter().map(|c| quote_identifier(c)).collect();
    let select_list = select_list.join(", ");
    let target = if all_stored { table.clone() } else { format!("{table}({select_list})") };
    let without_rowid = sql.to_ascii_uppercase().replace(char::is_whitespace, "").contains("WITHOUTROWID");
    // The rowid under a name no column hides.
    let rowid = ["rowid", "_rowid_", "oid"]
        .into_iter()
        .find(|alias| !columns.rows.iter().any(|row| text(&row[1]).eq_ignore_ascii_case(alias)));
    match (without_rowid, rowid) {
        (false, Some(rowid)) => {
            // The first page includes the smallest possible rowid; later ones start after the last seen.
            let first = format!(
                "SELECT {rowid}, {select_list} FROM {table} WHERE {rowid} >= ?1 ORDER BY {rowid} LIMIT {PAGE_ROWS}"
            );
            let next = first.replace(">= ?1", "> ?1");
            let mut after = i64::MIN;
            let mut page = &first;
            loop {
                let rows = conn.query(page, &Params::Positional(vec![Value::Integer(after)]))?;
                for row in &rows.rows {
                    if let Some(Value::Integer(id)) = row.first() {
                        after = *id;
                    }
                    write_insert(out, &target, &row[1..])?;
                }
                if (rows.rows.len() as i64) < PAGE_ROWS {
                    return Ok(());
                }
                page = &next;
            }
        }
        _ => {
            let page = format!("SELECT {select_list} FROM {table} LIMIT {PAGE_ROWS} OFFSET ?1");
            let mut offset = 0i64;
            loop {
                let rows = conn.query(&page, &Params::Positional(vec![Value::Integer(offset)]))?;
                for row in &rows.rows {
                    write_insert(out, &target, row)?;
                }
                if (rows.rows.len() as i64) < PAGE_ROWS {
                    return Ok(());
                }
                offset += PAGE_ROWS;
            }
        }
    }
}

/// `INSERT INTO target VALUES(...);` where `target` is the quoted table, with a column list if needed.
fn write_insert(out: &mut impl Write, target: &str, values: &[Value]) -> std::io::Result<()> {
    let values: Vec<String> = values.iter().map(literal).collect();
    writeln!(out, "INSERT INTO {target} VALUES({});", values.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_read_back_as_the_same_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut conn = Connection::open_stock(dir.path().join("literals.db")).expect("open");
        let values = [
            Value::Null,
            Value::Integer(i64::MIN),
            Value::Real(1.0),
            Value::Real(-1.5e-8),
            Value::Real(0.1),
            Value::Real(6.02214076e23),
            Value::Real(f64::INFINITY),
            Value::Text("it's \"quoted\"\nand multi-line".into()),
            Value::Blob(vec![0, 1, 0xfe, 0xff]),
        ];
        for value in values {
            let rows = conn.query(&format!("SELECT {}", literal(&value)), &Params::None).expect("query");
            assert_eq!(rows.rows, vec![vec![value.clone()]], "{}", literal(&value));
        }
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
    }
}
