"""End to end: the control plane's failures under steady load, with real SDK clients in both revisions.

- A run of policy pushes, each changing the allow-list Envoy enforces, while
  clients call allowed tools at a steady rate: no allowed call fails, and
  every push is enforced.
- The process serving ADS killed with SIGKILL under load: no answer changes.
  Native allows and denials are Envoy's (fail static), and the policy
  service runs in a process of its own (`agentxds serve --role policy`), so
  its decisions (a `when` condition here) go on too. A new ADS process on
  the same port is picked up by Envoy, which then follows edits again.

Both control-plane roles run as real `agentxds serve` processes, stopped by
their PIDs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.e2e.gateway import (
    CONDITIONAL_POLICY_YAML,
    GATEWAY,
    IDENTITY_HEADER,
    POLICY_YAML,
    RunningGateway,
    eventually,
    start_gateway,
    stop_gateway,
    wait_listening,
    write_policies,
)
from tests.e2e.harness import REPO_ROOT, ManagedProcess, McpBackend, mcp_client, python_env
from tests.e2e.load import MODES, SteadyLoad, answer_of
from xds_server.core import errors
from xds_server.runtime.bootstrap import render_bootstrap
from xds_server.runtime.envoy import EnvoyProcess
from xds_server.runtime.ports import free_port

TRIAGE = {IDENTITY_HEADER: "triage"}
EXECUTOR = {IDENTITY_HEADER: "executor"}


# ---------------------------------------------------------------- policy pushes under load


@pytest_asyncio.fixture(loop_scope="session")
async def gateway(mcp_backend_factory: Any, tmp_path: Path) -> AsyncIterator[RunningGateway]:
    gw = await start_gateway(tmp_path / "gateway", {"github": mcp_backend_factory(name="github")})
    yield gw
    await stop_gateway(gw)


def _grant_round(n: int) -> str:
    """The base policy plus a grant that differs in each round (a new listener RBAC each time)."""
    tool = "create_issue" if n % 2 else "delete_repo"
    return (
        POLICY_YAML
        + f"""\
    - description: round {n}
      agents: [auditor]
      tools: [{tool}]
