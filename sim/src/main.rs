//! `bop-sim`: runs seeds of the deterministic cluster simulation and prints a summary.
//!
//! `cargo run --release -p bop-sim -- --seeds 10000` runs seeds 0..10000; `--seed S` replays one (with
//! `--verbose` for its event trace); `--start S` shifts the range; `--jobs N` runs N seeds at a time;
//! `--bug skip-wal-fsync` (or `accept-stale-commits`, `accept-wrong-base`, `answer-on-propose`)
//! reintroduces a bug to show the checks catch it; `--faults KIND,...` injects only those kinds of fault, and `--faults-in-turn` injects the kinds one after
//! another (in the order listed) instead of drawing them by weight; `--pipeline-depth N` sets the nodes'
//! `NodeLimits::pipeline_depth` (1 turns pipelining off); `--read-lease D` gives every node lease reads with a
//! D % clock-drift margin and keeps the nodes' timer rates within D % of each other. Exits non-zero if any seed found a
//! violation.
//!
//! Every seed of a sweep runs in a process of its own (this binary, re-executed with `--seed S --report`),
//! exactly as its replay command will run it: tokio numbers tasks process-wide, and the order a crashed
//! host's tasks are dropped in (hence the order its connections close) follows those numbers, so a second
//! run in one process is not a replay of the first.

use std::collections::BTreeMap;
use std::process::{Command, ExitCode, Stdio};

use bop_sim::{run, Bug, Options, Report};
use serde_json::{json, Value as Json};

fn usage() -> ExitCode {
    eprintln!(
        "usage: bop-sim [--seeds N] [--start S] [--jobs N] [--seed S] [--safety-ms MS] [--liveness-ms MS] [--bug skip-wal-fsync|accept-stale-commits|accept-wrong-base|answer-on-propose|lease-without-drift-margin|min-index-ignored] [--faults KIND,...] [--faults-in-turn] [--pipeline-depth N] [--read-lease DRIFT_PERCENT] [--verbose] [--report]"
    );
    ExitCode::from(2)
}

struct Args {
    seeds: u64,
    start: u64,
    one: Option<u64>,
    jobs: usize,
    report: bool,
    base: Options,
}

fn parse() -> Result<Args, ExitCode> {
    let mut args = std::env::args().skip(1);
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut parsed = Args { seeds: 20, start: 0, one: None, jobs, report: false, base: Options::new(0) };
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> Result<u64, ExitCode> {
            args.next().and_then(|v| v.parse().ok()).ok_or_else(|| {
                eprintln!("{name} needs a number");
                usage()
            })
        };
        match arg.as_str() {
            "--seeds" => parsed.seeds = number("--seeds")?,
            "--start" => parsed.start = number("--start")?,
            "--seed" => parsed.one = Some(number("--seed")?),
            "--jobs" => parsed.jobs = number("--jobs")?.clamp(1, 64) as usize,
            "--safety-ms" => parsed.base.safety_ms = number("--safety-ms")?,
            "--liveness-ms" => parsed.base.liveness_ms = number("--liveness-ms")?,
            "--bug" => match args.next().as_deref().and_then(Bug::from_name) {
                Some(bug) => parsed.base.bug = Some(bug),
                None => {
                    eprintln!("unknown bug (known: skip-wal-fsync, accept-stale-commits, accept-wrong-base, answer-on-propose, lease-without-drift-margin, min-index-ignored)");
                    return Err(usage());
                }
            },
            "--faults" => {
                let list = args.next().unwrap_or_default();
                let kinds: Vec<String> =
                    list.split(',').filter(|k| !k.is_empty()).map(str::to_owned).collect();
                let known = |k: &String| bop_sim::harness::FAULT_KINDS.iter().any(|(name, _)| name == k);
                if kinds.is_empty() || !kinds.iter().all(known) {
                    let names: Vec<&str> = bop_sim::harness::FAULT_KINDS.iter().map(|(n, _)| *n).collect();
                    eprintln!("unknown fault kind in {list:?} (known: {})", names.join(", "));
                    return Err(usage());
                }
                parsed.base.faults = kinds;
            }
            "--faults-in-turn" => parsed.base.faults_in_turn = true,
            "--read-lease" => parsed.base.read_lease = Some(number("--read-lease")?.min(100) as u32),
            "--pipeline-depth" => {
                parsed.base.pipeline_depth = number("--pipeline-depth")?.clamp(1, 64) as usize
            }
            "--report" => parsed.report = true,
            "--verbose" => parsed.base.verbose = true,
            "--help" | "-h" => {
                usage();
                return Err(ExitCode::SUCCESS);
            }
            other => {
                eprintln!("unknown argument {other:?}");
                return Err(usage());
            }
        }
    }
    Ok(parsed)
}

fn report_json(report: &Report) -> Json {
    let kinds: BTreeMap<&str, usize> = report.violation_kinds.iter().map(|(k, n)| (k.name(), *n)).collect();
    json!({
        "seed": report.seed,
        "trace_hash": format!("{:016x}", report.trace_hash),
        "faults": report.faults,
        "ops_checked": report.ops_checked,
        "writes_acked": report.writes_acked,
        "violations": report.violations,
        "violation_kinds": kinds,
        "sim_ms": report.sim_ms,
    })
}

