//! `bop bench`: a load generator against a running cluster's HTTP API.
//!
//! N clients, each on its own keep-alive connection, first upsert single rows of 256-byte values for the
//! given time, then do linearizable point reads of those keys for the same time. Each phase reports
//! operations per second, p50 and p99. The baseline, measured in the same process before the load, is
//! a sequential 256-byte write + fdatasync loop in the current directory: a write acknowledged by a
//! cluster needs at least one such fsync on a majority, so writes/s ÷ fsyncs/s is the cluster's
//! efficiency against the disk (above 1 when commits are batched).

use std::time::{Duration, Instant};

use bop_raft::http_client as bop_raft_http;

/// Largest answer body the generator reads.
const ANSWER_BYTES_MAX: usize = 1 << 20;
/// Longest latency the histograms tell apart (longer ones count as this), in microseconds: 10 minutes.
const LATENCY_US_MAX: u64 = 600_000_000;
/// Clients at most.
pub const CLIENTS_MAX: usize = 1024;

/// What to run.
pub struct LoadConfig {
    /// HTTP addresses; client `i` talks to `addrs[i % len]`.
    pub addrs: Vec<String>,
    /// Concurrent clients.
    pub clients: usize,
    /// Seconds per phase.
    pub secs: u64,
    /// Distinct keys written and read.
    pub keys: u64,
}

/// A client's kept-alive connection.
struct Conn {
    http: bop_raft_http::HttpConn,
    addr: String,
}

impl Conn {
    async fn open(addr: &str) -> Result<Conn, String> {
        let http = bop_raft_http::HttpConn::connect(addr, Duration::from_secs(5))
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        Ok(Conn { http, addr: addr.to_owned() })
    }

    /// One request on the kept-alive connection; the status and the body.
    async fn call(&mut self, method: &str, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
        let method = hyper::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let (status, answer) = self
            .http
            .call(method, path, bytes::Bytes::copy_from_slice(body), ANSWER_BYTES_MAX)
            .await
            .map_err(|e| format!("{}: {e}", self.addr))?;
        Ok((status, answer.to_vec()))
    }
}

/// Per-phase figures. Latencies go into an HDR histogram (3 significant digits, fixed memory), every
/// operation counted.
struct Phase {
    ops: u64,
    errors: u64,
    latency_us: hdrhistogram::Histogram<u64>,
    elapsed: Duration,
}

impl Phase {
    fn new() -> Result<Phase, String> {
        let latency_us = hdrhistogram::Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
            .map_err(|e| format!("latency histogram: {e}"))?;
        Ok(Phase { ops: 0, errors: 0, latency_us, elapsed: Duration::ZERO })
    }

    fn report(&mut self, name: &str) -> f64 {
        let at = |q: f64| -> f64 {
            if self.latency_us.is_empty() {
                0.0
            } else {
                self.latency_us.value_at_quantile(q) as f64 / 1000.0
            }
        };
        let rate = self.ops as f64 / self.elapsed.as_secs_f64();
        println!(
            "{name:>6}: {rate:>9.0} ops/s  p50 {:>7.2} ms  p99 {:>7.2} ms  ({} ops, {} errors)",
            at(0.50),
            at(0.99),
            self.ops,
            self.errors
        );
        rate
    }
}

fn value(key: u64, round: u64) -> String {
    let seed = format!("{key:016x}{round:016x}");
    seed.repeat(8)
}

