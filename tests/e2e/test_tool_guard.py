"""End to end: tool pinning against rug pulls, and description screening.

`agentxds pin` records the backend's tools; the backend is then replaced by
one whose `create_issue` carries a poisoned description (same name, same
port: what a compromised or malicious server update looks like). The gateway
must hide the changed tool and refuse calls to it until the lock is renewed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from mcp.shared.exceptions import MCPError

from tests.e2e.gateway import IDENTITY_HEADER, RunningGateway, eventually, start_gateway, stop_gateway
from tests.e2e.harness import REPO_ROOT, McpBackend, mcp_client, python_env
from xds_server.core import errors

EXECUTOR = {IDENTITY_HEADER: "executor"}
GUARD = "  toolGuard: {refresh: 200ms}\n"


@pytest_asyncio.fixture(loop_scope="session")
async def gateway(mcp_backend_factory: Any, tmp_path: Path) -> AsyncIterator[RunningGateway]:
    backend = mcp_backend_factory(name="github")
    gw = await start_gateway(tmp_path / "gateway", {"github": backend}, backend_extra={"github": GUARD})
    yield gw
    await stop_gateway(gw)


def pin(gateway: RunningGateway) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xds_server.cli", "pin", str(gateway.policy_dir), "--backend", "github"],
                          capture_output=True, text=True, timeout=60, env=python_env(), cwd=REPO_ROOT)  # fmt: skip


async def visible_tools(gateway: RunningGateway, mode: str = "modern") -> set[str]:
    async with mcp_client(gateway.url(), EXECUTOR, mode) as client:
        return {t.name for t in (await client.list_tools()).tools}


async def create_issue(gateway: RunningGateway, mode: str = "modern") -> Any:
    async with mcp_client(gateway.url(), EXECUTOR, mode) as client:
        try:
            result = await client.call_tool("create_issue", {"repo": "acme/web", "title": "t"})
        except MCPError as exc:
            return exc
        return result.content[0].text


def replace_backend(gateway: RunningGateway, factory: Any, *extra_args: str) -> McpBackend:
    """Stop the backend and start another demo server on the same port."""
    old = gateway.backends["github"]
    old.stop()
    new = factory(name=f"github-{len(factory.started)}", port=old.port, extra_args=extra_args)
    gateway.backends["github"] = new
    return new


async def reload_after(gateway: RunningGateway, change: Any) -> None:
    reloads = gateway.control.reloads
    change()
    await gateway.wait_reloads(reloads + 1)
    assert gateway.control.last_reload is not None and gateway.control.last_reload.ok, gateway.control.last_reload
    await gateway.wait_acked(gateway.control.cache.get("e2e").version)


async def test_a_changed_pinned_tool_is_hidden_and_refused_until_pinned_again(
    gateway: RunningGateway, mcp_backend_factory: Any
) -> None:
    result = await asyncio.to_thread(pin, gateway)
    assert result.returncode == 0, result.stderr
    lock = gateway.policy_dir / "github.lock.yaml"
    assert "kind: MCPToolLock" in lock.read_text()
    await eventually(lambda: _reloaded_with_lock(gateway), timeout=10, what="the lock to be published")
    assert await visible_tools(gateway) == {"create_issue", "whoami"}
    assert await create_issue(gateway) == "created issue in acme/web: t"

    poisoned = replace_backend(gateway, mcp_backend_factory, "--poison", "create_issue")
    await eventually(lambda: _hidden(gateway, "create_issue"), timeout=15, what="the changed tool to be hidden")
    for mode in ("modern", "legacy"):
        assert await visible_tools(gateway, mode) == {"whoami"}
        refused = await create_issue(gateway, mode)
        assert isinstance(refused, MCPError), refused
        assert refused.code == errors.TOOL_DRIFTED.code and refused.data["reason"] == "tool_changed"
        assert "description changed since pinned" in refused.data["details"]
    assert not _called(poisoned, "create_issue")

    # The operator reviews the change and pins again: the tool is back (no screening configured).
    await reload_after(gateway, lambda: pin(gateway))
    await eventually(lambda: _shown(gateway, "create_issue"), timeout=15, what="the re-pinned tool to be shown")
    assert await create_issue(gateway, "legacy") == "created issue in acme/web: t"


async def test_screening_blocks_or_flags_a_poisoned_description(
    gateway: RunningGateway, mcp_backend_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    poisoned = replace_backend(gateway, mcp_backend_factory, "--poison", "create_issue")
    backends = gateway.policy_dir / "backends.yaml"
    original = backends.read_text()

    await reload_after(
        gateway,
        lambda: backends.write_text(original.replace(GUARD, "  toolGuard: {screening: block, refresh: 200ms}\n")),
    )
    await eventually(lambda: _hidden(gateway, "create_issue"), timeout=15, what="the poisoned tool to be hidden")
    refused = await create_issue(gateway)
    assert isinstance(refused, MCPError) and refused.data["reason"] == "tool_changed"
    assert "suspicious description" in refused.data["details"]
    assert not _called(poisoned, "create_issue")

    await reload_after(
        gateway,
        lambda: backends.write_text(original.replace(GUARD, "  toolGuard: {screening: flag, refresh: 200ms}\n")),
    )
    await eventually(lambda: _shown(gateway, "create_issue"), timeout=15, what="a flagged tool to stay usable")
    assert await create_issue(gateway) == "created issue in acme/web: t"

    # Flagging logs what screening found (each refresh).
    async def logged() -> bool:
        return any("flagged by the tool guard" in r.getMessage() and "create_issue (suspicious description"
                   in r.getMessage() for r in caplog.records)  # fmt: skip

    await eventually(logged, timeout=15, what="the flag to be logged")


async def _reloaded_with_lock(gateway: RunningGateway) -> bool:
    ir = gateway.control.pipeline.ir
    if ir is None:
        return False
    guard = ir.gateways[0].routes[0].protocol.tool_guard
    return guard is not None and guard.pins is not None


async def _hidden(gateway: RunningGateway, tool: str) -> bool:
    return tool not in await visible_tools(gateway)


async def _shown(gateway: RunningGateway, tool: str) -> bool:
    return tool in await visible_tools(gateway)


def _called(backend: McpBackend, tool: str) -> bool:
    for req in backend.requests():
        try:
            body = json.loads(req["body"] or "null")
        except ValueError:
            continue
        if isinstance(body, dict) and body.get("method") == "tools/call" and body["params"]["name"] == tool:
            return True
    return False
