"""End to end: argument conditions decided natively by Envoy (MCP filter extraction + RBAC).

No Python is in the path: the policy service is never asked (its decision log
stays empty and Envoy's ext_authz counters stay at zero).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from mcp.shared.exceptions import MCPError

from tests.e2e.gateway import IDENTITY_HEADER, RunningGateway, start_gateway, stop_gateway
from tests.e2e.harness import mcp_client, raw_post
from xds_server.core import errors

POLICY = """\
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {name: github}
spec:
  backend: github
  rules:
    - agents: [triage]
      tools: [list_issues]
    - description: issues only in acme's repositories, with a plain title
      agents: [triage]
      tools: [create_issue]
      arguments:
        repo: {prefix: "acme/"}
        title: {regex: "[A-Za-z0-9 ]{1,80}"}
    - agents: [triage]
      tools: [get_issue]
      arguments:
        repo: {oneOf: [acme/web, acme/api]}
"""

TRIAGE = {IDENTITY_HEADER: "triage"}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(
    mcp_backend_factory_module: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningGateway]:
    github = mcp_backend_factory_module(name="github")
    gw = await start_gateway(tmp_path_factory.mktemp("gateway"), {"github": github}, policy_yaml=POLICY)
    yield gw
    await stop_gateway(gw)


async def call(client: Any, tool: str, **arguments: Any) -> Any:
    try:
        result = await client.call_tool(tool, arguments)
    except MCPError as exc:
        return exc
    return result.content[0].text


@pytest.mark.parametrize("mode", ["modern", "legacy"])
async def test_arguments_are_checked_by_envoy(
    gateway: RunningGateway, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="agentxds.decisions")
    github = gateway.backends["github"]
    github.clear_requests()
    async with mcp_client(gateway.url(), TRIAGE, mode) as client:
        allowed = await call(client, "create_issue", repo="acme/web", title="Fix the build")
        other_repo = await call(client, "create_issue", repo="evil/web", title="Fix the build")
        bad_title = await call(client, "create_issue", repo="acme/web", title="<IMPORTANT> do it")
        listed = await call(client, "get_issue", repo="acme/api", number=1)
        not_listed = await call(client, "get_issue", repo="acme/wiki", number=1)
        tools = {t.name for t in (await client.list_tools()).tools}
    assert allowed == "created issue in acme/web: Fix the build"
    assert listed == "issue acme/api#1: bug"
    for refused in (other_repo, bad_title, not_listed):
        assert isinstance(refused, MCPError), refused
        assert refused.code == errors.TOOL_DENIED.code and refused.data["reason"] == "tool_not_allowed"
    assert tools == {"list_issues", "create_issue", "get_issue"}  # listed: callable with some arguments
    called = [json.loads(r["body"])["params"]["arguments"] for r in github.requests()
              if r["body"] and json.loads(r["body"]).get("method") == "tools/call"]  # fmt: skip
    assert called == [{"repo": "acme/web", "title": "Fix the build"}, {"repo": "acme/api", "number": 1}]
    # Decided by Envoy alone: no policy-service decision for a tools/call.
    assert gateway.control.policy_service is not None
    gateway.control.policy_service.flush_decisions()  # written in batches, within 100 ms
    assert not [r for r in caplog.records if r.name == "agentxds.decisions" and "tool" in r.getMessage()]
    stats = gateway.envoy.stats()
    assert not any(k.endswith("ext_authz.ok") and int(v) > 0 for k, v in stats.items() if isinstance(v, int))


async def test_an_argument_that_is_not_a_string_does_not_match(gateway: RunningGateway) -> None:
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "create_issue", "arguments": {"repo": ["acme/web"], "title": "x"}}}  # fmt: skip
    response = await raw_post(gateway.url(), json.dumps(body), TRIAGE)
    assert response.status_code == 200
    assert response.json()["id"] == 7 and response.json()["error"]["code"] == errors.TOOL_DENIED.code
