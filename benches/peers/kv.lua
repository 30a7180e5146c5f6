-- wrk script of benches/peers/run.sh: single-key writes of 256-byte values over PEER_KEYS keys, to bop
-- (PEER=bop: one parameterized upsert per /db/execute) or etcd (PEER=etcd: /v3/kv/put); with PEER_OP=read,
-- single-key linearizable reads instead (bop: /db/query?level=linearizable; etcd: /v3/kv/range, linearizable
-- by default). Every answer is checked: only a 2xx answer whose body is no error counts. done() prints one line:
--   RESULT ok=N failed=N p50_us=N p99_us=N secs=S
package.path = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "?.lua;" .. package.path
local peer = os.getenv("PEER") or "bop"
local keys = tonumber(os.getenv("PEER_KEYS") or "10000")
local op = os.getenv("PEER_OP") or "write"
local b64 = require("peer_b64")

local threads = {}
function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

ok, failed, sample = 0, 0, ""
local key_b64, value, value_b64
local headers = { ["Content-Type"] = "application/json" }

function init(args)
  math.randomseed(os.time() + 7919 * (id or 0))
  local letters = {}
  for i = 1, 256 do letters[i] = string.char(97 + math.random(0, 25)) end
  value = table.concat(letters)
  value_b64 = b64(value)
  key_b64 = {}
  for i = 0, keys - 1 do key_b64[i] = b64(string.format("k%05d", i)) end
end

function request()
  local i = math.random(0, keys - 1)
  if peer == "dqlite" then
    if op == "read" then return wrk.format("GET", "/" .. string.format("k%05d", i)) end
    return wrk.format("PUT", "/" .. string.format("k%05d", i), nil, value)
  end
  if op == "read" then
    if peer == "etcd" then
      return wrk.format("POST", "/v3/kv/range", headers, '{"key":"' .. key_b64[i] .. '"}')
    end
    return wrk.format("POST", "/db/query?db=bench&level=linearizable", headers,
      '[["SELECT v FROM kv WHERE k = ?", "' .. string.format("k%05d", i) .. '"]]')
  end
  if peer == "etcd" then
    return wrk.format("POST", "/v3/kv/put", headers, '{"key":"' .. key_b64[i] .. '","value":"' .. value_b64 .. '"}')
  end
  return wrk.format("POST", "/db/execute?db=bench", headers,
    '[["INSERT INTO kv(k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v", "' ..
    string.format("k%05d", i) .. '", "' .. value .. '"]]')
end

function response(status, headers, body)
  -- dqlite-demo answers its errors as 200 with a body starting "Error: ".
  local bad_body = body:find('"error"', 1, true) or (peer == "dqlite" and body:sub(1, 6) == "Error:")
  if status >= 200 and status < 300 and not bad_body then
    ok = ok + 1
  else
    failed = failed + 1
    if sample == "" then sample = status .. " " .. body:sub(1, 200) end
  end
end

function done(summary, latency, requests)
  local good, bad, first = 0, 0, ""
  for _, thread in ipairs(threads) do
    good = good + thread:get("ok")
    bad = bad + thread:get("failed")
    if first == "" then first = thread:get("sample") end
  end
  io.write(string.format("RESULT ok=%d failed=%d p50_us=%d p99_us=%d secs=%.3f\n", good, bad,
    latency:percentile(50), latency:percentile(99), summary.duration / 1e6))
  if first ~= "" then io.write("FIRST_FAILURE " .. first:gsub("\n", " ") .. "\n") end
end
