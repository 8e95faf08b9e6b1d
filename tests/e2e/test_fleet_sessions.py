"""End to end: legacy sessions across two Envoy replicas and two backend replicas, no shared store.

One control plane serves two Envoys of the same gateway (the second on a
port of its own: its bootstrap's node metadata moves its listener), in front
of one backend with two endpoints, each a real MCP SDK server. A 2025-11-25
session started through one Envoy continues through the other on the replica
that created it (Envoy's stateful_session envelope carries the replica in
the session id). When that replica is gone (stopped, or removed from the
endpoints), the session's next request gets HTTP 404 with a JSON-RPC error
saying to initialize again, with the request's id, and a new session works.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from mcp.shared.exceptions import MCPError

from tests.e2e.gateway import AGENTS_YAML, GATEWAY, gateway_yaml, until, wait_listening
from tests.e2e.harness import LEGACY_REVISION, MODERN_META, MODERN_REVISION, McpBackend, mcp_client
from xds_server.controlplane.service import ControlPlane
from xds_server.core import errors
from xds_server.runtime.bootstrap import render_bootstrap
from xds_server.runtime.envoy import EnvoyProcess
from xds_server.runtime.ports import free_port

POLICY = """\
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {name: github}
spec:
  backend: github
  rules:
    - agents: ["*"]
      tools: [whoami]
"""


def backends_yaml(replicas: list[McpBackend], extra: str = "") -> str:
    """The backend `github` on `replicas`; `extra`: more of its spec (YAML lines, indented two spaces)."""
    endpoints = ", ".join(f"{{host: 127.0.0.1, port: {r.port}}}" for r in replicas)
    return f"""\
