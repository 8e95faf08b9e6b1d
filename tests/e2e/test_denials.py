"""End to end: how policy refusals are answered, through the real Envoy and control plane.

By default a policy refusal is HTTP 200 with the JSON-RPC error (natively
and from the policy service, over gRPC and HTTP ext_authz); a Gateway's
`denials: {httpStatus: 403}` restores 403. The `tools` backend has
`deniedToolCalls: toolResult`: a refused `tools/call` comes back as a tool
result with isError and the reason, which the SDK client reads as a result;
other refusals there (a resource, a quota, an unknown agent) stay errors.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from mcp.shared.exceptions import MCPError

from tests.e2e.gateway import IDENTITY_HEADER, RunningGateway, eventually, start_gateway, stop_gateway
from tests.e2e.harness import McpBackend, mcp_client, raw_post
from xds_server.core import errors
from xds_server.core.tool_results import REFUSAL_META_KEY

MODES = ["modern", "legacy"]
MODERN = "2026-07-28"

POLICY = """\
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {{name: {backend}}}
spec:
  backend: {backend}
  rules:
    - agents: [triage]
      tools: [list_issues, whoami]
    - agents: [triage]
      tools: [create_issue]
      when: 'args.repo.startsWith("acme/")'
    - agents: [triage]
      tools: [get_issue]
      quota: {{calls: 1, per: 1h, by: agent}}
    - agents: [triage]
      tools: [delete_repo]
      requireApproval: true
