"""Members' list changes, for 2026-07-28 clients listening to a virtual server (`subscriptions/listen`).

Each member that declares list changes (`listChanged`) is followed by one
stream at a time, whoever listens, and only while someone does: a stateless
member through a `subscriptions/listen` of the gateway's own (all three list
kinds), a legacy-only one through the GET stream of the session the gateway
holds with it (a member serves one stream per session; a session the member
ended is replaced at once). A list change ends the cache of that member's
lists (members.py) and goes to every listener of the virtual server. A
stream that ends or fails is opened again, after 1 s and then longer (up to
`MAX_RETRY_S`); a change may have been missed meanwhile, so a reopened
stream tells its listeners every kind changed (they are refetch triggers:
one too many costs a list read). A member with several endpoints is
followed on one of them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable

import httpx

from xds_server.authz.vmcp.members import Members
from xds_server.authz.vmcp.upstream import MemberUnavailable
from xds_server.ir.virtual_mcp import VirtualMemberIR

log = logging.getLogger(__name__)

#: The list changes a virtual server passes on (the notification methods), by the filter key that asks for them.
LIST_CHANGES = {"toolsListChanged": "notifications/tools/list_changed",
                "promptsListChanged": "notifications/prompts/list_changed",
                "resourcesListChanged": "notifications/resources/list_changed"}  # fmt: skip
RETRY_S = 1.0
MAX_RETRY_S = 30.0
STEADY_S = 10.0  # a stream that stayed open this long resets the retry delay
Key = tuple[str, str]


class Changes:
    """Followers of members' list changes and their listeners (one per policy service)."""

    def __init__(self, members: Members) -> None:
        self.members = members
        self._listeners: dict[Key, set[asyncio.Queue[str]]] = defaultdict(set)
        self._followers: dict[Key, asyncio.Task[None]] = {}
        self._ready: dict[Key, asyncio.Event] = {}

    def listen(self, server: str, member: VirtualMemberIR, timeout: float, queue: asyncio.Queue[str]) -> asyncio.Event:
        """Put `member`'s list changes (their methods) into `queue` until `stop`; the event is set once the
        member's stream is open."""
        key = (server, member.backend)
        self._listeners[key].add(queue)
        if key not in self._followers or self._followers[key].done():
            self._ready[key] = asyncio.Event()
            self._followers[key] = asyncio.ensure_future(self._follow(key, member, timeout))
        return self._ready[key]

    def stop(self, server: str, member: VirtualMemberIR, queue: asyncio.Queue[str]) -> None:
        key = (server, member.backend)
        self._listeners[key].discard(queue)
        if not self._listeners[key]:
            self._listeners.pop(key, None)
            self._ready.pop(key, None)
            follower = self._followers.pop(key, None)
            if follower is not None:
                follower.cancel()

    def forget_server(self, server: str) -> None:
        """Stop following `server`'s members (its policies changed: listeners are told to listen again)."""
        for key in [k for k in self._followers if k[0] == server]:
            self._followers.pop(key).cancel()
            self._ready.pop(key, None)

    def _tell(self, key: Key, methods: list[str]) -> None:
        self.members.forget(*key)
        for queue in list(self._listeners.get(key, ())):
            for method in methods:
                queue.put_nowait(method)

    async def _follow(self, key: Key, member: VirtualMemberIR, timeout: float) -> None:
        delay, opened_before = RETRY_S, False
        while self._listeners.get(key):
            started = time.monotonic()

            def opened(key: Key = key) -> None:
                nonlocal opened_before
                if opened_before:  # a change may have come while it was closed
                    self._tell(key, list(LIST_CHANGES.values()))
                opened_before = True
                if (ready := self._ready.get(key)) is not None:
                    ready.set()

            try:
                async for method in self._changes(key[0], member, timeout, opened):
                    self._tell(key, [method])
            except MemberUnavailable as exc:
                log.info("virtual server %s: list changes of backend %s not followed for now (%s)", key[0],
                         member.backend, exc)  # fmt: skip
            except Exception:  # a bug: log it, and try again like any failure
                log.exception("virtual server %s: following backend %s failed", key[0], member.backend)
            delay = RETRY_S if time.monotonic() - started > STEADY_S else min(delay * 2, MAX_RETRY_S)
            await asyncio.sleep(delay)

    async def _changes(self, server: str, member: VirtualMemberIR, timeout: float,
                       opened: Callable[[], None]) -> AsyncIterator[str]:  # fmt: skip
        client = self.members.client
        if member.stateless:
            response = await client.open_listen(member, sorted(LIST_CHANGES), timeout)
        else:
            session = await self.members.held_session(server, member, timeout)
            response = await client.open_stream(member, session, timeout)
            if response.status_code == 404:  # the member ended the gateway's session: a new one, at once
                await response.aclose()
                session = await self.members.held_session(server, member, timeout, ended=session)
                response = await client.open_stream(member, session, timeout)
        _check_stream(member, response)
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            await response.aclose()
            raise MemberUnavailable(f"backend {member.backend!r} answered without a stream")
        opened()
        async for message in client.stream_messages(member, response):
            if message.get("method") in LIST_CHANGES.values() and "id" not in message:
                yield str(message["method"])


def _check_stream(member: VirtualMemberIR, response: httpx.Response) -> None:
    if response.status_code != 200:
        asyncio.ensure_future(response.aclose())
        raise MemberUnavailable(
            f"backend {member.backend!r} refused to stream its changes (HTTP {response.status_code})"
        )
