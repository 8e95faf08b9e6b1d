"""The `agentxds` command as users run it: up (with the demo), validate, render."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.e2e.harness import REPO_ROOT, python_env
from xds_server.cli import pki
from xds_server.runtime.ports import free_port

DEMO = REPO_ROOT / "policies" / "demo"


def agentxds(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xds_server.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=python_env(), cwd=REPO_ROOT)  # fmt: skip


def free_ports_in_a_row(count: int) -> int:
    """The first of `count` consecutive free ports on 127.0.0.1."""
    for _ in range(100):
        first = free_port()
        if first + count <= 65536 and all(port_open_free(first + k) for k in range(1, count)):
            return first
    raise RuntimeError(f"no {count} free ports in a row found")


def port_open_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def demo_copy(tmp_path: Path, gateway_ports: int = 1) -> tuple[Path, int, int]:
    """The demo policies with the gateway, demo backend and policy service moved to free ports
    (`gateway_ports` free in a row from the gateway's, for replicas)."""
    target = tmp_path / "demo"
    shutil.copytree(DEMO, target)
    gateway_port, backend_port, policy_port = free_ports_in_a_row(gateway_ports), free_port(), free_port()
    a2a = (target / "a2a.yaml").read_text()
    assert "port: 18082" in a2a
    (target / "a2a.yaml").write_text(a2a.replace("port: 18082", f"port: {free_port()}"))
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


class Up:
    """`agentxds up --demo` as a user runs it, with its own state directory; read its output as it comes."""

    def __init__(self, policy_dir: Path, state_dir: Path, *args: str) -> None:
        self.state_dir = state_dir
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xds_server.cli", "up", "--demo", str(policy_dir), "--state-dir", str(state_dir),
             "--approvals-port", str(free_port()), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=python_env(), cwd=REPO_ROOT,
        )  # fmt: skip
        self.lines: list[str] = []
        self._output: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.banner = self.read_until("Ctrl-C stops everything")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._output.put(line)
        self._output.put(None)

    def read_until(self, marker: str, timeout: float = 60) -> str:
        """Output lines up to the first (new) one containing `marker`, joined."""
        start, deadline = len(self.lines), time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._output.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if marker in line:
                return "".join(self.lines[start:])
        raise AssertionError(f"`up` never printed {marker!r}; it printed:\n{''.join(self.lines)}")

    def pids(self) -> dict[str, int]:
        """The pid of each child the banner names: demo MCP server, demo A2A agent, envoy."""
        found = re.findall(r"^(demo MCP server|demo A2A agent|envoy)\s.*?pid (\d+)", self.banner, re.M)
        return {what: int(pid) for what, pid in found}

    def agentxds(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Another command, finding this `up` through the state directory only (no address given)."""
        return agentxds(*args, "--state-dir", str(self.state_dir))

    def stop(self) -> str:
        """Ctrl-C, and everything `up` printed from then on."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)
        rest = []
        while (line := self._output.get(timeout=10)) is not None:
            rest.append(line)
        self.lines += rest
        return "".join(rest)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def readme_try_it() -> dict[str, str]:
    """The README's "Try it" examples: the banner of `make up`, and the output shown after each client call."""
    section = (REPO_ROOT / "README.md").read_text().split("## Try it", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"((?:^    .*\n)+)", section, re.M)
    shown = {"banner": "\n".join(line[4:] for line in blocks[0].splitlines())}
    for block in blocks[1:]:
        lines = [line[4:] for line in block.splitlines()]
        for i, line in enumerate(lines):
            if line.startswith(".venv/bin/python -m xds_server.demo.client --agent triage call "):
                output = []
                for following in lines[i + 1 :]:
                    if following.startswith(".venv/") or not following.strip():
                        break
                    output.append(following)
                shown[line.split(" --agent triage ", 1)[1]] = "\n".join(output)
    return shown


def demo_client(url: str, agent: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xds_server.demo.client", "--url", url, "--agent", agent, *args],
                          capture_output=True, text=True, timeout=60, env=python_env())  # fmt: skip


def test_up_with_the_demo_serves_allowed_and_denied_calls_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    policy_dir, gateway_port, _ = demo_copy(tmp_path)
    up = Up(policy_dir, tmp_path / "state")
    try:
        url = f"http://127.0.0.1:{gateway_port}/mcp/github"
        assert url in up.banner
        pids = up.pids()
        assert set(pids) == {"demo MCP server", "demo A2A agent", "envoy"}, up.banner
        workdir = Path(re.search(r"^logs\s+(\S+)", up.banner, re.M).group(1))  # type: ignore[union-attr]
        assert (workdir / "envoy.log").exists() and (workdir / "control-plane.log").exists()

        allowed = demo_client(url, "triage", "call", "list_issues", "repo=acme/web")
        assert allowed.returncode == 0, allowed.stdout + allowed.stderr
        assert "issues of acme/web" in allowed.stdout
        denied = demo_client(url, "triage", "--legacy", "call", "delete_repo", "repo=acme/web")
        assert denied.returncode == 3, denied.stdout + denied.stderr
        # The demo A2A agent through the gateway, as the README shows it.
        planner = f"http://127.0.0.1:{gateway_port}/a2a/planner"
        card = httpx.get(planner + "/.well-known/agent-card.json", headers={"x-agent-id": "executor"}).json()
        assert [s["id"] for s in card["skills"]] == ["echo"] and card["supportedInterfaces"][0]["url"] == planner
        sent = httpx.post(planner, headers={"x-agent-id": "triage", "a2a-version": "1.0"}, json={
            "jsonrpc": "2.0", "id": 1, "method": "SendMessage",
            "params": {"message": {"role": "ROLE_USER", "messageId": "m1", "parts": [{"text": "hi"}]}}}).json()  # fmt: skip
        assert sent["result"]["task"]["id"].startswith("t1."), sent
        # What the README's "Try it" shows is what users see.
        try_it = readme_try_it()
        assert allowed.stdout.strip() == try_it["call list_issues repo=acme/web"], allowed.stdout
        assert denied.stdout.strip() == try_it["call delete_repo repo=acme/web"], denied.stdout
        labels = [line[:18].rstrip() for line in up.banner.splitlines()]
        assert labels == [line[:18].rstrip() for line in try_it["banner"].splitlines()], up.banner

        # status and approvals find this `up` with no address given.
        status = up.agentxds("status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert "demo  version" in status.stdout and "healthy" in status.stdout
        assert "demo-up  group demo  connected" in status.stdout, status.stdout
        listed = up.agentxds("approvals", "list")
        assert listed.returncode == 0 and "no approvals waiting" in listed.stdout, listed.stdout + listed.stderr

        # A bad edit is reported once (the control plane's log goes to its file), then a fix applies.
        agents = (policy_dir / "agents.yaml").read_text()
        (policy_dir / "agents.yaml").write_text(agents.replace("header: triage", "header: triage\n    spife: x"))
        refused = up.read_until("spife", timeout=20)
        assert "policy change refused; the last good configuration keeps serving:" in refused, refused
        (policy_dir / "agents.yaml").write_text(agents)
        applied = up.read_until("policies fixed", timeout=20)
        assert "".join([refused, applied]).count("unknown field 'spife'") == 1, refused + applied

        rest = up.stop()
        assert up.proc.returncode == 0, rest
        assert f"removed {workdir}" in rest
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in pids.values() if _alive(p)], "up left processes running"
        assert not workdir.exists(), "up left its temporary directory behind"
        assert not (tmp_path / "state" / "up.json").exists(), "up left its record behind"
        gone = up.agentxds("status")
        assert gone.returncode == 2 and "no running agentxds up recorded in" in gone.stderr, gone.stderr
    finally:
        up.kill()


def test_up_with_replicas_runs_envoys_on_consecutive_ports_from_one_control_plane(tmp_path: Path) -> None:
    policy_dir, gateway_port, _ = demo_copy(tmp_path, gateway_ports=3)
    up = Up(policy_dir, tmp_path / "state", "--replicas", "3")
    try:
        envoy_pids = [int(p) for p in re.findall(r"^envoy(?: \d)?\s+pid (\d+)", up.banner, re.M)]
        assert len(envoy_pids) == 3, up.banner
        for k in (2, 3):
            assert f"the same routes on http://127.0.0.1:{gateway_port + k - 1}" in up.banner, up.banner
        for port in (gateway_port, gateway_port + 1, gateway_port + 2):
            allowed = demo_client(
                f"http://127.0.0.1:{port}/mcp/github", "triage", "call", "list_issues", "repo=acme/web"
            )
            assert allowed.returncode == 0 and "issues of acme/web" in allowed.stdout, allowed.stdout + allowed.stderr
        status = up.agentxds("status")
        assert status.returncode == 0, status.stdout + status.stderr
        for node in ("demo-up", "demo-up-2", "demo-up-3"):
            assert f"  {node}  group demo  connected" in status.stdout, status.stdout
        assert "Nodes (3):" in status.stdout
        # Every replica accepted the same version of every type, and all are in effect.
        acked = re.findall(r"^    (CDS|EDS|LDS|SRDS|RDS)\s+(\S+)\s+(\S+)\s+(\S+)$", status.stdout, re.M)
        assert len(acked) == 15 and all(a == s and state == "ok" for _, a, s, state in acked), status.stdout
        assert len(set(acked)) == 5, status.stdout
        rest = up.stop()
        assert up.proc.returncode == 0, rest
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in envoy_pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in envoy_pids if _alive(p)], "up left an Envoy running"
    finally:
        up.kill()


