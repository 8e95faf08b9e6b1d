"""Members' list changes, for 2026-07-28 clients listening to a virtual server (`subscriptions/listen`).

Each member is followed by one stream at a time, whoever listens, and only
while someone does: a stateless member through a `subscriptions/listen` of
the gateway's own (all three list kinds), a legacy-only one through the GET
stream of the session the gateway holds with it (a member serves one stream
per session). A list change ends the cache of that member's lists
(members.py) and goes to every listener of the virtual server; a stream
that ends or fails is opened again after `RETRY_S` while listeners remain.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator

from xds_server.authz.vmcp.members import Members
from xds_server.authz.vmcp.upstream import MemberUnavailable
from xds_server.ir.virtual_mcp import VirtualMemberIR

log = logging.getLogger(__name__)

#: The list changes a virtual server passes on (the notification methods), by the filter key that asks for them.
LIST_CHANGES = {"toolsListChanged": "notifications/tools/list_changed",
                "promptsListChanged": "notifications/prompts/list_changed",
                "resourcesListChanged": "notifications/resources/list_changed"}  # fmt: skip
RETRY_S = 1.0
Key = tuple[str, str]


class Changes:
    """Followers of members' list changes and their listeners (one per policy service)."""

    def __init__(self, members: Members) -> None:
        self.members = members
        self._listeners: dict[Key, set[asyncio.Queue[str]]] = defaultdict(set)
        self._followers: dict[Key, asyncio.Task[None]] = {}

    def listen(self, server: str, member: VirtualMemberIR, timeout: float, queue: asyncio.Queue[str]) -> None:
        """Put `member`'s list changes (their methods) into `queue` until `stop`."""
        key = (server, member.backend)
        self._listeners[key].add(queue)
        if key not in self._followers or self._followers[key].done():
            self._followers[key] = asyncio.ensure_future(self._follow(key, member, timeout))

    def stop(self, server: str, member: VirtualMemberIR, queue: asyncio.Queue[str]) -> None:
        key = (server, member.backend)
        self._listeners[key].discard(queue)
        if not self._listeners[key]:
            self._listeners.pop(key, None)
            follower = self._followers.pop(key, None)
            if follower is not None:
                follower.cancel()

    async def _follow(self, key: Key, member: VirtualMemberIR, timeout: float) -> None:
        while self._listeners.get(key):
            try:
                async for method in self._changes(key[0], member, timeout):
                    self.members.forget(*key)
                    for queue in list(self._listeners.get(key, ())):
                        queue.put_nowait(method)
            except MemberUnavailable as exc:
                log.info("virtual server %s: list changes of backend %s not followed for now (%s)", key[0],
                         member.backend, exc)  # fmt: skip
            except Exception:  # a bug: log it, and try again like any failure
                log.exception("virtual server %s: following backend %s failed", key[0], member.backend)
            await asyncio.sleep(RETRY_S)

    async def _changes(self, server: str, member: VirtualMemberIR, timeout: float) -> AsyncIterator[str]:
        client = self.members.client
        if member.stateless:
            response = await client.open_listen(member, sorted(LIST_CHANGES), timeout)
        else:
            session = await self.members.held_session(server, member, timeout)
            response = await client.open_stream(member, session, timeout)
        if response.status_code != 200:
            await response.aclose()
            raise MemberUnavailable(
                f"backend {member.backend!r} refused to stream its changes (HTTP {response.status_code})"
            )
        async for message in client.stream_messages(member, response):
            if message.get("method") in LIST_CHANGES.values() and "id" not in message:
                yield str(message["method"])
