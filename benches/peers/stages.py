#!/usr/bin/env python3
"""Where a bop write's time went, per wrk level of one benches/peers/run.sh run.

    benches/peers/stages.py OUT/bop-c1.metrics OUT/bop-c16.metrics OUT/bop-c64.metrics

Each file is the leader's /metrics after a level (cumulative); a level's figures are the difference from the
file before it (the first one's include the populate step). For each latency histogram: how many, and the
upper bounds of the buckets holding the 50th, 99th and 99.9th percentile (a histogram knows no finer)."""
import re
import sys

HISTOGRAMS = [
    ("bop_http_request_duration_seconds", "HTTP request"),
    ("bop_write_duration_seconds", "write, queued to answered"),
    ("bop_write_wait_duration_seconds", "queue wait"),
    ("bop_write_group_run_duration_seconds", "group's SQL"),
    ("bop_write_group_commit_duration_seconds", "group's commits applied"),
    ("bop_wal_fsync_duration_seconds", "log fdatasync"),
]
SAMPLE = re.compile(r'^(\w+?)_bucket\{(?:[^}]*,)?le="([^"]+)"[^}]*\} (\S+)')


def buckets(path):
    """{histogram: {upper bound: cumulative count}}, labels other than le summed."""
    out = {}
    for line in open(path):
        m = SAMPLE.match(line)
        if not m:
            continue
        name, le, value = m.group(1), m.group(2), float(m.group(3))
        bound = float("inf") if le == "+Inf" else float(le)
        out.setdefault(name, {}).setdefault(bound, 0.0)
        out[name][bound] += value
    return out


def quantile(cumulative, q):
    total = cumulative[-1][1]
    for bound, count in cumulative:
        if count >= q * total:
            return bound
    return float("inf")


def ms(bound):
    return "+Inf" if bound == float("inf") else f"{bound * 1000:g}"


def main(paths):
    before = {}
    print("| level | histogram | count | p50 ≤ ms | p99 ≤ ms | p99.9 ≤ ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    for path in paths:
        now = buckets(path)
        level = re.sub(r"\.metrics$", "", path.rsplit("/", 1)[-1])
        for name, what in HISTOGRAMS:
            if name not in now:
                continue
            old = before.get(name, {})
            cumulative = sorted((b, c - old.get(b, 0.0)) for b, c in now[name].items())
            if not cumulative or cumulative[-1][1] <= 0:
                continue
            row = [level, what, f"{cumulative[-1][1]:.0f}"] + [ms(quantile(cumulative, q)) for q in (0.5, 0.99, 0.999)]
            print("| " + " | ".join(row) + " |")
        before = now


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
