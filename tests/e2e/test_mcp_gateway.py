"""End to end: MCP SDK clients → real Envoy (configured over ADS by the real control plane) → MCP SDK server.

Every test asserts what the client sees (a tool result or a JSON-RPC error
object) and, for denials and rejections, that the backend never received the
request (its request log is written before the server handles anything).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from mcp.shared.exceptions import MCPError

from tests.e2e.gateway import IDENTITY_HEADER, RunningGateway, start_gateway, stop_gateway
from tests.e2e.harness import McpBackend, mcp_client, raw_http1, raw_post
from xds_server.core import errors

MODES = ["modern", "legacy"]
MODERN = "2026-07-28"
MODERN_META = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(
    mcp_backend_factory_module: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningGateway]:
    github = mcp_backend_factory_module(name="github")
    wiki = mcp_backend_factory_module(name="wiki")  # no MCPPolicy names it: nobody may use it
    gw = await start_gateway(tmp_path_factory.mktemp("gateway"), {"github": github, "wiki": wiki})
    yield gw
    await stop_gateway(gw)


@pytest.fixture
def backend(gateway: RunningGateway) -> McpBackend:
    b = gateway.backends["github"]
    b.clear_requests()
    return b


def as_agent(name: str) -> dict[str, str]:
    return {IDENTITY_HEADER: name}


def find_mcp_error(exc: BaseException) -> MCPError | None:
    """The MCPError inside `exc`, looking through exception groups and causes."""
    if isinstance(exc, MCPError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := find_mcp_error(inner)) is not None:
                return found
    if exc.__cause__ is not None:
        return find_mcp_error(exc.__cause__)
    return None


def tool_calls(backend: McpBackend) -> list[str]:
    """Names of the tools the backend was asked to call."""
    names = []
    for req in backend.requests():
        try:
            body = json.loads(req["body"] or "null")
        except ValueError:
            continue
        if isinstance(body, dict) and body.get("method") == "tools/call":
            names.append(body["params"]["name"])
    return names


def jsonrpc_error(response: Any) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert body["jsonrpc"] == "2.0" and "error" in body and "result" not in body, body
    return body


# ---------------------------------------------------------------- tools


@pytest.mark.parametrize("mode", MODES)
async def test_allowed_tool_returns_its_result(gateway: RunningGateway, backend: McpBackend, mode: str) -> None:
    async with mcp_client(gateway.url(), as_agent("triage"), mode) as client:
        result = await client.call_tool("list_issues", {"repo": "acme/web"})
        glob_result = await client.call_tool("get_issue", {"repo": "acme/web", "number": 1})
    assert not result.is_error
    assert result.content[0].text == "issues of acme/web: #1 bug, #2 feature"
    assert not glob_result.is_error  # granted through the glob "get_*"
    assert tool_calls(backend) == ["list_issues", "get_issue"]


@pytest.mark.parametrize("mode", MODES)
async def test_forbidden_tool_is_a_jsonrpc_error_and_never_reaches_the_backend(
    gateway: RunningGateway, backend: McpBackend, mode: str
) -> None:
    async with mcp_client(gateway.url(), as_agent("triage"), mode) as client:
        with pytest.raises(MCPError) as denied:
            await client.call_tool("delete_repo", {"repo": "acme/web"})
        # Another agent's grant does not leak: create_issue is executor's.
        with pytest.raises(MCPError) as not_mine:
            await client.call_tool("create_issue", {"repo": "acme/web", "title": "x"})
    assert denied.value.code == errors.TOOL_DENIED.code
    assert "delete_repo" in denied.value.message and "triage" in denied.value.message
    assert denied.value.data == {"reason": "tool_not_allowed", "tool": "delete_repo", "backend": "github"}
    assert not_mine.value.code == errors.TOOL_DENIED.code
    assert tool_calls(backend) == []


@pytest.mark.parametrize("mode", MODES)
async def test_rule_for_every_agent_applies_to_each_agent(gateway: RunningGateway, mode: str) -> None:
    async with mcp_client(gateway.url(), as_agent("executor"), mode) as client:
        mine = await client.call_tool("create_issue", {"repo": "acme/web", "title": "bug"})
        everyone = await client.call_tool("whoami", {})
        with pytest.raises(MCPError) as denied:
            await client.call_tool("list_issues", {"repo": "acme/web"})
    assert not mine.is_error and not everyone.is_error
    assert everyone.content[0].text == "server github"
    assert denied.value.code == errors.TOOL_DENIED.code


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("headers", [{IDENTITY_HEADER: "mallory"}, {}], ids=["unknown-name", "no-identity"])
async def test_unknown_agent_is_refused(
    gateway: RunningGateway, backend: McpBackend, mode: str, headers: dict[str, str]
) -> None:
    with pytest.raises(BaseException) as refused:
        async with mcp_client(gateway.url(), headers, mode) as client:
            await client.call_tool("whoami", {})
    error = find_mcp_error(refused.value)
    assert error is not None, repr(refused.value)
    assert error.code == errors.UNKNOWN_AGENT.code
    assert error.data == {"reason": "unknown_agent"}
    assert backend.requests() == []


@pytest.mark.parametrize("mode", MODES)
async def test_backend_without_a_policy_is_closed_to_known_agents(gateway: RunningGateway, mode: str) -> None:
    wiki = gateway.backends["wiki"]
    wiki.clear_requests()
    with pytest.raises(BaseException) as refused:
        async with mcp_client(gateway.url("wiki"), as_agent("triage"), mode) as client:
            await client.list_tools()
    error = find_mcp_error(refused.value)
    assert error is not None, repr(refused.value)
    assert error.code == errors.METHOD_DENIED.code
    assert error.data["reason"] == "method_not_allowed" and error.data["backend"] == "wiki"
    assert wiki.requests() == []


# ------------------------------------------------------- lists, resources, prompts


@pytest.mark.parametrize("mode", MODES)
async def test_completion_is_granted_with_the_prompt_or_resource_template_it_completes(
    gateway: RunningGateway, backend: McpBackend, mode: str
) -> None:
    """triage may get prompt `summarize` and read `docs://pages/*`, not prompt `exfiltrate`; executor
    has no prompt or resource grant at all."""
    from mcp.types import PromptReference, ResourceTemplateReference

    summarize, exfiltrate = PromptReference(type="ref/prompt", name="summarize"), PromptReference(
        type="ref/prompt", name="exfiltrate")  # fmt: skip
    pages = ResourceTemplateReference(type="ref/resource", uri="docs://pages/{page}")
    async with mcp_client(gateway.url(), as_agent("triage"), mode) as client:
        words = await client.complete(summarize, {"name": "text", "value": "he"})
        names = await client.complete(pages, {"name": "page", "value": "in"})
        with pytest.raises(MCPError) as refused:
            await client.complete(exfiltrate, {"name": "text", "value": "pa"})
    async with mcp_client(gateway.url(), as_agent("executor"), mode) as client:
        with pytest.raises(MCPError) as no_grant:
            await client.complete(pages, {"name": "page", "value": "in"})
    assert words.completion.values == ["hello", "help"]
    assert names.completion.values == ["intro", "install"]
    for error in (refused.value, no_grant.value):
        assert error.code == errors.METHOD_DENIED.code and error.data["method"] == "completion/complete", error
    completed = [json.loads(r["body"])["params"]["ref"] for r in backend.requests()
                 if r["body"] and json.loads(r["body"]).get("method") == "completion/complete"]  # fmt: skip
    assert [r.get("name") or r.get("uri") for r in completed] == ["summarize", "docs://pages/{page}"]


@pytest.mark.parametrize("mode", MODES)
async def test_lists_resources_and_prompts_follow_the_policy(
    gateway: RunningGateway, backend: McpBackend, mode: str
) -> None:
    async with mcp_client(gateway.url(), as_agent("triage"), mode) as client:
        tools = await client.list_tools()
        resources = await client.list_resources()
        prompts = await client.list_prompts()
        readme = await client.read_resource("docs://readme")
        summary = await client.get_prompt("summarize", {"text": "hello"})
        with pytest.raises(MCPError) as secret:
            await client.read_resource("docs://secret")
        with pytest.raises(MCPError) as exfiltrate:
            await client.get_prompt("exfiltrate", {"text": "hello"})
    assert "list_issues" in {t.name for t in tools.tools}  # lists carry no tool: any granted agent may list
    assert {str(r.uri) for r in resources.resources} >= {"docs://readme"}
    assert "summarize" in {p.name for p in prompts.prompts}
    assert readme.contents[0].text
    assert summary.messages
    assert secret.value.code == errors.RESOURCE_DENIED.code
    assert secret.value.data == {"reason": "resource_not_allowed", "resource": "docs://secret", "backend": "github"}
    assert exfiltrate.value.code == errors.PROMPT_DENIED.code
    assert exfiltrate.value.data == {"reason": "prompt_not_allowed", "prompt": "exfiltrate", "backend": "github"}
    seen = [json.loads(r["body"]) for r in backend.requests() if r["body"]]
    asked = {(m.get("method"), (m.get("params") or {}).get("uri") or (m.get("params") or {}).get("name")) for m in seen}
    assert ("resources/read", "docs://secret") not in asked
    assert ("prompts/get", "exfiltrate") not in asked
    assert ("resources/read", "docs://readme") in asked
    # The SDK client asks for gzip; the backend is never asked to compress what the gateway reads.
    assert all("accept-encoding" not in r["headers"] for r in backend.requests())


# ------------------------------------------------------------ ids and bodies


@pytest.mark.parametrize("request_id", [7, "req-7", 0, -3], ids=["int", "string", "zero", "negative"])
async def test_denial_echoes_the_request_id_with_its_type(
    gateway: RunningGateway, backend: McpBackend, request_id: Any
) -> None:
    body = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": "delete_repo", "arguments": {}},
    }
    response = await raw_post(gateway.url(), json.dumps(body), as_agent("triage"))
    error = jsonrpc_error(response)
    assert response.status_code == 200
    assert error["id"] == request_id and type(error["id"]) is type(request_id)
    assert error["error"]["code"] == errors.TOOL_DENIED.code
    assert backend.requests() == []


LARGE = "x" * 9000  # the e2e gateway's maxRequestBodyBytes is 8192


@pytest.mark.parametrize(
    ("body", "kind", "expected_id"),
    [
        ('{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "list_', errors.PARSE_ERROR, 1),
        ("this is not json", errors.INVALID_REQUEST, None),
        ('{"id": 2, "method": "tools/call", "params": {"name": "list_issues"}}', errors.INVALID_REQUEST, 2),
        ('{"jsonrpc": "1.0", "id": 3, "method": "tools/list"}', errors.INVALID_REQUEST, 3),
        ('[{"jsonrpc": "2.0", "id": 4, "method": "tools/list"}]', errors.INVALID_REQUEST, None),
        ('{"jsonrpc": "2.0", "id": 5, "method": "tools/list", "method": "tools/call"}', errors.DUPLICATE_KEYS, 5),
        (json.dumps({"jsonrpc": "2.0", "id": 6, "method": "tools/call",
                     "params": {"name": "list_issues", "arguments": {"repo": LARGE}}}), errors.TOO_LARGE, 6),
    ],
    ids=["truncated-json", "not-json", "no-jsonrpc-field", "wrong-version", "batch", "duplicate-keys", "oversized"],
)  # fmt: skip
async def test_unparseable_requests_are_jsonrpc_errors_and_never_reach_the_backend(
    gateway: RunningGateway, backend: McpBackend, body: str, kind: errors.ErrorKind, expected_id: Any
) -> None:
    response = await raw_post(gateway.url(), body, as_agent("triage"))
    error = jsonrpc_error(response)
    assert response.status_code == kind.http_status
    assert error["error"]["code"] == kind.code
    assert error["error"]["data"]["reason"] == kind.reason
    assert error["id"] == expected_id
    assert backend.requests() == []


async def test_a_body_that_is_not_json_is_told_so(gateway: RunningGateway, backend: McpBackend) -> None:
    response = await raw_post(gateway.url(), "this is not json", as_agent("triage"))
    error = jsonrpc_error(response)["error"]
    assert error["message"] == (
        "Invalid Request: the body is not one JSON-RPC 2.0 request (the gateway accepts one JSON-RPC request "
        "object per HTTP request: no batches, no other content)"
    )
    assert error["data"] == {"reason": "invalid_request", "detail": "not a valid JSON"}  # Envoy's own words
    assert backend.requests() == []


async def test_non_mcp_http_is_rejected_as_jsonrpc(gateway: RunningGateway, backend: McpBackend) -> None:
    response = await raw_post(gateway.url(), "{}", {**as_agent("triage"), "content-type": "text/plain"})
    error = jsonrpc_error(response)
    assert response.status_code == 400
    assert error["error"]["code"] == errors.NOT_MCP.code and error["error"]["data"]["reason"] == "not_mcp"
    assert backend.requests() == []


_INITIALIZE = json.dumps({"jsonrpc": "2.0", "id": 31, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}})  # fmt: skip
_MODERN_LIST = json.dumps({"jsonrpc": "2.0", "id": 32, "method": "tools/list", "params": {"_meta": MODERN_META}})


@pytest.mark.parametrize(
    ("method", "extra_headers", "body"),
    [
        ("POST", "content-type: application/json\r\nmcp-protocol-version: 2025-11-25\r\n", _INITIALIZE),
        ("POST", f"content-type: application/json\r\nmcp-protocol-version: {MODERN}\r\nmcp-method: tools/list\r\n",
         _MODERN_LIST),
        ("GET", "mcp-protocol-version: 2025-11-25\r\nmcp-session-id: s-1\r\n", ""),
        ("GET", f"mcp-protocol-version: {MODERN}\r\n", ""),
    ],
    ids=["post-legacy", "post-modern", "get-legacy", "get-modern"],
)  # fmt: skip
async def test_a_request_without_accept_never_reaches_the_backend(
    gateway: RunningGateway, backend: McpBackend, method: str, extra_headers: str, body: str
) -> None:
    """The MCP transport requires Accept; Envoy's MCP filter refuses a request without one (raw bytes,
    so no client library adds a default Accept)."""
    request = (f"{method} /mcp/github HTTP/1.1\r\nhost: gateway\r\n{IDENTITY_HEADER}: triage\r\n{extra_headers}"
               f"content-length: {len(body)}\r\nconnection: close\r\n\r\n{body}").encode()  # fmt: skip
    status, answer = await raw_http1(gateway.listen_port, request)
    error = json.loads(answer)
    assert status == 400
    assert error["error"]["code"] == errors.NOT_MCP.code and error["error"]["data"]["reason"] == "not_mcp"
    assert "Accept header listing application/json and text/event-stream" in error["error"]["message"]
    # Refused on its headers, yet the id is read from the body (a GET has none).
    assert error["id"] == (json.loads(body)["id"] if body else None)
    assert backend.requests() == []


async def test_accept_any_type_is_mcp(gateway: RunningGateway, backend: McpBackend) -> None:
    """`Accept: */*` includes both types MCP needs, so it passes (as the MCP SDK servers accept it)."""
    response = await raw_post(gateway.url(), _MODERN_LIST, {**as_agent("triage"), "accept": "*/*",
                              "mcp-protocol-version": MODERN, "mcp-method": "tools/list"})  # fmt: skip
    assert response.status_code == 200, response.text
    assert len(backend.requests()) == 1


async def test_a_lying_mcp_name_header_cannot_smuggle_a_tool(gateway: RunningGateway, backend: McpBackend) -> None:
    """2026-07-28 requests name the tool in a header too; Envoy checks it against the body."""
    body = {"jsonrpc": "2.0", "id": 9, "method": "tools/call",
            "params": {"name": "delete_repo", "arguments": {}, "_meta": MODERN_META}}  # fmt: skip
    headers = {
        **as_agent("triage"),
        "mcp-protocol-version": MODERN,
        "mcp-method": "tools/call",
        "mcp-name": "list_issues",
    }
    response = await raw_post(gateway.url(), json.dumps(body), headers)
    error = jsonrpc_error(response)
    assert response.status_code == 400
    assert error["error"]["code"] == errors.HEADER_MISMATCH.code
    assert error["id"] == 9
    assert backend.requests() == []


async def test_unknown_path_is_a_jsonrpc_not_found(gateway: RunningGateway, backend: McpBackend) -> None:
    url = gateway.url().replace("/mcp/github", "/mcp/nowhere")
    response = await raw_post(url, json.dumps({"jsonrpc": "2.0", "id": 11, "method": "tools/list"}), as_agent("triage"))
    error = jsonrpc_error(response)
    assert response.status_code == 404
    assert error["id"] == 11
    assert error["error"]["code"] == errors.NO_BACKEND.code
    assert "/mcp/nowhere" in error["error"]["message"]
    assert backend.requests() == []


# ---------------------------------------------------------------- HTTP Envoy cannot parse

_MALFORMED = {
    "content-length-and-chunked": (b"POST /mcp/github HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
                                   b"content-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "http-1.0": (b"POST /mcp/github HTTP/1.0\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: 2\r\n"
                 b"\r\n{}", 426),
    "space-before-colon": (b"POST /mcp/github HTTP/1.1\r\nhost: gw\r\nx-agent-id : triage\r\ncontent-length: 0\r\n\r\n",
                           400),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(_MALFORMED))
async def test_malformed_http_gets_a_jsonrpc_error_and_never_reaches_the_backend(
    gateway: RunningGateway, backend: McpBackend, case: str
) -> None:
    """Envoy's HTTP/1 codec refuses these before any filter runs; the client still gets an answer
    (the gateway has policy-service filters, which once made Envoy drop such replies unsent)."""
    assert gateway.control.pipeline.ir is not None and gateway.control.pipeline.ir.gateways[0].needs_policy_service
    request, expected = _MALFORMED[case]
    status, answer = await raw_http1(gateway.listen_port, request)
    error = json.loads(answer)
    assert status == expected, answer
    assert error["id"] is None and error["error"]["code"] == errors.MALFORMED_HTTP.code, error
    assert error["error"]["data"]["reason"] == "malformed_http" and error["error"]["data"]["detail"], error
    assert backend.requests() == []
