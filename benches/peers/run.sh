#!/usr/bin/env bash
# bop beside etcd, one run, one machine: a three-node cluster of each on 127.0.0.1, one after the other, the
# same workload (wrk, closed loop: 256-byte single-key writes over $KEYS keys, all written first, sent to the
# leader), and the ratios. Not part of CI: it measures the machine as much as bop.
#
#   benches/peers/run.sh [--install]
#
# --install: apt-get install etcd-server and wrk from Debian first (as root). Settings (environment):
#   BOP=target/release/bop   CONNS="1 16 64"   DUR=10 (s measured)   WARM=2 (s discarded)   KEYS=10000
#   PORT_BASE=27100 (bop: Raft +1..3, HTTP +11..13; etcd: client +21..23, peer +31..33)
#   OUT=target/peers/<time>: data directories (on the disk they are measured on), wrk output, table.md.
#   BOP_BASELINE=path/to/another/bop: measured first, in the same run, as "baseline" (e.g. a build of an
#   older commit, or a wrapper adding flags), with its own columns in the table.
#   MODE=write (default) or read: single-key linearizable reads of the same keys instead of writes.
#   SPREAD=leader (default: every connection to the leader) or all: the connections split over the three
#   nodes (three wrk processes at once, CONNS/3 each, at least 1; ops summed, the worst p50/p99 kept).
#   INTERVALS=1: during each measured bop level, benches/peers/intervals.py polls the three nodes' /metrics
#   (<name>-c<clients>.intervals: writes, writes over 32 ms, applied index, fdatasyncs per ~0.1 s), and, when
#   inotifywait is installed (Debian's inotify-tools), the nodes' segment and generation files created,
#   renamed and deleted are logged with their time (<name>-c<clients>.files): a stall can be matched to a
#   segment roll, a zero fill or a snapshot.
#   DQLITE=auto (default: when dqlite-demo is installed), 1 or 0: also a three-node dqlite-demo cluster
#   (go-dqlite's demo: PUT /KEY, GET /KEY; its GETs are not linearizable, and it answers errors as 200
#   "Error: ..."), API on PORT_BASE+41..43, replication on +51..53. Its nodes' driver sends every query to
#   its leader, so "the leader" is node 1's API.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BOP=${BOP:-$ROOT/target/release/bop}
CONNS=${CONNS:-"1 16 64"}
DUR=${DUR:-10}
WARM=${WARM:-2}
KEYS=${KEYS:-10000}
PORT_BASE=${PORT_BASE:-27100}
OUT=${OUT:-$ROOT/target/peers/$(date -u +%Y%m%dT%H%M%SZ)}
MODE=${MODE:-write}
SPREAD=${SPREAD:-leader}

if [[ ${1:-} == --install ]]; then
  apt-get install -y etcd-server wrk go-dqlite
fi
DQLITE=${DQLITE:-auto}
if [[ $DQLITE == auto ]]; then DQLITE=0; command -v dqlite-demo >/dev/null && DQLITE=1; fi
for tool in etcd wrk python3 curl dd; do
  command -v "$tool" >/dev/null || { echo "peers: $tool is missing (run with --install, as root)" >&2; exit 2; }
done
[[ -x $BOP ]] || { echo "peers: no bop binary at $BOP (cargo build --release -p bop-raft)" >&2; exit 2; }
mkdir -p "$OUT"
PIDS=()

stop_all() {
  local pid
  for pid in "${PIDS[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  PIDS=()
}
trap stop_all EXIT

# Prints the URL whose /status (bop) or maintenance status (etcd) says it leads, or fails after 60 s.
bop_leader() {
  local i
  for _ in $(seq 1 120); do
    for i in 1 2 3; do
      local url="http://127.0.0.1:$((PORT_BASE + 10 + i))"
      if curl -fsS --max-time 2 "$url/status" 2>/dev/null | grep -q '"state":"Leader"'; then echo "$url"; return 0; fi
    done
    sleep 0.5
  done
  return 1
}

