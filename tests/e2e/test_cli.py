"""The `agentxds` command as users run it: up (with the demo), validate, render."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.harness import REPO_ROOT, python_env
from xds_server.runtime.ports import free_port

DEMO = REPO_ROOT / "policies" / "demo"


def agentxds(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xds_server.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=python_env(), cwd=REPO_ROOT)  # fmt: skip


def demo_copy(tmp_path: Path) -> tuple[Path, int, int]:
    """The demo policies with the gateway, demo backend and policy service moved to free ports."""
    target = tmp_path / "demo"
    shutil.copytree(DEMO, target)
    gateway_port, backend_port, policy_port = free_port(), free_port(), free_port()
    gateway = (target / "gateway.yaml").read_text()
    gateway = gateway.replace("port: 10000", f"port: {gateway_port}").replace("port: 18081", f"port: {backend_port}")
    gateway = gateway.replace("port: 18001", f"port: {policy_port}")
    assert "extAuthzHttpPort: 18003" in gateway
    gateway = gateway.replace("extAuthzHttpPort: 18003", f"extAuthzHttpPort: {free_port()}")
    (target / "gateway.yaml").write_text(gateway)
    return target, gateway_port, backend_port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purpose.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def test_up_with_the_demo_serves_allowed_and_denied_calls_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    policy_dir, gateway_port, _ = demo_copy(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "xds_server.cli", "up", "--demo", str(policy_dir), "--approvals-port", str(free_port())],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=python_env(), cwd=REPO_ROOT,
    )  # fmt: skip
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        banner = "".join(lines)
        assert "Ctrl-C stops everything" in banner, banner
        url = f"http://127.0.0.1:{gateway_port}/mcp/github"
        assert url in banner
        pids = [int(p) for p in re.findall(r"pid (\d+)", banner)]
        assert len(pids) == 2, banner  # the demo MCP server and Envoy

        client = [sys.executable, "-m", "xds_server.demo.client", "--url", url, "--agent", "triage"]
        allowed = subprocess.run([*client, "call", "list_issues", "repo=acme/web"], capture_output=True, text=True,
                                 timeout=60, env=python_env())  # fmt: skip
        assert allowed.returncode == 0, allowed.stdout + allowed.stderr
        assert "issues of acme/web" in allowed.stdout
        denied = subprocess.run([*client, "--legacy", "call", "delete_repo", "repo=acme/web"], capture_output=True,
                                text=True, timeout=60, env=python_env())  # fmt: skip
        assert denied.returncode == 3, denied.stdout + denied.stderr
        assert '"code": -32003' in denied.stdout and "delete_repo" in denied.stdout

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in pids if _alive(p)], "up left processes running"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_validate_accepts_the_demo() -> None:
    result = agentxds("validate", str(DEMO))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_validate_reports_every_error_with_file_line_and_field(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(DEMO, broken)
    policy = (broken / "github-policy.yaml").read_text()
    (broken / "github-policy.yaml").write_text(policy.replace("agents: [executor]", "agents: [exectuor]", 1))
    agents = (broken / "agents.yaml").read_text()
    (broken / "agents.yaml").write_text(agents.replace("header: triage", "header: triage\n    spife: x"))
    result = agentxds("validate", str(broken))
    assert result.returncode == 1
    errors = result.stderr
    assert re.search(
        r"github-policy\.yaml:\d+: MCPPolicy/github spec\.rules\[1\]\.agents\[0\]: unknown agent 'exectuor'", errors
    ), errors
    assert re.search(
        r"agents\.yaml:\d+: Agent/triage spec\.identity\.spife: unknown field 'spife' \(did you mean 'spiffe'\?\)",
        errors,
    ), errors
    assert "2 error(s)" in errors


def test_render_shows_what_envoy_receives() -> None:
    xds = agentxds("render", str(DEMO), "--to", "xds")
    assert xds.returncode == 0, xds.stderr
    document = yaml.safe_load(xds.stdout)
    types = document["demo"]
    listener = types["type.googleapis.com/envoy.config.listener.v3.Listener"][0]
    assert listener["name"] == "gateway/demo"
    routes = types["type.googleapis.com/envoy.config.route.v3.RouteConfiguration"][0]
    demo_routes = routes["virtual_hosts"][0]["routes"]
    # The policy-service route (conditional tools/calls), the list route (per-caller
    # filtering), the native route, the 404.
    assert [r["name"] for r in demo_routes] == ["github", "github", "github", "no-backend"]
    authz_match, lists_match = demo_routes[0]["match"], demo_routes[1]["match"]
    assert authz_match["dynamic_metadata"][0]["value"] == {"string_match": {"exact": "tools/call"}}
    assert lists_match["dynamic_metadata"][0]["path"] == [{"key": "method"}]
    assert "dynamic_metadata" not in demo_routes[2]["match"]

    ir = agentxds("render", str(DEMO), "--to", "ir")
    assert ir.returncode == 0, ir.stderr
    gateway = yaml.safe_load(ir.stdout)["gateways"][0]
    assert [g["agent"] for g in gateway["listener"]["routes"][0]["grants"]] == ["executor", "triage"]


@pytest.mark.parametrize("args", [("validate", "/nonexistent/policies"), ("render", "/nonexistent/policies")])
def test_missing_policy_directory_is_a_clear_error(args: tuple[str, ...]) -> None:
    result = agentxds(*args)
    assert result.returncode == 1
    assert "no such policy file or directory" in result.stderr


def test_up_says_which_ports_are_taken_before_starting_anything(tmp_path: Path) -> None:
    import socket

    policy_dir, gateway_port, _ = demo_copy(tmp_path)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", gateway_port))
        squatter.listen()
        result = agentxds("up", "--demo", str(policy_dir), "--approvals-port", str(free_port()))
    assert result.returncode == 1
    assert f"127.0.0.1:{gateway_port}  gateway listener (spec.listen of Gateway demo)" in result.stdout
