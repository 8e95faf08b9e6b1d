"""End to end: limits under abuse, through the real Envoy and control plane.

Each abuser below is cut off by one of the Gateway's `limits` (or Envoy's own
parser) with a JSON-RPC error where HTTP still allows an answer, the backend
receives nothing from it, and a polite client keeps being served:

- a slowloris client (headers trickled a line at a time): `requestHeadersTimeout`;
- a body trickled a byte at a time: `requestReceiveTimeout`;
- too many or too large request headers: `maxHeaders`, `maxRequestHeadersKib`
  (HTTP/1.1 answers 431; HTTP/2 can only reset the stream);
- JSON nested deeper than 100 levels: Envoy's MCP parser, not configurable;
- an idle keep-alive connection: `connectionIdleTimeout` (an open legacy GET
  stream is a request in flight, so it is not idle and stays open);
- connections past `maxConnections`: closed as they are accepted.

A second Envoy with an overload manager shows the process-wide limits: over
its heap limit new requests get -32051 `overloaded`, and past its connection
limit new connections are closed while the admin API still answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from tests.e2e.gateway import IDENTITY_HEADER, RunningGateway, eventually, launch, stop_gateway, until, write_policies
from tests.e2e.harness import (
    LEGACY_REVISION,
    MODERN_META,
    McpBackend,
    http1_head,
    mcp_client,
    raw_post,
    send_raw,
    tools_call_request,
)
from xds_server.core import errors
from xds_server.runtime.overload import HEAP_MONITOR, OverloadLimits, overload_manager
from xds_server.runtime.ports import free_port

HEADERS_TIMEOUT_S = 1.0
RECEIVE_TIMEOUT_S = 2.0
IDLE_TIMEOUT_S = 2.0
MAX_HEADERS = 30
MAX_HEADERS_KIB = 8
MAX_CONNECTIONS = 3
LIMITS = (
    f"requestHeadersTimeout: {HEADERS_TIMEOUT_S}s, requestReceiveTimeout: {RECEIVE_TIMEOUT_S}s, "
    f"connectionIdleTimeout: {IDLE_TIMEOUT_S}s, maxHeaders: {MAX_HEADERS}, maxRequestHeadersKib: {MAX_HEADERS_KIB}"
)
AS_TRIAGE = [(IDENTITY_HEADER, "triage")]
LIST_ISSUES = {"repo": "acme/web"}


async def _start(workdir: Any, backends: dict[str, McpBackend], *, limits: str,
                 overload: dict[str, Any] | None = None) -> RunningGateway:  # fmt: skip
    listen_port, policy_port = free_port(), free_port()
    policy_dir = workdir / "policies"
    write_policies(policy_dir, listen_port, backends, policy_port=policy_port, extra_limits=limits)
    control, envoy = await launch(policy_dir, workdir, listen_port, policy_port, overload_manager=overload)
    return RunningGateway(policy_dir, control, envoy, listen_port, backends)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(
    mcp_backend_factory_module: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningGateway]:
    gw = await _start(tmp_path_factory.mktemp("abuse"), {"github": mcp_backend_factory_module(name="github")},
                      limits=LIMITS)  # fmt: skip
    yield gw
    await stop_gateway(gw)


@pytest.fixture
def backend(gateway: RunningGateway) -> McpBackend:
    b = gateway.backends["github"]
    b.clear_requests()
    return b


def _error(answer: bytes) -> dict[str, Any]:
    reply = json.loads(answer)
    assert reply["jsonrpc"] == "2.0" and "result" not in reply, reply
    return reply["error"]  # type: ignore[no-any-return]


async def _slowloris(port: int, give_up_s: float) -> tuple[float, bytes]:
    """Trickle header lines until the gateway closes the connection; (seconds it lasted, what it answered)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(b"POST /mcp/github HTTP/1.1\r\nhost: gateway\r\n")
    answer = b""
    try:
        while time.monotonic() - started < give_up_s:
            writer.write(b"x-slow: 1\r\n")
            await writer.drain()
            try:
                chunk = await asyncio.wait_for(reader.read(4096), timeout=0.2)
            except TimeoutError:
                continue
            answer += chunk
            if not chunk:
                break
    except ConnectionError:
        pass
    finally:
        writer.close()
    return time.monotonic() - started, answer