etcd_leader() {
  local i
  for _ in $(seq 1 120); do
    for i in 1 2 3; do
      local url="http://127.0.0.1:$((PORT_BASE + 20 + i))"
      local status
      status=$(curl -fsS --max-time 2 -X POST -d '{}' "$url/v3/maintenance/status" 2>/dev/null) || continue
      if python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if s["leader"] == s["header"]["member_id"] else 1)' <<<"$status"; then
        echo "$url"; return 0
      fi
    done
    sleep 0.5
  done
  return 1
}

start_bop() { # BINARY NAME
  local members="" i
  for i in 1 2 3; do
    members+="${members:+,}$i=127.0.0.1:$((PORT_BASE + i))/127.0.0.1:$((PORT_BASE + 10 + i))"
  done
  for i in 1 2 3; do
    "$1" node --id "$i" --data-dir "$OUT/$2/node-$i" --raft-addr "127.0.0.1:$((PORT_BASE + i))" \
      --http-addr "127.0.0.1:$((PORT_BASE + 10 + i))" --bootstrap "$members" >"$OUT/$2-node-$i.log" 2>&1 &
    PIDS+=($!)
  done
}

start_etcd() {
  local cluster="" i
  for i in 1 2 3; do cluster+="${cluster:+,}e$i=http://127.0.0.1:$((PORT_BASE + 30 + i))"; done
  for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$OUT/etcd/e$i" \
      --listen-client-urls "http://127.0.0.1:$((PORT_BASE + 20 + i))" \
      --advertise-client-urls "http://127.0.0.1:$((PORT_BASE + 20 + i))" \
      --listen-peer-urls "http://127.0.0.1:$((PORT_BASE + 30 + i))" \
      --initial-advertise-peer-urls "http://127.0.0.1:$((PORT_BASE + 30 + i))" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token bop-peers \
      >"$OUT/etcd-$i.log" 2>&1 &
    PIDS+=($!)
  done
}

start_dqlite() {
  local i dbs=""
  for i in 1 2 3; do dbs+="${dbs:+,}127.0.0.1:$((PORT_BASE + 50 + i))"; done
  mkdir -p "$OUT/dqlite"
  for i in 1 2 3; do
    local join=()
    ((i > 1)) && join=(--join "127.0.0.1:$((PORT_BASE + 51))")
    dqlite-demo --api "127.0.0.1:$((PORT_BASE + 40 + i))" --db "127.0.0.1:$((PORT_BASE + 50 + i))" \
      --dir "$OUT/dqlite" "${join[@]}" >"$OUT/dqlite-$i.log" 2>&1 &
    PIDS+=($!)
    # Each node serves its API once it is ready; the next joins through node 1.
    for _ in $(seq 1 120); do
      curl -fsS --max-time 2 -X PUT --data-binary ready "http://127.0.0.1:$((PORT_BASE + 40 + i))/ready-$i" 2>/dev/null |
        grep -qx done && break
      sleep 0.5
    done
  done
  # Joiners become voters asynchronously.
  for _ in $(seq 1 120); do
    (($(dqlite -s "$dbs" demo .cluster 2>/dev/null | grep -ci voter) >= 3)) && return 0
    sleep 0.5
  done
  echo "dqlite: fewer than 3 voters after 60 s; see $OUT/dqlite-*.log" >&2
  return 1
}

# fsync baseline: 4 KiB writes with O_DSYNC where the data lives.
fsyncs() {
  local line secs
  line=$(dd if=/dev/zero of="$OUT/dd.tmp" bs=4k count=1000 oflag=dsync 2>&1 | tail -1)
  rm -f "$OUT/dd.tmp"
  secs=$(sed -E 's/.* copied, ([0-9.]+) s.*/\1/' <<<"$line")
  python3 -c "print(round(1000 / $secs))"
}