/// Runs `seed` in a child process and returns its report.
fn run_child(args: &Args, seed: u64) -> Result<Json, String> {
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let mut command = Command::new(exe);
    command.args([
        "--seed".to_owned(),
        seed.to_string(),
        "--report".to_owned(),
        "--safety-ms".to_owned(),
        args.base.safety_ms.to_string(),
        "--liveness-ms".to_owned(),
        args.base.liveness_ms.to_string(),
    ]);
    if let Some(bug) = args.base.bug {
        command.args(["--bug", bug.name()]);
    }
    if !args.base.faults.is_empty() {
        command.args(["--faults", &args.base.faults.join(",")]);
    }
    if args.base.faults_in_turn {
        command.arg("--faults-in-turn");
    }
    command.args(["--pipeline-depth".to_owned(), args.base.pipeline_depth.to_string()]);
    if let Some(drift) = args.base.read_lease {
        command.args(["--read-lease".to_owned(), drift.to_string()]);
    }
    let output = command.stderr(Stdio::null()).output().map_err(|e| format!("seed {seed}: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("REPORT "))
        .ok_or_else(|| format!("seed {seed}: the run ended without a report ({})", output.status))?;
    serde_json::from_str(line).map_err(|e| format!("seed {seed}: unreadable report: {e}"))
}

fn replay_command(args: &Args, seed: u64) -> String {
    let mut bug = args.base.bug.map_or(String::new(), |b| format!(" --bug {}", b.name()));
    if !args.base.faults.is_empty() {
        bug.push_str(&format!(" --faults {}", args.base.faults.join(",")));
    }
    if args.base.faults_in_turn {
        bug.push_str(" --faults-in-turn");
    }
    bug.push_str(&format!(" --pipeline-depth {}", args.base.pipeline_depth));
    if let Some(drift) = args.base.read_lease {
        bug.push_str(&format!(" --read-lease {drift}"));
    }
    format!(
        "cargo run --release -p bop-sim -- --seed {seed} --safety-ms {} --liveness-ms {}{bug} --verbose",
        args.base.safety_ms, args.base.liveness_ms
    )
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(code) => return code,
    };
    if let Some(seed) = args.one {
        let mut options = args.base.clone();
        options.seed = seed;
        let report = run(&options);
        if args.report {
            println!("REPORT {}", report_json(&report));
            return ExitCode::SUCCESS;
        }
        let ok = report.violations.is_empty();
        println!(
            "seed {seed}: {} (trace {:016x}, {} operations, {} acknowledged writes)",
            if ok { "ok" } else { "FAILED" },
            report.trace_hash,
            report.ops_checked,
            report.writes_acked
        );
        for v in &report.violations {
            println!("  {v}");
        }
        if !ok {
            let kinds: Vec<String> =
                report.violation_kinds.iter().map(|(k, n)| format!("{} {n}", k.name())).collect();
            println!("violations by kind: {}", kinds.join(", "));
        }
        let kinds: Vec<String> = report.faults.iter().map(|(k, n)| format!("{k} {n}")).collect();
        println!("faults injected: {}", kinds.join(", "));
        return if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    let started = std::time::Instant::now();
    let seeds: Vec<u64> = (args.start..args.start.saturating_add(args.seeds)).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..args.jobs.min(seeds.len().max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(&seed) = seeds.get(i) else { return };
                let outcome = run_child(&args, seed);
                if let Ok(mut results) = results.lock() {
                    results.push((seed, outcome));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_default();
    results.sort_by_key(|(seed, _)| *seed);
    let mut faults: BTreeMap<String, u64> = BTreeMap::new();
    let (mut ops, mut acked, mut failed, mut violations) = (0u64, 0u64, 0u64, 0u64);
    for (seed, outcome) in &results {
        let report = match outcome {
            Ok(report) => report,
            Err(e) => {
                failed += 1;
                violations += 1;
                println!("seed {seed}: FAILED: {e}\n  replay: {}", replay_command(&args, *seed));
                continue;
            }
        };
        if let Some(kinds) = report["faults"].as_object() {
            for (kind, n) in kinds {
                *faults.entry(kind.clone()).or_default() += n.as_u64().unwrap_or(0);
            }
        }
        ops += report["ops_checked"].as_u64().unwrap_or(0);
        acked += report["writes_acked"].as_u64().unwrap_or(0);
        let found = report["violations"].as_array().cloned().unwrap_or_default();
        if !found.is_empty() {
            failed += 1;
            violations += found.len() as u64;
            let kinds: Vec<String> = report["violation_kinds"]
                .as_object()
                .map(|kinds| kinds.iter().map(|(k, n)| format!("{k} {n}")).collect())
                .unwrap_or_default();
            println!("seed {seed}: FAILED ({} violations: {})", found.len(), kinds.join(", "));
            for v in found.iter().take(5) {
                println!("  {}", v.as_str().unwrap_or_default());
            }
            println!("  replay: {}", replay_command(&args, *seed));
        }
    }
    println!(
        "seeds: {} ({failed} failed) in {:.1} s; operations checked: {ops} ({acked} acknowledged writes); violations: {violations}",
        results.len(),
        started.elapsed().as_secs_f64()
    );
    let kinds: Vec<String> = faults.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!("faults injected: {}", if kinds.is_empty() { "none".to_owned() } else { kinds.join(", ") });
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