async def test_a_slowloris_client_is_cut_off_while_a_normal_client_is_served(gateway: RunningGateway) -> None:
    give_up = HEADERS_TIMEOUT_S * 6
    slow = asyncio.create_task(_slowloris(gateway.listen_port, give_up))
    served = 0
    async with mcp_client(gateway.url(), {IDENTITY_HEADER: "triage"}) as client:
        while not slow.done():
            assert not (await client.call_tool("list_issues", {"repo": "acme/web"})).is_error
            served += 1
            await asyncio.sleep(0.05)
    lasted, answer = await slow
    assert lasted < give_up, f"the slow connection was still open after {lasted:.1f}s"
    assert served >= 1
    if answer:  # HTTP/1.1: Envoy says why before closing
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer
        reply = json.loads(body)
        assert reply["id"] is None and reply["error"]["data"]["reason"] == "request_timeout", reply
        assert reply["error"]["code"] == -32008 and "1 s" in reply["error"]["message"], reply


# ---------------------------------------------------------------- bodies


async def test_a_body_trickled_byte_by_byte_is_cut_off_and_never_reaches_the_backend(
    gateway: RunningGateway, backend: McpBackend
) -> None:
    _, headers, body = tools_call_request("modern", "list_issues", LIST_ISSUES)
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.listen_port)
    writer.write(http1_head("POST", AS_TRIAGE + headers, len(body)))
    answer, started, give_up = b"", time.monotonic(), RECEIVE_TIMEOUT_S * 5
    try:
        for byte in body[:-1]:  # never the last byte: the request is never complete
            writer.write(bytes([byte]))
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                chunk = await asyncio.wait_for(reader.read(65536), timeout=0.2)
                answer += chunk
                if not chunk or b"\r\n\r\n" in answer:
                    break
            assert time.monotonic() - started < give_up, "the trickled request was never cut off"
        answer += await asyncio.wait_for(reader.read(65536), timeout=5)
    except ConnectionError:
        pass
    finally:
        writer.close()
    head, _, reply = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    error = _error(reply)
    assert error["code"] == errors.REQUEST_TIMEOUT.code == -32008 and error["data"]["reason"] == "request_timeout"
    assert f"whole request did not arrive within {RECEIVE_TIMEOUT_S:g} s" in error["message"], error
    assert backend.requests() == []


@pytest.mark.parametrize(("depth", "reaches_backend"), [(100, True), (101, False)])
async def test_json_nested_deeper_than_100_levels_is_refused_by_envoy(
    gateway: RunningGateway, backend: McpBackend, depth: int, reaches_backend: bool
) -> None:
    """Envoy's MCP parser counts the depth of the whole document (the request object is level 1)."""
    nested = "[" * (depth - 3) + "]" * (depth - 3)  # inside {request {params {arguments ...
    body = (
        '{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"list_issues",'
        f'"arguments":{{"repo":"acme/web","deep":{nested}}},"_meta":{json.dumps(MODERN_META)}}}}}'
    ).encode()
    json.loads(body)  # a valid document either way: only its depth differs
    _, headers, _ = tools_call_request("modern", "list_issues", LIST_ISSUES)
    status, answer = await send_raw(gateway.listen_port, "h1", "POST", AS_TRIAGE + headers, body)
    if reaches_backend:
        assert [json.loads(r["body"])["id"] for r in backend.requests()] == [5], (status, answer)
        return
    error = _error(answer)
    assert status == 400 and error["code"] == -32600 and error["data"]["detail"] == "not a valid JSON", answer
    assert backend.requests() == []


# ---------------------------------------------------------------- headers


def _padding(count: int, size: int) -> list[tuple[str, str]]:
    return [(f"x-pad-{i}", "p" * size) for i in range(count)]


@pytest.mark.parametrize(
    "padding",
    [_padding(MAX_HEADERS + 10, 8), _padding(1, MAX_HEADERS_KIB * 1024 + 512)],
    ids=["too-many", "too-large"],
)
async def test_request_headers_over_the_limits_get_431_over_http1(
    gateway: RunningGateway, backend: McpBackend, padding: list[tuple[str, str]]
) -> None:
    _, headers, body = tools_call_request("modern", "list_issues", LIST_ISSUES)
    status, answer = await send_raw(gateway.listen_port, "h1", "POST", AS_TRIAGE + headers + padding, body)
    error = _error(answer)
    assert status == 431 and error["code"] == errors.HEADERS_TOO_LARGE.code == -32031, answer
    assert error["data"]["reason"] == "request_headers_too_large" and error["data"]["detail"].startswith("http1.")
    assert f"at most {MAX_HEADERS} headers and {MAX_HEADERS_KIB} KiB" in error["message"], error
    assert backend.requests() == []