# Measures one system: "NAME CONNS ok/s p50_ms p99_ms failed" lines into $OUT/results.
measure() { # PEER(bop|etcd) NAME URL [URL...]: the leader's URL first, then the others'
  local peer=$1 name=$2 c threads each n k url
  shift 2
  local urls=("$1")
  [[ $SPREAD == all ]] && urls=("$@")
  for c in $CONNS; do
    n=${#urls[@]}
    each=$((c / n)); ((each < 1)) && each=1
    threads=2; ((each < 2)) && threads=1
    # (Waiting for these wrk processes only: the cluster's nodes are background jobs too.)
    local pids=()
    k=0
    for url in "${urls[@]}"; do
      PEER=$peer PEER_OP=$MODE PEER_KEYS=$KEYS wrk -t$threads -c"$each" -d"${WARM}s" -s "$HERE/kv.lua" "$url" >"$OUT/$name-c$c-$k.warmup" 2>&1 &
      pids+=($!)
      k=$((k + 1))
    done
    wait "${pids[@]}"
    pids=()
    local watchers=()
    if [[ $peer == bop && ${INTERVALS:-0} == 1 ]]; then
      python3 "$HERE/intervals.py" "$DUR" "$@" >"$OUT/$name-c$c.intervals" 2>&1 &
      watchers+=($!)
      if command -v inotifywait >/dev/null; then
        inotifywait -m -q --timefmt %T --format '%T %w %e %f' -e create,moved_to,delete \
          "$OUT/$name"/node-*/wal "$OUT/$name"/node-*/pages >"$OUT/$name-c$c.files" 2>&1 &
        watchers+=($!)
      fi
    fi
    k=0
    for url in "${urls[@]}"; do
      PEER=$peer PEER_OP=$MODE PEER_KEYS=$KEYS wrk -t$threads -c"$each" -d"${DUR}s" --latency -s "$HERE/kv.lua" "$url" >"$OUT/$name-c$c-$k.txt" 2>&1 &
      pids+=($!)
      k=$((k + 1))
    done
    wait "${pids[@]}"
    for k in "${watchers[@]}"; do kill "$k" 2>/dev/null || true; done
    # bop: the leader's /metrics after each level, for benches/peers/stages.py (where the time went).
    [[ $peer == bop ]] && curl -fsS --max-time 5 "$1/metrics" >"$OUT/$name-c$c.metrics" 2>/dev/null || true
    python3 - "$name" "$c" "$OUT/$name-c$c-"*.txt >>"$OUT/results" <<'EOF'
import sys
peer, conns, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
runs = []
for path in paths:
    line = next(l for l in open(path) if l.startswith("RESULT "))
    runs.append(dict(kv.split("=") for kv in line.split()[1:]))
ok = sum(int(v["ok"]) for v in runs)
secs = max(float(v["secs"]) for v in runs)
p50 = max(int(v["p50_us"]) for v in runs) / 1000
p99 = max(int(v["p99_us"]) for v in runs) / 1000
failed = sum(int(v["failed"]) for v in runs)
print(peer, conns, round(ok / secs), p50, p99, failed)
EOF
    tail -1 "$OUT/results"
  done
}

: >"$OUT/results"
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S') UTC; bop: $("$BOP" --version 2>/dev/null || echo "$BOP"), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), $(free -h | awk '/^Mem:/{print $2}') memory, kernel $(uname -r)"
  echo "disk: $(df -T "$OUT" | awk 'NR==2{print $1" "$2}'); etcd $(etcd --version 2>/dev/null | head -1 | awk '{print $3}'), wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}')"
} | tee "$OUT/machine.txt"
echo "fsyncs/s before: $(fsyncs)" | tee -a "$OUT/machine.txt"

