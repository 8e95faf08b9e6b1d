"""The MCP endpoint of a virtual server for what Envoy does not route itself.

Envoy has checked the request (RBAC on the names clients see, conditions,
quotas) before it comes here, and filters list answers per caller after
(ext_proc), so this answers as the server every client may see:

- `server/discover` (2026-07-28) and `initialize` (legacy): the members'
  capabilities merged; a legacy client gets a session id sealing one session
  per legacy-only member, opened at once (sessions.py). Stateless members
  need none, whichever revision the client speaks.
- the lists: every member read in parallel, each bounded by the fan-out
  timeout (a member that does not answer in time is left out of that
  answer, and named in the log), cached per member for `fan_out.cache`,
  renamed and curated (naming.py).
- `tools/call`, `prompts/get`, `completion/complete`, `resources/*`: to the
  member the name or URI comes from, with its own name, in the revision it
  speaks (bridged: a 2026-07-28 client's call to a legacy-only member goes
  in a session the gateway holds with it; a legacy client's call to a
  stateless member gets the 2026-07-28 envelope). What the member sends
  during the call (progress, logging) is passed on with the answer.
- `ping`, notifications: answered here. GET (a legacy client's stream of
  server messages) is not served (405: the SDK client carries on without);
  DELETE closes the members' sessions.

A name no member has (or that curation hides) is -32602 `unknown_name`; a
member that cannot be reached is -32053 naming it; a session id this server
did not seal is 404 `session_unknown`.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from xds_server.authz.jsonrpc import error_body
from xds_server.authz.sealing import Sealer
from xds_server.authz.state import RouteView
from xds_server.authz.vmcp import sessions
from xds_server.authz.vmcp.naming import LISTS, Catalog, catalog_of
from xds_server.authz.vmcp.upstream import SESSION_HEADER, Answer, MemberClient, MemberUnavailable
from xds_server.core import errors
from xds_server.ir.virtual_mcp import LEGACY_REVISION, STATELESS_REVISION, VirtualMemberIR, VirtualServerIR

log = logging.getLogger(__name__)

LEGACY_REVISIONS = ("2025-11-25", "2025-06-18", "2025-03-26")
_MAX_PAGES = 20
_CAPABILITIES = ("tools", "prompts", "resources", "completions", "logging")
_RESULT_2026 = {"resultType": "complete"}


class SessionEnded(Exception):
    """A legacy member answered 404 in the client's own session with it: the client must start anew."""


