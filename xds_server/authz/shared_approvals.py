"""Approvals kept in Valkey (or Redis), shared by every policy-service replica.

The same approvals as approvals.py's SQLite store (read its docstring for
their life: pending -> approved -> used, denied, expired; one open approval
per exact call; a denial stands for the ttl), with every change made by one
Lua script on the server, on the server's clock, so replicas never race: an
approval is used once, whichever replica the retried call reaches, and an
operator may approve it through any replica's approvals API.

    agentxds:approval:<id>          a hash: the approval's fields; `arguments` is the
                                    call's canonical JSON, kept as text (never parsed by
                                    the scripts, so no JSON value is altered)
    agentxds:approval-call:<key>    the id of the call's newest approval (key: ApprovalCall.key)
    agentxds:approvals              a sorted set of ids by creation time (for `list`)

An approval lapses (pending or approved past `expires_at`) when a script
reads it. Every key expires `history_s` after its approval can no longer
matter, which bounds the store; the SQLite store's `max_finished` cap does
not apply here (the history is bounded by time only).

Errors reaching the store raise StateUnavailable (effects.py): a call
needing an approval is then refused, and the approvals API answers 503.
"""

from __future__ import annotations

import builtins
import json
import types
from typing import Any

import valkey.asyncio as valkey_asyncio
from valkey.exceptions import ResponseError, ValkeyError

from xds_server.authz.approvals import (
    DEFAULT_HISTORY_S,
    Approval,
    ApprovalCall,
    ApprovalError,
    ApprovalState,
    new_approval_id,
)
from xds_server.authz.effects import StateUnavailable

PREFIX = "agentxds:approval:"
MAX_LISTED = 10_000  # approvals listed (newest first); older ones still work, unlisted (as SQLite's max_finished)
CALL_PREFIX = "agentxds:approval-call:"
INDEX = "agentxds:approvals"

# Shared by every script: the time now (seconds) and the lapse of a live approval.
_COMMON = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local history_ms = tonumber(ARGV[1])
local function lapse(key)
  local state = redis.call('HGET', key, 'state')
  if (state == 'pending' or state == 'approved') then
    local expires = tonumber(redis.call('HGET', key, 'expires_at'))
    if expires <= now then
      redis.call('HSET', key, 'state', 'expired', 'ended_at', tostring(expires))
      redis.call('PEXPIRE', key, history_ms)
    end
  end
end
local function open(key)
  local state = redis.call('HGET', key, 'state')
  if state == 'pending' or state == 'approved' then return true end
  return state == 'denied' and now < tonumber(redis.call('HGET', key, 'expires_at'))
end
"""

# KEYS: the call's pointer, the index. ARGV: history_ms, prefix, new id, ttl_s, then field/value pairs.
_REQUEST = (
    _COMMON
    + """
local id = redis.call('GET', KEYS[1])
if id then
  local key = ARGV[2] .. id
  if redis.call('EXISTS', key) == 1 then
    lapse(key)
    if open(key) then return redis.call('HGETALL', key) end
  end
end
local ttl = tonumber(ARGV[4])
local key = ARGV[2] .. ARGV[3]
redis.call('HSET', key, 'id', ARGV[3], 'state', 'pending', 'created_at', tostring(now),
           'expires_at', tostring(now + ttl), 'ttl_s', ARGV[4], 'pointer', KEYS[1])
for i = 5, #ARGV, 2 do redis.call('HSET', key, ARGV[i], ARGV[i + 1]) end
local keep = math.floor(ttl * 1000) + history_ms
redis.call('PEXPIRE', key, keep)
redis.call('SET', KEYS[1], ARGV[3], 'PX', keep)
redis.call('ZADD', KEYS[2], now, ARGV[3])
-- Keep the index bounded without a scan: forget the two oldest ids if their approvals are gone,
-- and never list more than the newest MAX_LISTED (older approvals still work, unlisted).
for _, old in ipairs(redis.call('ZRANGE', KEYS[2], 0, 1)) do
  if redis.call('EXISTS', ARGV[2] .. old) == 0 then redis.call('ZREM', KEYS[2], old) end