"""
    )


async def test_policy_pushes_under_steady_load_lose_no_allowed_call(gateway: RunningGateway) -> None:
    load = SteadyLoad(gateway.url(), TRIAGE, [("list_issues", {"repo": "acme/web"}), ("whoami", {})])
    load.start()
    rounds = 8
    try:
        await load.wait_for(10)
        for n in range(rounds):
            reloads = gateway.control.reloads
            gateway.write("github-policy.yaml", _grant_round(n))
            await gateway.wait_reloads(reloads + 1)
            assert gateway.control.last_reload is not None and gateway.control.last_reload.ok
            await gateway.wait_acked(gateway.control.cache.get(GATEWAY).version)  # type: ignore[union-attr]
            await load.wait_for(6)  # calls on the new configuration too
        # The last push is enforced: auditor may now call what round 7 granted, and not round 6's tool.
        async with mcp_client(gateway.url(), {IDENTITY_HEADER: "auditor"}, "modern") as auditor:
            granted = await answer_of(auditor, "create_issue", {"repo": "acme/web", "title": "t"})
            refused = await answer_of(auditor, "delete_repo", {"repo": "acme/web"})
        assert granted[0] == "ok" and refused[:2] == ("error", errors.TOOL_DENIED.code), (granted, refused)
    finally:
        await load.stop()
    assert not load.failures(), load.failures()[:5]
    per_mode = load.per_mode()
    assert all(n >= 20 for n in per_mode.values()), per_mode
    print(f"{len(load.answers)} allowed calls across {rounds} pushes, none failed: {per_mode}")


# ---------------------------------------------------------------- the ADS process killed under load

CONDITION_POLICY = CONDITIONAL_POLICY_YAML
MIXED_CALLS = [
    ("whoami", {}),  # allowed natively
    ("delete_repo", {"repo": "acme/web"}),  # refused natively
    ("create_issue", {"repo": "acme/web", "title": "t"}),  # allowed by the policy service
    ("create_issue", {"repo": "evil/web", "title": "t"}),  # refused by the policy service
]


def _serve(workdir: Path, policy_dir: Path, role: str, *, port: int, policy_port: int, authz_http_port: int,
           name: str) -> ManagedProcess:  # fmt: skip
    argv = [sys.executable, "-m", "xds_server.cli", "serve", str(policy_dir), "--role", role,
            "--port", str(port), "--policy-port", str(policy_port), "--approvals-port", "0",
            "--authz-http-port", str(authz_http_port), "--state-dir", str(workdir / f"state-{role}")]  # fmt: skip
    proc = ManagedProcess(argv, log_path=workdir / f"{name}.log", env=python_env(), cwd=REPO_ROOT, name=name)
    proc.start(ready_line=r"^agentxds control plane", timeout=30)
    return proc


@dataclass
class SplitControlPlane:
    """An Envoy fed by an `agentxds serve --role xds` process, deciding with a `--role policy` one."""

    workdir: Path
    policy_dir: Path
    listen_port: int
    xds_port: int
    policy_port: int
    envoy: EnvoyProcess
    policy: ManagedProcess
    xds: ManagedProcess

    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}/mcp/github"

    def start_xds(self) -> None:
        self.xds = _serve(self.workdir, self.policy_dir, "xds", port=self.xds_port, policy_port=0,
                          authz_http_port=-1, name=f"xds-{time.monotonic_ns()}")  # fmt: skip

    def stop(self) -> None:
        self.envoy.stop()
        for proc in (self.xds, self.policy):
            proc.stop()
            print(f"--- {proc.name} output tail ---\n{proc.output()[-2000:]}")


@pytest.fixture
def split(mcp_backend_factory: Any, tmp_path: Path) -> Any:
    backend: McpBackend = mcp_backend_factory(name="github")
    listen_port, xds_port, policy_port = free_port(), free_port(), free_port()
    policy_dir = tmp_path / "policies"
    write_policies(policy_dir, listen_port, {"github": backend}, policy_port=policy_port, policy_yaml=CONDITION_POLICY)
    policy = _serve(tmp_path, policy_dir, "policy", port=0, policy_port=policy_port, authz_http_port=-1,
                    name="policy")  # fmt: skip
    xds = _serve(tmp_path, policy_dir, "xds", port=xds_port, policy_port=0, authz_http_port=-1, name="xds")
    bootstrap = render_bootstrap(node_id="e2e-envoy", node_cluster=GATEWAY, xds_host="127.0.0.1", xds_port=xds_port,
                                 admin_port=0)  # fmt: skip
    envoy = EnvoyProcess(bootstrap, workdir=tmp_path / "envoy", log_level="warning").start()
    world = SplitControlPlane(tmp_path, policy_dir, listen_port, xds_port, policy_port, envoy, policy, xds)
    try:
        envoy.wait_live(20)
        yield world
    finally:
        world.stop()


def _connected(envoy: EnvoyProcess) -> bool:
    return envoy.stats().get("control_plane.connected_state") == 1


async def test_killing_the_ads_process_under_load_changes_no_answer(split: SplitControlPlane) -> None:
    await wait_listening(split.listen_port, timeout=20)
    load = SteadyLoad(split.url(), EXECUTOR, MIXED_CALLS)
    load.start()
    try:
        await load.wait_for(4 * len(MIXED_CALLS))
        before = len(load.answers)
        assert split.xds.pid is not None
        os.kill(split.xds.pid, signal.SIGKILL)
        await eventually(_async(lambda: not _connected(split.envoy)), 10, "Envoy to see the control plane gone")
        killed_at = len(load.answers)
        await load.wait_for(10 * len(MIXED_CALLS))  # calls served with no control plane at all
        down_until = len(load.answers)
        split.start_xds()  # the same policies, the same port
        await eventually(_async(lambda: _connected(split.envoy)), 20, "Envoy to reconnect to the new ADS process")
        await load.wait_for(4 * len(MIXED_CALLS))
    finally:
        await load.stop()
    # What each (revision, call) was answered before the kill; it must not differ before either.
    expected = {(mode, index): answer for mode, index, answer in load.answers[:before]}
    changed = [a for a in load.answers if a[2] != expected[(a[0], a[1])]]
    assert not changed, changed[:5]
    assert down_until - killed_at >= 10 * len(MIXED_CALLS)
    # And the answers are the policies' own, so "unchanged" means "right" throughout.
    for mode in MODES:
        allowed, denied, condition_met, condition_not_met = (expected[(mode, i)] for i in range(4))
        assert allowed[0] == "ok" and not allowed[2], allowed
        assert denied[:2] == ("error", errors.TOOL_DENIED.code), denied
        assert condition_met[0] == "ok" and not condition_met[2], condition_met
        assert condition_not_met[:2] == ("error", errors.CONDITION_NOT_MET.code), condition_not_met
    print(f"{len(load.answers)} answers, {down_until - killed_at} with the ADS process dead, none changed")


def _async(predicate: Callable[[], bool]) -> Callable[[], Any]:
    async def probe() -> bool:
        return await asyncio.to_thread(predicate)

    return probe
