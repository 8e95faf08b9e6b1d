"""End to end: policy edits reach a running Envoy without a restart; bad edits never do.

Each test gets its own gateway because each one edits the policies.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from mcp.shared.exceptions import MCPError

from tests.e2e.gateway import (
    GATEWAY,
    IDENTITY_HEADER,
    POLICY_YAML,
    RunningGateway,
    eventually,
    start_gateway,
    stop_gateway,
    until,
    wait_listening,
)
from tests.e2e.harness import McpBackend, mcp_client
from xds_server.controlplane.service import ControlPlane
from xds_server.core import errors
from xds_server.runtime.bootstrap import render_bootstrap
from xds_server.runtime.envoy import EnvoyProcess
from xds_server.runtime.ports import free_port, port_open

TRIAGE = {IDENTITY_HEADER: "triage"}
GRANT_CREATE_ISSUE = POLICY_YAML.replace('tools: [list_issues, "get_*"]', 'tools: [list_issues, "get_*", create_issue]')


@pytest_asyncio.fixture(loop_scope="session")
async def gateway(mcp_backend_factory: Any, tmp_path: Path) -> AsyncIterator[RunningGateway]:
    backend = mcp_backend_factory(name="github")
    gw = await start_gateway(tmp_path / "gateway", {"github": backend})
    yield gw
    await stop_gateway(gw)


async def _allowed(client: Any, tool: str, arguments: dict[str, Any]) -> bool:
    try:
        result = await client.call_tool(tool, arguments)
    except MCPError as exc:
        assert exc.code == errors.TOOL_DENIED.code, exc
        return False
    return not result.is_error


def _session_ids(backend: McpBackend) -> set[str]:
    return {r["headers"]["mcp-session-id"] for r in backend.requests() if "mcp-session-id" in r["headers"]}


async def test_policy_edit_is_enforced_while_a_legacy_session_stays_open(gateway: RunningGateway) -> None:
    backend = gateway.backends["github"]
    envoy_pid = gateway.envoy.pid
    async with mcp_client(gateway.url(), TRIAGE, "legacy") as client:
        assert not await _allowed(client, "create_issue", {"repo": "acme/web", "title": "t"})
        assert await _allowed(client, "list_issues", {"repo": "acme/web"})

        gateway.write("github-policy.yaml", GRANT_CREATE_ISSUE)
        took = await eventually(lambda: _allowed(client, "create_issue", {"repo": "acme/web", "title": "t"}),
                                timeout=15, what="the new grant to be enforced")  # fmt: skip
        print(f"policy edit enforced after {took * 1000:.0f} ms")
        # The same session goes on working after the change.
        assert await _allowed(client, "list_issues", {"repo": "acme/web"})

        gateway.write("github-policy.yaml", POLICY_YAML)  # and revoking works the same way
        await eventually(lambda: _not(_allowed(client, "create_issue", {"repo": "acme/web", "title": "t"})),
                         timeout=15, what="the revoked grant to be enforced")  # fmt: skip
        assert await _allowed(client, "list_issues", {"repo": "acme/web"})

    assert gateway.envoy.pid == envoy_pid and gateway.envoy.running()
    methods = backend.rpc_methods()
    assert methods.count("initialize") == 1, methods  # one session throughout, never re-initialised
    assert len(_session_ids(backend)) == 1


async def _not(check: Any) -> bool:
    return not await check


def _drain_stats(gateway: RunningGateway) -> dict[str, int]:
    stats = gateway.envoy.stats()
    names = ("listener_manager.listener_modified", "listener_manager.listener_removed",
             "listener_manager.total_listeners_draining", f"http.{GATEWAY}.downstream_cx_drain_close")  # fmt: skip
    missing = [n for n in names if n not in stats]
    assert not missing, f"Envoy has no such stats: {missing}"  # else the comparison below would prove nothing
    return {name: int(stats[name]) for name in names}


WIKI_POLICY = """\
---
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {name: wiki}
spec:
  backend: wiki
  rules:
    - agents: [triage]
      tools: [whoami]