def _approval_id(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 3, result.stdout + result.stderr
    error = json.loads(result.stdout)
    assert error["code"] == -32006, error
    return str(error["data"]["approvalId"])


def test_approvals_keep_their_history_across_a_restart_and_a_dead_child_is_reported(tmp_path: Path) -> None:
    policy_dir, gateway_port, backend_port = demo_copy(tmp_path)
    url = f"http://127.0.0.1:{gateway_port}/mcp/github"
    delete = ("call", "delete_repo", "repo=acme/old")
    up = Up(policy_dir, tmp_path / "state")
    try:
        first = _approval_id(demo_client(url, "executor", *delete))
        approved = up.agentxds("approvals", "approve", first, "--by", "alice")
        assert approved.returncode == 0, approved.stdout + approved.stderr
        done = demo_client(url, "executor", *delete)
        assert done.returncode == 0 and "deleted acme/old" in done.stdout, done.stdout + done.stderr
        second = _approval_id(demo_client(url, "executor", *delete))  # the same call again: asks anew
        assert second != first
        up.stop()
    finally:
        up.kill()

    up = Up(policy_dir, tmp_path / "state")  # the same state directory: a restart
    try:
        history = up.agentxds("approvals", "list", "--all")
        assert history.returncode == 0, history.stderr
        rows = {line.split()[0]: line for line in history.stdout.splitlines()}
        assert set(rows) == {first, second}, history.stdout
        assert " used " in rows[first] and "decided by alice" in rows[first], rows[first]
        assert " pending " in rows[second], rows[second]
        assert _approval_id(demo_client(url, "executor", *delete)) == second  # still the call's open approval

        # The demo MCP server dies: `up` says so at once, reaps it, and calls say what happened.
        demo_pid = up.pids()["demo MCP server"]
        os.kill(demo_pid, signal.SIGKILL)
        report = up.read_until("was killed by signal 9", timeout=10)
        assert f"demo MCP server http://127.0.0.1:{backend_port}/mcp (pid {demo_pid})" in report, report
        assert "Its log: " in report
        deadline = time.monotonic() + 5
        while Path(f"/proc/{demo_pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{demo_pid}").exists(), "the dead demo server was not reaped (a zombie)"
        unavailable = demo_client(url, "triage", "call", "list_issues", "repo=acme/web")
        assert unavailable.returncode == 3, unavailable.stdout + unavailable.stderr
        error = json.loads(unavailable.stdout)
        assert error["code"] == -32053
        assert error["message"] == f"Backend 'github' is unavailable: connection refused by 127.0.0.1:{backend_port}"
        assert "Connection_refused" in error["data"]["detail"]

        rest = up.stop()
        assert up.proc.returncode == 0, rest
        kept = re.search(r"logs kept in (\S+)", rest)
        assert kept is not None, rest  # something died: the logs stay for the operator
        shutil.rmtree(kept.group(1))
    finally:
        up.kill()


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
    # Each route's own route configuration, and discovery's (the demo uses the policy service over HTTP).
    found, planner, routes = types["type.googleapis.com/envoy.config.route.v3.RouteConfiguration"]
    assert (found["name"], planner["name"], routes["name"]) == ("agentxds/discovery/demo", "routes/a2a/planner",
                                                                "routes/mcp/github")  # fmt: skip
    found_scope, _, _, scope = types["type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration"]
    assert found_scope["key"] == {"fragments": [{"string_key": "/.well-known/agentxds/discovery"}]}
    assert scope["key"] == {"fragments": [{"string_key": "/mcp/github"}]}
    assert scope["route_configuration_name"] == "routes/mcp/github"
    demo_routes = routes["virtual_hosts"][0]["routes"]
    # The policy-service route (conditional tools/calls), the list route (per-caller
    # filtering), the native route.
    assert [r["name"] for r in demo_routes] == ["github", "github", "github"]
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


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--state-store", "redis://:hunter2@cache:port/0"), "redis://:***@cache:port/0: Port could not be cast"),
        (("--state-store", "memcached://cache:11211"), "must specify one of the following schemes"),
        (("--endpoints-port", "0"), "needs a token of at least 16 characters"),
        (("--registry-port", "0"), "--registry-port needs a token of at least 16 characters"),
        (("--approvals-host", "0.0.0.0"), "the approvals API on 0.0.0.0 (--approvals-host) needs a token"),
    ],
)  # fmt: skip
def test_serve_refuses_a_bad_store_url_or_an_endpoints_api_without_a_token(args: tuple[str, ...], says: str) -> None:
    result = agentxds("serve", str(DEMO), *args)
    assert result.returncode != 0 and says in result.stderr, result.stderr
    assert "hunter2" not in result.stderr + result.stdout  # a password never in a message


