"""NACKs and `agentxds status` with a real Envoy fed by the real ADS server.

The control plane runs in the test's event loop, so everything the test waits
on is awaited (Envoy's `*_async` waits, the async Status client, an asyncio
subprocess for the CLI): a blocking call would stall the ADS server too.

A config Envoy rejects never comes out of the pipeline (it validates), so
the bad snapshot is put into the cache directly: the demo gateway's IR with an
MCP `max_request_body_size` of 20 MiB, above Envoy's 10 MiB maximum.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.harness import REPO_ROOT, McpBackend, mcp_client, python_env
from xds_server.api.agentxds.v1 import status_pb2
from xds_server.controlplane.pipeline import to_snapshot
from xds_server.controlplane.service import ControlPlane
from xds_server.runtime.envoy import EnvoyProcess
from xds_server.runtime.ports import free_port
from xds_server.translate import translate_gateway
from xds_server.translate.names import listener_name
from xds_server.xds import snapshot as xds
from xds_server.xds.snapshot import Snapshot
from xds_server.xds.status_api import get_status

GATEWAY = "demo"
DEMO_POLICIES = REPO_ROOT / "policies" / "demo"
TOO_LARGE = 20 * 1024 * 1024  # Envoy's MCP filter accepts at most 10 MiB
TIMEOUT = 20.0  # a safety net against hangs, never a timing assertion
ALL_TYPES = (xds.CLUSTER, xds.ENDPOINT, xds.LISTENER, xds.ROUTE)


@dataclass
class Gateway:
    control: ControlPlane
    envoy: EnvoyProcess
    backend: McpBackend
    url: str  # the MCP endpoint of the github backend through Envoy

    @property
    def xds_target(self) -> str:
        return f"127.0.0.1:{self.control.port}"

    @property
    def node_id(self) -> str:
        return self.envoy.bootstrap["node"]["id"]


def _copy_demo_policies(dest: Path, listen_port: int, backend_port: int, policy_port: int,
                        authz_http_port: int) -> Path:  # fmt: skip
    """The demo policies with the gateway, backend and policy-service ports replaced by run-time ones."""
    shutil.copytree(DEMO_POLICIES, dest)
    gateway = dest / "gateway.yaml"
    text = gateway.read_text()
    for old, new in (
        ("port: 10000}", f"port: {listen_port}}}"),
        ("{host: 127.0.0.1, port: 18081}", f"{{host: 127.0.0.1, port: {backend_port}}}"),
        (
            "{host: 127.0.0.1, port: 18001, extAuthz: http, extAuthzHttpPort: 18003}",
            f"{{host: 127.0.0.1, port: {policy_port}, extAuthz: http, extAuthzHttpPort: {authz_http_port}}}",
        ),
    ):
        assert text.count(old) == 1, f"demo gateway.yaml changed: {old!r} not found once"
        text = text.replace(old, new)
    gateway.write_text(text)
    return dest


@pytest.fixture
async def gateway(tmp_path: Path, envoy_factory, mcp_backend_factory) -> AsyncIterator[Gateway]:
    backend = mcp_backend_factory(name="demo-github")
    listen_port, policy_port, authz_http_port = free_port(), free_port(), free_port()
    policies = _copy_demo_policies(tmp_path / "policies", listen_port, backend.port, policy_port, authz_http_port)
    control = ControlPlane(policies, port=0, watch=False, policy_port=policy_port, authz_http_port=authz_http_port)
    await control.start()
    assert control.last_reload is not None and control.last_reload.ok, control.last_reload
    try:
        envoy = envoy_factory(control.port, node_cluster=GATEWAY, wait_live=False)
        await envoy.wait_live_async(timeout=TIMEOUT)
        await envoy.wait_listener_async(listener_name(GATEWAY), timeout=TIMEOUT)
        yield Gateway(control, envoy, backend, f"http://127.0.0.1:{listen_port}/mcp/github")
    finally:
        await control.stop()


async def _wait_status(
    target: str, predicate: Callable[[status_pb2.GetStatusResponse], bool], what: str
) -> status_pb2.GetStatusResponse:
    """Poll the real Status API until `predicate` holds."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        resp = await get_status(target, timeout=5.0)
        if predicate(resp):
            return resp
        if time.monotonic() >= deadline:
            raise AssertionError(f"status never showed {what}; last status:\n{resp}")
        await asyncio.sleep(0.05)


def _node(resp: status_pb2.GetStatusResponse, node_id: str) -> status_pb2.NodeStatus | None:
    return next((n for n in resp.nodes if n.node_id == node_id), None)


def _types(node: status_pb2.NodeStatus | None) -> dict[str, status_pb2.TypeStatus]:
    return {t.type_url: t for t in node.types} if node is not None else {}


def _acked(snapshot: Snapshot, node_id: str) -> Callable[[status_pb2.GetStatusResponse], bool]:
    """The node has been sent and has accepted every type's version of `snapshot`."""

    def check(resp: status_pb2.GetStatusResponse) -> bool:
        types = _types(_node(resp, node_id))
        return all(
            t in types and types[t].sent_version == types[t].acked_version == snapshot.type_version(t)
            for t in ALL_TYPES
        )

    return check


