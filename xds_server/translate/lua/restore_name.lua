-- agentxds: a virtual MCP server's call routed by Envoy to its member gets the member's own name back.
--
-- Envoy picked the route on the MCP filter's metadata (method tools/call or prompts/get, params.name
-- starting with the member's prefix); the route's metadata says which prefix to strip. This finds the
-- value of the top-level params.name in the body with a small JSON scanner (Envoy's LuaJIT has no JSON
-- library), checks that it decodes to the name Envoy deframed, and splices in the member's name, JSON
-- encoded (setBytes fixes content-length); the mcp-name header (2026-07-28) is set to match. A body the
-- scanner reads differently from Envoy (absent or repeated params.name) is refused: nothing the gateway
-- cannot read unambiguously reaches a backend.
local find, sub, byte, char, format, tonumber = string.find, string.sub, string.byte, string.char, string.format, tonumber

local function utf8(cp)
  if cp < 0x80 then return char(cp)
  elseif cp < 0x800 then return char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64)
  elseif cp < 0x10000 then return char(0xE0 + math.floor(cp / 4096), 0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
  else return char(0xF0 + math.floor(cp / 262144), 0x80 + math.floor(cp / 4096) % 64, 0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64) end
end
local ESC = { ['"'] = '"', ['\\'] = '\\', ['/'] = '/', b = '\b', f = '\f', n = '\n', r = '\r', t = '\t' }

-- The text of a JSON string literal's body (without its quotes), or nil if an escape is invalid.
local function jdecode(raw)
  if not find(raw, "\\", 1, true) then return raw end
  local out, i, n = {}, 1, #raw
  while i <= n do
    local j = find(raw, "\\", i, true)
    if not j then out[#out + 1] = sub(raw, i); break end
    out[#out + 1] = sub(raw, i, j - 1)
    local c = sub(raw, j + 1, j + 1)
    if c == "u" then
      local cp = tonumber(sub(raw, j + 2, j + 5), 16); if not cp then return nil end
      local nxt = j + 6
      if cp >= 0xD800 and cp <= 0xDBFF and sub(raw, nxt, nxt + 1) == "\\u" then
        local lo = tonumber(sub(raw, nxt + 2, nxt + 5), 16)
        if lo and lo >= 0xDC00 and lo <= 0xDFFF then cp = 0x10000 + (cp - 0xD800) * 1024 + (lo - 0xDC00); nxt = nxt + 6 end
      end
      out[#out + 1] = utf8(cp); i = nxt
    else
      local e = ESC[c]; if not e then return nil end
      out[#out + 1] = e; i = j + 2
    end
  end
  return table.concat(out)
end

local function jencode(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    local e = ({ ['"'] = '\\"', ['\\'] = '\\\\', ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t' })[c]
    return e or format("\\u%04x", byte(c))
  end) .. '"'
end

-- Where the value of the top-level params.name is (start, end, both inclusive with its quotes) and its
-- decoded text, and the raw text of the top-level id; nil when params.name is absent, not a string or
-- given twice. Strings are skipped with plain finds (memchr), not pattern classes.
local function scan(b)
  local pos, depth = 1, 0
  local is_obj, want_key, key = {}, {}, {}
  local top_key, hit_s, hit_e, hit_v, hits = nil, nil, nil, nil, 0
  local id_from, id_raw = nil, nil
  local huge = math.huge
  local nbs = find(b, "\\", 1, true) or huge
  while true do
    local s = find(b, '[{}%[%]",:]', pos)
    if not s then break end
    local c = byte(b, s)
    if c == 34 then
      local e = s + 1
      while true do
        local q = find(b, '"', e, true)
        if not q then return nil end
        if nbs < e then nbs = find(b, "\\", e, true) or huge end
        if nbs < q then e = nbs + 2 else e = q; break end
      end
      if is_obj[depth] and want_key[depth] then
        key[depth] = jdecode(sub(b, s + 1, e - 1))
        if depth == 1 then top_key = key[1] end
      elseif depth == 2 and is_obj[2] and top_key == "params" and key[2] == "name" then
        hit_s, hit_e, hit_v, hits = s, e, jdecode(sub(b, s + 1, e - 1)), hits + 1
      elseif depth == 1 and top_key == "id" then
        id_raw, id_from = sub(b, s, e), nil
      end
      pos = e + 1
    else
      if depth == 1 and (c == 44 or c == 125) and id_from then
        id_raw, id_from = sub(b, id_from, s - 1):match("^%s*(.-)%s*$"), nil
      end
      if c == 123 then depth = depth + 1; is_obj[depth] = true; want_key[depth] = true; key[depth] = nil
      elseif c == 91 then depth = depth + 1; is_obj[depth] = false; want_key[depth] = false
      elseif c == 125 or c == 93 then depth = depth - 1
      elseif c == 58 then
        want_key[depth] = false
        if depth == 1 and top_key == "id" then id_from = s + 1 end
      elseif c == 44 then want_key[depth] = is_obj[depth]; if is_obj[depth] then key[depth] = nil end end
      if depth == 1 and c == 44 then top_key = nil end
      pos = s + 1
    end
  end
  if hits ~= 1 then return nil, nil, nil, id_raw end
  return hit_s, hit_e, hit_v, id_raw
end

function envoy_on_request(h)
  local prefix = h:metadata():get("strip_prefix")
  if not prefix then return end
  local md = h:streamInfo():dynamicMetadata():get("envoy.filters.http.mcp")
  local method = md and md["method"]
  if method ~= "tools/call" and method ~= "prompts/get" then return end
  local name = md["params"] and md["params"]["name"]
  local body = h:body()
  local b = body and body:getBytes(0, body:length()) or ""
  local s, e, v, id = scan(b)
  if type(name) ~= "string" or sub(name, 1, #prefix) ~= prefix or not s or v ~= name then
    -- Envoy's reading and this one disagree: refuse rather than guess (the id as the body wrote it).
    local idj = id
    if not idj or not (idj:match('^".*"$') or idj:match("^%-?%d+$")) then idj = "null" end
    h:respond({ [":status"] = "200", ["content-type"] = "application/json" },
      format('{"jsonrpc":"2.0","id":%s,"error":{"code":%d,"message":%s}}', idj, INVALID_REQUEST_CODE,
        jencode("Invalid Request: the name in params could not be read unambiguously")))
    return
  end
  local original = sub(name, #prefix + 1)
  body:setBytes(sub(b, 1, s - 1) .. jencode(original) .. sub(b, e + 1))
  local headers = h:headers()
  if headers:get("mcp-name") then headers:replace("mcp-name", original) end
end
