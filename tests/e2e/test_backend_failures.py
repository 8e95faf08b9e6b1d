"""End to end: when a backend gives no answer, the client is told what happened, in plain words.

Last, a real MCP backend is killed by its PID in the middle of a session
(both revisions): the client gets -32053 (2026-07-28, stateless), or -32600
`session_gone` with HTTP 404 (a 2025-11-25 session: it died with its
server), and once the backend is back on the same endpoint a new session
works through the same Envoy.

Each backend here is a real TCP peer that fails in one way: nothing listens
(connection refused), it accepts and drops the connection (closed before
answering), it never answers (request timeout), or its accept queue is full
so connecting times out. Envoy's own detail stays in `data.detail`, the
endpoint it tried in `data.endpoint`.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from mcp.shared.exceptions import MCPError

from tests.e2e.gateway import AGENTS_YAML, IDENTITY_HEADER, gateway_yaml, launch, start_gateway, stop_gateway
from tests.e2e.harness import mcp_client, raw_post, start_mcp_backend
from xds_server.core import errors
from xds_server.runtime.ports import free_port

MODERN = "2026-07-28"
MODERN_META = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}


@dataclass
class Peer:
    name: str
    port: int
    timeouts: str = "{connect: 2s, request: 0s}"


def _backend(peer: Peer) -> str:
    return f"""\
apiVersion: agentxds.dev/v1
kind: MCPBackend
metadata: {{name: {peer.name}}}
spec:
  route: /mcp/{peer.name}
  path: /mcp
  endpoints: [{{host: 127.0.0.1, port: {peer.port}}}]
  timeouts: {peer.timeouts}
---
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {{name: {peer.name}}}
spec:
  backend: {peer.name}
  rules: [{{agents: [triage], tools: [list_issues]}}]
"""


@pytest.fixture
def full_queue() -> Iterator[int]:
    """A port whose listener never accepts and whose accept queue is full: new connections hang."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):  # a backlog of 0 still queues one; the kernel then drops SYNs
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(s)
    yield port
    for s in fillers:
        s.close()
    listener.close()


@pytest_asyncio.fixture(loop_scope="session")
async def gateway(tmp_path: Path, full_queue: int) -> AsyncIterator[dict[str, Any]]:
    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.transport.abort()  # closed without an answer

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(30)  # never answers

    dropping = await asyncio.start_server(drop, "127.0.0.1", 0)
    hanging = await asyncio.start_server(hang, "127.0.0.1", 0)
    peers = {
        "refusing": Peer("refusing", free_port()),
        "dropping": Peer("dropping", dropping.sockets[0].getsockname()[1]),
        "hanging": Peer("hanging", hanging.sockets[0].getsockname()[1], "{connect: 2s, request: 1s}"),
        "unreachable": Peer("unreachable", full_queue, "{connect: 0.5s, request: 0s}"),
    }
    listen_port, policy_port = free_port(), free_port()
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir()
    (policy_dir / "gateway.yaml").write_text(gateway_yaml(listen_port, policy_port))
    (policy_dir / "agents.yaml").write_text(AGENTS_YAML)
    (policy_dir / "backends.yaml").write_text("---\n".join(_backend(p) for p in peers.values()))
    control, envoy = await launch(policy_dir, tmp_path, listen_port, policy_port)
    yield {"port": listen_port, "peers": peers}
    envoy.stop()
    await control.stop()
    for server in (dropping, hanging):
        server.close()


async def _call(port: int, backend: str, revision: str) -> tuple[int, dict[str, Any]]:
    if revision == "legacy":
        body = {"jsonrpc": "2.0", "id": "call-1", "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}  # fmt: skip
        headers = {"mcp-protocol-version": "2025-11-25"}
    else:
        body = {"jsonrpc": "2.0", "id": 41, "method": "tools/list", "params": {"_meta": MODERN_META}}
        headers = {"mcp-protocol-version": MODERN, "mcp-method": "tools/list"}
    response = await raw_post(f"http://127.0.0.1:{port}/mcp/{backend}", json.dumps(body),
                              {IDENTITY_HEADER: "triage", **headers}, timeout=20)  # fmt: skip
    answer = response.json()
    assert answer["id"] == body["id"]
    return response.status_code, answer["error"]


@pytest.mark.parametrize("revision", ["legacy", "modern"])
@pytest.mark.parametrize(
    ("backend", "kind", "says", "detail"),
    [
        ("refusing", errors.BACKEND_UNAVAILABLE, "connection refused by {endpoint}", "Connection_refused"),
        ("dropping", errors.BACKEND_UNAVAILABLE, "{endpoint} closed the connection before answering",
         "upstream_reset_before_response_started"),
        ("hanging", errors.BACKEND_TIMEOUT, "did not answer in time (its request timeout passed waiting for {endpoint})",
         "response_timeout"),
        ("unreachable", errors.BACKEND_UNAVAILABLE, "connecting to {endpoint} timed out", "connection_timeout"),
    ],
)  # fmt: skip
async def test_a_backend_that_gives_no_answer_is_named_in_plain_words(
    gateway: dict[str, Any], backend: str, kind: errors.ErrorKind, says: str, detail: str, revision: str
) -> None:
    endpoint = f"127.0.0.1:{gateway['peers'][backend].port}"
    status, error = await _call(gateway["port"], backend, revision)
    assert status == kind.http_status
    assert error["code"] == kind.code and error["data"]["reason"] == kind.reason
    assert says.format(endpoint=endpoint) in error["message"], error
    assert error["message"].startswith(f"Backend '{backend}' ")
    assert error["data"]["endpoint"] == endpoint and error["data"]["backend"] == backend
    assert detail in error["data"]["detail"], error


# ---------------------------------------------------------------- a backend that dies mid-session


@pytest.mark.parametrize("mode", ["legacy", "modern"])
async def test_a_backend_killed_mid_session_is_a_json_rpc_error_and_a_new_session_works_once_it_returns(
    tmp_path: Path, mode: str
) -> None:
    backend = start_mcp_backend(tmp_path / "backend", name="github")
    gw = await start_gateway(tmp_path, {"github": backend})
    try:
        async with mcp_client(gw.url(), {IDENTITY_HEADER: "triage"}, mode) as client:
            assert not (await client.call_tool("list_issues", {"repo": "acme/web"})).is_error
            backend.stop()  # by its PID, mid-session
            with pytest.raises(MCPError) as lost:
                await client.call_tool("list_issues", {"repo": "acme/web"})
        # A legacy session lived in the server that died: the client is told to start a new one.
        kind = errors.SESSION_GONE if mode == "legacy" else errors.BACKEND_UNAVAILABLE
        assert lost.value.error.code == kind.code, lost.value.error
        assert lost.value.error.data["reason"] == kind.reason
        # The same endpoint comes back (same port): a new session there works, through the same Envoy.
        backend = start_mcp_backend(tmp_path / "backend", name="github", port=backend.port)
        async with mcp_client(gw.url(), {IDENTITY_HEADER: "triage"}, mode) as client:
            assert not (await client.call_tool("list_issues", {"repo": "acme/web"})).is_error
    finally:
        backend.stop()
        await stop_gateway(gw)
