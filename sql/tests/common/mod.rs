#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use bop_sql::{Connection, FrameSink, OpenMode, Params, Rows, SqlConfig, SqlEngine, Value};
use bop_storage::page_store::{Manager, ManagerConfig};

pub fn manager(dir: &Path) -> Manager {
    Manager::open(ManagerConfig::new(dir.join("node"))).unwrap()
}

pub fn engine(dir: &Path) -> SqlEngine {
    SqlEngine::local(manager(dir), SqlConfig::new(dir.join("sql"))).unwrap()
}

pub fn engine_with_sink(dir: &Path, sink: Arc<dyn FrameSink>) -> SqlEngine {
    SqlEngine::new(manager(dir), sink, SqlConfig::new(dir.join("sql"))).unwrap()
}

pub fn open(engine: &SqlEngine, name: &str) -> Connection {
    engine.open(name, OpenMode::CreateIfMissing).unwrap()
}

pub fn query(conn: &mut Connection, sql: &str) -> Rows {
    conn.query(sql, &Params::None).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

pub fn exec(conn: &mut Connection, sql: &str) {
    conn.execute(sql, &Params::None).unwrap_or_else(|e| panic!("{sql}: {e}"));
}

pub fn scalar(conn: &mut Connection, sql: &str) -> Value {
    let rows = query(conn, sql);
    assert_eq!(rows.rows.len(), 1, "{sql}");
    rows.rows[0][0].clone()
}

pub fn int(conn: &mut Connection, sql: &str) -> i64 {
    match scalar(conn, sql) {
        Value::Integer(v) => v,
        other => panic!("{sql}: {other:?}"),
    }
}

pub fn assert_integrity(conn: &mut Connection) {
    assert_eq!(scalar(conn, "PRAGMA integrity_check"), Value::Text("ok".into()));
}