run_bop() { # BINARY NAME
  start_bop "$1" "$2"
  L=$(bop_leader) || { echo "bop: no leader; see $OUT/$2-node-*.log" >&2; exit 1; }
  python3 "$HERE/populate.py" bop "$L" "$KEYS"
  # A just-formed cluster may have changed its leader meanwhile: measure the one leading now.
  L=$(bop_leader) || { echo "bop: no leader; see $OUT/$2-node-*.log" >&2; exit 1; }
  local others=() i
  for i in 1 2 3; do [[ http://127.0.0.1:$((PORT_BASE + 10 + i)) == "$L" ]] || others+=("http://127.0.0.1:$((PORT_BASE + 10 + i))"); done
  measure bop "$2" "$L" "${others[@]}"
  stop_all
}
if [[ -n ${BOP_BASELINE:-} ]]; then run_bop "$BOP_BASELINE" baseline; fi
run_bop "$BOP" bop

start_etcd
L=$(etcd_leader) || { echo "etcd: no leader; see $OUT/etcd-*.log" >&2; exit 1; }
python3 "$HERE/populate.py" etcd "$L" "$KEYS"
OTHERS=()
for i in 1 2 3; do [[ http://127.0.0.1:$((PORT_BASE + 20 + i)) == "$L" ]] || OTHERS+=("http://127.0.0.1:$((PORT_BASE + 20 + i))"); done
measure etcd etcd "$L" "${OTHERS[@]}"
stop_all
if ((DQLITE)); then
  start_dqlite || exit 1
  python3 "$HERE/populate.py" dqlite "http://127.0.0.1:$((PORT_BASE + 41))" "$KEYS"
  measure dqlite dqlite "http://127.0.0.1:$((PORT_BASE + 41))" "http://127.0.0.1:$((PORT_BASE + 42))" \
    "http://127.0.0.1:$((PORT_BASE + 43))"
  stop_all
fi
echo "fsyncs/s after: $(fsyncs)" | tee -a "$OUT/machine.txt"

echo "mode: $MODE, connections to: $SPREAD" | tee -a "$OUT/machine.txt"
python3 - "$OUT/results" "$MODE" <<'EOF' | tee "$OUT/table.md"
import sys
what, unit = ("reads", "reads") if sys.argv[2] == "read" else ("writes", "puts")
rows = {}
for line in open(sys.argv[1]):
    peer, conns, ops, p50, p99, failed = line.split()
    rows.setdefault(int(conns), {})[peer] = (int(ops), float(p50), float(p99), int(failed))
base = any("baseline" in r for r in rows.values())
dq = any("dqlite" in r for r in rows.values())
head = "| clients |" + (f" baseline {what}/s | baseline p99 ms | baseline ÷ etcd |" if base else "")
head += f" bop {what}/s | bop p50 ms | bop p99 ms | etcd {unit}/s | etcd p50 ms | etcd p99 ms | bop ÷ etcd |"
head += f" dqlite ok/s | dqlite p99 ms | bop ÷ dqlite |" if dq else ""
print(head + " failed |")
print("| ---: " * (1 + (3 if base else 0) + 7 + (3 if dq else 0) + 1) + "|")
for conns in sorted(rows):
    r = rows[conns]
    b, e = r["bop"], r["etcd"]
    line = f"| {conns} |"
    failed = f"{b[3]}/{e[3]}"
    if base:
        o = r["baseline"]
        line += f" {o[0]} | {o[2]:.2f} | {o[0] / max(e[0], 1):.2f} |"
        failed = f"{o[3]}/" + failed
    line += f" {b[0]} | {b[1]:.2f} | {b[2]:.2f} | {e[0]} | {e[1]:.2f} | {e[2]:.2f} | {b[0] / max(e[0], 1):.2f} |"
    if dq:
        d = r.get("dqlite", (0, 0.0, 0.0, 0))
        line += f" {d[0]} | {d[2]:.2f} | {b[0] / max(d[0], 1):.2f} |"
        failed += f"/{d[3]}"
    print(line + f" {failed} |")
EOF
echo "results in $OUT"
