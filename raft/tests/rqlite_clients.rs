//! Real rqlite client libraries against a three-node cluster: `rqlite_clients/clients.py` drives it with
//! pyrqlite (DB-API 2.0 cursors), sqlalchemy-rqlite (an ORM creating and introspecting its schema through
//! `PRAGMA table_info`) and rqdb (following `redirect`'s 301 to the leader, level=none reads, backups),
//! after discovering the cluster through `/status` and `/nodes` as rqlite's Go client does; and
//! `rqlite_clients/secure.py` drives pyrqlite over HTTPS with users.
//!
//! The libraries come from PyPI, pinned, into a virtual environment under cargo's target directory (made
//! once, reused while the pins are unchanged). Only when PyPI cannot be reached does the test skip, and it
//! says so on stderr; any other failure to install fails the test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[path = "common/loopback.rs"]
mod loopback;

/// The libraries, pinned. SQLAlchemy too: the dialect builds on its SQLite dialect, and 2.1 asks the
/// dialect for a server version that sqlalchemy-rqlite 2.0 does not give (introspection then fails).
const PACKAGES: &[&str] = &["pyrqlite==2.2.3", "sqlalchemy-rqlite==2.0", "SQLAlchemy==2.0.58", "rqdb==1.6.5"];

/// Longest the client script may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

fn python3() -> PathBuf {
    let found = Command::new("python3").arg("--version").output();
    assert!(
        found.as_ref().is_ok_and(|o| o.status.success()),
        "python3 is needed to run rqlite's Python client libraries: {found:?}"
    );
    PathBuf::from("python3")
}

/// What pip prints when it cannot reach the package index at all.
fn registry_unreachable(pip_output: &str) -> bool {
    [
        "Temporary failure in name resolution",
        "Name or service not known",
        "Network is unreachable",
        "Failed to establish a new connection",
        "Connection refused",
        "ConnectTimeoutError",
        "Read timed out",
        "No route to host",
    ]
    .iter()
    .any(|sign| pip_output.contains(sign))
}

/// The virtual environment with [`PACKAGES`], made (or reused) under cargo's target directory; `None` when
/// PyPI cannot be reached (the caller skips, loudly). Made once per test process: the tests run at the
/// same time, and two making it at once failed on a clean machine ("File exists").
fn client_env() -> Option<PathBuf> {
    static VENV: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    VENV.get_or_init(make_client_env).clone()
}

fn make_client_env() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("rqlite-clients-venv");
    let python = venv.join("bin").join("python");
    let stamp = venv.join("bop-packages.txt");
    let wanted = PACKAGES.join("\n");
    if python.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Some(python);
    }
    let _ = std::fs::remove_dir_all(&venv);
    let made = Command::new(python3()).args(["-m", "venv"]).arg(&venv).output().expect("run python3 -m venv");
    assert!(made.status.success(), "python3 -m venv failed: {}", String::from_utf8_lossy(&made.stderr));
    let pip = Command::new(&python)
        .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--quiet"])
        .args(["--retries", "2", "--timeout", "20"])
        .args(PACKAGES)
        .output()
        .expect("run pip");
    let output = format!("{}{}", String::from_utf8_lossy(&pip.stdout), String::from_utf8_lossy(&pip.stderr));
    if !pip.status.success() {
        if registry_unreachable(&output) {
            eprintln!("\n*** SKIPPED rqlite_clients: PyPI cannot be reached, so the rqlite client libraries");
            eprintln!("*** ({}) cannot be installed. pip said:\n{output}", PACKAGES.join(", "));
            return None;
        }
        panic!("pip install {} failed:\n{output}", PACKAGES.join(" "));
    }
    std::fs::write(&stamp, wanted).expect("write the venv's stamp");
    Some(python)
}

/// Runs `python script args...`, killed if it runs longer than [`SCRIPT_TIMEOUT`]; its output.
fn run_bounded(python: &Path, script: &Path, addrs: &[String]) -> std::process::Output {
    use std::process::Stdio;
    let mut child = Command::new(python)
        .arg(script)
        .args(addrs)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the client script");
    // Drain the pipes meanwhile, so that a chatty script cannot block on a full pipe.
    let pipes = (child.stdout.take(), child.stderr.take());
    let readers =
        (std::thread::spawn(move || read_all(pipes.0)), std::thread::spawn(move || read_all(pipes.1)));
    let until = std::time::Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the script") {
            break status;
        }
        if std::time::Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the client script ran longer than {SCRIPT_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = readers.0.join().expect("stdout reader");
    let stderr = readers.1.join().expect("stderr reader");
    std::process::Output { status, stdout, stderr }
}

fn read_all(pipe: Option<impl std::io::Read>) -> Vec<u8> {
    let mut bytes = Vec::new();
    if let Some(mut pipe) = pipe {
        let _ = pipe.read_to_end(&mut bytes);
    }
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rqlite_client_libraries_work_against_a_bop_cluster() {
    let Some(python) = tokio::task::spawn_blocking(client_env).await.expect("venv task") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = loopback::three_nodes(dir.path()).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rqlite_clients/clients.py");
    let addrs: Vec<String> = nodes.iter().map(|n| n.http_addr().to_owned()).collect();
    let out = tokio::task::spawn_blocking(move || run_bounded(&python, &script, &addrs))
        .await
        .expect("script task");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "the client script failed ({:?}):\n{stdout}\n{stderr}", out.status);
    for line in ["discovery: leader", "pyrqlite:", "sqlalchemy-rqlite:", "rqdb:", "all client checks passed"]
    {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
    for node in nodes {
        node.shutdown().await;
    }
}

/// pyrqlite as an application on a secured cluster uses it: HTTPS trusting the cluster's CA, HTTP Basic
/// credentials, through every node; a user without `execute`, wrong and missing credentials, and a client
/// that does not trust the CA are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyrqlite_works_over_https_with_users() {
    use std::sync::Arc;
    let Some(python) = tokio::task::spawn_blocking(client_env).await.expect("venv task") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    bop_raft::tcp::tls::write_throwaway_pki(&pki, &[1, 2, 3]).expect("pki");
    let users = br#"[{"username": "app", "password": "app pw", "perms": ["execute", "query"]},
                     {"username": "viewer", "password": "viewer pw", "perms": ["query"]}]"#;
    let auth = Arc::new(bop_raft::auth::Auth::from_json(users).expect("auth file"));
    let nodes = loopback::three_nodes_in(dir.path(), |id| {
        let (cert, key) = (pki.join(format!("{id}.pem")), pki.join(format!("{id}-key.pem")));
        let https = bop_raft::https::HttpTls::from_pem_files(&cert, &key, &pki.join("ca.pem"), None);
        bop_raft::node::NodeEnv {
            http_tls: Some(Arc::new(https.expect("HTTPS"))),
            auth: Some(Arc::clone(&auth)),
            ..bop_raft::node::NodeEnv::default()
        }
    })
    .await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rqlite_clients/secure.py");
    let mut args = vec![pki.join("ca.pem").display().to_string()];
    args.extend(nodes.iter().map(|n| n.http_addr().to_owned()));
    let out =
        tokio::task::spawn_blocking(move || run_bounded(&python, &script, &args)).await.expect("script task");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "the secure client script failed ({:?}):\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("all secure client checks passed"), "{stdout}");
    for node in nodes {
        node.shutdown().await;
    }
}
