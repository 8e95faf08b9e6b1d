"""End to end: two control planes serving one policy directory, and an Envoy that fails over between them.

Both build the same versions from the same files (content hashes), so the
Envoy's bootstrap lists both and, when the one it streams from stops, it
reconnects to the other and is sent nothing new. Calls made all the while
(stateless 2026-07-28 `tools/call`s, one after another) all succeed, and an
edit made after the failover is applied through the second control plane.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.gateway import GATEWAY, POLICY_YAML, until, wait_listening, write_policies
from tests.e2e.harness import MODERN_META, MODERN_REVISION
from xds_server.controlplane.service import ControlPlane
from xds_server.runtime.bootstrap import render_bootstrap
from xds_server.runtime.envoy import EnvoyProcess
from xds_server.runtime.ports import free_port
from xds_server.xds import snapshot as xds


def call(tool: str, request_id: int) -> tuple[str, dict[str, str]]:
    body = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
            "params": {"name": tool, "arguments": {}, "_meta": MODERN_META}}  # fmt: skip
    headers = {"x-agent-id": "triage", "content-type": "application/json", "mcp-name": tool,
               "accept": "application/json, text/event-stream", "mcp-protocol-version": MODERN_REVISION,
               "mcp-method": "tools/call"}  # fmt: skip
    return json.dumps(body), headers


def connected_nodes(control: ControlPlane) -> set[str]:
    return {n.node_id for n in control.recorder.view().nodes if n.connected}


def acked_listener(control: ControlPlane, node_id: str) -> str | None:
    for node in control.recorder.view().nodes:
        if node.node_id == node_id and node.connected:
            return next((t.acked_version for t in node.types if t.type_url == xds.LISTENER), None)
    return None


async def test_envoy_fails_over_to_the_second_control_plane_without_a_failed_call(
    mcp_backend_factory: Any, tmp_path: Path
) -> None:
    backend = mcp_backend_factory(name="github", json_response=True)
    listen_port = free_port()
    policy_dir = tmp_path / "policies"
    write_policies(policy_dir, listen_port, {"github": backend}, policy_port=free_port(), policy_yaml=POLICY_YAML)
    first = ControlPlane(policy_dir, port=0, debounce_ms=50)
    second = ControlPlane(policy_dir, port=0, debounce_ms=50)
    await first.start()
    await second.start()
    envoy: EnvoyProcess | None = None
    try:
        versions = [c.cache.get(GATEWAY).version for c in (first, second)]  # type: ignore[union-attr]
        assert versions[0] == versions[1]  # the same files give the same versions
        bootstrap = render_bootstrap(node_id="failover", node_cluster=GATEWAY, xds_host="127.0.0.1",
                                     xds_port=first.port, admin_port=0, more_xds=[("127.0.0.1", second.port)])  # fmt: skip
        envoy = EnvoyProcess(bootstrap, workdir=tmp_path / "envoy", log_level="warning").start()
        await envoy.wait_live_async(20)
        await wait_listening(listen_port)
        url = f"http://127.0.0.1:{listen_port}/mcp/github"
        await until(lambda: bool(connected_nodes(first) | connected_nodes(second)), 10, "the ADS stream")
        serving, standby = (first, second) if connected_nodes(first) else (second, first)

        failures: list[str] = []
        done = 0
        stop = asyncio.Event()

        async def traffic() -> None:
            nonlocal done
            async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
                while not stop.is_set():
                    body, headers = call("whoami", done)
                    answer = await http.post(url, content=body, headers=headers)
                    if answer.status_code != 200 or "result" not in answer.json():
                        failures.append(answer.text)
                    done += 1

        load = asyncio.create_task(traffic())
        await asyncio.sleep(0.5)
        await serving.stop()  # the control plane Envoy streams from goes away
        await until(lambda: "failover" in connected_nodes(standby), 10, "Envoy to reconnect to the other one")
        await until(lambda: acked_listener(standby, "failover") == standby.cache.get(GATEWAY).type_version(xds.LISTENER),  # type: ignore[union-attr]
                    10, "Envoy to report its versions to the other one")  # fmt: skip
        await asyncio.sleep(0.5)
        stop.set()
        await load
        assert done > 20 and failures == [], failures[:3]

        # What is edited now reaches Envoy through the control plane left.
        body, headers = call("get_issue", 1)
        async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
            before = (await http.post(url, content=body, headers={**headers, "x-agent-id": "executor"})).json()
            assert before["error"]["data"]["reason"] == "tool_not_allowed"
            reloads = standby.reloads
            (policy_dir / "github-policy.yaml").write_text(
                POLICY_YAML.replace("tools: [create_issue]", "tools: [create_issue, get_issue]")
            )
            await until(lambda: standby.reloads > reloads, 10, "the edit to be published")

            async def allowed() -> bool:
                answer = await http.post(url, content=body, headers={**headers, "x-agent-id": "executor"})
                return "error" not in answer.json() or answer.json()["error"]["data"]["reason"] != "tool_not_allowed"

            for _ in range(100):
                if await allowed():
                    break
                await asyncio.sleep(0.05)
            assert await allowed()
    finally:
        if envoy is not None:
            envoy.stop()
            print(f"--- envoy log tail ---\n{envoy.log_text()[-3000:]}")
        await first.stop()
        await second.stop()
