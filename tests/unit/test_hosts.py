"""Backends that share a route by host name: what the policies may say, with file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from xds_server.controlplane.pipeline import compile_policies
from xds_server.policy.diagnostics import PolicyError

GATEWAY = """\
apiVersion: agentxds.dev/v1
kind: Gateway
metadata: {name: gw}
spec:
  listen: {address: 127.0.0.1, port: 10100}
  identity: {trustedHeader: x-agent-id}
"""


def backend(name: str, hosts: list[str] | None, port: int) -> str:
    host_line = f"  hosts: [{', '.join(hosts)}]\n" if hosts is not None else ""
    return (f"---\napiVersion: agentxds.dev/v1\nkind: MCPBackend\nmetadata: {{name: {name}}}\nspec:\n  route: /mcp\n"
            f"{host_line}  endpoints: [{{host: 127.0.0.1, port: {port}}}]\n")  # fmt: skip


def load(tmp_path: Path, *backends: str) -> None:
    (tmp_path / "all.yaml").write_text(GATEWAY + "".join(backends))
    compile_policies(tmp_path)


def test_backends_share_a_route_by_host_and_one_serves_the_other_names(tmp_path: Path) -> None:
    load(tmp_path, backend("a", ["a.actors.example"], 1), backend("b", ["b.actors.example", "c.example"], 2),
         backend("rest", None, 3))  # fmt: skip


@pytest.mark.parametrize(
    ("second", "says"),
    [
        (backend("b", ["b.example", "a.actors.example"], 2),
         "all.yaml:20: MCPBackend/b spec.route: route '/mcp' on gateway 'gw' for host 'a.actors.example' is already "
         "used by MCPBackend/a"),
        (backend("b", None, 2) + backend("c", None, 3),
         "MCPBackend/c spec.route: route '/mcp' on gateway 'gw' is already used by MCPBackend/b"),
    ],
)  # fmt: skip
def test_a_host_or_the_other_names_served_twice_is_refused(tmp_path: Path, second: str, says: str) -> None:
    with pytest.raises(PolicyError) as refused:
        load(tmp_path, backend("a", ["a.actors.example"], 1), second)
    assert says in str(refused.value)


@pytest.mark.parametrize("host", ["Actor.example", "a.example:8080", "*.actors.example", "a..example", "-a.example"])
def test_a_host_name_is_a_plain_lower_case_dns_name(tmp_path: Path, host: str) -> None:
    with pytest.raises(PolicyError) as refused:
        load(tmp_path, backend("a", [f'"{host}"'], 1))
    assert "spec.hosts[0]" in str(refused.value)
