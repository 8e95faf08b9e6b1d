"""End to end: a rotated credential stops working on connections opened before the rotation.

Envoy keeps a replaced listener's configuration for the connections it already
has until they drain (600 s by default, as docker compose and Kubernetes run
it); route configurations apply to the next request on every connection. The
identify filter (which agent a request speaks for) is the listener's, so the
grants' RBAC, in the routes, checks the agent's credentials again
(translate/rbac.py `proven`). Here Envoy drains for 600 s and an API key is
rotated while a client holds a connection open: its next calls with the old
key are refused, for the grant and for a native rule alike, and reach nothing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest_asyncio

from tests.e2e.gateway import RunningGateway, eventually, launch, stop_gateway, write_policies
from tests.e2e.harness import tools_call_request
from tests.e2e.test_identity_edges import RUNNER  # runner, by the API key in runner.key
from xds_server.core import errors
from xds_server.runtime.ports import free_port

OLD_KEY, NEW_KEY = "k-old-0123456789abcdef", "k-new-0123456789abcdef"
POLICY = """\
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {name: github}
spec:
  backend: github
  rules:
    - agents: ["*"]
      tools: [whoami]
    - agents: [runner]
      tools: [list_issues]
      when: 'args.repo.startsWith("acme/")'
    - agents: ["*"]
      tools: [get_issue]
      when: 'args.repo.startsWith("acme/")'
"""
CALLS = {"whoami": {}, "list_issues": {"repo": "acme/web"}}
PROBE = {"get_issue": {"repo": "evil/web", "number": 1}}  # under a native rule of every agent's


@pytest_asyncio.fixture(loop_scope="session")
async def gateway(mcp_backend_factory: Any, tmp_path: Any) -> AsyncIterator[RunningGateway]:
    backends = {"github": mcp_backend_factory(name="github")}
    listen_port, policy_port = free_port(), free_port()
    policy_dir = tmp_path / "policies"
    write_policies(policy_dir, listen_port, backends, policy_port=policy_port, policy_yaml=POLICY)
    with (policy_dir / "agents.yaml").open("a") as agents:
        agents.write(RUNNER)
    (policy_dir / "runner.key").write_text(OLD_KEY + "\n")
    control, envoy = await launch(policy_dir, tmp_path, listen_port, policy_port, drain_time_s=600)
    gw = RunningGateway(policy_dir, control, envoy, listen_port, backends)
    yield gw
    await stop_gateway(gw)


async def _call(client: httpx.AsyncClient, gateway: RunningGateway, tool: str, key: str) -> dict[str, Any]:
    _, headers, body = tools_call_request("modern", tool, {**CALLS, **PROBE}[tool])
    answer = await client.post(gateway.url(), headers=[*headers, ("x-api-key", key)], content=body)
    return dict(answer.json())


async def test_a_rotated_key_is_refused_on_a_connection_opened_before(gateway: RunningGateway) -> None:
    backend = gateway.backends["github"]
    one_connection = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(limits=one_connection, timeout=10) as kept:
        for tool in CALLS:
            assert "result" in await _call(kept, gateway, tool, OLD_KEY)
        backend.clear_requests()

        (gateway.policy_dir / "runner.key").write_text(NEW_KEY + "\n")

        async def rotated() -> bool:  # a new connection proves Envoy has the new version
            async with httpx.AsyncClient(timeout=10) as fresh:
                return "result" in await _call(fresh, gateway, "whoami", NEW_KEY)

        await eventually(rotated, timeout=15, what="the new key to be accepted")
        for tool in CALLS:
            refused = await _call(kept, gateway, tool, OLD_KEY)
            # The old listener still names runner on this connection (else it would be unknown_agent):
            # the route's RBAC, already new, refuses the old key.
            assert refused["error"]["code"] == errors.TOOL_DENIED.code, refused
            assert "for agent 'runner'" in refused["error"]["message"], refused
    tools = [json.loads(r["body"])["params"]["name"] for r in backend.requests()
             if r["body"] and json.loads(r["body"]).get("method") == "tools/call"]  # fmt: skip
    assert tools == ["whoami"] * len(tools) and tools  # only the new key's probe calls got through


async def test_a_stranger_is_unknown_even_under_a_rule_of_every_agent(gateway: RunningGateway) -> None:
    """A native rule of every agent ("*") names no stranger: the refusal is unknown_agent, not its condition."""
    async with httpx.AsyncClient(timeout=10) as client:
        stranger = await _call(client, gateway, "get_issue", "k-guess-0123456789abcdef")
        agent = await _call(client, gateway, "get_issue", OLD_KEY)
    assert stranger["error"]["code"] == errors.UNKNOWN_AGENT.code
    assert stranger["error"]["data"]["reason"] == "unknown_agent", stranger
    assert agent["error"]["data"]["reason"] == "condition_not_met", agent  # runner's evil/web: the rule's condition