apiVersion: agentxds.dev/v1
kind: MCPBackend
metadata: {{name: github}}
spec:
  route: /mcp/github
  path: /mcp
  endpoints: [{endpoints}]
  timeouts: {{connect: 2s, request: 0s}}
{extra}"""


@dataclass
class Fleet:
    policy_dir: Path
    control: ControlPlane
    envoys: list[EnvoyProcess]
    urls: list[str]
    replicas: list[McpBackend]

    def replica(self, name: str) -> McpBackend:
        return next(r for r in self.replicas if r.name == name)


@pytest_asyncio.fixture(loop_scope="session")
async def fleet(mcp_backend_factory: Any, tmp_path: Path) -> AsyncIterator[Fleet]:
    replicas = [mcp_backend_factory(name=f"replica-{i}") for i in (1, 2)]  # SSE answers, sessions on
    ports, policy_port, authz_http_port = [free_port(), free_port()], free_port(), free_port()
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir()
    (policy_dir / "gateway.yaml").write_text(gateway_yaml(ports[0], policy_port, authz_http_port=authz_http_port))
    (policy_dir / "backends.yaml").write_text(backends_yaml(replicas))
    (policy_dir / "agents.yaml").write_text(AGENTS_YAML)
    (policy_dir / "policy.yaml").write_text(POLICY)
    control = ControlPlane(policy_dir, port=0, debounce_ms=50, policy_port=policy_port, approvals_port=0,
                           authz_http_port=authz_http_port)  # fmt: skip
    await control.start()
    envoys: list[EnvoyProcess] = []
    try:
        for i, port in enumerate(ports):
            # The first Envoy listens where the Gateway says; the second is moved to its own port.
            bootstrap = render_bootstrap(node_id=f"envoy-{i}", node_cluster=GATEWAY, xds_host="127.0.0.1",
                                         xds_port=control.port, admin_port=0, listen_port=port if i else None)  # fmt: skip
            envoys.append(EnvoyProcess(bootstrap, workdir=tmp_path / f"envoy-{i}", log_level="warning").start())
        for envoy, port in zip(envoys, ports, strict=True):
            await envoy.wait_live_async(20)
            await wait_listening(port)
        yield Fleet(policy_dir, control, envoys, [f"http://127.0.0.1:{p}/mcp/github" for p in ports], replicas)
    finally:
        for envoy in envoys:
            envoy.stop()
            print(f"--- {envoy.workdir.name} log tail ---\n{envoy.log_text()[-2000:]}")
        await control.stop()


HEADERS = {"x-agent-id": "triage", "mcp-protocol-version": LEGACY_REVISION, "content-type": "application/json",
           "accept": "application/json, text/event-stream"}  # fmt: skip


def _message(response: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC message of an answer, plain JSON or the first SSE `data:` line."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        line = next(line for line in response.text.splitlines() if line.startswith("data:"))
        return json.loads(line[len("data:") :])
    return response.json()


async def start_session(http: httpx.AsyncClient, url: str) -> str:
    """initialize + notifications/initialized over raw HTTP; the session id Envoy handed out."""
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": LEGACY_REVISION, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}  # fmt: skip
    answer = await http.post(url, content=json.dumps(init), headers=HEADERS)
    assert answer.status_code == 200, answer.text
    session = answer.headers["mcp-session-id"]
    done = await http.post(url, content=json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
                           headers={**HEADERS, "mcp-session-id": session})  # fmt: skip
    assert done.status_code == 202, done.text
    return session


async def whoami(http: httpx.AsyncClient, url: str, session: str, request_id: int) -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}
    return await http.post(url, content=json.dumps(body), headers={**HEADERS, "mcp-session-id": session})


def served_by(response: httpx.Response) -> str:
    """The replica that answered (`whoami` returns "server <name>")."""
    message = _message(response)
    assert response.status_code == 200 and "result" in message, response.text
    return str(message["result"]["content"][0]["text"]).removeprefix("server ")


async def test_a_session_started_through_one_envoy_continues_through_the_other_on_its_replica(fleet: Fleet) -> None:
    first, second = fleet.urls
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        sessions = [await start_session(http, first) for _ in range(2)]  # round robin: one per replica
        owners = []
        for session in sessions:
            answers = [served_by(await whoami(http, url, session, i)) for i, url in enumerate([first, second] * 3)]
            assert len(set(answers)) == 1, answers  # every call of the session, through either Envoy
            owners.append(answers[0])
    assert sorted(owners) == ["replica-1", "replica-2"]
    for name in owners:  # asserted on the replicas too: each got its own session's calls only
        calls = [r for r in fleet.replica(name).requests() if '"whoami"' in (r["body"] or "")]
        assert len(calls) == 6


async def test_a_session_whose_replica_stopped_gets_404_and_the_client_starts_anew(fleet: Fleet) -> None:
    first, second = fleet.urls
    async with mcp_client(first, {"x-agent-id": "triage"}, "legacy") as client:
        owner = (await client.call_tool("whoami", {})).content[0].text.removeprefix("server ")
        fleet.replica(owner).stop()
        with pytest.raises(MCPError) as gone:
            await client.call_tool("whoami", {})
    assert gone.value.error.code == errors.SESSION_GONE.code
    assert gone.value.error.data["reason"] == "session_gone" and gone.value.error.data["backend"] == "github"
    assert "initialize a new session" in gone.value.error.message
    # What an SDK user does on that error: a new session (through either Envoy) lands on a live replica.
    async with mcp_client(second, {"x-agent-id": "triage"}, "legacy") as client:
        survivor = (await client.call_tool("whoami", {})).content[0].text.removeprefix("server ")
    assert survivor != owner


async def test_a_session_whose_replica_left_the_endpoints_gets_404_with_its_id(fleet: Fleet) -> None:
    first, second = fleet.urls
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        session = await start_session(http, first)
        owner = served_by(await whoami(http, first, session, 1))
        reloads = fleet.control.reloads
        (fleet.policy_dir / "backends.yaml").write_text(backends_yaml([r for r in fleet.replicas if r.name != owner]))
        await until(lambda: fleet.control.reloads > reloads, 10, "the endpoint edit to be published")
        await asyncio.sleep(0.5)  # both Envoys ACK the new endpoints (EDS)
        for request_id, url in ((41, first), (42, second)):
            answer = await whoami(http, url, session, request_id)
            message = _message(answer)
            assert answer.status_code == 404, answer.text
            assert message["id"] == request_id and message["error"]["code"] == errors.SESSION_GONE.code
            assert message["error"]["data"]["reason"] == "session_gone"
        fresh = await start_session(http, second)
        assert served_by(await whoami(http, second, fresh, 43)) != owner


HEALTH_CHECKED = (
    "  loadBalancing: leastRequest\n  healthCheck: {interval: 200ms, timeout: 200ms, unhealthyThreshold: 1}\n"
)


def healthy_endpoints(envoy: EnvoyProcess) -> int:
    return int(envoy.stats().get("cluster.mcp/github.membership_healthy", -1))


async def test_with_health_checks_a_stopped_replica_drops_out_and_its_sessions_are_told(fleet: Fleet) -> None:
    first, second = fleet.urls
    reloads = fleet.control.reloads
    (fleet.policy_dir / "backends.yaml").write_text(backends_yaml(fleet.replicas, HEALTH_CHECKED))
    await until(lambda: fleet.control.reloads > reloads, 10, "the health checks to be published")
    await until(lambda: all(healthy_endpoints(e) == 2 for e in fleet.envoys), 10, "both endpoints healthy")
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        session = await start_session(http, first)
        owner = served_by(await whoami(http, first, session, 1))
        fleet.replica(owner).stop()
        await until(lambda: all(healthy_endpoints(e) == 1 for e in fleet.envoys), 10, "the stopped replica unhealthy")
        # Stateless (2026-07-28) calls through either Envoy go to the replica left, every one of them.
        stateless = {**HEADERS, "mcp-protocol-version": MODERN_REVISION, "mcp-method": "tools/call",
                     "mcp-name": "whoami"}  # fmt: skip
        body = {"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                "params": {"name": "whoami", "arguments": {}, "_meta": MODERN_META}}  # fmt: skip
        answers = [await http.post(url, content=json.dumps(body), headers=stateless) for url in (first, second) * 5]
        assert {served_by(a) for a in answers} == {r.name for r in fleet.replicas if r.name != owner}
        # The session on the stopped replica: Envoy knows it is unhealthy and says so at once.
        gone = await whoami(http, second, session, 6)
        assert gone.status_code == 404 and _message(gone)["error"]["data"]["reason"] == "session_gone", gone.text
        assert _message(gone)["id"] == 6