@dataclass
class Reply:
    """What the front answers Envoy: status, headers, body."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def _json(status: int, value: Any, **headers: str) -> Reply:
    body = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return Reply(status, body.encode(), {"content-type": "application/json", **headers})


def _error(request_id: Any, kind: errors.ErrorKind, message: str, **data: Any) -> Reply:
    return _json(kind.http_status, error_body(request_id, kind, message, **data))


def _result(request_id: Any, result: Mapping[str, Any], modern: bool) -> Reply:
    return _json(200, {"jsonrpc": "2.0", "id": request_id, "result": {**result, **(_RESULT_2026 if modern else {})}})


@dataclass
class _MemberLists:
    """What one member listed, and until when it is reused."""

    expires: float
    lists: dict[str, list[dict[str, Any]]]
    capabilities: dict[str, Any]


class VirtualFront:
    """Answers the requests of every virtual server (one per policy service; state: caches and the sessions
    the gateway holds with legacy-only members for stateless clients)."""

    def __init__(self, sealer_for: Callable[[RouteView], Sealer]) -> None:
        self._sealer_for = sealer_for
        self.members = MemberClient()
        self._lists: dict[tuple[str, str], _MemberLists] = {}
        self._reading: dict[tuple[str, str], asyncio.Future[_MemberLists]] = {}
        self._reported: dict[str, list[str]] = {}  # what each server's lists last left out (logged once)
        self._held: dict[tuple[str, str], str] = {}  # (server, backend) -> a legacy session the gateway holds
        #: Requests answered, by (server, method): what the fan-out and the passed-on calls cost.
        self.counters: collections.Counter[tuple[str, str]] = collections.Counter()

    async def close(self) -> None:
        await self.members.close()

    # -- the endpoint ---------------------------------------------------------

    async def handle(self, view: RouteView, method: str, headers: Mapping[str, str], body: bytes) -> Reply:
        """One HTTP request of a client of `view`'s virtual server (Envoy's checks passed)."""
        virtual = view.route.protocol.virtual  # type: ignore[union-attr]
        assert isinstance(virtual, VirtualServerIR)
        modern = headers.get("mcp-protocol-version") == STATELESS_REVISION
        scope = sessions.scope_of(view.gateway.name, view.name)
        sealer = self._sealer_for(view)
        if method == "GET":
            return Reply(405, headers={"allow": "POST, DELETE"})
        try:
            message = json.loads(body) if method == "POST" else {}
        except ValueError:
            return _error(None, errors.PARSE_ERROR, "Parse error: the body is not valid JSON")
        if not isinstance(message, dict):
            return _error(None, errors.INVALID_REQUEST, "Invalid Request: one JSON-RPC request per HTTP request")
        rpc = message.get("method")
        request_id = message.get("id")
        self.counters[(view.name, str(rpc) if method == "POST" else method)] += 1
        held: dict[str, str] = {}
        if not modern and rpc != "initialize":
            sealed = headers.get(SESSION_HEADER)
            opened = sessions.open_session(sealer, scope, sealed) if sealed else None
            if opened is None:
                return _error(request_id, errors.SESSION_UNKNOWN,
                              f"Session not found: virtual server '{view.name}' did not issue this session id "
                              "(or none was sent); initialize a new session")  # fmt: skip
            held = opened
        if method == "DELETE":
            await self._close_sessions(virtual, held)
            return Reply(200)
        if rpc is None or not isinstance(rpc, str):
            return _error(request_id, errors.INVALID_REQUEST, "Invalid Request: no method")
        if "id" not in message:  # a notification: nothing to answer
            return Reply(202)
        if rpc == "initialize":
            return await self._initialize(view, virtual, sealer, scope, message)
        if rpc == "server/discover":
            return _result(request_id, await self._discover(view, virtual), True)
        if rpc == "ping":
            return _result(request_id, {}, modern)
        if rpc in LISTS:
            catalog = await self.catalog(view, virtual)
            result: dict[str, Any] = {LISTS[rpc]: catalog.items.get(LISTS[rpc], [])}
            if modern:
                result |= {"cacheScope": "private", "ttlMs": 0}
            return _result(request_id, result, modern)
        if rpc in ("tools/call", "prompts/get", "completion/complete", "resources/read", "resources/subscribe",
                   "resources/unsubscribe"):  # fmt: skip
            return await self._pass_on(view, virtual, message, held, modern)
        if rpc == "logging/setLevel":
            return _result(request_id, {}, modern)
        return _error(
            request_id,
            errors.METHOD_NOT_FOUND,
            f"Method not found: virtual server '{view.name}' does not serve {rpc!r}",
        )

    # -- lifecycle ------------------------------------------------------------

    async def _initialize(self, view: RouteView, virtual: VirtualServerIR, sealer: Sealer, scope: str,
                          message: Mapping[str, Any]) -> Reply:  # fmt: skip
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        asked = params.get("protocolVersion") if isinstance(params, dict) else None
        version = asked if asked in LEGACY_REVISIONS else LEGACY_REVISION
        legacy_only = [m for m in virtual.members if not m.stateless]
        timeout = virtual.fan_out_timeout_ms / 1000
        opened = await asyncio.gather(*(self._open(m, timeout) for m in legacy_only))
        held = {m.backend: sid for m, sid in zip(legacy_only, opened, strict=True) if sid is not None}
        result = {"protocolVersion": version, "capabilities": await self._capabilities(view, virtual),
                  "serverInfo": {"name": view.name, "version": "agentxds"}}  # fmt: skip
        reply = _result(message.get("id"), result, False)
        reply.headers[SESSION_HEADER] = sessions.seal_session(sealer, scope, held)
        return reply

    async def _open(self, member: VirtualMemberIR, timeout: float) -> str | None:
        try:
            sid, _ = await asyncio.wait_for(self.members.open_session(member, timeout), timeout)
            return sid
        except (MemberUnavailable, TimeoutError) as exc:
            why = str(exc) if isinstance(exc, MemberUnavailable) else f"no answer within {timeout:g}s"
            log.warning("virtual server: no session with backend %s (%s); calls to it use the gateway's own",
                        member.backend, why)  # fmt: skip
            return None

    async def _close_sessions(self, virtual: VirtualServerIR, held: Mapping[str, str]) -> None:
        async def close(member: VirtualMemberIR, sid: str) -> None:
            try:
                await self.members.send(member, {}, timeout=virtual.fan_out_timeout_ms / 1000, session=sid,
                                        method="DELETE")  # fmt: skip
            except MemberUnavailable:
                pass  # gone already

        await asyncio.gather(*(close(m, held[m.backend]) for m in virtual.members if m.backend in held))

    async def _discover(self, view: RouteView, virtual: VirtualServerIR) -> dict[str, Any]:
        return {"supportedVersions": [STATELESS_REVISION], "capabilities": await self._capabilities(view, virtual),
                "cacheScope": "private", "ttlMs": 0,
                "_meta": {"io.modelcontextprotocol/serverInfo": {"name": view.name, "version": "agentxds"}}}  # fmt: skip

    async def _capabilities(self, view: RouteView, virtual: VirtualServerIR) -> dict[str, Any]:
        """What the members offer together (list changes and subscriptions are not passed on)."""
        read = await self._read_all(view, virtual)
        offered = {key for lists in read.values() for key in lists.capabilities if key in _CAPABILITIES}
        capabilities: dict[str, Any] = {key: {} for key in sorted(offered)}
        for key in ("tools", "prompts", "resources"):
            if key in capabilities:
                capabilities[key] = {"listChanged": False}
        return capabilities or {"tools": {"listChanged": False}}

    # -- lists ----------------------------------------------------------------

    async def catalog(self, view: RouteView, virtual: VirtualServerIR) -> Catalog:
        """The server's lists as clients see them (members that did not answer in time left out)."""
        read = await self._read_all(view, virtual)
        lists: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for backend, member_lists in read.items():
            for key, items in member_lists.lists.items():
                lists.setdefault(key, {})[backend] = items
        missing = [m.backend for m in virtual.members if m.backend not in read]
        catalog = catalog_of(virtual, lists, missing)
        if catalog.hidden and self._reported.get(view.name) != catalog.hidden:  # once per change, not per list
            self._reported[view.name] = list(catalog.hidden)
            log.warning("virtual server %s: left out of its lists: %s", view.name, "; ".join(catalog.hidden))
        return catalog

    async def _read_all(self, view: RouteView, virtual: VirtualServerIR) -> dict[str, _MemberLists]:
        timeout = virtual.fan_out_timeout_ms / 1000
        members = list(virtual.members)
        results = await asyncio.gather(*(self._read_member(view, virtual, m, timeout) for m in members))
        return {m.backend: r for m, r in zip(members, results, strict=True) if r is not None}

    async def _read_member(self, view: RouteView, virtual: VirtualServerIR, member: VirtualMemberIR,
                           timeout: float) -> _MemberLists | None:  # fmt: skip
        key = (view.name, member.backend)
        cached = self._lists.get(key)
        if cached is not None and cached.expires > time.monotonic():
            return cached
        reading = self._reading.get(key)
        if reading is None:  # one reading per member at a time, whoever asks
            reading = self._reading[key] = asyncio.ensure_future(self._fetch(view, member, timeout))
            reading.add_done_callback(lambda _: self._reading.pop(key, None))
        try:
            lists = await asyncio.wait_for(asyncio.shield(reading), timeout)
        except (MemberUnavailable, TimeoutError) as exc:
            self._lists.pop(key, None)
            why = str(exc) if isinstance(exc, MemberUnavailable) else f"no answer within {timeout:g}s"
            log.warning("virtual server %s: backend %s left out of the lists (%s)", view.name, member.backend, why)
            return None
        lists.expires = time.monotonic() + virtual.cache_ms / 1000
        self._lists[key] = lists
        return lists

    async def _fetch(self, view: RouteView, member: VirtualMemberIR, timeout: float) -> _MemberLists:
        if member.stateless:
            session = None
            request_id = self.members.next_id()
            answer = await self.members.send(member, {"jsonrpc": "2.0", "id": request_id, "method": "server/discover"},
                                             timeout=timeout)  # fmt: skip
            found = answer.response(request_id)
            capabilities = (found or {}).get("result", {}).get("capabilities", {}) if found else {}
        else:
            session, initialized = await self._held_session(view, member, timeout)
            capabilities = initialized.get("capabilities", {})
        # The four lists at once (a stateless member takes them in parallel; a legacy one in its session).
        read = await asyncio.gather(
            *(self._list(member, method, key, timeout, session) for method, key in LISTS.items())
        )
        lists = dict(zip(LISTS.values(), read, strict=True))
        return _MemberLists(0.0, lists, capabilities if isinstance(capabilities, dict) else {})

    async def _list(self, member: VirtualMemberIR, method: str, key: str, timeout: float,
                    session: str | None) -> list[dict[str, Any]]:  # fmt: skip
        items: list[dict[str, Any]] = []
        cursor = None
        for _ in range(_MAX_PAGES):
            params: dict[str, Any] = {"cursor": cursor} if cursor else {}
            # Ids unique per request: the four lists share a legacy member's session, where a repeated id
            # would leave the member unable to tell its answers apart.
            request_id = self.members.next_id()
            answer = await self.members.send(member, {"jsonrpc": "2.0", "id": request_id, "method": method,
                                                      "params": params}, timeout=timeout, session=session)  # fmt: skip
            response = answer.response(request_id)
            if response is None or "result" not in response:
                return items  # the member does not offer this list (method not found), or failed it
            result = response["result"]
            items += [item for item in result.get(key, []) if isinstance(item, dict)]
            cursor = result.get("nextCursor")
            if not cursor:
                break
        return items

    async def _held_session(self, view: RouteView, member: VirtualMemberIR,
                            timeout: float) -> tuple[str, dict[str, Any]]:  # fmt: skip
        """The session the gateway holds with a legacy-only member (opened anew each time it is asked for
        its capabilities, i.e. when the member's lists are read again)."""
        sid, initialized = await self.members.open_session(member, timeout)
        old = self._held.get((view.name, member.backend))
        self._held[(view.name, member.backend)] = sid
        if old is not None and old != sid:
            asyncio.ensure_future(self._quietly_close(member, old, timeout))
        return sid, initialized

    async def _quietly_close(self, member: VirtualMemberIR, sid: str, timeout: float) -> None:
        try:
            await self.members.send(member, {}, timeout=timeout, session=sid, method="DELETE")
        except MemberUnavailable:
            pass

    # -- calls ----------------------------------------------------------------

    async def _pass_on(self, view: RouteView, virtual: VirtualServerIR, message: dict[str, Any],
                       held: Mapping[str, str], modern: bool) -> Reply:  # fmt: skip
        request_id = message.get("id")
        rpc = message["method"]
        given = message.get("params")
        catalog = await self.catalog(view, virtual)
        backend, params = _route(catalog, rpc, dict(given) if isinstance(given, dict) else {})
        if backend is None and (down := _down_member(virtual, catalog, params)) is not None:
            return _error(request_id, errors.BACKEND_UNAVAILABLE,
                          f"Backend '{down}' of virtual server '{view.name}' is unavailable: it did not answer "
                          "when its tools were read", backend=down, virtualServer=view.name)  # fmt: skip
        if backend is None:
            what = (
                params.get("uri")
                or params.get("name")
                or (params.get("ref") or {}).get("name")
                or (params.get("ref") or {}).get("uri")
            )
            missing = f" (backends not answering now: {', '.join(catalog.missing)})" if catalog.missing else ""
            return _error(request_id, errors.UNKNOWN_NAME,
                          f"Unknown name: virtual server '{view.name}' has no {_noun(rpc)} {what!r}{missing}",
                          virtualServer=view.name)  # fmt: skip
        member = virtual.member(backend)
        assert member is not None
        forwarded = {**message, "params": params}
        timeout = view.route.request_timeout_ms / 1000 or None
        try:
            answer = await self._send_call(view, member, forwarded, held, timeout or 3600.0)
        except SessionEnded:
            return _error(request_id, errors.SESSION_GONE,
                          f"Session not found: backend '{backend}' of virtual server '{view.name}' ended this "
                          "session's session with it; initialize a new session", backend=backend)  # fmt: skip
        except MemberUnavailable as exc:
            self._lists.pop((view.name, backend), None)  # read it again before listing its tools again
            return _error(request_id, errors.BACKEND_UNAVAILABLE,
                          f"Backend '{backend}' of virtual server '{view.name}' is unavailable: {exc}",
                          backend=backend, virtualServer=view.name)  # fmt: skip
        return _answer(answer, request_id, modern)

    async def _send_call(self, view: RouteView, member: VirtualMemberIR, message: dict[str, Any],
                         held: Mapping[str, str], timeout: float) -> Answer:  # fmt: skip
        if member.stateless:
            return await self.members.send(member, message, timeout=timeout)
        sid = held.get(member.backend)
        if sid is not None:
            answer = await self.members.send(member, message, timeout=timeout, session=sid)
            if answer.status == 404:
                raise SessionEnded(member.backend)
            return answer
        # A stateless client (or a legacy one whose session has none with this member): the gateway's own
        # session, which every such client shares, so the request gets an id of the gateway's (two clients
        # may both send id 1) and the answer the client's id back.
        key = (view.name, member.backend)
        shared = self._held.get(key)
        if shared is None:
            shared, _ = await self._held_session(view, member, timeout)
        own_id = self.members.next_id()
        answer = await self.members.send(member, {**message, "id": own_id}, timeout=timeout, session=shared)
        if answer.status == 404:  # the member ended that session: open another, once
            shared, _ = await self._held_session(view, member, timeout)
            answer = await self.members.send(member, {**message, "id": own_id}, timeout=timeout, session=shared)
        answer.messages = [{**m, "id": message.get("id")} if "method" not in m and m.get("id") == own_id else m
                           for m in answer.messages]  # fmt: skip
        return answer


