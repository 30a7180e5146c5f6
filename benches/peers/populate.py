#!/usr/bin/env python3
"""Writes every key once before a run of benches/peers/run.sh, so that the measured writes overwrite.

    populate.py bop|etcd|dqlite HTTP_URL KEYS
bop: creates kv (k TEXT PRIMARY KEY, v TEXT) in database bench, then 100 upserts per request; etcd: 100 puts
per transaction; dqlite-demo: one PUT /KEY per key (its API has no batch). Values are 256 bytes. A 503
(bop: "not the leader" while a just-formed cluster changes its leader) is tried again, every 0.2 s for at most
30 s, which is safe because every write here is idempotent; any other failed answer exits non-zero.
"""
import base64
import http.client
import json
import sys
import time
import urllib.parse

BATCH = 100


def post(conn, path, body):
    deadline = time.monotonic() + 30
    while True:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        answer = conn.getresponse()
        text = answer.read().decode()
        if answer.status == 503 and time.monotonic() < deadline:
            time.sleep(0.2)
            continue
        if answer.status != 200 or '"error"' in text:
            sys.exit(f"populate: {path} answered {answer.status}: {text[:300]}")
        return


def main():
    peer, url, keys = sys.argv[1], urllib.parse.urlparse(sys.argv[2]), int(sys.argv[3])
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    value = "v" * 256
    if peer == "bop":
        post(conn, "/db/execute?db=bench", ["CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT)"])
    upsert = "INSERT INTO kv(k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v"
    for start in range(0, keys, BATCH):
        names = [f"k{i:05d}" for i in range(start, min(start + BATCH, keys))]
        if peer == "bop":
            post(conn, "/db/execute?db=bench&transaction", [[upsert, k, value] for k in names])
        elif peer == "dqlite":
            for k in names:
                conn.request("PUT", f"/{k}", value)
                answer = conn.getresponse()
                text = answer.read().decode()
                if answer.status != 200 or text.startswith("Error"):
                    sys.exit(f"populate: PUT /{k} answered {answer.status}: {text[:300]}")
        else:
            b64 = lambda s: base64.b64encode(s.encode()).decode()
            ops = [{"requestPut": {"key": b64(k), "value": b64(value)}} for k in names]
            post(conn, "/v3/kv/txn", {"success": ops})
    print(f"populate {peer}: {keys} keys written")


if __name__ == "__main__":
    main()