def test_up_says_which_ports_are_taken_before_starting_anything(tmp_path: Path) -> None:
    import socket

    policy_dir, gateway_port, _ = demo_copy(tmp_path)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", gateway_port))
        squatter.listen()
        result = agentxds("up", "--demo", str(policy_dir), "--approvals-port", str(free_port()))
    assert result.returncode == 1
    assert f"127.0.0.1:{gateway_port}  gateway listener (spec.listen of Gateway demo)" in result.stdout


def test_up_refuses_a_gateway_whose_policy_service_is_reached_over_tls(tmp_path: Path) -> None:
    """`up` runs the policy service itself, on this machine, without TLS: a Gateway that asks Envoy for TLS to it
    would have every decided call refused, so up says so and starts nothing."""
    policy_dir, _, _ = demo_copy(tmp_path)
    ca = pki.mint_ca("policy service CA")
    pki.write_pem(policy_dir / "service-ca.crt", ca.cert_pem)
    gateway = (policy_dir / "gateway.yaml").read_text()
    marker = "extAuthzHttpPort: "
    assert marker in gateway
    gateway = gateway.replace(marker, "tls: {caFile: service-ca.crt}, " + marker, 1)
    (policy_dir / "gateway.yaml").write_text(gateway)
    result = agentxds("up", "--demo", str(policy_dir), "--approvals-port", str(free_port()))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "has policyService.tls, but up runs the policy service itself" in result.stdout