async fn run_phase(config: &LoadConfig, write: bool) -> Result<Phase, String> {
    let deadline = Instant::now() + Duration::from_secs(config.secs);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(config.clients);
    for client in 0..config.clients {
        let addr = config.addrs[client % config.addrs.len()].clone();
        let keys = config.keys;
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&addr).await?;
            let mut phase = Phase::new()?;
            let mut round = 0u64;
            while Instant::now() < deadline {
                let key = (client as u64 + round * 7919) % keys;
                round += 1;
                let began = Instant::now();
                let (status, answer) = if write {
                    let body = serde_json::json!([[
                        "INSERT INTO kv(k, v) VALUES(?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                        key,
                        value(key, round)
                    ]]);
                    conn.call("POST", "/db/execute?db=bench", body.to_string().as_bytes()).await?
                } else {
                    let body = serde_json::json!([["SELECT v FROM kv WHERE k = ?", key]]);
                    conn.call("POST", "/db/query?db=bench&level=linearizable", body.to_string().as_bytes())
                        .await?
                };
                let ok = status == 200 && !answer.windows(8).any(|w| w == b"\"error\":");
                if ok {
                    phase.ops += 1;
                    let took = began.elapsed().as_micros().clamp(1, u128::from(LATENCY_US_MAX)) as u64;
                    phase.latency_us.saturating_record(took);
                } else {
                    phase.errors += 1;
                    if phase.errors == 1 {
                        eprintln!("client {client}: HTTP {status}: {}", String::from_utf8_lossy(&answer));
                    }
                }
            }
            Ok::<_, String>(phase)
        }));
    }
    let mut total = Phase::new()?;
    for task in tasks {
        let phase = task.await.map_err(|e| format!("client task: {e}"))??;
        total.ops += phase.ops;
        total.errors += phase.errors;
        total.latency_us.add(&phase.latency_us).map_err(|e| format!("latency histogram: {e}"))?;
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

/// Sequential 256-byte write + fdatasync in the current directory for about a second: fsyncs per second.
fn raw_fsync_rate() -> Result<f64, String> {
    use std::io::Write;
    let path = std::env::current_dir()
        .map_err(|e| e.to_string())?
        .join(format!(".bop-bench-fsync-{}", std::process::id()));
    let run = || -> std::io::Result<f64> {
        let mut file = std::fs::File::create(&path)?;
        let block = [0x5au8; 256];
        let started = Instant::now();
        let mut n = 0u64;
        while started.elapsed() < Duration::from_secs(1) {
            file.write_all(&block)?;
            file.sync_data()?;
            n += 1;
        }
        Ok(n as f64 / started.elapsed().as_secs_f64())
    };
    let rate = run();
    let _ = std::fs::remove_file(&path);
    rate.map_err(|e| format!("raw fsync baseline: {e}"))
}

/// Runs the benchmark and prints its figures.
pub async fn run(config: LoadConfig) -> Result<(), String> {
    if config.addrs.is_empty() || config.clients == 0 || config.clients > CLIENTS_MAX || config.keys == 0 {
        return Err(format!("bench needs an address, 1..={CLIENTS_MAX} clients and at least one key"));
    }
    let raw = tokio::task::spawn_blocking(raw_fsync_rate).await.map_err(|e| e.to_string())??;
    let mut setup = Conn::open(&config.addrs[0]).await?;
    let (status, answer) = setup
        .call(
            "POST",
            "/db/execute?db=bench",
            br#"["CREATE TABLE IF NOT EXISTS kv (k INTEGER PRIMARY KEY, v TEXT)"]"#,
        )
        .await?;
    if status != 200 || answer.windows(8).any(|w| w == b"\"error\":") {
        return Err(format!("creating the table: HTTP {status}: {}", String::from_utf8_lossy(&answer)));
    }
    println!(
        "bop bench: {} clients, {} s per phase, {} keys, 256-byte values, against {}",
        config.clients,
        config.secs,
        config.keys,
        config.addrs.join(",")
    );
    println!(
        "baseline: {raw:.0} raw 256-byte write+fdatasync/s in {}",
        std::env::current_dir().map_err(|e| e.to_string())?.display()
    );
    let writes = run_phase(&config, true).await?.report("writes");
    let reads = run_phase(&config, false).await?.report("reads");
    println!(
        "ratio: writes/s ÷ raw fsyncs/s = {:.2}; reads/s ÷ writes/s = {:.2}",
        writes / raw,
        reads / writes.max(1.0)
    );
    Ok(())
}