@pytest.mark.parametrize(
    "padding", [_padding(MAX_HEADERS + 10, 8), _padding(1, MAX_HEADERS_KIB * 1024 + 512)], ids=["too-many", "too-large"]
)
async def test_request_headers_over_the_limits_reset_the_http2_stream(
    gateway: RunningGateway, backend: McpBackend, padding: list[tuple[str, str]]
) -> None:
    """HTTP/2 has no way to answer a header block the codec refused: the stream is reset."""
    _, headers, body = tools_call_request("modern", "list_issues", LIST_ISSUES)
    try:
        status, answer = await send_raw(gateway.listen_port, "h2", "POST", AS_TRIAGE + headers + padding, body)
    except ConnectionError:
        status, answer = 0, b""
    assert (status, answer) == (0, b"")
    assert backend.requests() == []


@pytest.mark.parametrize("transport", ["h1", "h2"])
async def test_requests_within_the_header_limits_are_served(
    gateway: RunningGateway, backend: McpBackend, transport: str
) -> None:
    _, headers, body = tools_call_request("modern", "list_issues", LIST_ISSUES)
    padding = _padding(MAX_HEADERS - len(headers) - 8, 64) + _padding(1, MAX_HEADERS_KIB * 1024 // 2)
    status, answer = await send_raw(gateway.listen_port, transport, "POST", AS_TRIAGE + headers + padding, body)
    assert status == 200 and b"acme/web" in answer, answer
    assert len(backend.requests()) == 1


# ---------------------------------------------------------------- connections


async def _read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(head, body) of one HTTP/1.1 response on a kept-alive connection (content-length or chunked)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    fields = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
    if b"content-length" in fields:
        return head, await asyncio.wait_for(reader.readexactly(int(fields[b"content-length"])), 10)
    body = b""
    while size := int(await asyncio.wait_for(reader.readuntil(b"\r\n"), 10), 16):
        body += (await asyncio.wait_for(reader.readexactly(size + 2), 10))[:-2]
    await reader.readuntil(b"\r\n")
    return head, body


async def test_an_idle_keep_alive_connection_is_closed(gateway: RunningGateway, backend: McpBackend) -> None:
    _, headers, body = tools_call_request("modern", "list_issues", LIST_ISSUES)
    request = http1_head("POST", AS_TRIAGE + headers, len(body))
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.listen_port)
    try:
        for _ in range(2):  # served twice on the same connection: it is kept alive between requests
            writer.write(request + body)
            head, answer = await _read_response(reader)
            assert head.startswith(b"HTTP/1.1 200") and b"acme/web" in answer, (head, answer)
            assert b"connection: close" not in head.lower(), head
        closed = await asyncio.wait_for(reader.read(), timeout=IDLE_TIMEOUT_S * 5)
    finally:
        writer.close()
    assert closed == b""
    assert len(backend.requests()) == 2