def test_an_approvals_api_with_a_token_answers_only_requests_that_carry_it(tmp_path: Path) -> None:
    """`serve --host 0.0.0.0` keeps the approvals API on loopback (the decision ports on every address); with
    $AGENTXDS_APPROVALS_TOKEN, `agentxds approvals` without the token is refused (401, said so), with
    `--token-file` it lists; the banner says where and that a token is required."""
    policy_dir, _, _ = demo_copy(tmp_path)
    approvals_port, token = free_port(), "approvals-token-0123456789"
    (tmp_path / "token").write_text(token + "\n")
    policy_port = free_port()
    argv = [sys.executable, "-m", "xds_server.cli", "serve", str(policy_dir), "--host", "0.0.0.0", "--port",
            str(free_port()), "--policy-port", str(policy_port), "--authz-http-port", str(free_port()),
            "--approvals-port", str(approvals_port), "--state-dir", str(tmp_path / "state")]  # fmt: skip
    serve = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT,
                             env={**python_env(), "AGENTXDS_APPROVALS_TOKEN": token})  # fmt: skip
    try:
        assert serve.stdout is not None
        banner = ""
        for line in serve.stdout:  # log lines, then the banner
            if line.startswith("agentxds control plane"):
                banner = line
                break
        assert f"approvals on http://127.0.0.1:{approvals_port} (token required)" in banner, banner
        listening = _listening_addresses(serve.pid)
        assert listening.get(approvals_port) == {"127.0.0.1"}, listening  # loopback only, whatever --host is
        assert listening.get(policy_port, set()) & {"0.0.0.0", "::"}, listening  # the decision ports: every address
        url = f"http://127.0.0.1:{approvals_port}"
        refused = agentxds("approvals", "list", "--url", url)
        assert refused.returncode == 1 and "a valid bearer token is required" in refused.stderr, refused.stderr
        listed = agentxds("approvals", "list", "--url", url, "--token-file", str(tmp_path / "token"))
        assert listed.returncode == 0 and "no approvals waiting" in listed.stdout, listed.stdout + listed.stderr
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=30)


def _listening_addresses(pid: int) -> dict[int, set[str]]:
    """The addresses each TCP port of process `pid` listens on, IPv4 and IPv6 (from /proc: what is bound,
    not what the process says)."""
    import ipaddress

    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found: dict[int, set[str]] = {}
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # LISTEN
                continue
            hex_ip, hex_port = local.split(":")
            # /proc prints each 32-bit word of the address in host (little-endian) order.
            raw = b"".join(bytes.fromhex(hex_ip[i : i + 8])[::-1] for i in range(0, len(hex_ip), 8))
            found.setdefault(int(hex_port, 16), set()).add(str(ipaddress.ip_address(raw)))
    return found
