"""The gateway's own dealings with virtual servers' members: the session it holds with each legacy-only
member, and what each member lists.

- **Held sessions.** A legacy-only member serves stateless clients (and the
  gateway's own list reads) in one session the gateway holds per virtual
  server: opened when first needed, kept while the member keeps it, opened
  anew only when the member answers 404 in it (one opening at a time,
  whoever asks; never closed under calls in flight).
- **Lists.** A member's four lists (and its capabilities) are read together,
  the four requests at once, all pages up to `MAX_PAGES`, within the fan-out
  timeout; cached for `fan_out.cache`; one reading per member at a time,
  whoever asks. A member that fails is left out and remembered as down for
  `DOWN_FOR_S` (so every list does not wait for it again), then tried anew.
  A member's answer that is not MCP (an error other than "method not found",
  a result of the wrong shape) counts as a failure, never as an empty list.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from xds_server.authz.vmcp.naming import LISTS
from xds_server.authz.vmcp.upstream import MemberClient, MemberSession, MemberUnavailable
from xds_server.ir.virtual_mcp import VirtualMemberIR, VirtualServerIR

log = logging.getLogger(__name__)

MAX_PAGES = 20
DOWN_FOR_S = 1.0
METHOD_NOT_FOUND = -32601
#: The capability a member declares for each list (naming.LISTS values).
_CAPABILITY_OF = {"tools": "tools", "prompts": "prompts", "resources": "resources", "resourceTemplates": "resources"}
T = TypeVar("T")
Key = tuple[str, str]  # (virtual server, backend)


@dataclass
class MemberLists:
    """What one member lists (by list key, naming.LISTS), what it offers, and until when it is reused."""

    lists: dict[str, list[dict[str, Any]]]
    capabilities: dict[str, Any]
    expires: float = 0.0


class Members:
    """Held sessions and lists of every virtual server's members (one per policy service)."""

    def __init__(self, client: MemberClient) -> None:
        self.client = client
        self._held: dict[Key, MemberSession] = {}
        self._opening: dict[Key, asyncio.Future[MemberSession]] = {}
        self._lists: dict[Key, MemberLists] = {}
        self._reading: dict[Key, asyncio.Future[MemberLists]] = {}
        self._down_until: dict[Key, float] = {}

    # -- held sessions -----------------------------------------------------------

    async def held_session(self, server: str, member: VirtualMemberIR, timeout: float,
                           ended: MemberSession | None = None) -> MemberSession:  # fmt: skip
        """The session the gateway holds with `member` for `server`; a new one if `ended` is the one held."""
        key = (server, member.backend)
        held = self._held.get(key)
        if held is not None and held != ended and held.url in self.client.urls(member):
            return held  # (one on an endpoint the policies no longer list is over)
        return await _once(self._opening, key, lambda: self._open(key, member, timeout))

    async def _open(self, key: Key, member: VirtualMemberIR, timeout: float) -> MemberSession:
        session = await self.client.open_session(member, timeout)
        self._held[key] = session
        return session

    async def in_held_session(self, server: str, member: VirtualMemberIR, message: dict[str, Any],
                              timeout: float, headers: Mapping[str, str] | None = None) -> Any:  # fmt: skip
        """`message` (with `headers`) sent in the held session (opened anew once if the member ended it):
        the Answer."""
        session = await self.held_session(server, member, timeout)
        answer = await self.client.send(member, message, timeout=timeout, session=session, headers=headers)
        if answer.status == 404:
            session = await self.held_session(server, member, timeout, ended=session)
            answer = await self.client.send(member, message, timeout=timeout, session=session, headers=headers)
        return answer

    # -- lists -------------------------------------------------------------------

    def forget(self, server: str, backend: str) -> None:
        """Read the member's lists again before listing them again (a call to it failed)."""
        self._lists.pop((server, backend), None)

    async def read_all(self, server: str, virtual: VirtualServerIR) -> dict[str, MemberLists]:
        """Each member's lists (those that answered within the fan-out timeout), read in parallel."""
        timeout = virtual.fan_out_timeout_ms / 1000
        members = list(virtual.members)
        read = await asyncio.gather(*(self._read(server, virtual, m, timeout) for m in members))
        return {m.backend: r for m, r in zip(members, read, strict=True) if r is not None}

    async def _read(self, server: str, virtual: VirtualServerIR, member: VirtualMemberIR,
                    timeout: float) -> MemberLists | None:  # fmt: skip
        key = (server, member.backend)
        now = time.monotonic()
        cached = self._lists.get(key)
        if cached is not None and cached.expires > now:
            return cached
        if self._down_until.get(key, 0.0) > now:
            return None
        try:
            lists = await asyncio.wait_for(asyncio.shield(_once(self._reading, key, lambda: asyncio.wait_for(
                self._fetch(server, member, timeout), timeout))), timeout)  # fmt: skip
        except (MemberUnavailable, TimeoutError) as exc:
            self._down(
                server, key, str(exc) if isinstance(exc, MemberUnavailable) else f"no answer within {timeout:g}s"
            )
            return None
        except Exception:  # a bug, or a member's answer nobody foresaw: that member only is left out
            log.exception("virtual server %s: reading backend %s failed", server, member.backend)
            self._down(server, key, "its lists could not be read")
            return None
        self._down_until.pop(key, None)
        lists.expires = time.monotonic() + virtual.cache_ms / 1000
        self._lists[key] = lists
        return lists

    def _down(self, server: str, key: Key, why: str) -> None:
        self._lists.pop(key, None)
        self._down_until[key] = time.monotonic() + DOWN_FOR_S
        log.warning("virtual server %s: backend %s left out of the lists (%s)", server, key[1], why)

    async def _fetch(self, server: str, member: VirtualMemberIR, timeout: float) -> MemberLists:
        if member.stateless:
            request_id = self.client.next_id()
            answer = await self.client.send(member, {"jsonrpc": "2.0", "id": request_id, "method": "server/discover"},
                                            timeout=timeout)  # fmt: skip
            capabilities = _result(answer.response(request_id), "server/discover", member).get("capabilities", {})

            async def send(message: dict[str, Any]) -> Any:
                return await self.client.send(member, message, timeout=timeout)
        else:
            session = await self.held_session(server, member, timeout)
            capabilities = session.initialized.get("capabilities", {})

            async def send(message: dict[str, Any]) -> Any:
                return await self.in_held_session(server, member, message, timeout)

        # Only the lists the member offers (a server need not answer one it does not).
        offered = capabilities if isinstance(capabilities, dict) else {}
        wanted = {m: k for m, k in LISTS.items() if _CAPABILITY_OF[k] in offered}
        read = await asyncio.gather(*(self._list(member, method, key, send) for method, key in wanted.items()))
        found = dict(zip(wanted.values(), read, strict=True))
        return MemberLists({k: found.get(k, []) for k in LISTS.values()}, offered)

    async def _list(self, member: VirtualMemberIR, method: str, key: str,
                    send: Callable[[dict[str, Any]], Awaitable[Any]]) -> list[dict[str, Any]]:  # fmt: skip
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            # Ids of the gateway's own: the four lists share a legacy member's session.
            request_id = self.client.next_id()
            answer = await send({"jsonrpc": "2.0", "id": request_id, "method": method,
                                 "params": {"cursor": cursor} if cursor else {}})  # fmt: skip
            response = answer.response(request_id)
            if response is not None and (response.get("error") or {}).get("code") == METHOD_NOT_FOUND:
                return []  # the member does not offer this list
            result = _result(response, method, member)
            page = result.get(key, [])
            cursor = result.get("nextCursor")
            if not isinstance(page, list) or not (cursor is None or isinstance(cursor, str)):
                raise MemberUnavailable(f"backend {member.backend!r} answered {method} with a malformed page")
            items += [item for item in page if isinstance(item, dict)]
            if not cursor:
                return items
        log.warning("backend %s: %s has more than %d pages; the rest is left out", member.backend, method, MAX_PAGES)
        return items


def _result(response: dict[str, Any] | None, method: str, member: VirtualMemberIR) -> dict[str, Any]:
    if response is None:
        raise MemberUnavailable(f"backend {member.backend!r} sent no answer to {method}")
    result = response.get("result")
    if not isinstance(result, dict):
        error = response.get("error") if isinstance(response.get("error"), dict) else {}
        raise MemberUnavailable(f"backend {member.backend!r} answered {method} with "
                                + (f"error {error.get('code')}: {error.get('message')}" if error else "no result"))  # fmt: skip
    return result


async def _once(pending: dict[Key, asyncio.Future[T]], key: Key, start: Callable[[], Awaitable[T]]) -> T:
    """`start()`'s result, run once for every caller asking for `key` while it runs."""
    future = pending.get(key)
    if future is None:
        future = pending[key] = asyncio.ensure_future(start())
        future.add_done_callback(lambda _: pending.pop(key, None))
    return await asyncio.shield(future)
