"""End to end: backends that move while the gateway runs, through the endpoints API and the endpoints file.

`actors` says `runtimeEndpoints: true` and starts on one replica; `github`
has its endpoints in Git. Moving `actors` through the API makes new calls
land on the other replica within a second, while a legacy session on
`github` goes on undisturbed; the endpoints file moves it too; Git-defined
endpoints cannot be moved (409, and reported for the file); the API needs
its token, checks what it is given, and what it set survives a restart.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest_asyncio

from tests.e2e.gateway import AGENTS_YAML, gateway_yaml, launch, until
from tests.e2e.harness import MODERN_META, MODERN_REVISION, McpBackend, mcp_client
from xds_server.controlplane.runtime_endpoints import ApiEndpoints, RuntimeEndpoints
from xds_server.controlplane.service import ControlPlane
from xds_server.ir.types import EndpointIR
from xds_server.runtime.envoy import EnvoyProcess
from xds_server.runtime.ports import free_port

TOKEN = "s3cret-token-for-the-endpoints-api"
POLICY = """\
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {name: everyone}
spec:
  backend: actors
  rules:
    - agents: ["*"]
      tools: [whoami]
---
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {name: github}
spec:
  backend: github
  rules:
    - agents: ["*"]
      tools: [whoami]
"""


def backends_yaml(actor: McpBackend, github: McpBackend) -> str:
    return f"""\
apiVersion: agentxds.dev/v1
kind: MCPBackend
metadata: {{name: actors}}
spec:
  path: /mcp
  runtimeEndpoints: true
  endpoints: [{{host: 127.0.0.1, port: {actor.port}}}]
---
apiVersion: agentxds.dev/v1
kind: MCPBackend
metadata: {{name: github}}
spec:
  path: /mcp
  endpoints: [{{host: 127.0.0.1, port: {github.port}}}]
"""


@dataclass
class Moving:
    control: ControlPlane
    envoy: EnvoyProcess
    listen_port: int
    api: str
    endpoints_file: Path
    state_file: Path
    replicas: dict[str, McpBackend]

    def url(self, backend: str) -> str:
        return f"http://127.0.0.1:{self.listen_port}/mcp/{backend}"


@pytest_asyncio.fixture(loop_scope="session")
async def moving(mcp_backend_factory: Any, tmp_path: Path) -> AsyncIterator[Moving]:
    replicas = {name: mcp_backend_factory(name=name) for name in ("actor-1", "actor-2", "github-1")}
    listen_port, policy_port, http_port = free_port(), free_port(), free_port()
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir()
    (policy_dir / "gateway.yaml").write_text(gateway_yaml(listen_port, policy_port, authz_http_port=http_port))
    (policy_dir / "backends.yaml").write_text(backends_yaml(replicas["actor-1"], replicas["github-1"]))
    (policy_dir / "agents.yaml").write_text(AGENTS_YAML)
    (policy_dir / "policy.yaml").write_text(POLICY)
    endpoints_file, state_file = tmp_path / "endpoints.yaml", tmp_path / "state" / "runtime-endpoints.json"
    state_file.parent.mkdir()
    runtime = RuntimeEndpoints(endpoints_file, ApiEndpoints(state_file))
    control, envoy = await launch(policy_dir, tmp_path, listen_port, policy_port, http_port, runtime=runtime)
    try:
        api_port = await control.serve_endpoints_api("127.0.0.1", 0, TOKEN)
        yield Moving(control, envoy, listen_port, f"http://127.0.0.1:{api_port}", endpoints_file, state_file, replicas)
    finally:
        envoy.stop()
        await control.stop()


AUTH = {"authorization": f"Bearer {TOKEN}"}


async def served_by(http: httpx.AsyncClient, url: str) -> str:
    """Which replica answers a stateless `whoami` (or "" if the call failed)."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "whoami", "arguments": {}, "_meta": MODERN_META}}  # fmt: skip
    headers = {"x-agent-id": "triage", "content-type": "application/json", "accept": "application/json, text/event-stream",
               "mcp-protocol-version": MODERN_REVISION, "mcp-method": "tools/call", "mcp-name": "whoami"}  # fmt: skip
    answer = await http.post(url, content=json.dumps(body), headers=headers)
    text = answer.text
    if answer.headers.get("content-type", "").startswith("text/event-stream"):
        text = next(line[5:] for line in text.splitlines() if line.startswith("data:"))
    message = json.loads(text)
    return str(message["result"]["content"][0]["text"]).removeprefix("server ") if "result" in message else ""


async def landed_on(http: httpx.AsyncClient, url: str, replica: str, within_s: float) -> float:
    """Seconds until calls to `url` are served by `replica` (fails after `within_s`)."""
    started = time.monotonic()
    while (who := await served_by(http, url)) != replica:
        assert time.monotonic() - started < within_s, f"still served by {who!r} after {within_s} s"
    return time.monotonic() - started


