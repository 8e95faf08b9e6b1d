"""Decision state shared by policy-service replicas: quotas and approvals in Valkey (or Redis).

With several policy-service replicas behind a fleet of Envoys, a quota of N
calls must mean N calls in all, not N per replica. `SharedState` keeps each
quota's sliding-window log in one sorted set of the store, and spends a call
with one Lua script that prunes, counts and adds atomically on the server,
on the server's clock, so replicas never race and never disagree on time:

    key     agentxds:quota:<JSON [backend, rule, tool, subject]>   (a sorted set)
    member  "<seconds>.<microseconds>:<random>"   score: microseconds since the epoch
    expiry  the window, renewed at each counted call (an idle key disappears)

The semantics are those of the in-memory store (quota.py): a call at t counts
in (now - W, now]; refused calls count nothing; `retry_after_s` is when the
oldest counted call that matters leaves the window.

Approvals are kept in the same server (shared_approvals.py).

Every round trip has a timeout (`timeout_s`); a store that cannot be reached,
times out or answers nonsense raises `StateUnavailable`, and the engine
refuses the call (fail closed). Nothing is cached: each spend is exact.
"""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import valkey.asyncio as valkey_asyncio
from valkey.exceptions import ValkeyError

from xds_server.authz.effects import (
    Effect,
    RefundQuota,
    RequestApproval,
    SpendQuota,
    StateUnavailable,
    UseApproval,
)
from xds_server.authz.quota import QuotaCheck, QuotaKey
from xds_server.authz.shared_approvals import SharedApprovals

log = logging.getLogger(__name__)

# Per round trip; a decision makes at most three, within Envoy's default wait for it (250 ms), so a
# store that stops answering is refused as state_unavailable rather than timed out by Envoy.
DEFAULT_TIMEOUT_S = 0.07
KEY_PREFIX = "agentxds:quota:"

# KEYS[1]: the quota's key. ARGV: calls, window (ms), a random suffix for the member.
# Returns {allowed (0/1), remaining, retry after (µs), member or ""}.
_SPEND = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local calls = tonumber(ARGV[1])
local window = tonumber(ARGV[2]) * 1000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local used = redis.call('ZCARD', KEYS[1])
if used < calls then
  local member = t[1] .. '.' .. t[2] .. ':' .. ARGV[3]
  redis.call('ZADD', KEYS[1], now, member)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, calls - used - 1, 0, member}
end
if calls <= 0 then
  return {0, 0, window, ''}
end
local freeing = redis.call('ZRANGE', KEYS[1], used - calls, used - calls, 'WITHSCORES')
return {0, 0, tonumber(freeing[2]) + window - now, ''}
"""


def redacted(url: str) -> str:
    """`url` without its password, for logs and messages (whatever else is wrong with it)."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return urlunsplit(parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{hostport}"))


def check_url(url: str) -> None:
    """Raise ValueError saying what is wrong with a store URL (its password never in the message)."""
    try:
        valkey_asyncio.connection.parse_url(url)
    except ValueError as exc:
        raise ValueError(f"{redacted(url)}: {exc}") from None


def quota_key(key: QuotaKey) -> str:
    """The store's key for one quota counter (JSON keeps the four parts apart whatever they hold)."""
    return KEY_PREFIX + json.dumps([key.backend, key.rule_id, key.tool, key.subject], separators=(",", ":"))


class SharedState:
    """Quotas and approvals in the Valkey/Redis server at `url` (redis://, rediss://, valkey://,
    unix://). Use from one event loop."""

    immediate = False

    def __init__(self, url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.where = redacted(url)
        self._client = valkey_asyncio.Valkey.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry_on_timeout=False
        )
        self._spend = self._client.register_script(_SPEND)
        self.approvals = SharedApprovals(self._client, self.where)

    def describe(self) -> str:
        return f"in {self.where} (quotas and approvals, shared by every replica using it)"

    def apply(self, effect: Effect) -> Any:
        raise TypeError("SharedState answers after a round trip: use apply_async")

    async def apply_async(self, effect: Effect) -> Any:
        if isinstance(effect, UseApproval):
            return await self.approvals.use(effect.call)
        if isinstance(effect, RequestApproval):
            return await self.approvals.request(effect.call, effect.ttl_s)
        try:
            if isinstance(effect, SpendQuota):
                return await self._spend_quota(effect)
            if isinstance(effect, RefundQuota):
                await self._client.zrem(quota_key(effect.key), effect.token)
                return None
        except (ValkeyError, OSError, TimeoutError) as exc:
            raise StateUnavailable(f"{self.where}: {exc or type(exc).__name__}") from exc
        raise TypeError(f"not an effect: {effect!r}")

    async def _spend_quota(self, effect: SpendQuota) -> tuple[QuotaCheck, str | None]:
        answer = await self._spend(keys=[quota_key(effect.key)],
                                   args=[effect.quota.calls, effect.quota.window_ms, secrets.token_hex(6)])  # fmt: skip
        try:
            allowed, remaining, retry_us, member = answer
            check = QuotaCheck(bool(allowed), int(remaining), max(0.0, float(retry_us) / 1e6))
        except (TypeError, ValueError) as exc:
            raise StateUnavailable(f"{self.where} answered {answer!r} to a quota spend") from exc
        token = member.decode() if isinstance(member, bytes) else str(member)
        return check, (token if check.allowed else None)

    async def ping(self) -> None:
        """Raise StateUnavailable unless the store answers now."""
        try:
            await self._client.ping()
        except (ValkeyError, OSError, TimeoutError) as exc:
            raise StateUnavailable(f"{self.where}: {exc or type(exc).__name__}") from exc

    async def aclose(self) -> None:
        await self._client.aclose()
