#!/usr/bin/env python3
"""A bop cluster's writes, interval by interval: where a write tail sits in time.

    benches/peers/intervals.py SECONDS LEADER_URL [OTHER_URL...]

Polls every node's /metrics about every 0.1 s for SECONDS and prints one line per interval: the wall-clock
time, the leader's writes answered and how many of them took over 32 ms, its applied index, its write groups
with their mean SQL and commit time, the entries it applied and their total apply time, and every node's
fdatasyncs with their total time (leader first). An interval in which every write in flight took over 32 ms
is a stall of the whole write path; its time and applied index tell what ran then (a segment roll, a
snapshot at a multiple of openraft's snapshot interval). `run.sh` with INTERVALS=1 saves it per bop level.
"""
import re
import sys
import time
import urllib.request

SAMPLE = re.compile(r"^(\w+)(\{[^}]*\})? (\S+)$")


def scrape(url):
    text = urllib.request.urlopen(url + "/metrics", timeout=2).read().decode()
    values = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and not line.startswith("#"):
            values[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return values


def delta(now, before, name):
    return now.get(name, 0.0) - before.get(name, 0.0)


def main(seconds, urls):
    before = [scrape(u) for u in urls]
    start = time.time()
    while time.time() - start < seconds:
        time.sleep(0.1)
        try:
            now = [scrape(u) for u in urls]
        except OSError:
            continue
        lead, lead_before = now[0], before[0]
        writes = delta(lead, lead_before, "bop_write_duration_seconds_count")
        fast = delta(lead, lead_before, 'bop_write_duration_seconds_bucket{le="0.032"}')
        groups = delta(lead, lead_before, "bop_write_group_commit_duration_seconds_count")
        per_group = max(groups, 1.0) / 1000
        run = delta(lead, lead_before, "bop_write_group_run_duration_seconds_sum") / per_group
        commit = delta(lead, lead_before, "bop_write_group_commit_duration_seconds_sum") / per_group
        applied = delta(lead, lead_before, "bop_raft_apply_duration_seconds_count")
        apply_ms = delta(lead, lead_before, "bop_raft_apply_duration_seconds_sum") * 1000
        fsyncs = " ".join(
            f"{delta(n, b, 'bop_wal_fsyncs_total'):3.0f}/{delta(n, b, 'bop_wal_fsync_seconds_total') * 1000:4.0f}ms"
            for n, b in zip(now, before)
        )
        stamp = time.strftime("%H:%M:%S", time.localtime()) + f".{int(time.time() * 10) % 10}"
        print(
            f"{stamp} writes={writes:5.0f} over_32ms={writes - fast:3.0f} "
            f"applied={lead.get('bop_raft_last_applied_index', 0):7.0f} groups={groups:3.0f} "
            f"sql={run:5.1f}ms commit={commit:6.1f}ms applies={applied:3.0f}/{apply_ms:5.1f}ms "
            f"fsyncs {fsyncs}",
            flush=True,
        )
        before = now


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(float(sys.argv[1]), sys.argv[2:])