def _down_member(virtual: VirtualServerIR, catalog: Catalog, params: Mapping[str, Any]) -> str | None:
    """The member not answering now whose prefix the call's name carries (every name prefixed), if any."""
    name = params.get("name")
    if virtual.mode != "always" or not isinstance(name, str):
        return None
    return next((m.backend for m in virtual.members
                 if m.backend in catalog.missing and name.startswith(m.prefix + virtual.separator)), None)  # fmt: skip


def _noun(rpc: str) -> str:
    return {"tools/call": "tool", "prompts/get": "prompt", "completion/complete": "prompt or resource"}.get(
        rpc, "resource"
    )


def _route(catalog: Catalog, rpc: str, params: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(the member a call goes to, its params with the member's own names), or (None, params) when no
    member has what it names."""
    if rpc in ("tools/call", "prompts/get"):
        origins = catalog.tools if rpc == "tools/call" else catalog.prompts
        name = params.get("name")
        origin = origins.get(name) if isinstance(name, str) else None
        if origin is None:
            return None, params
        return origin.backend, {**params, "name": origin.name}
    if rpc == "completion/complete":
        given = params.get("ref")
        ref: dict[str, Any] = given if isinstance(given, dict) else {}
        if ref.get("type") == "ref/prompt" and isinstance(ref.get("name"), str):
            origin = catalog.prompts.get(ref["name"])
            if origin is None:
                return None, params
            return origin.backend, {**params, "ref": {**ref, "name": origin.name}}
        uri = ref.get("uri")
        backend = catalog.resource_backend(uri) if isinstance(uri, str) else None
        return backend, params
    uri = params.get("uri")
    return (catalog.resource_backend(uri) if isinstance(uri, str) else None), params


def _answer(answer: Answer, request_id: Any, modern: bool) -> Reply:
    """The member's messages for the client, in its revision: JSON for one message, SSE for several."""
    messages = []
    for message in answer.messages:
        if "method" not in message and isinstance(message.get("result"), dict):
            result = dict(message["result"])
            if modern:
                result.setdefault("resultType", "complete")
            else:
                for key in ("resultType", "cacheScope", "ttlMs"):
                    result.pop(key, None)
            message = {**message, "result": result}
        messages.append(message)
    if not messages:
        return _error(request_id, errors.BACKEND_UNAVAILABLE,
                      f"The backend answered HTTP {answer.status} with no JSON-RPC message")  # fmt: skip
    if len(messages) == 1:
        return _json(200, messages[0])
    events = "".join(f"event: message\ndata: {json.dumps(m, separators=(',', ':'), ensure_ascii=False)}\n\n"
                     for m in messages)  # fmt: skip
    return Reply(200, events.encode(), {"content-type": "text/event-stream", "cache-control": "no-cache"})
