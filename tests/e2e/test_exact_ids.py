"""End to end: every refusal carries the request's exact id whenever it can be read, over raw sockets.

The MCP filter alone keeps the id only for a valid JSON-RPC body within its
limit, and as a double; the gateway reads it before that filter
(translate/request_id.py), so the id comes back for a wrong Content-Type or
Accept, a wrong or missing `jsonrpc`, a byte order mark, a body over the
limit, an over-long method, and with all the digits of a large integer,
the same JSON type, on HTTP/1.1 and HTTP/2, native refusals and the policy
service's alike. What stays impossible in Envoy 1.40 is pinned here too.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from tests.e2e.gateway import CONDITIONAL_POLICY_YAML, IDENTITY_HEADER, RunningGateway, start_gateway, stop_gateway
from tests.e2e.harness import LEGACY_REVISION, MODERN_META, MODERN_REVISION, McpBackend, http1_head, send_raw
from xds_server.core import errors

MAX_BODY = 8192  # the e2e gateway's maxRequestBodyBytes
POLICY = CONDITIONAL_POLICY_YAML
BIG = 9007199254740993  # 2^53 + 1: a double would answer ...992
IDS = [7, "req-7", BIG, -BIG, 2**63 - 1, "9007199254740993", 'a "quoted" \\ id', 1.5]
IDS_NAMES = ["int", "string", "2^53+1", "-(2^53+1)", "int64-max", "digits-string", "escapes", "fraction"]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(mcp_backend_factory_module: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[
        RunningGateway]:  # fmt: skip
    gw = await start_gateway(tmp_path_factory.mktemp("ids"), {"github": mcp_backend_factory_module(name="github")},
                             policy_yaml=POLICY)  # fmt: skip
    yield gw
    await stop_gateway(gw)


@pytest.fixture
def backend(gateway: RunningGateway) -> McpBackend:
    b = gateway.backends["github"]
    b.clear_requests()
    return b


def _headers(mode: str, method: str, name: str | None = None, agent: str = "triage") -> list[tuple[str, str]]:
    out = [(IDENTITY_HEADER, agent), ("content-type", "application/json"),
           ("accept", "application/json, text/event-stream")]  # fmt: skip
    if mode == "modern":
        out += [("mcp-protocol-version", MODERN_REVISION), ("mcp-method", method)]
        out += [("mcp-name", name)] if name else []
    else:
        out.append(("mcp-protocol-version", LEGACY_REVISION))
    return out


def _call(mode: str, request_id: Any, tool: str, arguments: dict[str, Any] | None = None) -> bytes:
    params: dict[str, Any] = {"name": tool, "arguments": arguments or {"repo": "acme/web"}}
    if mode == "modern":
        params["_meta"] = MODERN_META
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}).encode()


def _reply(answer: bytes) -> dict[str, Any]:
    reply = json.loads(answer)  # Python keeps every digit of an integer and the JSON type of the id
    assert reply["jsonrpc"] == "2.0" and "error" in reply, reply
    return reply  # type: ignore[no-any-return]


def _same(got: Any, sent: Any) -> bool:
    return type(got) is type(sent) and got == sent


# ---------------------------------------------------------------- ids of every type, every path


@pytest.mark.parametrize("transport", ["h1", "h2"])
@pytest.mark.parametrize("mode", ["modern", "legacy"])
@pytest.mark.parametrize("request_id", IDS, ids=IDS_NAMES)
async def test_a_native_denial_echoes_the_exact_id(
    gateway: RunningGateway, backend: McpBackend, transport: str, mode: str, request_id: Any
) -> None:
    status, answer = await send_raw(gateway.listen_port, transport, "POST",
                                    _headers(mode, "tools/call", "delete_repo"), _call(mode, request_id, "delete_repo"))  # fmt: skip
    reply = _reply(answer)
    assert status == 200 and reply["error"]["code"] == errors.TOOL_DENIED.code, reply
    assert _same(reply["id"], request_id), (reply["id"], request_id)
    if isinstance(request_id, int) and abs(request_id) > 2**53:
        # The big-integer variant of a reply keeps our own words only (a text template cannot escape).
        assert reply["error"]["message"].startswith("Tool '…' is not allowed")
        assert reply["error"]["data"] == {"reason": "tool_not_allowed", "backend": "github"}
    else:
        assert reply["error"]["data"]["tool"] == "delete_repo"
    assert backend.requests() == []


@pytest.mark.parametrize("mode", ["modern", "legacy"])
@pytest.mark.parametrize("request_id", [BIG, -BIG, "req-9"], ids=["2^53+1", "-(2^53+1)", "string"])
async def test_the_policy_service_echoes_the_exact_id(
    gateway: RunningGateway, backend: McpBackend, mode: str, request_id: Any
) -> None:
    body = _call(mode, request_id, "create_issue", {"repo": "evil/web", "title": "t"})
    status, answer = await send_raw(gateway.listen_port, "h1", "POST",
                                    _headers(mode, "tools/call", "create_issue", agent="executor"), body)  # fmt: skip
    reply = _reply(answer)
    assert reply["error"]["data"]["reason"] == "condition_not_met", reply
    assert _same(reply["id"], request_id)
    if mode == "legacy":
        return  # a legacy backend answers only within a session; the refusal above came before it
    allowed = _call(mode, request_id, "create_issue", {"repo": "acme/web", "title": "t"})
    status, answer = await send_raw(gateway.listen_port, "h1", "POST",
                                    _headers(mode, "tools/call", "create_issue", agent="executor"), allowed)  # fmt: skip
    assert status == 200 and b"created issue" in answer, answer
    assert [json.loads(r["body"])["id"] for r in backend.requests()] == [request_id]  # the backend got it unchanged


# ---------------------------------------------------------------- refusals before the body was understood


def _mcp_body(request_id: Any, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/list",
        "params": {"_meta": MODERN_META},
    }
    for key, value in changes.items():
        if value is None:
            body.pop(key)
        else:
            body[key] = value
    return body


CASES: dict[str, tuple[list[tuple[str, str]] | None, bytes, errors.ErrorKind]] = {
    # name: (headers instead of the usual ones, body, what the gateway answers)
    "content-type text/plain": (
        [("content-type", "text/plain"), ("accept", "application/json, text/event-stream")],
        json.dumps(_mcp_body(BIG)).encode(), errors.NOT_MCP),
    "no content-type": (
        [("accept", "application/json, text/event-stream")], json.dumps(_mcp_body(BIG)).encode(), errors.NOT_MCP),
    "no accept": ([("content-type", "application/json")], json.dumps(_mcp_body(BIG)).encode(), errors.NOT_MCP),
    "accept text/html": (
        [("content-type", "application/json"), ("accept", "text/html")],
        json.dumps(_mcp_body(BIG)).encode(), errors.NOT_MCP),
    "jsonrpc 1.0": (None, json.dumps(_mcp_body(BIG, jsonrpc="1.0")).encode(), errors.INVALID_REQUEST),
    "no jsonrpc": (None, json.dumps(_mcp_body(BIG, jsonrpc=None)).encode(), errors.INVALID_REQUEST),
    "jsonrpc a number": (None, json.dumps(_mcp_body(BIG, jsonrpc=2)).encode(), errors.INVALID_REQUEST),
    "no method": (None, json.dumps(_mcp_body(BIG, method=None)).encode(), errors.INVALID_REQUEST),
    "utf-8 bom": (None, b"\xef\xbb\xbf" + json.dumps(_mcp_body(BIG)).encode(), errors.PARSE_ERROR),
    "body over the limit, id first": (
        None, json.dumps({"jsonrpc": "2.0", "id": BIG, "method": "tools/call",
                          "params": {"name": "list_issues", "arguments": {"repo": "x" * MAX_BODY}}}).encode(),
        errors.TOO_LARGE),
    "method over the limit": (
        None, json.dumps({"id": BIG, "jsonrpc": "2.0", "method": "m" * (MAX_BODY + 10)}).encode(), errors.TOO_LARGE),
    "id after a body over the limit": (
        None, json.dumps({"jsonrpc": "2.0", "method": "tools/call",
                          "params": {"name": "list_issues", "arguments": {"repo": "x" * MAX_BODY}},
                          "id": BIG}).encode(),
        errors.TOO_LARGE),
}  # fmt: skip


@pytest.mark.parametrize("transport", ["h1", "h2"])
@pytest.mark.parametrize("case", sorted(CASES))
async def test_refusals_before_the_body_was_understood_echo_the_exact_id(
    gateway: RunningGateway, backend: McpBackend, transport: str, case: str
) -> None:
    headers, body, kind = CASES[case]
    sent = [(IDENTITY_HEADER, "triage"), *(headers if headers is not None else _headers("modern", "tools/list")[1:])]
    status, answer = await send_raw(gateway.listen_port, transport, "POST", sent, body)
    reply = _reply(answer)
    assert status == kind.http_status and reply["error"]["code"] == kind.code, (status, reply)
    assert reply["error"]["data"]["reason"] == kind.reason, reply
    assert _same(reply["id"], BIG), reply["id"]
    assert backend.requests() == []


async def test_a_chunked_body_over_the_limit_echoes_the_exact_id(gateway: RunningGateway, backend: McpBackend) -> None:
    """No Content-Length: the id is read from the whole body, which fits the connection buffer."""
    _, body, _ = CASES["body over the limit, id first"]
    head = http1_head("POST", _headers("modern", "tools/call", "list_issues"), 0, close=True)
    head = head.replace(b"content-length: 0\r\n", b"transfer-encoding: chunked\r\n")
    from tests.e2e.harness import raw_http1

    status, answer = await raw_http1(gateway.listen_port, head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    reply = _reply(answer)
    assert status == 413 and reply["error"]["data"]["reason"] == "request_too_large", reply
    assert _same(reply["id"], BIG)
    assert backend.requests() == []


# ---------------------------------------------------------------- what Envoy 1.40 cannot do


async def test_what_stays_impossible_integers_beyond_int64_come_back_as_doubles(
    gateway: RunningGateway, backend: McpBackend
) -> None:
    """Every JSON parser Envoy has turns an integer beyond int64 into a double (README, JSON-RPC errors)."""
    huge = 123456789012345678901234567890
    status, answer = await send_raw(gateway.listen_port, "h1", "POST", _headers("legacy", "tools/call"),
                                    _call("legacy", huge, "delete_repo"))  # fmt: skip
    reply = _reply(answer)
    assert reply["error"]["code"] == errors.TOOL_DENIED.code
    assert isinstance(reply["id"], float) and reply["id"] == float(huge)
    assert backend.requests() == []


async def test_a_denied_http1_request_keeps_its_connection(gateway: RunningGateway, backend: McpBackend) -> None:
    """The body is read whole before any decision, so a refusal does not close the client's connection."""
    import asyncio

    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.listen_port)
    try:
        for request_id in (1, 2):
            body = _call("legacy", request_id, "delete_repo")
            writer.write(http1_head("POST", _headers("legacy", "tools/call"), len(body)) + body)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))  # fmt: skip
            reply = _reply(await reader.readexactly(length))
            assert reply["id"] == request_id and b"connection: close" not in head.lower(), head
    finally:
        writer.close()
    assert backend.requests() == []


@pytest.mark.parametrize("mode", ["modern", "legacy"])
async def test_a_big_id_reply_cannot_be_injected_into(gateway: RunningGateway, backend: McpBackend, mode: str) -> None:
    """The big-integer variant is a text template that escapes nothing: no request-derived text may reach it."""
    hostile = 'x","injected":1,"y":"\\'
    status, answer = await send_raw(gateway.listen_port, "h1", "POST", _headers(mode, "tools/call", hostile),
                                    _call(mode, BIG, hostile))  # fmt: skip
    reply = _reply(answer)  # still one well-formed JSON-RPC error
    assert _same(reply["id"], BIG) and reply["error"]["code"] == errors.TOOL_DENIED.code, reply
    assert "injected" not in reply and "injected" not in reply["error"] and "injected" not in reply["error"]["data"]
    method = json.dumps({"jsonrpc": "2.0", "id": -BIG, "method": 'resources/"x', "params": {}}).encode()
    status, answer = await send_raw(gateway.listen_port, "h1", "POST", _headers("legacy", "x"), method)
    reply = _reply(answer)
    assert _same(reply["id"], -BIG) and reply["error"]["data"]["reason"] == "method_not_allowed", reply
    assert backend.requests() == []
