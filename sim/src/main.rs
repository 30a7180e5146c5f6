//! `bop-sim`: runs seeds of the deterministic cluster simulation and prints a summary.
//!
//! `cargo run --release -p bop-sim -- --seeds 10000` runs seeds 0..10000; `--seed S` replays one (with
//! `--verbose` for its event trace); `--start S` shifts the range; `--bug skip-wal-fsync` reintroduces a
//! bug to show the checks catch it. Exits non-zero if any seed found a violation.

use std::collections::BTreeMap;
use std::process::ExitCode;

use bop_sim::{run, Bug, Options};

fn usage() -> ExitCode {
    eprintln!(
        "usage: bop-sim [--seeds N] [--start S] [--seed S] [--safety-ms MS] [--liveness-ms MS] [--bug skip-wal-fsync] [--verbose]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut seeds, mut start, mut one) = (20u64, 0u64, None);
    let mut base = Options::new(0);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> Option<u64> {
            let value = args.next().and_then(|v| v.parse().ok());
            if value.is_none() {
                eprintln!("{name} needs a number");
            }
            value
        };
        match arg.as_str() {
            "--seeds" => match number("--seeds") {
                Some(n) => seeds = n,
                None => return usage(),
            },
            "--start" => match number("--start") {
                Some(n) => start = n,
                None => return usage(),
            },
            "--seed" => match number("--seed") {
                Some(n) => one = Some(n),
                None => return usage(),
            },
            "--safety-ms" => match number("--safety-ms") {
                Some(n) => base.safety_ms = n,
                None => return usage(),
            },
            "--liveness-ms" => match number("--liveness-ms") {
                Some(n) => base.liveness_ms = n,
                None => return usage(),
            },
            "--bug" => match args.next().as_deref() {
                Some("skip-wal-fsync") => base.bug = Some(Bug::SkipWalFsync),
                other => {
                    eprintln!("unknown bug {other:?} (known: skip-wal-fsync)");
                    return usage();
                }
            },
            "--verbose" => base.verbose = true,
            "--help" | "-h" => {
                usage();
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument {other:?}");
                return usage();
            }
        }
    }
    let range: Vec<u64> = match one {
        Some(seed) => vec![seed],
        None => (start..start.saturating_add(seeds)).collect(),
    };
    let started = std::time::Instant::now();
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let (mut ops, mut acked, mut failed, mut violations) = (0usize, 0usize, 0u64, 0usize);
    for seed in &range {
        let mut options = base.clone();
        options.seed = *seed;
        let report = run(&options);
        for (kind, n) in &report.faults {
            *faults.entry(kind).or_default() += n;
        }
        ops += report.ops_checked;
        acked += report.writes_acked;
        violations += report.violations.len();
        if report.violations.is_empty() {
            if one.is_some() || options.verbose {
                println!("seed {seed}: ok (trace {:016x}, {} ops)", report.trace_hash, report.ops_checked);
            }
        } else {
            failed += 1;
            println!("seed {seed}: FAILED ({} violations)", report.violations.len());
            for v in report.violations.iter().take(5) {
                println!("  {v}");
            }
            let bug = if options.bug.is_some() { " --bug skip-wal-fsync" } else { "" };
            println!(
                "  replay: cargo run --release -p bop-sim -- --seed {seed} --safety-ms {} --liveness-ms {}{bug} --verbose",
                options.safety_ms, options.liveness_ms
            );
        }
    }
    println!(
        "seeds: {} ({} failed) in {:.1} s; operations checked: {ops} ({acked} acknowledged writes); violations: {violations}",
        range.len(),
        failed,
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
