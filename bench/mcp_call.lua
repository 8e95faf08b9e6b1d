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

dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "wrk_common.lua")

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
   count(status, body)
end

function done(summary, latency, requests)
   report(summary, latency)
end
