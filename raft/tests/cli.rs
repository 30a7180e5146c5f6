//! The `bop` command line, run as a user would: `--help` and `--version` everywhere, exit codes (0 ok, 1 a
//! runtime failure, 2 a usage or configuration error), `BOP_*` environment variables and their precedence
//! over the config file (flags over both), and the logs (no colour off a terminal, JSON lines, RUST_LOG
//! filters).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn bop() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bop"));
    // The tests set what they test; nothing leaks in from the environment running them.
    for var in ["RUST_LOG", "BOP_LOG_FORMAT", "BOP_DATA_DIR", "BOP_ID", "BOP_RAFT_ADDR", "BOP_HTTP_ADDR"] {
        cmd.env_remove(var);
    }
    for var in ["BOP_BOOTSTRAP", "BOP_JOIN", "BOP_CONFIG", "NO_COLOR"] {
        cmd.env_remove(var);
    }
    cmd
}

fn run(args: &[&str]) -> Output {
    bop().args(args).stdin(Stdio::null()).output().expect("run bop")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    format!("127.0.0.1:{port}")
}

fn get(addr: &str, path: &str) -> Option<Value> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    serde_json::from_str(response.split_once("\r\n\r\n")?.1).ok()
}

/// Waits (bounded) until the node at `addr` answers `/status` naming itself leader; returns that status.
fn wait_leader(child: &mut Child, addr: &str) -> Value {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = get(addr, "/status") {
            if status["raft"]["state"] == "Leader" {
                return status;
            }
        }
        let exited = child.try_wait().expect("try_wait");
        assert!(exited.is_none(), "the node exited: {exited:?}");
        assert!(Instant::now() < until, "no leader at {addr} within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops the node with SIGINT (as Ctrl-C) and returns its exit status and stderr.
fn stop(mut child: Child) -> (std::process::ExitStatus, String) {
    let killed = Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill -INT");
    assert!(killed.success());
    let until = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < until, "the node did not stop within 15 s of SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    (status, stderr)
}

#[test]
fn help_and_version_answer_zero_for_the_binary_and_every_subcommand() {
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let help = text(&out.stdout);
    for sub in ["up", "node", "execute", "query", "status", "join", "remove", "bench", "demo"] {
        assert!(help.contains(&format!("\n  {sub} ")), "--help lists {sub}: {help}");
        let out = run(&[sub, "--help"]);
        assert_eq!(out.status.code(), Some(0), "{sub} --help: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains(&format!("Usage: bop {sub}")),
            "{sub} --help: {}",
            text(&out.stdout)
        );
    }
    assert!(help.contains("Exit codes: 0 success; 1 a runtime failure"), "{help}");
    let out = run(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout).trim(), format!("bop {}", env!("CARGO_PKG_VERSION")));
    let out = run(&["node", "--version"]);
    assert_eq!(out.status.code(), Some(0));
    // Every node setting is documented with its environment variable.
    let node_help = text(&run(&["node", "--help"]).stdout);
    for var in [
        "BOP_CONFIG",
        "BOP_ID",
        "BOP_DATA_DIR",
        "BOP_RAFT_ADDR",
        "BOP_HTTP_ADDR",
        "BOP_BOOTSTRAP",
        "BOP_JOIN",
    ] {
        assert!(node_help.contains(&format!("[env: {var}=")), "{var} in {node_help}");
    }
    // The flag spellings the README, the docs and the other tests use are all still accepted.
    for flag in
        ["--config", "--id", "--data-dir", "--raft-addr", "--http-addr", "--bootstrap", "--init", "--join"]
    {
        assert!(node_help.contains(flag), "{flag} in {node_help}");
    }
}

#[test]
fn usage_and_configuration_errors_exit_2_with_a_clear_message_and_runtime_failures_exit_1() {
    let usage = |args: &[&str], says: &str| {
        let out = run(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?} says {says:?}: {stderr}");
    };
    usage(&["node", "--bogus"], "unexpected argument '--bogus'");
    usage(&["frobnicate"], "unrecognized subcommand 'frobnicate'");
    usage(&[], "Usage: bop");
    usage(&["node", "--id", "one"], "invalid value 'one' for '--id <ID>'");
    usage(&["bench", "127.0.0.1:1", "--secs", "0"], "--secs");
    usage(&["query", "127.0.0.1:1", "SELECT 1", "--level", "strng"], "invalid value 'strng'");
    usage(&["--log-format", "xml", "status", "127.0.0.1:1"], "invalid value 'xml'");
    usage(&["up", "--clock-drift-max", "5"], "--clock-drift-max is the margin of --read-lease; give both");
    usage(&["up", "--read-lease", "--clock-drift-max", "101"], "invalid value '101'");
    usage(&["node", "--id", "1"], "--data-dir (BOP_DATA_DIR, or data_dir in the config file) is required");
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.toml");
    usage(&["node", "--config", missing.to_str().expect("utf-8")], "missing.toml");
    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "id = 1\ndata_dirr = \"x\"\n").expect("write");
    usage(&["node", "--config", typo.to_str().expect("utf-8")], "unknown field `data_dirr`");

    // Runtime failures: a client call to nothing listening, a node on a taken port.
    let closed = free_addr();
    let out = run(&["status", &closed]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(&closed), "{}", text(&out.stderr));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr").to_string();
    let data = dir.path().join("d");
    let out = run(&[
        "node",
        "--id",
        "1",
        "--data-dir",
        data.to_str().expect("utf-8"),
        "--raft-addr",
        &free_addr(),
        "--http-addr",
        &taken_addr,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(&format!("cannot listen on {taken_addr}")), "{}", text(&out.stderr));
}

#[test]
fn a_node_configured_by_environment_variables_alone_starts_and_logs_json_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (raft, http) = (free_addr(), free_addr());
    let data = dir.path().join("node-7");
    let mut child = bop()
        .arg("node")
        .env("BOP_ID", "7")
        .env("BOP_DATA_DIR", &data)
        .env("BOP_RAFT_ADDR", &raft)
        .env("BOP_HTTP_ADDR", &http)
        .env("BOP_BOOTSTRAP", format!("7={raft}/{http}"))
        .env("BOP_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bop node");
    let status = wait_leader(&mut child, &http);
    assert_eq!(status["node"]["id"], 7, "BOP_ID: {status}");
    assert_eq!(status["raft"]["leader"], 7, "BOP_BOOTSTRAP formed a cluster of node 7: {status}");
    assert_eq!(status["node"]["raft_addr"], raft.as_str(), "BOP_RAFT_ADDR: {status}");
    assert!(data.join("bop-node.json").exists(), "BOP_DATA_DIR holds the node's identity");
    // A reader that goes away before the answer (`bop status | head -c0`) is no failure (it panicked).
    let mut reader_gone =
        bop().args(["status", &http]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    drop(reader_gone.stdout.take());
    let out = reader_gone.wait_with_output().expect("bop status");
    assert!(
        out.status.success() && !text(&out.stderr).contains("panicked"),
        "{:?}: {}",
        out.status,
        text(&out.stderr)
    );
    let (exit, stderr) = stop(child);
    assert!(exit.success(), "a clean stop on SIGINT: {exit:?}\n{stderr}");
    assert!(!stderr.contains('\u{1b}'), "no ANSI escapes when stderr is not a terminal: {stderr:?}");
    let lines: Vec<Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}")))
        .collect();
    let up =
        lines.iter().find(|l| l["fields"]["message"] == "node 7 up").unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(up["level"], "INFO");
    assert_eq!(up["fields"]["http_addr"], http.as_str(), "{up}");
    assert_eq!(up["fields"]["data_dir"], data.display().to_string(), "{up}");
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["leader"] == 7 && l["fields"]["message"] == "node 7: the leader is node 7"),
        "the leader is logged: {stderr}"
    );
}

