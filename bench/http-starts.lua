-- wrk script: POST /v1/instances with a new instance id on every request (examples/order-fulfillment.yaml).
-- Usage (see docs/benchmarks.md):
--   BATON_TOKEN=bt_... wrk -t2 -c32 -d30s --latency -s bench/http-starts.lua http://127.0.0.1:8080
-- Every answer that is not 202 is counted and printed at the end.
local counter = 0
local thread_id = 0
local threads = {}

function setup(thread)
  thread:set("id", thread_id)
  thread_id = thread_id + 1
  table.insert(threads, thread)
end

function init(args)
  wrk.method = "POST"
  wrk.path = "/v1/instances"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("BATON_TOKEN")
  prefix = "wrk-" .. os.time() .. "-" .. id .. "-"
  refused = 0
end

function request()
  counter = counter + 1
  local body = '{"workflow_id":"order_fulfillment_saga","instance_id":"' .. prefix .. counter ..
    '","input":{"order_id":"' .. prefix .. counter .. '","items":[{"sku":"book","qty":1}],"amount":20,' ..
    '"currency":"EUR","email":"c@example.com","address":"1 Main Street"}}'
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  if status ~= 202 then
    refused = refused + 1
    if refused <= 3 then print("answer " .. status .. ": " .. body) end
  end
end

function done(summary, latency, requests)
  local refusedTotal = 0
  for _, t in ipairs(threads) do refusedTotal = refusedTotal + (t:get("refused") or 0) end
  io.write(string.format("starts acknowledged: %d in %.1f s = %.0f/s; not 202: %d\n",
    summary.requests - refusedTotal, summary.duration / 1e6, (summary.requests - refusedTotal) / (summary.duration / 1e6), refusedTotal))
  for _, p in ipairs({50, 90, 99, 99.9}) do
    io.write(string.format("  p%s %.1f ms\n", p, latency:percentile(p) / 1000))
  end
end
