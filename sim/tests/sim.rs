//! The simulation's own tests: a bounded set of seeds passes every check, a seed replays exactly, and a
//! reintroduced bug is caught within a bounded number of seeds.

use std::collections::BTreeSet;

use bop_sim::{run, Bug, Options};

/// Short runs keep CI within a few minutes on 2 cores (debug build).
fn options(seed: u64) -> Options {
    let mut options = Options::new(seed);
    options.safety_ms = 5_000;
    options.liveness_ms = 6_000;
    options
}

/// Runs one seed in a process of its own, as its replay command does, and returns its report line.
fn run_process(seed: u64) -> serde_json::Value {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_bop-sim"))
        .args(["--seed", &seed.to_string(), "--report", "--safety-ms", "5000", "--liveness-ms", "6000"])
        .output()
        .expect("run bop-sim");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().find_map(|l| l.strip_prefix("REPORT ")).expect("a report line");
    serde_json::from_str(line).expect("report json")
}

#[test]
fn a_seed_replays_to_the_same_trace() {
    let first = run_process(7);
    let second = run_process(7);
    assert_eq!(first["violations"].as_array().map(Vec::len), Some(0), "{first}");
    assert!(first["ops_checked"].as_u64() > Some(100), "the clients did work: {first}");
    assert_eq!(first["trace_hash"], second["trace_hash"], "one seed, one run");
    assert_eq!(first, second);
    let other = run_process(8);
    assert_ne!(first["trace_hash"], other["trace_hash"], "another seed runs differently");
}

#[test]
fn ci_seeds_pass_every_check_under_every_kind_of_fault() {
    let mut kinds = BTreeSet::new();
    let mut ops = 0;
    for seed in 100..106 {
        let report = run(&options(seed));
        assert!(
            report.violations.is_empty(),
            "seed {seed} failed; replay with `cargo run --release -p bop-sim -- --seed {seed} --safety-ms 5000 --liveness-ms 6000 --verbose`:\n{:#?}",
            report.violations
        );
        assert!(report.writes_acked > 0, "seed {seed} acknowledged no write");
        ops += report.ops_checked;
        kinds.extend(report.faults.keys().copied());
    }
    assert!(ops > 1000, "{ops} operations checked");
    assert!(kinds.len() >= 7, "too few kinds of fault injected: {kinds:?}");
}

#[test]
fn acknowledging_before_fsync_is_caught() {
    let mut caught = None;
    for seed in 0..10 {
        let mut options = options(seed);
        options.bug = Some(Bug::SkipWalFsync);
        let report = run(&options);
        if !report.violations.is_empty() {
            caught = Some((seed, report.violations));
            break;
        }
    }
    let (seed, violations) = caught.expect("a WAL that skips fdatasync went unnoticed for 10 seeds");
    eprintln!("caught at seed {seed}: {}", violations[0]);
}

#[test]
fn accepting_stale_commits_is_caught() {
    // The lost update the simulation found: without the fences, a new leader's transaction undoes an
    // acknowledged write, which the linearizability check reports. The sweep injects only the fault made for
    // it (the leader killed as a client hears "written" while no other node applied the entry, its messages
    // on the wire lost, a prober writing to the next leader as soon as it leads, clients reading); with the
    // bug, 28 of seeds 0..40 are caught, and without it none fails. Every seed runs in its own process, as
    // its replay would.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_bop-sim"))
        .args([
            "--seeds",
            "8",
            "--jobs",
            "2",
            "--bug",
            "accept-stale-commits",
            "--faults",
            "leader-kill-after-ack",
        ])
        .output()
        .expect("run bop-sim");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "the sweep passed with the bug in:\n{stdout}");
    assert!(stdout.contains("not linearizable"), "caught, but not by the linearizability check:\n{stdout}");
}