end
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(MAX_LISTED + 1))
return redis.call('HGETALL', key)
"""
)

# KEYS: the call's pointer. ARGV: history_ms, prefix.
_USE = (
    _COMMON
    + """
local id = redis.call('GET', KEYS[1])
if not id then return false end
local key = ARGV[2] .. id
if redis.call('EXISTS', key) == 0 then return false end
lapse(key)
if redis.call('HGET', key, 'state') ~= 'approved' then return false end
redis.call('HSET', key, 'state', 'used', 'used_at', tostring(now), 'ended_at', tostring(now))
redis.call('PEXPIRE', key, history_ms)
redis.call('PEXPIRE', KEYS[1], history_ms)
return redis.call('HGETALL', key)
"""
)

# KEYS: the approval. ARGV: history_ms, action (approve | deny | status), by.
_DECIDE = (
    _COMMON
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('unknown') end
lapse(KEYS[1])
local state = redis.call('HGET', KEYS[1], 'state')
if ARGV[2] == 'status' then return redis.call('HGETALL', KEYS[1]) end
if state == 'expired' or state == 'used' then return redis.error_reply(state) end
local ttl = tonumber(redis.call('HGET', KEYS[1], 'ttl_s'))
-- The approval and the call's pointer to it live as long as each other (the pointer is how the
-- retried call finds it: were it to expire first, an approved call would ask anew).
local function keep(ms)
  redis.call('PEXPIRE', KEYS[1], ms)
  local pointer = redis.call('HGET', KEYS[1], 'pointer')
  if pointer and redis.call('GET', pointer) == redis.call('HGET', KEYS[1], 'id') then
    redis.call('PEXPIRE', pointer, ms)
  end
end
if ARGV[2] == 'approve' then
  if state == 'denied' then return redis.error_reply('denied') end
  if state == 'pending' then
    redis.call('HSET', KEYS[1], 'state', 'approved', 'decided_by', ARGV[3], 'decided_at', tostring(now),
               'expires_at', tostring(now + ttl))
    keep(math.floor(ttl * 1000) + history_ms)
  end
else
  if state ~= 'denied' then
    redis.call('HSET', KEYS[1], 'state', 'denied', 'decided_by', ARGV[3], 'decided_at', tostring(now),
               'expires_at', tostring(now + ttl), 'ended_at', tostring(now + ttl))
    keep(math.floor(ttl * 1000) + history_ms)
  end
end
return redis.call('HGETALL', KEYS[1])
"""
)

# KEYS: the index. ARGV: history_ms, prefix, include_done (0/1).
_LIST = (
    _COMMON
    + """
local out = {}
for _, id in ipairs(redis.call('ZREVRANGE', KEYS[1], 0, MAX_LISTED - 1)) do
  local key = ARGV[2] .. id
  if redis.call('EXISTS', key) == 0 then
    redis.call('ZREM', KEYS[1], id)
  else
    lapse(key)
    local state = redis.call('HGET', key, 'state')
    if ARGV[3] == '1' or state == 'pending' or state == 'approved' then
      table.insert(out, redis.call('HGETALL', key))
    end
  end
end
return out
"""
)

_REQUEST = _REQUEST.replace("MAX_LISTED", str(MAX_LISTED))
_LIST = _LIST.replace("MAX_LISTED", str(MAX_LISTED))

_FLOATS = ("created_at", "expires_at", "ttl_s", "decided_at", "used_at")


