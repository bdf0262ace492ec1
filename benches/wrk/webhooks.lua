-- wrk script for webhookd's benches (benches/common/wrk.rs runs it):
-- POSTs webhooks with unique ids, 24 characters like the built-in
-- client's: txn_ + run seed + wrk thread + counter, in hex.
-- WEBHOOKD_BENCH_SEED keeps the ids of different runs apart.
-- At the end it prints one WRK_RESULT line for the bench to parse.

local seed = tonumber(os.getenv("WEBHOOKD_BENCH_SEED") or "1") % 65536
local threads = 0

function setup(thread)
  thread:set("thread_number", threads)
  threads = threads + 1
end

local counter = 0
local headers = { ["Content-Type"] = "application/json" }

function request()
  counter = counter + 1
  local id = string.format("txn_%04x%04x%012x", seed, thread_number, counter)
  local body = string.format(
    '{"transaction_id":"%s","source_account":"acc_user_789","destination_account":"acc_merchant_456","amount":1500.50,"currency":"INR"}',
    id)
  return wrk.format("POST", "/v1/webhooks/transactions", headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_RESULT requests=%d duration_us=%d status=%d connect=%d read=%d write=%d timeout=%d p50_us=%d p99_us=%d p999_us=%d max_us=%d\n",
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
