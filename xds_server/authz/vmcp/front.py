"""The MCP endpoint of a virtual server for what Envoy does not route itself.

Envoy has checked the request (RBAC on the names clients see, conditions,
quotas) before it comes here, and filters list answers per caller after
(ext_proc), so this answers as the server every client may see. The body is
read strictly (a key repeated anywhere is refused: Envoy and this reading
must agree on what was checked).

- `server/discover` (2026-07-28) and `initialize` (legacy): the members'
  capabilities merged; a legacy client gets a session id sealing one session
  per legacy-only member, opened at once (sessions.py). Stateless members
  need none, whichever revision the client speaks.
- the lists: every member's, read and cached by members.py, named and
  curated by naming.py.
- `tools/call`, `prompts/get`, `completion/complete`, `resources/read`: to
  the member the name or URI comes from, with its own name, in the revision
  it speaks (bridged: a 2026-07-28 client's call to a legacy-only member goes
  in the session the gateway holds with it, under an id of the gateway's; a
  legacy client's call to a stateless member gets the 2026-07-28 envelope),
  with the caller headers Envoy set. With naming `always` the member is known
  from the name alone; otherwise from the lists. What the member sends
  during the call (progress, logging) is passed on with its answer; requests
  it sends the client (sampling, elicitation) are not, as the client could not
  answer them here.
- `subscriptions/listen` (2026-07-28): the members' list changes (changes.py).
- `ping`, `logging/setLevel`, notifications: answered here. GET (a legacy
  client's stream of server messages): its legacy members' streams merged
  (a member's `list_changed` also ends the cache of its lists); 405 when its
  session holds none (the SDK client carries on without). DELETE closes the
  members' sessions.

A name no member has (or that curation hides) is -32602 `unknown_name`; a
member that cannot be reached or does not answer MCP is -32053 naming it; a
session id this server did not seal is 404 `session_unknown`, one whose
member ended its session 404 `session_gone`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from xds_server.authz.jsonrpc import RepeatedKey, error_body, strict_loads
from xds_server.authz.sealing import Sealer
from xds_server.authz.state import PolicyIndex, RouteView
from xds_server.authz.vmcp import sessions
from xds_server.authz.vmcp.changes import LIST_CHANGES, Changes
from xds_server.authz.vmcp.members import Members
from xds_server.authz.vmcp.naming import LISTS, Catalog, Origin, catalog_of, origin_by_name
from xds_server.authz.vmcp.upstream import SESSION_HEADER, Answer, MemberClient, MemberSession, MemberUnavailable
from xds_server.core import errors
from xds_server.ir.mcp import McpRouteIR
from xds_server.ir.virtual_mcp import LEGACY_REVISION, STATELESS_REVISION, VirtualMemberIR, VirtualServerIR

log = logging.getLogger(__name__)

LEGACY_REVISIONS = ("2025-11-25", "2025-06-18", "2025-03-26")
PASSED_ON = ("tools/call", "prompts/get", "completion/complete", "resources/read")
_CAPABILITIES = ("tools", "prompts", "resources", "completions", "logging")
_LONGEST_CALL_S = 3600.0  # a route with no request timeout: still not forever
_MARGIN_S = 0.5
SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"
_ENDED = object()  # a member's stream ended
_LISTED = ("tools", "prompts", "resources")  # the capabilities with lists that may change
_KEEPALIVE_S = 60.0
_TICK_S = 1.0  # how often an idle stream looks whether its server's policies changed  # a comment line on a quiet stream, well within Envoy's idle timeout for it
_COUNTED = frozenset({"initialize", "server/discover", "ping", "logging/setLevel", "subscriptions/listen", *PASSED_ON,
                      "tools/list", "prompts/list", "resources/list", "resources/templates/list"})  # fmt: skip


class SessionEnded(Exception):
    """A legacy member answered 404 in the client's own session with it: the client must start anew."""


