"""The runtime registry as a policy source: Git always wins, and a registration never keeps Git's
policies from being served, whether it fails to load beside them or to build."""

from __future__ import annotations

from pathlib import Path

import pytest

from xds_server.controlplane import pipeline as pipeline_module
from xds_server.controlplane.pipeline import Pipeline
from xds_server.sources.registry import RegisteredSource, Registration, RegistryStore
from xds_server.xds.cache import SnapshotCache
from xds_server.xds.status import StatusRecorder

GIT = """\
apiVersion: agentxds.dev/v1
kind: Gateway
metadata: {name: gw}
spec: {listen: {address: 127.0.0.1, port: 10950}, identity: {trustedHeader: x-agent-id}}
---
apiVersion: agentxds.dev/v1
kind: Agent
metadata: {name: triage}
spec: {identity: {header: triage}}
---
apiVersion: agentxds.dev/v1
kind: MCPBackend
metadata: {name: github}
spec: {endpoints: [{host: 127.0.0.1, port: 18950}]}
---
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {name: github}
spec: {backend: github, rules: [{agents: [triage], tools: [whoami]}]}
"""


def _registration(name: str, route: str) -> Registration:
    spec = {"route": route, "endpoints": [{"host": "10.0.0.9", "port": 9999}], "path": "/"}
    return Registration(name, "A2AAgent", spec, ({"agents": ["triage"]},))


@pytest.fixture
def source(tmp_path: Path) -> RegisteredSource:
    (tmp_path / "git").mkdir()
    (tmp_path / "git" / "all.yaml").write_text(GIT)
    return RegisteredSource(tmp_path / "git", registry=RegistryStore(tmp_path / "registry.sqlite3"))


def _routes(pipeline: Pipeline) -> list[str]:
    assert pipeline.ir is not None
    return sorted(r.name for g in pipeline.ir.gateways for r in g.routes)


def test_registrations_are_served_beside_git_and_git_wins_a_name(source: RegisteredSource) -> None:
    source.registry.put(_registration("weather", "/a2a/weather"))
    source.registry.put(_registration("github", "/a2a/github"))  # a name Git uses
    pipeline = Pipeline(source, SnapshotCache(), StatusRecorder())
    result = pipeline.reload()
    assert result.ok and _routes(pipeline) == ["github", "weather"] and source.served == ["weather"]
    assert any("'github'" in w and "Git" in w for w in result.warnings), result.warnings


def test_a_registration_that_does_not_build_leaves_git_served(source: RegisteredSource,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    source.registry.put(_registration("weather", "/a2a/weather"))
    real = pipeline_module.translate_checked

    def failing(ir, memo=None):  # type: ignore[no-untyped-def]
        # A translator bug that only the registration's route meets.
        if any(r.name == "weather" for g in ir.gateways for r in g.routes):
            raise RuntimeError("translator bug")
        return real(ir, memo) if memo is not None else real(ir)

    monkeypatch.setattr(pipeline_module, "translate_checked", failing)
    pipeline = Pipeline(source, SnapshotCache(), StatusRecorder())
    result = pipeline.reload()
    assert result.ok and _routes(pipeline) == ["github"], result
    assert any("every registration is left out" in w and "translator bug" in w for w in result.warnings)
    assert source.without_registrations == []  # only for that build


def test_a_gateway_with_no_route_yet_translates_and_answers_nothing(tmp_path: Path) -> None:
    """All its agents may come from the registry: a gateway with no route is served (every path no_backend)."""
    from xds_server.controlplane.pipeline import compile_policies

    (tmp_path / "all.yaml").write_text(GIT.split("---\napiVersion: agentxds.dev/v1\nkind: MCPBackend")[0])
    ir, resources = compile_policies(tmp_path)
    assert [r.name for g in ir.gateways for r in g.routes] == []
    (scope,) = resources["gw"].scopes
    assert scope.key.fragments[0].string_key == "/.well-known/agentxds/no-routes"


def test_registrations_neither_empty_nor_fill_what_git_covers(source: RegisteredSource) -> None:
    """Removing the last registration is meant, not an accident of an edit: it is never refused as emptying."""
    (source.path / "all.yaml").write_text(GIT.split("---\napiVersion: agentxds.dev/v1\nkind: MCPBackend")[0])
    source.registry.put(_registration("weather", "/a2a/weather"))
    pipeline = Pipeline(source, SnapshotCache(), StatusRecorder())
    assert pipeline.reload().ok and _routes(pipeline) == ["weather"]
    source.registry.remove("weather")
    result = pipeline.reload()
    assert result.ok and _routes(pipeline) == [], result