async def _agentxds_status(target: str) -> tuple[int, str, str]:
    """Run `agentxds status --xds target` as a subprocess without blocking the loop."""
    script = Path(sys.executable).parent / "agentxds"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "xds_server.cli"]
    proc = await asyncio.create_subprocess_exec(
        *argv, "status", "--xds", target,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=python_env(), cwd=REPO_ROOT,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _call_through_gateway(gw: Gateway) -> str:
    async with mcp_client(gw.url, headers={"x-agent-id": "triage"}) as client:
        result = await client.call_tool("list_issues", {"repo": "acme/web"})
    (content,) = result.content
    return content.text


def _bad_snapshot(control: ControlPlane) -> Snapshot:
    """The served gateway with an MCP body limit Envoy refuses (bypasses the pipeline's checks)."""
    assert control.pipeline.ir is not None
    (good_ir,) = [g for g in control.pipeline.ir.gateways if g.name == GATEWAY]
    listener = dataclasses.replace(
        good_ir.listener, max_request_body_bytes=TOO_LARGE, connection_buffer_bytes=TOO_LARGE
    )
    bad_ir = dataclasses.replace(good_ir, listener=listener)
    return to_snapshot(translate_gateway(bad_ir))


async def test_envoy_acks_everything_and_status_says_so(gateway: Gateway) -> None:
    good = gateway.control.cache.get(GATEWAY)
    assert good is not None

    resp = await _wait_status(gateway.xds_target, _acked(good, gateway.node_id), "all four types ACKed")
    node = _node(resp, gateway.node_id)
    assert node is not None
    assert node.group == GATEWAY and node.connected and node.HasField("connected_since")
    assert not any(t.HasField("last_nack") for t in node.types)
    assert not node.recent_nacks and not resp.policy_errors
    assert [(g.group, g.snapshot_version) for g in resp.groups] == [(GATEWAY, good.version)]

    code, out, err = await _agentxds_status(gateway.xds_target)
    assert code == 0, out + err
    assert f"{GATEWAY}  version {good.version}" in out
    assert gateway.node_id in out and f"group {GATEWAY}" in out and "connected since" in out
    for short, type_url in (("CDS", xds.CLUSTER), ("EDS", xds.ENDPOINT), ("LDS", xds.LISTENER), ("RDS", xds.ROUTE)):
        version = good.type_version(type_url)
        assert f"{short:<4}  {version}  {version}  ok" in out, out
    assert "NACK" not in out and out.rstrip().endswith("healthy")

    assert await _call_through_gateway(gateway) == "issues of acme/web: #1 bug, #2 feature"


async def test_a_nacked_listener_is_recorded_not_resent_and_the_last_good_one_keeps_serving(
    gateway: Gateway,
) -> None:
    control, target, node_id = gateway.control, gateway.xds_target, gateway.node_id
    good = control.cache.get(GATEWAY)
    assert good is not None
    await _wait_status(target, _acked(good, node_id), "the good snapshot ACKed")

    bad = _bad_snapshot(control)
    bad_lds = bad.type_version(xds.LISTENER)
    assert bad_lds != good.type_version(xds.LISTENER)
    assert all(bad.type_version(t) == good.type_version(t) for t in (xds.CLUSTER, xds.ENDPOINT, xds.ROUTE))
    assert control.cache.set(GATEWAY, bad)

    def nacked(resp: status_pb2.GetStatusResponse) -> bool:
        lds = _types(_node(resp, node_id)).get(xds.LISTENER)
        return lds is not None and lds.HasField("last_nack") and lds.last_nack.version == bad_lds

    resp = await _wait_status(target, nacked, "a NACK of the bad listener")
    lds = _types(_node(resp, node_id))[xds.LISTENER]
    assert "max_request_body_size" in lds.last_nack.error_message
    assert lds.last_nack.HasField("time")
    assert lds.sent_version == bad_lds
    assert lds.acked_version == good.type_version(xds.LISTENER)  # Envoy still runs the good one

    # Envoy keeps serving the last good listener, and says it refused the update.
    assert await _call_through_gateway(gateway) == "issues of acme/web: #1 bug, #2 feature"
    dump = await asyncio.to_thread(gateway.envoy.config_dump, "resource=dynamic_listeners")
    (listener,) = [entry for entry in dump["configs"] if entry.get("name") == listener_name(GATEWAY)]
    assert listener["active_state"]["version_info"] == good.type_version(xds.LISTENER)
    assert "max_request_body_size" in listener["error_state"]["details"]

    # Parked, not resent: still exactly one NACK for that version a while later.
    await asyncio.sleep(1.5)
    resp = await get_status(target, timeout=5.0)
    node = _node(resp, node_id)
    assert node is not None
    bad_nacks = [n for n in node.recent_nacks if n.type_url == xds.LISTENER and n.version == bad_lds]
    assert len(bad_nacks) == 1, list(node.recent_nacks)
    assert _types(node)[xds.LISTENER].sent_version == bad_lds

    code, out, err = await _agentxds_status(target)
    assert code == 1, out + err
    assert "LDS last NACK at" in out and f"version {bad_lds}" in out
    assert "max_request_body_size" in out
    assert "UNHEALTHY: 1 NACK(s) in effect" in out

    # Publishing the good snapshot again is sent and ACKed; the NACK is then history.
    assert control.cache.set(GATEWAY, good)
    resp = await _wait_status(target, _acked(good, node_id), "the good snapshot ACKed again")
    assert _types(_node(resp, node_id))[xds.LISTENER].last_nack.version == bad_lds
    assert await _call_through_gateway(gateway) == "issues of acme/web: #1 bug, #2 feature"

    code, out, err = await _agentxds_status(target)
    assert code == 0, out + err
    assert "LDS last NACK (resolved" in out and out.rstrip().endswith("healthy")
