"""End to end: a backend that dresses its answer up cannot get a list past the gateway's filter.

The backend here is a real TCP peer that answers every `tools/list` with every
tool it has, in a form a client still reads but a lenient filter might pass
on unread: a content type that only starts with `application/json`, two
content types, SSE in UTF-16, a compressed body, a response that also
carries a `method`. Through the real Envoy and policy service, triage (who
may see list_issues and get_issue only) gets either the filtered list or a
JSON-RPC error with its request's id, never a hidden tool; an error page
(404, text) is the client's to see and passes as sent.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio

from tests.e2e.gateway import IDENTITY_HEADER, RunningGateway, start_gateway, stop_gateway
from tests.e2e.harness import MODERN_META, MODERN_REVISION, raw_post
from xds_server.core import errors

TOOLS = [{"name": name, "inputSchema": {"type": "object"}} for name in ("list_issues", "get_issue", "delete_repo")]
HIDDEN = b"delete_repo"


def _list_answer(request_id: Any, **extra: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, **extra, "result": {"tools": TOOLS}}


def _json(answer: dict[str, Any]) -> bytes:
    return json.dumps(answer).encode()


# name -> (headers, body) of the answer to a tools/list with id `rid`
DISGUISES: dict[str, Any] = {
    "json then text": lambda rid: ([("content-type", "application/json, text/plain")], _json(_list_answer(rid))),
    "two content types": lambda rid: (
        [("content-type", "text/plain"), ("content-type", "application/json")],
        _json(_list_answer(rid)),
    ),
    "jsonx": lambda rid: ([("content-type", "application/jsonx")], _json(_list_answer(rid))),
    "sse in utf-16": lambda rid: (
        [("content-type", "text/event-stream; charset=utf-16-le")],
        ("event: message\ndata: " + json.dumps(_list_answer(rid)) + "\n\n").encode("utf-16-le"),
    ),
    "gzip": lambda rid: (
        [("content-type", "application/json"), ("content-encoding", "gzip")],
        gzip.compress(_json(_list_answer(rid))),
    ),
    "a response with a method": lambda rid: (
        [("content-type", "application/json")],
        _json(_list_answer(rid, method=None)),
    ),
    "plain json": lambda rid: ([("content-type", "application/json")], _json(_list_answer(rid))),
    "an error page": lambda rid: ([("content-type", "text/plain; charset=utf-8")], b"session not found"),
}
STATUS = {"an error page": b"404 Not Found"}


@dataclass
class LyingBackend:
    """An HTTP/1.1 peer that answers each POST as `disguise` says (it reads the request's id)."""

    host: str = "127.0.0.1"
    port: int = 0
    path: str = "/mcp"
    disguise: str = "plain json"
    seen: list[str] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                request = json.loads(body)
                self.seen.append(request.get("method"))
                answer_headers, answer = DISGUISES[self.disguise](request.get("id"))
                status = STATUS.get(self.disguise, b"200 OK")
                out = [b"HTTP/1.1 " + status] + [f"{k}: {v}".encode() for k, v in answer_headers]
                out.append(f"content-length: {len(answer)}".encode())
                writer.write(b"\r\n".join(out) + b"\r\n\r\n" + answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def liar(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[RunningGateway, LyingBackend]]:
    backend = LyingBackend()
    await backend.start()
    gateway = await start_gateway(tmp_path_factory.mktemp("gateway"), {"github": backend})  # type: ignore[dict-item]
    yield gateway, backend
    await stop_gateway(gateway)
    await backend.stop()


async def _list_tools(gateway: RunningGateway, request_id: int) -> Any:
    body = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/list", "params": {"_meta": MODERN_META}})
    headers = {IDENTITY_HEADER: "triage", "mcp-protocol-version": MODERN_REVISION, "mcp-method": "tools/list"}
    return await raw_post(gateway.url(), body, headers)


@pytest.mark.parametrize("disguise", sorted(DISGUISES))
async def test_a_disguised_list_is_filtered_or_withheld_never_passed(
    liar: tuple[RunningGateway, LyingBackend], disguise: str
) -> None:
    gateway, backend = liar
    backend.disguise = disguise
    request_id = 100 + sorted(DISGUISES).index(disguise)
    response = await _list_tools(gateway, request_id)
    assert backend.seen and backend.seen[-1] == "tools/list"  # the backend answered it
    assert HIDDEN not in response.content, (disguise, response.headers, response.content)
    if disguise == "an error page":  # not a result: the client sees the backend's own error, as sent
        assert (response.status_code, response.text) == (404, "session not found")
        return
    answer = response.json()
    assert answer["id"] == request_id, answer
    if disguise == "plain json":
        assert [t["name"] for t in answer["result"]["tools"]] == ["list_issues", "get_issue"]
    else:
        assert answer["error"]["code"] == errors.GATEWAY_ERROR.code, answer
        assert "withheld" in answer["error"]["message"]