"""


@pytest_asyncio.fixture(loop_scope="session")
async def two_backends(mcp_backend_factory: Any, tmp_path: Path) -> AsyncIterator[RunningGateway]:
    backends = {"github": mcp_backend_factory(name="github"), "wiki": mcp_backend_factory(name="wiki")}
    gw = await start_gateway(tmp_path / "gateway", backends, policy_yaml=POLICY_YAML + WIKI_POLICY)
    yield gw
    await stop_gateway(gw)


async def test_a_rule_edit_sends_one_route_configuration_and_drains_no_connection(
    two_backends: RunningGateway,
) -> None:
    """A grant changes one backend's route configuration (RDS, chosen per path by SRDS): Envoy is sent
    that one alone and keeps the other's, the listener is not touched, so Envoy drains nothing and an
    open legacy session goes on, on its connection."""
    from xds_server.xds import snapshot as xds

    gateway = two_backends
    before = gateway.control.cache.get(GATEWAY)
    assert before is not None
    async with mcp_client(gateway.url(), TRIAGE, "legacy") as client, \
            mcp_client(gateway.url("wiki"), TRIAGE, "legacy") as wiki:  # fmt: skip
        assert await _allowed(client, "list_issues", {"repo": "acme/web"})
        assert await _allowed(wiki, "whoami", {})
        drains = _drain_stats(gateway)
        reloads = gateway.control.reloads
        gateway.write("github-policy.yaml", GRANT_CREATE_ISSUE + WIKI_POLICY)
        await gateway.wait_reloads(reloads + 1)
        after = gateway.control.cache.get(GATEWAY)
        assert after is not None and after.version != before.version
        await gateway.wait_acked(after.version)
        changed = {t for t in xds.ORDER if after.type_version(t) != before.type_version(t)}
        assert changed == {xds.ROUTE}, changed
        routes = {n: v for n, v in after.resource_versions[xds.ROUTE].items()
                  if v != before.resource_versions[xds.ROUTE][n]}  # fmt: skip
        assert list(routes) == ["routes/mcp/github"]  # wiki's configuration is the one Envoy kept
        assert await _allowed(client, "create_issue", {"repo": "acme/web", "title": "t"})  # the same session
        assert await _allowed(wiki, "whoami", {})
        assert not await _allowed(wiki, "list_issues", {"repo": "acme/web"})  # wiki's rules as they were
        assert _drain_stats(gateway) == drains
    for backend in gateway.backends.values():
        methods = backend.rpc_methods()
        assert methods.count("initialize") == 1, methods


async def test_a_backend_s_cluster_change_warms_at_once(two_backends: RunningGateway) -> None:
    """A cluster-level change (a connect timeout) makes Envoy warm a new cluster, which needs its
    endpoints again although they did not change: they are sent, so it warms at once (not after
    Envoy's 15 s fetch timeout) and serves."""
    from xds_server.xds import snapshot as xds

    gateway = two_backends
    before = gateway.control.cache.get(GATEWAY)
    assert before is not None
    backends = (gateway.policy_dir / "backends.yaml").read_text()
    reloads = gateway.control.reloads
    gateway.write("backends.yaml", backends.replace("timeouts: {connect: 2s", "timeouts: {connect: 3s", 1))
    await gateway.wait_reloads(reloads + 1)
    after = gateway.control.cache.get(GATEWAY)
    assert after is not None
    assert after.type_version(xds.CLUSTER) != before.type_version(xds.CLUSTER)
    assert after.type_version(xds.ENDPOINT) == before.type_version(xds.ENDPOINT)
    await gateway.wait_acked(after.version)
    await until(lambda: gateway.envoy.stats().get("cluster_manager.warming_clusters") == 0, 5,
                "the changed cluster to warm")  # fmt: skip
    async with mcp_client(gateway.url(), TRIAGE) as client:
        assert await _allowed(client, "list_issues", {"repo": "acme/web"})


BROKEN_POLICY = POLICY_YAML.replace("agents: [executor]", "agents: [exectuor]").replace(
    "prompts: [summarize]", "prompts: [summarize]\n      tols: [delete_repo]"
)


async def test_bad_edit_is_refused_with_file_line_and_field_and_the_last_good_policy_keeps_serving(
    gateway: RunningGateway,
) -> None:
    good_version = gateway.control.cache.get(GATEWAY).version
    reloads = gateway.control.reloads
    gateway.write("github-policy.yaml", BROKEN_POLICY)
    await gateway.wait_reloads(reloads + 1)

    result = gateway.control.last_reload
    assert result is not None and not result.ok
    report = "\n".join(result.errors)
    # Every error at once, each with file, line and field path.
    assert "github-policy.yaml:11: MCPPolicy/github spec.rules[0].tols: unknown field 'tols'" in report, report
    assert "github-policy.yaml:12: MCPPolicy/github spec.rules[1].agents[0]: unknown agent 'exectuor'" in report, report
    assert gateway.control.recorder.view().policy_errors == result.errors
    assert gateway.control.cache.get(GATEWAY).version == good_version

    # Envoy still enforces the last good policy.
    async with mcp_client(gateway.url(), TRIAGE, "modern") as client:
        assert await _allowed(client, "list_issues", {"repo": "acme/web"})
        assert not await _allowed(client, "delete_repo", {"repo": "acme/web"})

    # A fixed file is picked up and clears the errors.
    gateway.write("github-policy.yaml", GRANT_CREATE_ISSUE)
    await gateway.wait_reloads(reloads + 2)
    assert gateway.control.last_reload.ok
    assert gateway.control.recorder.view().policy_errors == ()
    await gateway.wait_acked(gateway.control.cache.get(GATEWAY).version)
    async with mcp_client(gateway.url(), TRIAGE, "modern") as client:
        assert await _allowed(client, "create_issue", {"repo": "acme/web", "title": "t"})


async def test_an_emptied_policy_file_is_refused_and_reported_while_the_old_policy_keeps_serving(
    gateway: RunningGateway,
) -> None:
    from xds_server.cli.status import format_status
    from xds_server.xds.status_api import get_status

    good_version = gateway.control.cache.get(GATEWAY).version
    reloads = gateway.control.reloads
    gateway.write("github-policy.yaml", "")  # an editor truncating the file mid-save
    await gateway.wait_reloads(reloads + 1)

    result = gateway.control.last_reload
    assert result is not None and not result.ok and result.internal is None
    report = "\n".join(result.errors)
    assert "github-policy.yaml: this file had 1 policy document(s) and is now empty" in report, report
    assert f"Gateway/{GATEWAY}: every grant is gone" in report, report
    assert "--allow-emptying" in report, report
    assert gateway.control.cache.get(GATEWAY).version == good_version

    # Reported where an operator looks: the status API and `agentxds status`.
    status = await get_status(gateway.control.server.address, timeout=5.0)
    assert tuple(status.policy_errors) == result.errors
    shown = format_status(status)
    assert "POLICY ERRORS" in shown and "the last good configuration keeps serving" in shown, shown
    assert "github-policy.yaml: this file had 1 policy document(s)" in shown, shown

    # Envoy still enforces the last good policy, in both revisions.
    for revision in ("modern", "legacy"):
        async with mcp_client(gateway.url(), TRIAGE, revision) as client:
            assert await _allowed(client, "list_issues", {"repo": "acme/web"})
            assert not await _allowed(client, "delete_repo", {"repo": "acme/web"})

    # Writing the file back publishes again and clears the report.
    gateway.write("github-policy.yaml", POLICY_YAML)
    await gateway.wait_reloads(reloads + 2)
    assert gateway.control.last_reload.ok
    assert gateway.control.recorder.view().policy_errors == ()


async def test_envoy_started_before_the_control_plane_waits_then_gets_its_config(
    mcp_backend_factory: Any, tmp_path: Path
) -> None:
    from tests.e2e.gateway import write_policies

    backend = mcp_backend_factory(name="github")
    listen_port, xds_port, policy_port = free_port(), free_port(), free_port()
    policy_dir = tmp_path / "policies"
    write_policies(policy_dir, listen_port, {"github": backend}, policy_port=policy_port)
    bootstrap = render_bootstrap(node_id="early", node_cluster=GATEWAY, xds_host="127.0.0.1", xds_port=xds_port,
                                 admin_port=0)  # fmt: skip
    envoy = EnvoyProcess(bootstrap, workdir=tmp_path / "envoy", log_level="warning").start()
    control = ControlPlane(policy_dir, port=xds_port, watch=False, policy_port=policy_port)
    try:
        await envoy.wait_live_async(20)
        assert envoy.server_state() != "LIVE"  # waiting for its first configuration
        assert not port_open("127.0.0.1", listen_port)

        await control.start()
        await wait_listening(listen_port, timeout=20)
        async with mcp_client(f"http://127.0.0.1:{listen_port}/mcp/github", TRIAGE, "modern") as client:
            result = await client.call_tool("list_issues", {"repo": "acme/web"})
        assert result.content[0].text == "issues of acme/web: #1 bug, #2 feature"
        assert envoy.server_state() == "LIVE"
    finally:
        envoy.stop()
        await control.stop()


async def test_removing_a_grant_file_denies_again_once_allowed(gateway: RunningGateway) -> None:
    """Deleting the only grant file leaves the gateway without grants: refused unless the operator
    allows emptying (`--allow-emptying`); then no rule means deny."""
    reloads = gateway.control.reloads
    (gateway.policy_dir / "github-policy.yaml").unlink()
    await gateway.wait_reloads(reloads + 1)
    refused = gateway.control.last_reload
    assert not refused.ok and any(f"Gateway/{GATEWAY}: every grant is gone" in e for e in refused.errors)

    gateway.control.pipeline.allow_emptying = True  # what `serve --allow-emptying` sets
    assert gateway.control.reload().ok
    await gateway.wait_acked(gateway.control.cache.get(GATEWAY).version)
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    from tests.e2e.harness import raw_post

    response = await raw_post(gateway.url(), body, TRIAGE)
    assert response.status_code == 200
    assert response.json()["error"]["code"] == errors.METHOD_DENIED.code


NEW_AGENT = """\
apiVersion: agentxds.dev/v1
kind: Agent
metadata: {name: reviewer}
spec: {identity: {header: reviewer}}
"""


@pytest.mark.parametrize("mode", ["legacy", "modern"])
async def test_adding_an_agent_keeps_open_sessions_working(gateway: RunningGateway, mode: str) -> None:
    """A new agent changes the listener (its unknown-agent check): Envoy drains, clients carry on."""
    backend = gateway.backends["github"]
    reviewer = {IDENTITY_HEADER: "reviewer"}
    async with mcp_client(gateway.url(), TRIAGE, mode) as client:
        assert await _allowed(client, "list_issues", {"repo": "acme/web"})
        reloads = gateway.control.reloads
        gateway.write("reviewer.yaml", NEW_AGENT)
        await gateway.wait_reloads(reloads + 1)
        await gateway.wait_acked(gateway.control.cache.get(GATEWAY).version)
        for _ in range(5):  # across the listener drain
            assert await _allowed(client, "list_issues", {"repo": "acme/web"})
    # The new agent is known (it gets whoami through the "*" rule) but has no other grant.
    async with mcp_client(gateway.url(), reviewer, mode) as client:
        assert await _allowed(client, "whoami", {})
        assert not await _allowed(client, "list_issues", {"repo": "acme/web"})
    if mode == "legacy":
        assert backend.rpc_methods().count("initialize") == 2  # triage's session and reviewer's, no re-initialise


async def test_envoy_keeps_enforcing_while_the_control_plane_is_down_then_reconnects(gateway: RunningGateway) -> None:
    from tests.e2e.harness import raw_post

    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}

    def call(tool: str, request_id: int) -> str:
        return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                           "params": {"name": tool, "arguments": {"repo": "acme/web"}, "_meta": meta}})  # fmt: skip

    def headers(tool: str) -> dict[str, str]:
        return {**TRIAGE, "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": tool}

    xds_port = gateway.control.port
    policy_port = gateway.control.policy_service.port if gateway.control.policy_service else None
    await gateway.control.stop()  # ADS and the policy service are gone
    try:
        allowed = await raw_post(gateway.url(), call("list_issues", 1), headers("list_issues"))
        denied = await raw_post(gateway.url(), call("delete_repo", 2), headers("delete_repo"))
        # Fail static: the last configuration keeps enforcing, natively.
        assert allowed.status_code == 200 and "issues of acme/web" in allowed.text
        assert denied.status_code == 200 and denied.json()["error"]["code"] == errors.TOOL_DENIED.code
    finally:
        gateway.control = ControlPlane(gateway.policy_dir, port=xds_port, debounce_ms=50, policy_port=policy_port,
                                       approvals_port=0)  # fmt: skip
        await gateway.control.start()
    # Envoy reconnects by itself and follows edits again.
    await gateway.wait_acked(gateway.control.cache.get(GATEWAY).version, timeout=15)
    reloads = gateway.control.reloads
    gateway.write("github-policy.yaml", GRANT_CREATE_ISSUE)
    await gateway.wait_reloads(reloads + 1)
    async with mcp_client(gateway.url(), TRIAGE, "modern") as client:
        took = await eventually(lambda: _allowed(client, "create_issue", {"repo": "acme/web", "title": "t"}),
                                timeout=15, what="an edit made after the reconnection")  # fmt: skip
    print(f"edit enforced {took * 1000:.0f} ms after reload on the new control plane")
