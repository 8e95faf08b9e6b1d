"""End to end: actors by stable host name. Backends share the route /mcp, one per Host name; moving
one (runtimeEndpoints, the endpoints API) keeps its name and changes where it is served.

Raw HTTP with the Host header a client of `http://actor-1.actors.example:PORT/mcp` sends, and the
SDK client in both revisions with that Host; an unknown name on the shared route gets no_backend.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tests.e2e.gateway import AGENTS_YAML, gateway_yaml, launch
from tests.e2e.harness import MODERN_META, MODERN_REVISION, mcp_client
from tests.e2e.test_moving_backends import TOKEN
from xds_server.controlplane.runtime_endpoints import ApiEndpoints, RuntimeEndpoints
from xds_server.core import errors
from xds_server.runtime.ports import free_port

POLICY = """\
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {name: actor-1}
spec:
  backend: actor-1
  rules: [{agents: ["*"], tools: [whoami]}]
---
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {name: actor-2}
spec:
  backend: actor-2
  rules: [{agents: ["*"], tools: [whoami]}]
"""


def backends_yaml(first: int, second: int) -> str:
    return f"""\
apiVersion: agentxds.dev/v1
kind: MCPBackend
metadata: {{name: actor-1}}
spec:
  route: /mcp
  path: /mcp
  hosts: [actor-1.actors.example]
  endpoints: [{{host: 127.0.0.1, port: {first}}}]
---
apiVersion: agentxds.dev/v1
kind: MCPBackend
metadata: {{name: actor-2}}
spec:
  route: /mcp
  path: /mcp
  hosts: [actor-2.actors.example]
  runtimeEndpoints: true
  endpoints: [{{host: 127.0.0.1, port: {second}}}]
"""


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def actors(
    mcp_backend_factory_module: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, Any]]:
    servers = {name: mcp_backend_factory_module(name=name) for name in ("server-1", "server-2", "server-3")}
    tmp_path: Path = tmp_path_factory.mktemp("actors")
    listen_port, policy_port, http_port = free_port(), free_port(), free_port()
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir()
    (policy_dir / "gateway.yaml").write_text(gateway_yaml(listen_port, policy_port, authz_http_port=http_port))
    (policy_dir / "backends.yaml").write_text(backends_yaml(servers["server-1"].port, servers["server-2"].port))
    (policy_dir / "agents.yaml").write_text(AGENTS_YAML)
    (policy_dir / "policy.yaml").write_text(POLICY)
    control, envoy = await launch(policy_dir, tmp_path, listen_port, policy_port, http_port,
                                  runtime=RuntimeEndpoints(None, ApiEndpoints()))  # fmt: skip
    try:
        api_port = await control.serve_endpoints_api("127.0.0.1", 0, TOKEN)
        yield {"port": listen_port, "api": f"http://127.0.0.1:{api_port}", "servers": servers}
    finally:
        envoy.stop()
        await control.stop()


def call(request_id: Any) -> tuple[str, dict[str, str]]:
    body = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
            "params": {"name": "whoami", "arguments": {}, "_meta": MODERN_META}}  # fmt: skip
    return json.dumps(body), {"x-agent-id": "triage", "content-type": "application/json",
                              "accept": "application/json, text/event-stream", "mcp-protocol-version": MODERN_REVISION,
                              "mcp-method": "tools/call", "mcp-name": "whoami"}  # fmt: skip


class ByHost(httpx.AsyncClient):
    """Posts to the gateway's port with the Host a client of http://<host>:<port>/mcp sends."""

    def __init__(self, port: int, host: str) -> None:
        super().__init__(timeout=10, trust_env=False)
        self.url, self.host = f"http://127.0.0.1:{port}/mcp", f"{host}:{port}"

    async def whoami(self, request_id: Any = 1) -> dict[str, Any]:
        body, headers = call(request_id)
        answer = await self.post(self.url, content=body, headers={**headers, "host": self.host})
        text = answer.text
        if answer.headers.get("content-type", "").startswith("text/event-stream"):
            text = next(line[5:] for line in text.splitlines() if line.startswith("data:"))
        return {"status": answer.status_code, **json.loads(text)}


async def test_each_actor_is_reached_by_its_name_on_the_shared_route(actors: dict[str, Any]) -> None:
    port = actors["port"]
    for host, server in (("actor-1.actors.example", "server-1"), ("actor-2.actors.example", "server-2")):
        async with ByHost(port, host) as http:
            answer = await http.whoami()
        assert answer["result"]["content"][0]["text"] == f"server {server}", answer
    async with ByHost(port, "actor-9.actors.example") as http:
        unknown = await http.whoami("x-9")
    assert unknown["status"] == 404 and unknown["id"] == "x-9"
    assert unknown["error"]["code"] == errors.NO_BACKEND.code, unknown


@pytest.mark.parametrize("mode", ["modern", "legacy"])
async def test_the_sdk_client_reaches_an_actor_by_name(actors: dict[str, Any], mode: str) -> None:
    headers = {"x-agent-id": "triage", "host": f"actor-1.actors.example:{actors['port']}"}
    async with mcp_client(f"http://127.0.0.1:{actors['port']}/mcp", headers, mode) as client:
        assert (await client.call_tool("whoami", {})).content[0].text == "server server-1"


async def test_a_moved_actor_keeps_its_name(actors: dict[str, Any]) -> None:
    port, target = actors["port"], actors["servers"]["server-3"].port
    async with httpx.AsyncClient(timeout=10, trust_env=False) as api:
        moved = await api.put(f"{actors['api']}/endpoints/actor-2", headers={"authorization": f"Bearer {TOKEN}"},
                              json={"endpoints": [{"host": "127.0.0.1", "port": target}]})  # fmt: skip
        assert moved.status_code == 200, moved.text

    async with ByHost(port, "actor-2.actors.example") as http:
        started = time.monotonic()
        while (await http.whoami())["result"]["content"][0]["text"] != "server server-3":
            assert time.monotonic() - started < 1.0, "actor-2 not served from its new endpoint within a second"
    async with ByHost(port, "actor-1.actors.example") as http:
        assert (await http.whoami())["result"]["content"][0]["text"] == "server server-1"  # the other actor stays
