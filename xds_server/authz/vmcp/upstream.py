"""JSON-RPC to one member of a virtual server over streamable HTTP, in the revision it speaks.

A stateless member (2026-07-28) gets each request with the protocol headers
(`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`) and the `_meta` envelope
the revision requires (a client's own is kept), on any of its endpoints. A
legacy member (2025-11-25) gets the request in a session (`MemberSession`:
the endpoint that opened it and its id; `open_session` sends initialize,
then notifications/initialized), always on that endpoint. An answer is read
whole within the request's deadline, JSON or SSE: every message of it, in
order (notifications a member sends during a call, then the response).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from xds_server.authz.mcp.tasks import header_value
from xds_server.authz.upstream_tls import client_context, sni_extensions
from xds_server.ir.types import UpstreamTlsIR
from xds_server.ir.virtual_mcp import LEGACY_REVISION, STATELESS_REVISION, VirtualMemberIR

META_KEYS = ("io.modelcontextprotocol/protocolVersion", "io.modelcontextprotocol/clientCapabilities",
             "io.modelcontextprotocol/clientInfo")  # fmt: skip
CLIENT_INFO = {"name": "agentxds-virtual-server", "version": "1"}
SESSION_HEADER = "mcp-session-id"
#: Methods whose target travels in the `Mcp-Name` header (2026-07-28), and where it is in params.
_NAMED = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
#: No cap on connections (legacy clients' streams hold one each); keep-alive for the rest.
_LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=64)
_LINES = re.compile(r"\r\n|\r|\n")  # SSE's line ends only (str.splitlines also splits on U+2028 and more)


class MemberUnavailable(Exception):
    """The member could not be reached in time, or its answer was not MCP (the message says which)."""


@dataclass(frozen=True)
class MemberSession:
    """A legacy session with a member: the endpoint URL that holds it, and its id there."""

    url: str
    id: str
    initialized: Mapping[str, Any] = field(default_factory=dict, compare=False)  # the initialize result


@dataclass
class Answer:
    """A member's HTTP answer: its status, its messages in order, the session id it named (if any)."""

    status: int
    messages: list[dict[str, Any]] = field(default_factory=list)
    session: str | None = None

    def response(self, request_id: Any) -> dict[str, Any] | None:
        """The message answering `request_id`, if the member sent one."""
        return next((m for m in self.messages if "method" not in m and m.get("id") == request_id), None)


def with_envelope(message: Mapping[str, Any]) -> dict[str, Any]:
    """`message` carrying the 2026-07-28 `_meta` envelope (the client's, or the gateway's own)."""
    params = dict(message.get("params") or {})
    meta = dict(params.get("_meta") or {})
    meta.setdefault(META_KEYS[0], STATELESS_REVISION)
    meta.setdefault(META_KEYS[1], {})
    meta.setdefault(META_KEYS[2], CLIENT_INFO)
    params["_meta"] = meta
    return {**message, "params": params}


def without_envelope(message: Mapping[str, Any]) -> dict[str, Any]:
    """`message` without the 2026-07-28 envelope keys (for a legacy member)."""
    params = message.get("params")
    if not isinstance(params, dict) or not isinstance(params.get("_meta"), dict):
        return dict(message)
    meta = {k: v for k, v in params["_meta"].items() if k not in META_KEYS}
    params = {k: v for k, v in params.items() if k != "_meta"} | ({"_meta": meta} if meta else {})
    return {**message, "params": params}


class _SseEvents:
    """SSE `data:` lines gathered into events: `feed` each line; it returns an event's data once a blank
    line ends it."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        if line.startswith("data:"):
            self._data.append(line[5:].removeprefix(" "))
        elif not line and self._data:
            event, self._data = "\n".join(self._data), []
            return event
        return None


def messages_of(content_type: str, text: str) -> list[dict[str, Any]]:
    """The JSON-RPC messages of a member's answer body (JSON, or SSE `data:` events). Raises ValueError."""
    if not text.strip():
        return []
    if content_type.split(";")[0].strip().lower() == "text/event-stream":
        events = _SseEvents()
        found = [json.loads(data) for line in [*_LINES.split(text), ""] if (data := events.feed(line)) is not None]
        return [m for m in found if isinstance(m, dict)]
    value = json.loads(text)
    return [value] if isinstance(value, dict) else []


def _wire(headers: Mapping[str, str | bytes]) -> list[tuple[bytes, bytes]]:
    """Headers as bytes: our names are ASCII; values as Envoy wrote them (latin-1 text) or already bytes."""
    return [(k.encode("ascii"), v if isinstance(v, bytes) else v.encode("latin-1", errors="replace"))
            for k, v in headers.items()]  # fmt: skip