def _approval(flat: list[Any]) -> Approval:
    """An Approval from a hash's HGETALL (a flat list of names and values, as bytes)."""
    raw = {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}
    try:
        values: dict[str, Any] = {
            "id": raw["id"], "backend": raw["backend"], "rule": raw["rule"], "agent": raw["agent"],
            "user": raw.get("user") or None, "tool": raw["tool"],
            "arguments": types.MappingProxyType(json.loads(raw["arguments"])),
            "state": ApprovalState(raw["state"]),
            "decided_by": raw.get("decided_by") or None,
        }  # fmt: skip
        for name in _FLOATS:
            values[name] = float(raw[name]) if raw.get(name) else None
    except (KeyError, ValueError) as exc:
        raise StateUnavailable(f"an approval in the store is not one agentxds wrote: {exc}") from exc
    return Approval(**values)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class SharedApprovals:
    """The approvals in the Valkey/Redis server `client` talks to (async; one event loop)."""

    def __init__(self, client: valkey_asyncio.Valkey, where: str, *, history_s: float = DEFAULT_HISTORY_S) -> None:
        self.where = where
        self._history_ms = str(int(history_s * 1000))
        self._request = client.register_script(_REQUEST)
        self._use = client.register_script(_USE)
        self._decide = client.register_script(_DECIDE)
        self._list = client.register_script(_LIST)

    async def request(self, call: ApprovalCall, ttl_s: float) -> Approval:
        """The call's open approval, else a new pending one expiring in `ttl_s` (approvals.py)."""
        fields = ["backend", call.backend, "rule", call.rule, "agent", call.agent, "user", call.user or "",
                  "tool", call.tool, "arguments", _arguments_json(call)]  # fmt: skip
        flat = await self._run(self._request, [CALL_PREFIX + call.key, INDEX],
                               [self._history_ms, PREFIX, new_approval_id(), repr(float(ttl_s)), *fields])  # fmt: skip
        return _approval(flat)

    async def use(self, call: ApprovalCall) -> Approval | None:
        """Spend the call's approved, unexpired approval: returned (now used) once, then None."""
        flat = await self._run(self._use, [CALL_PREFIX + call.key], [self._history_ms, PREFIX])
        return _approval(flat) if flat else None

    async def status(self, approval_id: str) -> Approval | None:
        try:
            return await self._decision(approval_id, "status", "")
        except ApprovalError:
            return None

    async def list(self, include_done: bool = False) -> builtins.list[Approval]:
        rows = await self._run(self._list, [INDEX], [self._history_ms, PREFIX, "1" if include_done else "0"])
        return [_approval(flat) for flat in rows]

    async def approve(self, approval_id: str, by: str) -> Approval:
        return await self._decision(approval_id, "approve", by)

    async def deny(self, approval_id: str, by: str) -> Approval:
        return await self._decision(approval_id, "deny", by)

    async def _decision(self, approval_id: str, action: str, by: str) -> Approval:
        try:
            flat = await self._decide(keys=[PREFIX + approval_id], args=[self._history_ms, action, by])
        except ResponseError as exc:
            words = str(exc).split()
            if len(words) <= 2 and words and words[-1] in ("unknown", "denied", "expired", "used"):
                raise _decision_error(approval_id, words[-1]) from None
            raise StateUnavailable(f"{self.where}: {exc}") from exc  # OOM, READONLY, ...: not an answer about it
        except (ValkeyError, OSError, TimeoutError) as exc:
            raise StateUnavailable(f"{self.where}: {exc or type(exc).__name__}") from exc
        return _approval(flat)

    async def _run(self, script: Any, keys: builtins.list[str], args: builtins.list[str]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except (ValkeyError, OSError, TimeoutError) as exc:
            raise StateUnavailable(f"{self.where}: {exc or type(exc).__name__}") from exc


def _arguments_json(call: ApprovalCall) -> str:
    return json.dumps(dict(call.arguments), sort_keys=True, ensure_ascii=False, default=str)


def _decision_error(approval_id: str, kind: str) -> ApprovalError:
    """The same errors, in the same words, as the SQLite store's (`kind`: the script's word)."""
    if kind == "denied":
        return ApprovalError(f"approval {approval_id} was already denied", "denied")
    if kind == "expired":
        return ApprovalError(
            f"approval {approval_id} has expired; the agent must make the call again to ask anew", "expired"
        )
    if kind == "used":
        return ApprovalError(f"approval {approval_id} was already used", "used")
    return ApprovalError(f"no approval request {approval_id} (unknown, or finished long ago)", "unknown")