"""
POLICIES = POLICY.format(backend="github") + "---\n" + POLICY.format(backend="tools")
AS_RESULTS = "  deniedToolCalls: toolResult\n"


@pytest_asyncio.fixture(scope="module", loop_scope="session", params=["grpc", "http"])
async def gateway(request: pytest.FixtureRequest, mcp_backend_factory_module: Any,
                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGateway]:  # fmt: skip
    backends = {"github": mcp_backend_factory_module(name=f"github-{request.param}"),
                "tools": mcp_backend_factory_module(name=f"tools-{request.param}")}  # fmt: skip
    gw = await start_gateway(tmp_path_factory.mktemp("denials"), backends, ext_authz=request.param,
                             policy_yaml=POLICIES, backend_extra={"tools": AS_RESULTS})  # fmt: skip
    yield gw
    await stop_gateway(gw)


def _reached(backend: McpBackend) -> list[str]:
    """The tools the backend was asked to run."""
    calls = [json.loads(r["body"]) for r in backend.requests() if r["body"]]
    return [c["params"]["name"] for c in calls if c.get("method") == "tools/call"]


def _call(tool: str, arguments: dict[str, Any], request_id: Any = 9) -> str:
    meta = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
    params = {"name": tool, "arguments": arguments, "_meta": meta}
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params})


def _headers(tool: str, agent: str | None = "triage") -> dict[str, str]:
    out = {"mcp-protocol-version": MODERN, "mcp-method": "tools/call", "mcp-name": tool}
    return out | ({IDENTITY_HEADER: agent} if agent else {})


# (tool, arguments, the reason): refused natively, by a condition, awaiting approval.
REFUSED = {
    "rbac": ("delete_branch", {"repo": "acme/web"}, errors.TOOL_DENIED),
    "condition": ("create_issue", {"repo": "evil/web", "title": "t"}, errors.CONDITION_NOT_MET),
    "approval": ("delete_repo", {"repo": "acme/web"}, errors.APPROVAL_REQUIRED),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
async def test_a_policy_refusal_is_http_200_with_the_json_rpc_error(gateway: RunningGateway, case: str) -> None:
    tool, arguments, kind = REFUSED[case]
    backend = gateway.backends["github"]
    backend.clear_requests()
    response = await raw_post(gateway.url("github"), _call(tool, arguments), _headers(tool))
    body = response.json()
    assert response.status_code == 200, response.text
    assert body["id"] == 9 and body["error"]["code"] == kind.code and body["error"]["data"]["reason"] == kind.reason
    assert _reached(backend) == []


@pytest.mark.parametrize("revision", ["2026-07-28", "2025-11-25"])
@pytest.mark.parametrize("tool", ["delete_branch", "whoami"])
async def test_a_body_that_hides_params_from_envoy_is_refused_and_never_forwarded(
    gateway: RunningGateway, tool: str, revision: str
) -> None:
    """Envoy 1.40's MCP filter drops `params` from its metadata when an argument with an empty key
    holding an object comes before `name`, and still calls the request a tools/call: the allow-list
    then matches nothing, so even a granted tool (whoami) is refused rather than anything let through
    (2026-07-28: its headers no longer match the body; 2025-11-25: no grant matches a call with no name)."""
    backend = gateway.backends["github"]
    backend.clear_requests()
    meta = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
    extra = f', "_meta": {json.dumps(meta)}' if revision == MODERN else ""
    body = ('{"jsonrpc": "2.0", "id": "hide-1", "method": "tools/call", "params": {"arguments": {"": {}}, '
            f'"name": "{tool}"{extra}}}}}')  # fmt: skip
    headers = _headers(tool) if revision == MODERN else {IDENTITY_HEADER: "triage", "mcp-protocol-version": revision}
    response = await raw_post(gateway.url("github"), body, headers)
    reply = response.json()
    assert reply["id"] == "hide-1" and "error" in reply, reply
    expected = -32020 if revision == MODERN else errors.METHOD_DENIED.code
    assert reply["error"]["code"] == expected, reply
    assert _reached(backend) == []


async def test_credentials_limits_and_unknown_routes_keep_their_status(gateway: RunningGateway) -> None:
    unknown = await raw_post(gateway.url("github"), _call("whoami", {}), _headers("whoami", agent="mallory"))
    assert unknown.status_code == 200 and unknown.json()["error"]["data"]["reason"] == errors.UNKNOWN_AGENT.reason
    nowhere = await raw_post(gateway.url("nowhere"), _call("whoami", {}), _headers("whoami"))
    assert nowhere.status_code == 404 and nowhere.json()["error"]["data"]["reason"] == errors.NO_BACKEND.reason
    too_big = await raw_post(gateway.url("github"), _call("whoami", {"x": "y" * 9000}), _headers("whoami"))
    assert too_big.status_code == 413, too_big.text


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", sorted(REFUSED))
async def test_a_refused_tool_call_reads_as_a_tool_result_where_the_backend_asks(
    gateway: RunningGateway, mode: str, case: str
) -> None:
    tool, arguments, kind = REFUSED[case]
    backend = gateway.backends["tools"]
    backend.clear_requests()
    async with mcp_client(gateway.url("tools"), {IDENTITY_HEADER: "triage"}, mode) as client:
        result = await client.call_tool(tool, arguments)
        allowed = await client.call_tool("list_issues", {"repo": "acme/web"})
    assert result.is_error, result
    text = result.content[0].text
    assert text.startswith(f"The gateway refused this call ({kind.reason}): ") and tool in text, text
    refusal = (result.meta or {})[REFUSAL_META_KEY]
    assert refusal["code"] == kind.code and refusal["reason"] == kind.reason and refusal["tool"] == tool
    if kind is errors.APPROVAL_REQUIRED:
        assert refusal["approvalId"].startswith("ap_")
    assert not allowed.is_error
    assert _reached(backend) == ["list_issues"]


@pytest.mark.parametrize("mode", MODES)
async def test_other_refusals_on_such_a_backend_stay_errors(gateway: RunningGateway, mode: str) -> None:
    backend = gateway.backends["tools"]
    async with mcp_client(gateway.url("tools"), {IDENTITY_HEADER: "triage"}, mode) as client:
        with pytest.raises(MCPError) as resource:
            await client.read_resource("docs://secret")
        with contextlib.suppress(MCPError):  # uses up the quota (if an earlier mode has not)
            await client.call_tool("get_issue", {"repo": "acme/web", "number": 1})
        with pytest.raises(MCPError) as quota:
            await client.call_tool("get_issue", {"repo": "acme/web", "number": 1})
    assert resource.value.error.data["reason"] == errors.RESOURCE_DENIED.reason
    assert quota.value.error.data["reason"] == errors.QUOTA_EXCEEDED.reason
    unknown = await raw_post(gateway.url("tools"), _call("whoami", {}), _headers("whoami", agent="mallory"))
    assert unknown.json()["error"]["data"]["reason"] == errors.UNKNOWN_AGENT.reason
    assert "get_issue" in _reached(backend)


async def test_denials_http_status_403_restores_403_except_for_tool_results(gateway: RunningGateway) -> None:
    """Last in the module: it edits the Gateway (and puts it back)."""
    gateway_file = gateway.policy_dir / "gateway.yaml"
    original = gateway_file.read_text()
    gateway_file.write_text(original + "  denials: {httpStatus: 403}\n")
    try:

        async def forbidden() -> bool:
            answer = await raw_post(gateway.url("github"), _call("delete_branch", {}), _headers("delete_branch"))
            return answer.status_code == 403

        await eventually(forbidden, timeout=10, what="denials to go out as 403")
        tool, arguments, kind = REFUSED["condition"]
        condition = await raw_post(gateway.url("github"), _call(tool, arguments), _headers(tool))
        assert condition.status_code == 403 and condition.json()["error"]["data"]["reason"] == kind.reason
        as_result = await raw_post(gateway.url("tools"), _call(tool, arguments, "r-1"), _headers(tool))
        assert as_result.status_code == 200 and as_result.json()["id"] == "r-1"
        assert as_result.json()["result"]["isError"] is True
        native = await raw_post(gateway.url("tools"), _call("delete_branch", {}), _headers("delete_branch"))
        assert native.status_code == 200 and native.json()["result"]["isError"] is True
    finally:
        gateway_file.write_text(original)