async def test_an_open_legacy_get_stream_outlives_the_idle_timeout(gateway: RunningGateway) -> None:
    legacy = {IDENTITY_HEADER: "triage", "mcp-protocol-version": LEGACY_REVISION}
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": LEGACY_REVISION, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}  # fmt: skip
    opened = await raw_post(gateway.url(), json.dumps(initialize), legacy)
    assert opened.status_code == 200, opened.text
    session = opened.headers["mcp-session-id"]
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert (
        await raw_post(gateway.url(), json.dumps(initialized), {**legacy, "mcp-session-id": session})
    ).status_code == 202
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.listen_port)
    try:
        writer.write(
            f"GET /mcp/github HTTP/1.1\r\nhost: gateway\r\n{IDENTITY_HEADER}: triage\r\naccept: text/event-stream\r\n"
            f"mcp-protocol-version: {LEGACY_REVISION}\r\nmcp-session-id: {session}\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head, head
        deadline = time.monotonic() + IDLE_TIMEOUT_S * 2.5
        while (left := deadline - time.monotonic()) > 0:
            try:
                data = await asyncio.wait_for(reader.read(4096), timeout=left)
            except TimeoutError:
                break
            assert data, "the gateway closed an open GET stream as if it were idle"
    finally:
        writer.close()


async def _served_on(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Whether an allowed call sent on this open connection is answered (and the connection kept)."""
    _, headers, body = tools_call_request("modern", "list_issues", LIST_ISSUES)
    writer.write(http1_head("POST", AS_TRIAGE + headers, len(body)) + body)
    try:
        head, answer = await _read_response(reader)
    except (asyncio.IncompleteReadError, ConnectionError):
        return False
    return head.startswith(b"HTTP/1.1 200") and b"acme/web" in answer


async def test_connections_past_max_connections_are_closed_as_they_are_accepted(
    mcp_backend_factory_module: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    gw = await _start(tmp_path_factory.mktemp("max-connections"), {"github": mcp_backend_factory_module(name="github")},
                      limits=f"maxConnections: {MAX_CONNECTIONS}")  # fmt: skip
    held: list[asyncio.StreamWriter] = []
    try:
        for _ in range(MAX_CONNECTIONS):  # each one served, so each one is counted
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.listen_port)
            held.append(writer)
            assert await _served_on(reader, writer)
        reader, extra = await asyncio.open_connection("127.0.0.1", gw.listen_port)
        try:
            assert await asyncio.wait_for(reader.read(), timeout=10) == b""  # closed, nothing said
        finally:
            extra.close()
        assert gw.envoy.stats()["connection_limit.e2e.limited_connections"] >= 1
        held.pop().close()  # a freed place is given to the next connection

        async def a_new_connection_is_served() -> bool:
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.listen_port)
            try:
                return await _served_on(reader, writer)
            finally:
                writer.close()

        await eventually(a_new_connection_is_served, 10, "a connection once one of the held ones closed")
    finally:
        for writer in held:
            writer.close()
        await stop_gateway(gw)


# ---------------------------------------------------------------- the process-wide limits (overload manager)

OVERLOAD_CONNECTIONS = 16  # the smallest OverloadLimits allows


def _over_its_heap_limit() -> dict[str, Any]:
    """What `agentxds up` gives Envoy, with a heap limit Envoy at rest is already over (1 MiB) and only
    the action that refuses new requests, so that each request shows what a client of an
    overloaded gateway gets (the others would close the connection first)."""
    manager = overload_manager(OverloadLimits(max_heap_bytes=64 << 20, max_connections=OVERLOAD_CONNECTIONS))
    (heap,) = [m for m in manager["resource_monitors"] if m["name"] == HEAP_MONITOR]
    heap["typed_config"]["max_heap_size_bytes"] = str(1 << 20)
    manager["actions"] = [a for a in manager["actions"] if a["name"].endswith("stop_accepting_requests")]
    return manager


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def overloaded(
    mcp_backend_factory_module: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningGateway]:
    gw = await _start(tmp_path_factory.mktemp("overloaded"), {"github": mcp_backend_factory_module(name="github")},
                      limits="", overload=_over_its_heap_limit())  # fmt: skip
    name = "overload.envoy.overload_actions.stop_accepting_requests.active"
    await until(lambda: gw.envoy.stats().get(name) == 1, 10, f"{name} == 1")
    yield gw
    await stop_gateway(gw)


@pytest.mark.parametrize("transport", ["h1", "h2"])
async def test_an_envoy_over_its_heap_limit_refuses_new_requests_with_overloaded(
    overloaded: RunningGateway, transport: str
) -> None:
    backend = overloaded.backends["github"]
    backend.clear_requests()
    _, headers, body = tools_call_request("modern", "list_issues", LIST_ISSUES)
    status, answer = await send_raw(overloaded.listen_port, transport, "POST", AS_TRIAGE + headers, body)
    error = _error(answer)
    assert status == 503 and error["code"] == errors.OVERLOADED.code == -32051, answer
    assert error["data"]["reason"] == "overloaded" and "retry later" in error["message"]
    assert json.loads(answer)["id"] is None  # refused before the body was read
    assert backend.requests() == []


async def test_connections_past_the_process_limit_are_closed_and_the_admin_api_still_answers(
    overloaded: RunningGateway,
) -> None:
    held: list[asyncio.StreamWriter] = []
    try:
        for _ in range(OVERLOAD_CONNECTIONS):
            _, writer = await asyncio.open_connection("127.0.0.1", overloaded.listen_port)
            held.append(writer)
        name = f"listener.127.0.0.1_{overloaded.listen_port}.downstream_cx_active"
        await until(lambda: overloaded.envoy.stats().get(name) == OVERLOAD_CONNECTIONS, 10, f"{name} full")
        reader, extra = await asyncio.open_connection("127.0.0.1", overloaded.listen_port)
        try:
            assert await asyncio.wait_for(reader.read(), timeout=10) == b""
        finally:
            extra.close()
        assert (
            overloaded.envoy.stats()[f"listener.127.0.0.1_{overloaded.listen_port}.downstream_global_cx_overflow"] >= 1
        )
        status, _ = await overloaded.envoy.admin_get_async("/ready")
        assert status == 200
    finally:
        for writer in held:
            writer.close()
