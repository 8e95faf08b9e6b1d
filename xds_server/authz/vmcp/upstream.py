"""JSON-RPC to one member of a virtual server over streamable HTTP, in the revision it speaks.

A stateless member (2026-07-28) gets each request with the protocol headers
(`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`) and the `_meta` envelope
the revision requires (a client's own is kept). A legacy member (2025-11-25)
gets the request in a session: `open_session` initializes one (initialize,
then notifications/initialized) and the caller carries its id. An answer is
read whole, JSON or SSE: every message of it, in order (notifications a
member sends during a call, then the response).
"""

from __future__ import annotations

import itertools
import json
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from xds_server.ir.virtual_mcp import LEGACY_REVISION, STATELESS_REVISION, VirtualMemberIR

META_KEYS = ("io.modelcontextprotocol/protocolVersion", "io.modelcontextprotocol/clientCapabilities",
             "io.modelcontextprotocol/clientInfo")  # fmt: skip
CLIENT_INFO = {"name": "agentxds-virtual-server", "version": "1"}
SESSION_HEADER = "mcp-session-id"


class MemberUnavailable(Exception):
    """The member could not be reached, or its answer was not MCP (the message says which)."""


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


def _messages(response: httpx.Response) -> list[dict[str, Any]]:
    kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
    text = response.text
    if not text.strip():
        return []
    if kind == "text/event-stream":
        out, data = [], []
        for line in [*text.splitlines(), ""]:
            if line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
            elif not line and data:
                out.append(json.loads("\n".join(data)))
                data = []
        return [m for m in out if isinstance(m, dict)]
    value = json.loads(text)
    return [value] if isinstance(value, dict) else []


class MemberClient:
    """Requests to members (one HTTP connection pool for all; endpoints taken in turn)."""

    def __init__(self) -> None:
        self._http = httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_keepalive_connections=64))
        # httpx logs every request at INFO: a line per member request would drown the service's log.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        self._turn = itertools.count()
        self._ids = itertools.count(1)
        self._tls: dict[str, httpx.AsyncClient] = {}

    def next_id(self) -> int:
        """An id for a request the gateway itself sends (never reused while it runs)."""
        return next(self._ids)

    def url(self, member: VirtualMemberIR) -> str:
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
        client = self._tls.get(member.backend)
        if client is None:
            context = ssl.create_default_context(cadata=tls.ca_pem) if tls.ca_pem else ssl.create_default_context()
            if tls.certificate_file and tls.private_key is not None and tls.private_key.file:
                context.load_cert_chain(tls.certificate_file, tls.private_key.file)
            client = self._tls[member.backend] = httpx.AsyncClient(timeout=None, verify=context)
        return client

    async def send(self, member: VirtualMemberIR, message: Mapping[str, Any], *, timeout: float,
                   session: str | None = None, method: str = "POST", legacy: bool = False) -> Answer:  # fmt: skip
        """`message` to `member`: stateless when it speaks 2026-07-28 and neither `session` nor `legacy` is
        given, else as a legacy request (in `session`, if given)."""
        stateless = session is None and not legacy and member.stateless
        headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
        body: dict[str, Any] | None = None
        if method == "POST":
            body = with_envelope(message) if stateless else without_envelope(message)
            if stateless:
                headers["mcp-protocol-version"] = STATELESS_REVISION
                headers["mcp-method"] = str(message.get("method", ""))
                params = body.get("params") or {}
                name = params.get("name", params.get("uri"))
                if isinstance(name, str) and message.get("method") in ("tools/call", "prompts/get", "resources/read"):
                    headers["mcp-name"] = name
        if not stateless:
            headers["mcp-protocol-version"] = LEGACY_REVISION
        if session is not None:
            headers[SESSION_HEADER] = session
        try:
            response = await self._client(member).request(
                method, self.url(member), headers=headers, timeout=timeout,
                content=None if body is None else json.dumps(body, separators=(",", ":")).encode())  # fmt: skip
            messages = _messages(response) if method == "POST" else []
        except (httpx.HTTPError, OSError) as exc:
            raise MemberUnavailable(
                f"backend {member.backend!r} cannot be reached ({type(exc).__name__}: {exc})"
            ) from None
        except ValueError:
            raise MemberUnavailable(
                f"backend {member.backend!r} answered with something that is not JSON-RPC"
            ) from None
        return Answer(response.status_code, messages, response.headers.get(SESSION_HEADER))

    async def open_session(self, member: VirtualMemberIR, timeout: float) -> tuple[str, dict[str, Any]]:
        """A new legacy session with `member`: (its id, the initialize result)."""
        request_id = self.next_id()
        initialize = {"jsonrpc": "2.0", "id": request_id, "method": "initialize", "params": {
            "protocolVersion": LEGACY_REVISION, "capabilities": {}, "clientInfo": CLIENT_INFO}}  # fmt: skip
        answer = await self.send(member, initialize, timeout=timeout, legacy=True)
        response = answer.response(request_id)
        if answer.session is None or response is None or "result" not in response:
            raise MemberUnavailable(f"backend {member.backend!r} did not open a session (HTTP {answer.status})")
        await self.send(member, {"jsonrpc": "2.0", "method": "notifications/initialized"}, timeout=timeout,
                        session=answer.session)  # fmt: skip
        return answer.session, response["result"]

    async def close(self) -> None:
        await self._http.aclose()
        for client in self._tls.values():
            await client.aclose()
