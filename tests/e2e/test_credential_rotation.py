"""End to end: a rotated credential counts at once on connections opened before the rotation.

Envoy keeps a replaced listener's configuration for the connections it already
has until they drain (600 s by default, as docker compose and Kubernetes run
it). The agents' credentials are not the listener's: they live in the identify
filter's configuration, discovered (ECDS), which Envoy applies to the next
request on every connection, and the grants' RBAC (in the routes) reads the
name that filter gives. Here Envoy drains for 600 s and an API key is rotated
while a client holds a connection open: on that connection the new key is
accepted and the old one refused as unknown (for the grant and for a native rule
alike, reaching nothing), and the listener was neither replaced nor drained.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest_asyncio

from tests.e2e.gateway import GATEWAY, RunningGateway, eventually, launch, stop_gateway, write_policies
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


def _listener_stats(gateway: RunningGateway) -> dict[str, int]:
    stats = gateway.envoy.stats()
    names = ("listener_manager.listener_modified", "listener_manager.total_listeners_draining",
             f"http.{GATEWAY}.downstream_cx_drain_close")  # fmt: skip
    missing = [n for n in names if n not in stats]
    assert not missing, f"Envoy has no such stats: {missing}"  # else the comparison below would prove nothing
    return {name: int(stats[name]) for name in names}


async def test_a_rotated_key_counts_at_once_on_a_connection_opened_before(gateway: RunningGateway) -> None:
    backend = gateway.backends["github"]
    one_connection = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(limits=one_connection, timeout=10) as kept:
        for tool in CALLS:
            assert "result" in await _call(kept, gateway, tool, OLD_KEY)
        listener_before = _listener_stats(gateway)
        backend.clear_requests()

        (gateway.policy_dir / "runner.key").write_text(NEW_KEY + "\n")

        async def rotated() -> bool:  # a new connection proves Envoy has the new version
            async with httpx.AsyncClient(timeout=10) as fresh:
                return "result" in await _call(fresh, gateway, "whoami", NEW_KEY)

        await eventually(rotated, timeout=15, what="the new key to be accepted")
        backend.clear_requests()
        for tool in CALLS:
            refused = await _call(kept, gateway, tool, OLD_KEY)
            # Not "not allowed for agent 'runner'": on this old connection too, the old key names no agent.
            assert refused["error"]["code"] == errors.UNKNOWN_AGENT.code, refused
            assert refused["error"]["data"]["reason"] == "unknown_agent", refused
        assert backend.requests() == []  # the old key reached nothing
        for tool in CALLS:  # the new key, on the same connection: the grant and the native rule
            assert "result" in await _call(kept, gateway, tool, NEW_KEY)
        assert _listener_stats(gateway) == listener_before  # no listener change, nothing drained
    tools = [json.loads(r["body"])["params"]["name"] for r in backend.requests()
             if r["body"] and json.loads(r["body"]).get("method") == "tools/call"]  # fmt: skip
    assert tools == list(CALLS)


async def test_a_stranger_is_unknown_even_under_a_rule_of_every_agent(gateway: RunningGateway) -> None:
    """A native rule of every agent ("*") names no stranger: the refusal is unknown_agent, not its condition."""
    async with httpx.AsyncClient(timeout=10) as client:
        stranger = await _call(client, gateway, "get_issue", "k-guess-0123456789abcdef")
        agent = await _call(client, gateway, "get_issue", OLD_KEY)
    assert stranger["error"]["code"] == errors.UNKNOWN_AGENT.code
    assert stranger["error"]["data"]["reason"] == "unknown_agent", stranger
    assert agent["error"]["data"]["reason"] == "condition_not_met", agent  # runner's evil/web: the rule's condition