async def test_a_backend_moved_through_the_api_lands_within_a_second_and_others_are_untouched(moving: Moving) -> None:
    port_2 = moving.replicas["actor-2"].port
    async with (
        httpx.AsyncClient(timeout=10, trust_env=False) as http,
        mcp_client(moving.url("github"), {"x-agent-id": "triage"}, "legacy") as github_session,
    ):
        assert (await github_session.call_tool("whoami", {})).content[0].text == "server github-1"
        assert await served_by(http, moving.url("actors")) == "actor-1"
        moved = await http.put(f"{moving.api}/endpoints/actors", headers=AUTH,
                               json={"endpoints": [{"host": "127.0.0.1", "port": port_2}]})  # fmt: skip
        assert moved.status_code == 200, moved.text
        assert moved.json()["endpoints"] == [{"host": "127.0.0.1", "port": port_2}]
        await landed_on(http, moving.url("actors"), "actor-2", within_s=1.0)
        # The legacy session on the other backend goes on, on the same server.
        assert (await github_session.call_tool("whoami", {})).content[0].text == "server github-1"
        listed = (await http.get(f"{moving.api}/endpoints", headers=AUTH)).json()["backends"]
        assert listed["actors"] == {"endpoints": [{"host": "127.0.0.1", "port": port_2}], "source": "api",
                                    "runtimeEndpoints": True}  # fmt: skip
        assert listed["github"]["source"] == "git" and listed["github"]["runtimeEndpoints"] is False
        # Forgetting the API's entry puts the backend back where Git says it starts.
        assert (await http.delete(f"{moving.api}/endpoints/actors", headers=AUTH)).status_code == 200
        await landed_on(http, moving.url("actors"), "actor-1", within_s=1.0)


async def test_git_defined_endpoints_win_and_the_api_checks_what_it_is_given(moving: Moving) -> None:
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        elsewhere = {"endpoints": [{"host": "127.0.0.1", "port": moving.replicas["actor-2"].port}]}
        conflict = await http.put(f"{moving.api}/endpoints/github", headers=AUTH, json=elsewhere)
        assert conflict.status_code == 409 and "defined in Git" in conflict.json()["error"], conflict.text
        assert (await http.put(f"{moving.api}/endpoints/nothing", headers=AUTH, json=elsewhere)).status_code == 404
        for bad in ({"endpoints": [{"host": "actor.internal", "port": 80}]}, {"endpoints": [{"host": "127.0.0.1", "port": 0}]},
                    {"endpoints": [{"host": 2130706433, "port": 80}]}, {"endpoints": [{"host": "fe80::1%eth0", "port": 80}]},
                    {"endpoints": []}, {"hosts": []}):  # fmt: skip
            refused = await http.put(f"{moving.api}/endpoints/actors", headers=AUTH, json=bad)
            assert refused.status_code == 400, (bad, refused.text)
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
            assert (
                await http.put(f"{moving.api}/endpoints/actors", headers=headers, json=elsewhere)
            ).status_code == 401
            assert (await http.get(f"{moving.api}/endpoints", headers=headers)).status_code == 401
        assert await served_by(http, moving.url("github")) == "github-1"
        assert await served_by(http, moving.url("actors")) == "actor-1"
        # An entry left for a backend that is gone (or now fixed in Git) can still be forgotten.
        assert moving.control.runtime is not None
        moving.control.runtime.api.set("gone", (EndpointIR("127.0.0.1", 9),))
        forgotten = await http.delete(f"{moving.api}/endpoints/gone", headers=AUTH)
        assert forgotten.status_code == 200 and "gone" not in moving.control.runtime.api.endpoints


async def test_the_endpoints_file_moves_a_backend_and_a_bad_edit_keeps_the_last_good(moving: Moving) -> None:
    port_2 = moving.replicas["actor-2"].port
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        moving.endpoints_file.write_text(f"endpoints:\n  actors: [{{host: 127.0.0.1, port: {port_2}}}]\n")
        await landed_on(http, moving.url("actors"), "actor-2", within_s=5.0)  # the watcher's debounce, then EDS
        reloads = moving.control.reloads
        moving.endpoints_file.write_text(
            "endpoints:\n"
            f"  actors: [{{host: 127.0.0.1, port: {port_2}}}]\n"
            "  github: [{host: 127.0.0.1, port: 1}]\n"  # Git-defined: reported, not applied
            "  typo: [{host: 127.0.0.1, port: 70000}]\n"  # not a port: the file is refused
        )
        await until(lambda: moving.control.reloads > reloads, 5, "the edit of the endpoints file to be read")
        warnings = "\n".join(moving.control.last_reload.warnings)  # type: ignore[union-attr]
        assert f"{moving.endpoints_file}:4: endpoints.typo[0].port: 70000 is not a TCP port" in warnings, warnings
        assert await served_by(http, moving.url("actors")) == "actor-2"  # the last good content stays
        reloads = moving.control.reloads
        moving.endpoints_file.write_text(f"endpoints:\n  github: [{{host: 127.0.0.1, port: {port_2}}}]\n")
        await until(lambda: moving.control.reloads > reloads, 5, "the next edit to be read")
        warnings = "\n".join(moving.control.last_reload.warnings)  # type: ignore[union-attr]
        assert "runtime endpoints for 'github' not applied: its endpoints are defined in Git" in warnings, warnings
        assert await served_by(http, moving.url("github")) == "github-1"
        await landed_on(http, moving.url("actors"), "actor-1", within_s=5.0)  # no longer in the file: Git's


async def test_what_the_api_set_survives_a_restart(moving: Moving) -> None:
    port_2 = moving.replicas["actor-2"].port
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        moved = await http.put(f"{moving.api}/endpoints/actors", headers=AUTH,
                               json={"endpoints": [{"host": "127.0.0.1", "port": port_2}]})  # fmt: skip
        assert moved.status_code == 200
    assert ApiEndpoints(moving.state_file).endpoints == {"actors": (EndpointIR("127.0.0.1", port_2),)}
