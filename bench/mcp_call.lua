-- wrk script: one MCP `tools/call` per request, 2026-07-28 style (stateless:
-- no initialize, no Mcp-Session-Id; the protocol version, method and tool
-- name travel in headers and in `params._meta`).
--
--   wrk -t1 -c16 -d10s --latency -s bench/mcp_call.lua URL -- TOOL [AGENT [ARGS_JSON [HEADER]]]
--
-- TOOL defaults to `whoami`, AGENT (the `x-agent-id` header; `-` sends none)
-- to `triage`, ARGS_JSON (the tool's `arguments`, a JSON object, sent as is)
-- to `{}`; HEADER is one more header, `name: value` (an agent's JWT, say);
-- e.g. `-- create_issue triage '{"repo":"acme/web","title":"bench"}'`.
-- Every response is classified (HTTP status class; JSON-RPC `result` or
-- `error` in the body) and done() prints one line
--   BENCH_JSON {...}
-- with wrk's own summary, the latency percentiles (microseconds) and these
-- counts, so bench/run.py does not have to scrape the human-readable output.

local tool = "whoami"
local agent = "triage"
local arguments = "{}"
local threads = {}

-- Per-thread counters (each wrk thread has its own Lua state).
status_2xx, status_4xx, status_5xx, status_other = 0, 0, 0, 0
rpc_result, rpc_error, rpc_none = 0, 0, 0

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   if args[1] ~= nil and args[1] ~= "" then tool = args[1] end
   if args[2] ~= nil and args[2] ~= "" then agent = args[2] end
   if args[3] ~= nil and args[3] ~= "" then arguments = args[3] end
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
   wrk.headers["Accept"] = "application/json, text/event-stream"
   if agent ~= "-" then wrk.headers["x-agent-id"] = agent end
   if args[4] ~= nil and args[4] ~= "" then
      local name, value = string.match(args[4], "^([^:]+):%s*(.*)$")
      wrk.headers[name] = value
   end
   wrk.headers["mcp-protocol-version"] = "2026-07-28"
   wrk.headers["mcp-method"] = "tools/call"
   wrk.headers["mcp-name"] = tool
   wrk.body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"' .. tool ..
      '","arguments":' .. arguments .. ',"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28",' ..
      '"io.modelcontextprotocol/clientCapabilities":{}}}}'
end

function response(status, headers, body)
   if status >= 200 and status < 300 then
      status_2xx = status_2xx + 1
   elseif status >= 400 and status < 500 then
      status_4xx = status_4xx + 1
   elseif status >= 500 and status < 600 then
      status_5xx = status_5xx + 1
   else
      status_other = status_other + 1
   end
   -- Plain finds, no JSON parser: `"isError"` does not match `"error"`.
   if body ~= nil and string.find(body, '"error"%s*:') then
      rpc_error = rpc_error + 1
   elseif body ~= nil and string.find(body, '"result"%s*:') then
      rpc_result = rpc_result + 1
   else
      rpc_none = rpc_none + 1
   end
end

local function sum(name)
   local total = 0
   for _, thread in ipairs(threads) do
      total = total + (thread:get(name) or 0)
   end
   return total
end

function done(summary, latency, requests)
   local names = { "status_2xx", "status_4xx", "status_5xx", "status_other", "rpc_result", "rpc_error", "rpc_none" }
   local parts = {}
   for _, name in ipairs(names) do
      table.insert(parts, string.format('"%s":%d', name, sum(name)))
   end
   local e = summary.errors
   table.insert(parts, string.format('"requests":%d,"duration_us":%d,"bytes":%d', summary.requests, summary.duration,
      summary.bytes))
   table.insert(parts, string.format('"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}',
      e.connect, e.read, e.write, e.status, e.timeout))
   table.insert(parts, string.format(
      '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p99_9":%d}',
      latency.min, latency.mean, latency.stdev, latency.max, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency:percentile(99.9)))
   io.write("BENCH_JSON {" .. table.concat(parts, ",") .. "}\n")
end
