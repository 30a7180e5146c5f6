use bop_sql::{OpenMode, Params, SqlConfig, SqlEngine, Value};
use bop_storage::page_store::{Manager, ManagerConfig};

#[test]
fn create_insert_select() {
    let dir = tempfile::tempdir().unwrap();
    let manager = Manager::open(ManagerConfig::new(dir.path().join("node"))).unwrap();
    let engine = SqlEngine::local(manager, SqlConfig::new(dir.path().join("sql"))).unwrap();
    let mut conn = engine.open("t", OpenMode::CreateIfMissing).unwrap();
    conn.execute("CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT)", &Params::None).unwrap();
    conn.execute("INSERT INTO t(b) VALUES (?)", &Params::Positional(vec![Value::Text("x".into())])).unwrap();
    let rows = conn.query("SELECT a, b FROM t", &Params::None).unwrap();
    assert_eq!(rows.rows, vec![vec![Value::Integer(1), Value::Text("x".into())]]);
    let ok = conn.query("PRAGMA integrity_check", &Params::None).unwrap();
    assert_eq!(ok.rows, vec![vec![Value::Text("ok".into())]]);
}