@contextlib.asynccontextmanager
async def _reaching(member: VirtualMemberIR, timeout: float) -> AsyncIterator[None]:
    """Within `timeout`; the member's failure to answer, whatever form it takes, as MemberUnavailable."""
    try:
        async with asyncio.timeout(timeout):
            yield
    except TimeoutError:
        raise MemberUnavailable(f"backend {member.backend!r} did not answer within {timeout:g}s") from None
    except (httpx.HTTPError, OSError, ssl.SSLError, UnicodeError) as exc:
        raise MemberUnavailable(f"backend {member.backend!r} cannot be reached ({type(exc).__name__}: {exc})") from None


class MemberClient:
    """Requests to members (one HTTP connection pool for plain HTTP, one per TLS setting)."""

    def __init__(self) -> None:
        self._http = httpx.AsyncClient(timeout=None, trust_env=False, limits=_LIMITS)
        self._turn = itertools.count()
        self._ids = itertools.count(1)
        self._tls: dict[UpstreamTlsIR, httpx.AsyncClient] = {}

    def next_id(self) -> int:
        """An id for a request the gateway itself sends (never reused while it runs)."""
        return next(self._ids)

    def url(self, member: VirtualMemberIR) -> str:
        """One of the member's endpoints (in turn), as a URL of its MCP path."""
        upstream = member.upstream
        if not upstream.endpoints:
            raise MemberUnavailable(f"backend {member.backend!r} has no endpoint")
        endpoint = upstream.endpoints[next(self._turn) % len(upstream.endpoints)]
        host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
        scheme = "https" if upstream.tls is not None else "http"
        return f"{scheme}://{host}:{endpoint.port}{upstream.path}"

    def _client(self, member: VirtualMemberIR) -> httpx.AsyncClient:
        tls = member.upstream.tls
        if tls is None:
            return self._http
        client = self._tls.get(tls)  # a changed CA or certificate is another setting: a new client
        if client is None:
            client = self._tls[tls] = httpx.AsyncClient(
                timeout=None, trust_env=False, verify=client_context(tls), limits=_LIMITS
            )
        return client

    async def send(self, member: VirtualMemberIR, message: Mapping[str, Any], *, timeout: float,
                   session: MemberSession | None = None, method: str = "POST", legacy: bool = False,
                   headers: Mapping[str, str] | None = None, at: str | None = None) -> Answer:  # fmt: skip
        """`message` to `member`, answered within `timeout` seconds: stateless when it speaks 2026-07-28 and
        neither `session` nor `legacy` is given, else as a legacy request (in `session`, on its endpoint).
        `headers` go along (what Envoy told the gateway of the caller); `at`: this endpoint URL, not the next.
        Without a session or `at` any endpoint will do: one refusing the connection (nothing was sent) is
        passed over for the next, as Envoy's routes retry connect failures on another host."""
        stateless = session is None and not legacy and member.stateless
        # The caller headers as Envoy wrote them (a user's name may be any UTF-8, which arrived as latin-1 text).
        sent = {"accept": "application/json, text/event-stream", "content-type": "application/json", **(headers or {})}
        body: dict[str, Any] | None = None
        if method == "POST":
            body = with_envelope(message) if stateless else without_envelope(message)
            if stateless:
                sent["mcp-method"] = str(message.get("method", ""))
                key = _NAMED.get(str(message.get("method")))
                target = (body.get("params") or {}).get(key) if key else None
                if isinstance(target, str):
                    sent["mcp-name"] = header_value(target)  # the transport's base64 form where it must be
        sent["mcp-protocol-version"] = STATELESS_REVISION if stateless else LEGACY_REVISION
        if session is not None:
            sent[SESSION_HEADER] = session.id
        fixed = session.url if session is not None else at
        tries = 1 if fixed is not None else max(1, len(member.upstream.endpoints))
        content = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        async with _reaching(member, timeout):
            for attempt in range(tries):
                try:
                    response = await self._send(member, method, fixed or self.url(member), sent, content)
                    break
                except httpx.ConnectError:
                    if attempt + 1 == tries:
                        raise
            text = response.text
        try:
            messages = messages_of(response.headers.get("content-type", ""), text) if method == "POST" else []
        except (ValueError, RecursionError):
            raise MemberUnavailable(f"backend {member.backend!r} answered HTTP {response.status_code} with something "
                                    "that is not JSON-RPC") from None  # fmt: skip
        return Answer(response.status_code, messages, response.headers.get(SESSION_HEADER))

    def urls(self, member: VirtualMemberIR) -> frozenset[str]:
        """Every endpoint URL of the member as the policies now say (a session held elsewhere is over)."""
        scheme = "https" if member.upstream.tls is not None else "http"
        return frozenset(f"{scheme}://{f'[{e.host}]' if ':' in e.host else e.host}:{e.port}{member.upstream.path}"
                         for e in member.upstream.endpoints)  # fmt: skip

    async def open_stream(self, member: VirtualMemberIR, session: MemberSession, timeout: float,
                          headers: Mapping[str, str] | None = None) -> httpx.Response:  # fmt: skip
        """The GET stream of `session` (what a legacy member sends outside any request), opened within
        `timeout`: the response, its body not read yet (`stream_messages`; the caller closes it). Raises
        MemberUnavailable when the member cannot be reached; any status is the caller's to judge."""
        sent = {"accept": "text/event-stream", "mcp-protocol-version": LEGACY_REVISION, SESSION_HEADER: session.id,
                **(headers or {})}  # fmt: skip
        async with _reaching(member, timeout):
            return await self._send(member, "GET", session.url, sent, None, stream=True)

    async def open_listen(self, member: VirtualMemberIR, kinds: list[str], timeout: float) -> httpx.Response:
        """A `subscriptions/listen` stream of the gateway's own with a stateless member, for the list changes
        `kinds` (filter keys), opened within `timeout`: the response, its body not read yet. Raises
        MemberUnavailable when the member cannot be reached."""
        message = with_envelope({"jsonrpc": "2.0", "id": f"agentxds-listen-{self.next_id()}",
                                 "method": "subscriptions/listen",
                                 "params": {"notifications": {kind: True for kind in kinds}}})  # fmt: skip
        headers = {"accept": "application/json, text/event-stream", "content-type": "application/json",
                   "mcp-protocol-version": STATELESS_REVISION, "mcp-method": "subscriptions/listen"}  # fmt: skip
        content = json.dumps(message, separators=(",", ":")).encode()
        async with _reaching(member, timeout):
            return await self._send(member, "POST", self.url(member), headers, content, stream=True)

    async def _send(self, member: VirtualMemberIR, method: str, url: str, headers: Mapping[str, str | bytes],
                    content: bytes | None, stream: bool = False) -> httpx.Response:  # fmt: skip
        """One HTTP request to the member (its TLS client, with its SNI); `stream`: the body left unread."""
        tls = member.upstream.tls
        client = self._client(member)
        request = client.build_request(method, url, headers=_wire(headers), content=content,
                                       extensions=sni_extensions(tls))  # fmt: skip
        return await client.send(request, stream=stream)

    @staticmethod
    async def stream_messages(member: VirtualMemberIR, response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
        """The JSON-RPC messages of an open stream, until the member ends it (then it is closed)."""
        events = _SseEvents()
        try:
            async for line in response.aiter_lines():
                if (data := events.feed(line)) is None:
                    continue
                try:
                    message = json.loads(data)
                except ValueError:
                    continue  # one bad event does not end the stream
                if isinstance(message, dict):
                    yield message
        except (httpx.HTTPError, OSError, ssl.SSLError) as exc:
            raise MemberUnavailable(f"backend {member.backend!r}: its stream failed ({type(exc).__name__})") from None
        finally:
            await response.aclose()

    async def open_session(self, member: VirtualMemberIR, timeout: float) -> MemberSession:
        """A new legacy session with `member` (initialize, then notifications/initialized) on one endpoint."""
        request_id = self.next_id()
        initialize = {"jsonrpc": "2.0", "id": request_id, "method": "initialize", "params": {
            "protocolVersion": LEGACY_REVISION, "capabilities": {}, "clientInfo": CLIENT_INFO}}  # fmt: skip
        url = self.url(member)
        answer = await self.send(member, initialize, timeout=timeout, legacy=True, at=url)
        response = answer.response(request_id)
        if answer.session is None or response is None or not isinstance(response.get("result"), dict):
            raise MemberUnavailable(f"backend {member.backend!r} did not open a session (HTTP {answer.status})")
        session = MemberSession(url, answer.session, response["result"])
        await self.send(member, {"jsonrpc": "2.0", "method": "notifications/initialized"}, timeout=timeout,
                        session=session)  # fmt: skip
        return session

    async def close(self, member: VirtualMemberIR, session: MemberSession, timeout: float) -> None:
        """End `session` (DELETE); a member already gone is no error."""
        try:
            await self.send(member, {}, timeout=timeout, session=session, method="DELETE")
        except MemberUnavailable:
            pass

    async def aclose(self) -> None:
        await self._http.aclose()
        for client in self._tls.values():
            await client.aclose()