@dataclass
class Reply:
    """What the front answers Envoy: status, headers, body."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    stream: AsyncIterator[bytes] | None = None  # a body sent as it comes (chunked), instead of `body`


def _json(status: int, value: Any) -> Reply:
    body = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return Reply(status, body.encode(), {"content-type": "application/json"})


def _error(request_id: Any, kind: errors.ErrorKind, message: str, **data: Any) -> Reply:
    return _json(kind.http_status, error_body(request_id, kind, message, **data))


def _result(request_id: Any, result: Mapping[str, Any], modern: bool) -> Reply:
    return _json(200, {"jsonrpc": "2.0", "id": request_id,
                       "result": {**result, **({"resultType": "complete"} if modern else {})}})  # fmt: skip


def virtual_of(view: RouteView) -> VirtualServerIR:
    part = view.route.protocol
    if not isinstance(part, McpRouteIR) or part.virtual is None:
        raise TypeError(f"route {view.name!r} is not a virtual MCP server")
    return part.virtual


class VirtualFront:
    """Answers the requests of every virtual server (one per policy service)."""

    def __init__(self, sealer_for: Callable[[RouteView], Sealer]) -> None:
        self._sealer_for = sealer_for
        self.client = MemberClient()
        self.members = Members(self.client)
        self.changes = Changes(self.members)
        self._streamed: dict[str, Any] = {}  # server -> its route, while streams of it may be open
        self._epochs: dict[str, int] = {}  # server -> how often its policies changed under open streams
        self._reported: dict[str, list[str]] = {}  # what each server's lists last left out (logged once)
        #: Requests answered, by (server, method): what the fan-out and the passed-on calls cost.
        self.counters: collections.Counter[tuple[str, str]] = collections.Counter()

    async def close(self) -> None:
        await self.client.aclose()

    # -- the endpoint ---------------------------------------------------------

    async def handle(self, view: RouteView, method: str, headers: Mapping[str, str], body: bytes) -> Reply:
        """One HTTP request of a client of `view`'s virtual server (Envoy's checks passed)."""
        virtual = virtual_of(view)
        modern = headers.get("mcp-protocol-version") == STATELESS_REVISION
        sealer = self._sealer_for(view)
        scope = sessions.scope_of(view.gateway.name, view.name)
        if method == "GET":
            return await self._stream(view, virtual, sealer, scope, headers, modern)
        try:
            message = strict_loads(body) if method == "POST" else {}
        except RepeatedKey:
            return _error(None, errors.DUPLICATE_KEYS, "Invalid Request: a JSON object in the body repeats a key")
        except (ValueError, RecursionError):
            return _error(None, errors.PARSE_ERROR, "Parse error: the body is not complete, valid JSON")
        if not isinstance(message, dict):
            return _error(None, errors.INVALID_REQUEST, "Invalid Request: one JSON-RPC request per HTTP request")
        rpc, request_id = message.get("method"), message.get("id")
        counted = rpc if rpc in _COUNTED else "other"
        self.counters[(view.name, str(counted) if method == "POST" else method)] += 1
        held: dict[str, MemberSession] = {}
        if not modern and rpc != "initialize":
            sealed = headers.get(SESSION_HEADER)
            opened = sessions.open_session(sealer, scope, sealed) if sealed else None
            if opened is None:
                return _error(request_id, errors.SESSION_UNKNOWN,
                              f"Session not found: virtual server '{view.name}' did not issue this session id "
                              "(or none was sent); initialize a new session")  # fmt: skip
            held = opened
        if method == "DELETE":
            timeout = virtual.fan_out_timeout_ms / 1000
            await asyncio.gather(*(self.client.close(m, held[m.backend], timeout) for m in virtual.members
                                   if m.backend in held))  # fmt: skip
            return Reply(200)
        if not isinstance(rpc, str):
            return _error(request_id, errors.INVALID_REQUEST, "Invalid Request: no method")
        if "id" not in message:  # a notification: nothing to answer
            return Reply(202)
        if rpc == "initialize":
            return await self._initialize(view, virtual, sealer, scope, message)
        if rpc == "server/discover":
            return _result(request_id, await self._discover(view, virtual), True)
        if rpc == "subscriptions/listen" and modern:
            return await self._listen(view, virtual, message)
        if rpc in ("ping", "logging/setLevel"):
            return _result(request_id, {}, modern)
        if rpc in LISTS:
            result: dict[str, Any] = {LISTS[rpc]: (await self.catalog(view, virtual)).items.get(LISTS[rpc], [])}
            return _result(request_id, result | ({"cacheScope": "private", "ttlMs": 0} if modern else {}), modern)
        if rpc in PASSED_ON:
            return await self._pass_on(view, virtual, message, held, headers, modern)
        return _error(request_id, errors.METHOD_NOT_FOUND,
                      f"Method not found: virtual server '{view.name}' does not serve {rpc!r}")  # fmt: skip

    # -- a legacy client's stream of server messages ------------------------------

    async def _stream(self, view: RouteView, virtual: VirtualServerIR, sealer: Sealer, scope: str,
                      headers: Mapping[str, str], modern: bool) -> Reply:  # fmt: skip
        """A legacy client's GET: its legacy members' streams merged. They are opened first: a member that
        ended its session makes it 404 `session_gone` (the client starts anew), none to follow 405 (the
        client carries on without), so a client never loops on a stream that ends at once."""
        sealed = headers.get(SESSION_HEADER)
        if modern or not sealed:
            return Reply(405, headers={"allow": "POST, DELETE"})
        held = sessions.open_session(sealer, scope, sealed)
        if held is None:
            return _error(None, errors.SESSION_UNKNOWN,
                          f"Session not found: virtual server '{view.name}' did not issue this session id")  # fmt: skip
        wanted = [(m, held[m.backend]) for m in virtual.members
                  if m.backend in held and held[m.backend].url in self.client.urls(m)]  # fmt: skip
        caller = _caller_headers(view, headers)
        timeout = virtual.fan_out_timeout_ms / 1000
        opened = await asyncio.gather(*(self._open_stream(m, s, timeout, caller) for m, s in wanted))
        streams = [(m, r) for (m, _), r in zip(wanted, opened, strict=True) if r is not None and r.status_code == 200]
        ended = [m.backend for (m, _), r in zip(wanted, opened, strict=True) if r is not None and r.status_code == 404]
        for (_, _), r in zip(wanted, opened, strict=True):
            if r is not None and r.status_code != 200:
                await r.aclose()
        if ended:
            for _, r in streams:
                await r.aclose()
            return _error(None, errors.SESSION_GONE,
                          f"Session not found: backend(s) {', '.join(ended)} of virtual server '{view.name}' "
                          "ended their sessions for this one; initialize a new session")  # fmt: skip
        # Stateless members' list changes reach this stream too (followed by changes.py, as for listeners).
        changing = [
            m for m in virtual.members if m.stateless and self._declares_changes(await self._read(view, virtual), m)
        ]
        if not streams and not changing:
            return Reply(405, headers={"allow": "POST, DELETE"})
        self.counters[(view.name, "GET")] += 1
        return Reply(200, headers={"content-type": "text/event-stream", "cache-control": "no-cache"},
                     stream=self._relay(view, virtual, streams, changing))  # fmt: skip

    async def _open_stream(self, member: VirtualMemberIR, session: MemberSession, timeout: float,
                           caller: Mapping[str, str]) -> httpx.Response | None:  # fmt: skip
        try:
            return await self.client.open_stream(member, session, timeout, caller)
        except MemberUnavailable as exc:
            log.info("virtual server: %s", exc)
            return None

    async def _read(self, view: RouteView, virtual: VirtualServerIR) -> Mapping[str, Any]:
        return await self.members.read_all(view.name, virtual)

    @staticmethod
    def _declares_changes(read: Mapping[str, Any], member: VirtualMemberIR) -> set[str]:
        """The list kinds whose changes `member` may send: those a stateless member declares (`listChanged`:
        else it may not serve listen at all); every list a legacy-only one has, as servers (the SDK's
        among them) announce changes on their GET stream without declaring them."""
        lists = read.get(member.backend)
        if lists is None:
            return set()
        return {kind for kind, value in lists.capabilities.items() if kind in _LISTED and isinstance(value, dict)
                and (value.get("listChanged") is True or not member.stateless)}  # fmt: skip

    async def _relay(self, view: RouteView, virtual: VirtualServerIR,
                     streams: list[tuple[VirtualMemberIR, httpx.Response]],
                     changing: list[VirtualMemberIR]) -> AsyncIterator[bytes]:  # fmt: skip
        """The members' notifications, as one SSE stream, until every member's stream has ended (or the client
        went away: the caller stops iterating, which closes them), with a comment line when nothing came for
        a while (so that a quiet stream is not an idle one). A member's `list_changed` also ends the cache of
        its lists. Requests a member sends (sampling, elicitation) are not passed on: the client's answer
        would come back to the gateway, which cannot hand it to the member."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        server, epoch = view.name, self._watch(view)

        async def follow(member: VirtualMemberIR, response: httpx.Response) -> None:
            try:
                async for message in self.client.stream_messages(member, response):
                    if "method" in message and "id" not in message:
                        if str(message["method"]).endswith("/list_changed"):
                            self.members.forget(server, member.backend)
                        await queue.put(message)
            except MemberUnavailable as exc:
                log.info("virtual server %s: %s", server, exc)
            finally:
                await queue.put(_ENDED)

        changes: asyncio.Queue[str] = asyncio.Queue()

        async def relay_changes() -> None:
            while True:
                await queue.put({"jsonrpc": "2.0", "method": await changes.get()})

        for member in changing:
            self.changes.listen(server, member, virtual.fan_out_timeout_ms / 1000, changes)
        tasks = [asyncio.ensure_future(follow(m, r)) for m, r in streams]
        tasks += [asyncio.ensure_future(relay_changes())] if changing else []
        try:
            yield b": agentxds virtual server stream\n\n"
            open_streams = len(streams) + (1 if changing else 0)  # the followed changes end only with the client
            async for message in self._until_changed(view.name, epoch, queue):
                if message is None:
                    yield b": keepalive\n\n"
                elif message is _ENDED:
                    open_streams -= 1
                    if not open_streams:
                        return
                else:
                    yield _event(message)
        finally:
            for member in changing:
                self.changes.stop(server, member, changes)
            for task in tasks:
                task.cancel()
            for _, response in streams:
                await response.aclose()

    # -- a 2026-07-28 client's list changes --------------------------------------

    async def _listen(self, view: RouteView, virtual: VirtualServerIR, message: Mapping[str, Any]) -> Reply:
        """`subscriptions/listen`: acknowledged (once the members' streams are open, or the fan-out timeout
        passed) with the list changes asked for that some member declares (resource subscriptions are not
        honored), then those changes, stamped with the request's id, until the client goes; a change of
        the virtual server's policies ends it gracefully (the stamped result), so the client listens again."""
        params = message.get("params")
        asked = params.get("notifications") if isinstance(params, dict) else None
        if not isinstance(asked, dict):
            return _error(message.get("id"), errors.INVALID_REQUEST,
                          "Invalid Request: subscriptions/listen needs params.notifications")  # fmt: skip
        read = await self._read(view, virtual)
        declaring = {m.backend: self._declares_changes(read, m) for m in virtual.members}
        honored = {key: True for key, method in LIST_CHANGES.items()
                   if asked.get(key) is True and any(method.split("/")[1] in kinds for kinds in declaring.values())}  # fmt: skip
        followed = [m for m in virtual.members if declaring.get(m.backend)] if honored else []
        return Reply(200, headers={"content-type": "text/event-stream", "cache-control": "no-cache"},
                     stream=self._changes_stream(view, virtual, message.get("id"), honored, followed))  # fmt: skip

    async def _changes_stream(self, view: RouteView, virtual: VirtualServerIR, request_id: Any,
                              honored: Mapping[str, bool], followed: list[VirtualMemberIR]) -> AsyncIterator[bytes]:  # fmt: skip
        server, stamp = view.name, {SUBSCRIPTION_ID: request_id}
        wanted = {LIST_CHANGES[key] for key in honored}
        queue: asyncio.Queue[str] = asyncio.Queue()
        timeout = virtual.fan_out_timeout_ms / 1000
        epoch = self._watch(view)
        ready = [self.changes.listen(server, member, timeout, queue) for member in followed]
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(event.wait() for event in ready)), timeout)
            yield _event({"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
                          "params": {"notifications": dict(honored), "_meta": stamp}})  # fmt: skip
            async for method in self._until_changed(server, epoch, queue):
                if method is None:
                    yield b": keepalive\n\n"
                elif method in wanted:
                    yield _event({"jsonrpc": "2.0", "method": method, "params": {"_meta": stamp}})
            yield _event({"jsonrpc": "2.0", "id": request_id, "result": {"_meta": stamp}})  # the graceful end
        finally:
            for member in followed:
                self.changes.stop(server, member, queue)

    def _watch(self, view: RouteView) -> int:
        """Note that a stream of `view`'s server is open; its current policy epoch."""
        self._streamed[view.name] = view.route
        return self._epochs.get(view.name, 0)

    async def _until_changed(self, server: str, epoch: int, queue: asyncio.Queue[Any]) -> AsyncIterator[Any]:
        """What `queue` gets, with None every _KEEPALIVE_S of silence, until the server's policies change
        (or nothing was wanted: at once)."""
        quiet_since = time.monotonic()
        while self._epochs.get(server, 0) == epoch:
            try:
                item = await asyncio.wait_for(queue.get(), _TICK_S)
            except TimeoutError:
                if time.monotonic() - quiet_since >= _KEEPALIVE_S:
                    quiet_since = time.monotonic()
                    yield None
                continue
            quiet_since = time.monotonic()
            yield item

    def policies_changed(self, index: PolicyIndex) -> None:
        """The policies changed: streams of a virtual server whose route changed (or went) end, so their
        clients listen again against the new one; its followers stop."""
        for server, route in list(self._streamed.items()):
            view = index.route(server)
            if view is None or view.route != route:
                self._epochs[server] = self._epochs.get(server, 0) + 1
                self._streamed.pop(server, None)
                self.changes.forget_server(server)

    # -- lifecycle ------------------------------------------------------------

    async def _initialize(self, view: RouteView, virtual: VirtualServerIR, sealer: Sealer, scope: str,
                          message: Mapping[str, Any]) -> Reply:  # fmt: skip
        params = message.get("params")
        asked = params.get("protocolVersion") if isinstance(params, dict) else None
        version = asked if asked in LEGACY_REVISIONS else LEGACY_REVISION
        legacy_only = [m for m in virtual.members if not m.stateless]
        opened = await asyncio.gather(*(self._open(m, virtual.fan_out_timeout_ms / 1000) for m in legacy_only))
        held = {m.backend: s for m, s in zip(legacy_only, opened, strict=True) if s is not None}
        capabilities = await self._capabilities(view, virtual)
        if not legacy_only:  # a legacy client hears of changes only on its stream, from its legacy members
            capabilities |= {k: {"listChanged": False} for k in ("tools", "prompts", "resources") if k in capabilities}
        result = {"protocolVersion": version, "capabilities": capabilities,
                  "serverInfo": {"name": view.name, "version": "agentxds"}}  # fmt: skip
        reply = _result(message.get("id"), result, False)
        reply.headers[SESSION_HEADER] = sessions.seal_session(sealer, scope, held)
        return reply

    async def _open(self, member: VirtualMemberIR, timeout: float) -> MemberSession | None:
        try:
            return await self.client.open_session(member, timeout)
        except MemberUnavailable as exc:
            log.warning("virtual server: no session with backend %s (%s); this client's calls to it use the "
                        "gateway's own", member.backend, exc)  # fmt: skip
            return None

    async def _discover(self, view: RouteView, virtual: VirtualServerIR) -> dict[str, Any]:
        return {"supportedVersions": [STATELESS_REVISION], "capabilities": await self._capabilities(view, virtual),
                "cacheScope": "private", "ttlMs": 0,
                "_meta": {"io.modelcontextprotocol/serverInfo": {"name": view.name, "version": "agentxds"}}}  # fmt: skip

    async def _capabilities(self, view: RouteView, virtual: VirtualServerIR) -> dict[str, Any]:
        """What the members offer together (resource subscriptions are not passed on; list changes are, to
        listeners and to legacy clients' streams)."""
        read = await self.members.read_all(view.name, virtual)
        offered = {key for lists in read.values() for key in lists.capabilities if key in _CAPABILITIES}
        capabilities: dict[str, Any] = {key: {} for key in sorted(offered)}
        for key in ("tools", "prompts", "resources"):
            if key in capabilities:
                capabilities[key] = {"listChanged": True}  # to listeners (2026) and legacy streams (GET)
        return capabilities or {"tools": {"listChanged": True}}

    # -- lists ----------------------------------------------------------------

    async def catalog(self, view: RouteView, virtual: VirtualServerIR) -> Catalog:
        """The server's lists as clients see them (members that did not answer in time left out)."""
        read = await self.members.read_all(view.name, virtual)
        lists: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for backend, member_lists in read.items():
            for key, items in member_lists.lists.items():
                lists.setdefault(key, {})[backend] = items
        catalog = catalog_of(virtual, lists, [m.backend for m in virtual.members if m.backend not in read])
        if catalog.hidden and self._reported.get(view.name) != catalog.hidden:  # once per change, not per list
            self._reported[view.name] = list(catalog.hidden)
            log.warning("virtual server %s: left out of its lists: %s", view.name, "; ".join(catalog.hidden))
        return catalog

    # -- calls ----------------------------------------------------------------

    async def _pass_on(self, view: RouteView, virtual: VirtualServerIR, message: dict[str, Any],
                       held: Mapping[str, MemberSession], headers: Mapping[str, str], modern: bool) -> Reply:  # fmt: skip
        request_id, rpc = message.get("id"), message["method"]
        given = message.get("params")
        params = dict(given) if isinstance(given, dict) else {}
        routed = await self._route(view, virtual, rpc, params)
        if routed is None:
            what = _target(params)
            missing = (await self.catalog(view, virtual)).missing
            if missing:  # it may be theirs: say so, rather than that it does not exist
                return _error(request_id, errors.BACKEND_UNAVAILABLE,
                              f"Virtual server '{view.name}' cannot tell whose {_noun(rpc)} {what!r} is: backend(s) "
                              f"{', '.join(missing)} did not answer when its lists were read",
                              backend=", ".join(missing), virtualServer=view.name)  # fmt: skip
            return _error(request_id, errors.UNKNOWN_NAME,
                          f"Unknown name: virtual server '{view.name}' has no {_noun(rpc)} {what!r}",
                          virtualServer=view.name)  # fmt: skip
        backend, params = routed
        member = virtual.member(backend)
        assert member is not None
        # Within the route's timeout (a little less: the client hears which member was slow, not Envoy's 504).
        timeout = (
            max(1.0, view.route.request_timeout_ms / 1000 - _MARGIN_S)
            if view.route.request_timeout_ms
            else _LONGEST_CALL_S
        )
        caller = _caller_headers(view, headers)
        try:
            async with asyncio.timeout(timeout):
                answer = await self._send_call(view, member, {**message, "params": params}, held, caller, timeout)
        except TimeoutError:
            return _error(request_id, errors.BACKEND_TIMEOUT,
                          f"Backend '{backend}' of virtual server '{view.name}' did not answer within {timeout:g}s",
                          backend=backend, virtualServer=view.name)  # fmt: skip
        except SessionEnded:
            return _error(request_id, errors.SESSION_GONE,
                          f"Session not found: backend '{backend}' of virtual server '{view.name}' ended its "
                          "session for this one; initialize a new session", backend=backend)  # fmt: skip
        except MemberUnavailable as exc:
            self.members.forget(view.name, backend)
            return _error(request_id, errors.BACKEND_UNAVAILABLE,
                          f"Backend '{backend}' of virtual server '{view.name}' is unavailable: {exc}",
                          backend=backend, virtualServer=view.name)  # fmt: skip
        return _answer(answer, request_id, modern, backend, view.name)

    async def _route(self, view: RouteView, virtual: VirtualServerIR, rpc: str,
                     params: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:  # fmt: skip
        """(the member, the params with its own names), or None when no member has what the call names."""
        if rpc in ("tools/call", "prompts/get"):
            name = params.get("name")
            if not isinstance(name, str):
                return None
            origin = await self._origin(view, virtual, "tool" if rpc == "tools/call" else "prompt", name)
            return None if origin is None else (origin.backend, {**params, "name": origin.name})
        given = params.get("ref")
        ref: dict[str, Any] | None = given if isinstance(given, dict) else None
        if rpc == "completion/complete" and ref is not None and ref.get("type") == "ref/prompt":
            name = ref.get("name")
            origin = await self._origin(view, virtual, "prompt", name) if isinstance(name, str) else None
            return None if origin is None else (origin.backend, {**params, "ref": {**ref, "name": origin.name}})
        uri = (ref or {}).get("uri") if rpc == "completion/complete" else params.get("uri")
        if not isinstance(uri, str):
            return None
        backend = (await self.catalog(view, virtual)).resource_backend(uri)
        return None if backend is None else (backend, params)

    async def _origin(self, view: RouteView, virtual: VirtualServerIR, kind: str, name: str) -> Origin | None:
        if virtual.mode == "always":  # the name says it all: no list to read
            return origin_by_name(virtual, kind, name)
        catalog = await self.catalog(view, virtual)
        return (catalog.tools if kind == "tool" else catalog.prompts).get(name)

    async def _send_call(self, view: RouteView, member: VirtualMemberIR, message: dict[str, Any],
                         held: Mapping[str, MemberSession], caller: Mapping[str, str], timeout: float) -> Answer:  # fmt: skip
        if member.stateless:
            return await self.client.send(member, message, timeout=timeout, headers=caller)
        own = held.get(member.backend)
        if own is not None and own.url not in self.client.urls(member):
            raise SessionEnded(member.backend)  # its endpoint is no longer the member's
        if own is not None:
            answer = await self.client.send(member, message, timeout=timeout, session=own, headers=caller)
            if answer.status == 404:
                raise SessionEnded(member.backend)
            return answer
        # A stateless client (or a legacy one whose session has none with this member): the gateway's own
        # session, which every such client shares, so the request gets an id of the gateway's (two clients
        # may both send id 1) and the answer the client's id back.
        own_id = self.client.next_id()
        answer = await self.members.in_held_session(view.name, member, {**message, "id": own_id}, timeout, caller)
        answer.messages = [{**m, "id": message.get("id")} if "method" not in m and m.get("id") == own_id else m
                           for m in answer.messages]  # fmt: skip
        return answer


def _event(message: Mapping[str, Any]) -> bytes:
    """One SSE event (ASCII JSON: a member's lone surrogate cannot break the stream)."""
    return f"event: message\ndata: {json.dumps(message, separators=(',', ':'))}\n\n".encode()


def _caller_headers(view: RouteView, headers: Mapping[str, str]) -> dict[str, str]:
    """The caller headers Envoy set on the request (the gateway's `callerHeaders`), for the member."""
    identity = view.gateway.identity
    names = [n for n in (identity.agent_header, identity.user_header) if n is not None]
    return {n: headers[n] for n in names if n in headers}


def _target(params: Mapping[str, Any]) -> Any:
    given = params.get("ref")
    ref: Mapping[str, Any] = given if isinstance(given, dict) else {}
    return params.get("uri") or params.get("name") or ref.get("name") or ref.get("uri")


def _noun(rpc: str) -> str:
    return {"tools/call": "tool", "prompts/get": "prompt", "completion/complete": "prompt or resource"}.get(
        rpc, "resource"
    )


def _answer(answer: Answer, request_id: Any, modern: bool, backend: str, server: str) -> Reply:
    """The member's answer for the client, in its revision: its response to this request (with the
    notifications it sent before it), JSON for one message, SSE for several; anything else is -32053."""
    response = answer.response(request_id)
    if response is None or not ("result" in response or isinstance(response.get("error"), dict)):
        return _error(request_id, errors.BACKEND_UNAVAILABLE,
                      f"Backend '{backend}' of virtual server '{server}' answered HTTP {answer.status} without a "
                      "JSON-RPC response to this request", backend=backend, virtualServer=server)  # fmt: skip
    if isinstance(response.get("result"), dict):
        result = dict(response["result"])
        if modern:
            result.setdefault("resultType", "complete")
        else:
            for key in ("resultType", "cacheScope", "ttlMs"):
                result.pop(key, None)
        response = {**response, "result": result}
    notes = [m for m in answer.messages if "method" in m and "id" not in m]
    if not notes:
        return _json(200, response)
    events = "".join(f"event: message\ndata: {json.dumps(m, separators=(',', ':'), ensure_ascii=False)}\n\n"
                     for m in [*notes, response])  # fmt: skip
    return Reply(200, events.encode(), {"content-type": "text/event-stream", "cache-control": "no-cache"})
