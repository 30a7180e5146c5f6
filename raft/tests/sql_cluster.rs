//! bop's promise end to end: the leader runs SQL, each transaction's page frames become one Raft entry, and
//! every node applies it — followers then read the same rows through their own SQL connections.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bop_raft::{LocalRouter, RaftSink};
use bop_sql::{LocalSink, OpenMode, Params, SqlConfig, SqlEngine, Statement, Value};
use common::bop::{members, open_node, BopRaft};
use openraft::{Config, Raft};

const WAIT: Option<Duration> = Some(Duration::from_secs(30));

fn rows(engine: &SqlEngine, sql: &str) -> Vec<Vec<Value>> {
    let mut conn = engine.open("app", OpenMode::Existing).expect("open");
    conn.query(sql, &Params::None).expect("query").rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_on_the_leader_is_replicated_to_every_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let router = LocalRouter::new();
    let config = Arc::new(
        Config {
            heartbeat_interval: 50,
            election_timeout_min: 200,
            election_timeout_max: 400,
            ..Default::default()
        }
        .validate()
        .expect("config"),
    );
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let node_dir = dir.path().join(format!("node-{id}"));
        let (store, sm) = open_node(&node_dir);
        let raft: BopRaft = Raft::new(id, Arc::clone(&config), router.network(id), store.clone(), sm.clone())
            .await
            .expect("raft");
        router.add(id, raft.clone());
        nodes.push((raft, store, sm, node_dir));
    }
    nodes[0].0.initialize(members(&[1, 2, 3])).await.expect("initialize");
    let m = nodes[0].0.wait(WAIT).metrics(|m| m.current_leader.is_some(), "leader").await.expect("leader");
    let leader_id = m.current_leader.expect("leader id");
    let (leader, _, leader_sm, leader_dir) = &nodes[leader_id as usize - 1];
    leader
        .wait(WAIT)
        .metrics(|m| m.state.is_leader() && m.last_applied.map(|l| l.index) == m.last_log_index, "ready")
        .await
        .expect("ready");

    // The leader's SQL engine commits through Raft. SQL blocks, so it runs on a blocking thread.
    let sink =
        RaftSink::new(leader.clone(), tokio::runtime::Handle::current(), Default::default(), usize::MAX);
    let engine =
        SqlEngine::new(leader_sm.manager(), sink, SqlConfig::new(leader_dir.join("sql"))).expect("engine");
    let written = tokio::task::spawn_blocking(move || {
        let mut conn = engine.open("app", OpenMode::CreateIfMissing).expect("create through Raft");
        conn.execute_batch(&[
            Statement::new("CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)"),
            Statement::new("CREATE INDEX kv_v ON kv (v)"),
        ])
        .expect("schema");
        for batch in 0..20 {
            let statements: Vec<Statement> = (0..10)
                .map(|i| {
                    Statement::new(format!(
                        "INSERT INTO kv VALUES ('key-{batch}-{i}', '{}')",
                        "x".repeat(300)
                    ))
                })
                .collect();
            conn.execute_batch(&statements).expect("insert batch");
        }
        let bad = conn.execute_batch(&[Statement::new("INSERT INTO kv VALUES ('key-0-0', 'dup')")]);
        assert!(bad.is_err(), "a constraint violation is SQLite's error, and nothing is proposed");
        rows(&engine, "SELECT count(*), sum(length(v)) FROM kv")
    })
    .await
    .expect("sql thread");
    assert_eq!(written, vec![vec![Value::Integer(200), Value::Integer(200 * 300)]]);

    // Every node applies the same entries and answers the same query from its own page store.
    // (The page store's applied index moves before the client's answer; openraft's metric may lag it.)
    let applied = Some(leader_sm.manager().applied_index());
    for (raft, _, sm, node_dir) in &nodes {
        raft.wait(WAIT).applied_index_at_least(applied, "applied").await.expect("applied");
        let engine =
            SqlEngine::new(sm.manager(), Arc::new(LocalSink), SqlConfig::new(node_dir.join("sql-read")))
                .expect("engine");
        let found = tokio::task::spawn_blocking(move || {
            let check = rows(&engine, "PRAGMA integrity_check");
            assert_eq!(check, vec![vec![Value::Text("ok".into())]]);
            rows(&engine, "SELECT count(*), sum(length(v)) FROM kv")
        })
        .await
        .expect("sql thread");
        assert_eq!(found, written, "the same rows on every node");
    }
    for (raft, store, _, _) in &nodes {
        raft.shutdown().await.expect("shutdown");
        store.close().expect("close");
    }
}