#[test]
fn flags_override_environment_variables_which_override_the_config_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raft = free_addr();
    let (file_http, env_http, flag_http) = (free_addr(), free_addr(), free_addr());
    let data = dir.path().join("node-1");
    let config = dir.path().join("node.toml");
    let toml = format!(
        "id = 1\ndata_dir = {:?}\nraft_addr = {raft:?}\nhttp_addr = {file_http:?}\nbootstrap = \"1={raft}/{file_http}\"\n",
        data.display().to_string()
    );
    std::fs::write(&config, toml).expect("write config");
    let start = |flag: Option<&str>, filter: &str| {
        let mut cmd = bop();
        cmd.arg("node").env("BOP_CONFIG", &config).env("BOP_HTTP_ADDR", &env_http).env("RUST_LOG", filter);
        if let Some(addr) = flag {
            cmd.args(["--http-addr", addr]);
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn bop node")
    };
    // The flag wins over BOP_HTTP_ADDR, which wins over the file; the rest comes from the file.
    let mut child = start(Some(&flag_http), "info");
    let status = wait_leader(&mut child, &flag_http);
    assert_eq!(status["node"]["http_addr"], flag_http.as_str(), "{status}");
    assert!(get(&env_http, "/status").is_none() && get(&file_http, "/status").is_none());
    let (exit, stderr) = stop(child);
    assert!(exit.success(), "{exit:?}\n{stderr}");
    assert!(stderr.contains("node 1 up"), "RUST_LOG=info shows the startup line: {stderr}");
    let mut child = start(None, "error");
    let status = wait_leader(&mut child, &env_http);
    assert_eq!(status["node"]["http_addr"], env_http.as_str(), "{status}");
    let (exit, stderr) = stop(child);
    assert!(exit.success(), "{exit:?}\n{stderr}");
    assert!(!stderr.contains("node 1 up"), "RUST_LOG=error hides info lines: {stderr}");
}
