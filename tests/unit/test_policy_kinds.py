"""Policy kinds are data: the kinds registry is where the loader, the schema, PolicySet and the
cross-document checks learn about a kind."""

from __future__ import annotations

from dataclasses import replace

import pytest

from xds_server.policy import checks, kinds
from xds_server.policy.checks import Declared, cross_check
from xds_server.policy.diagnostics import PolicyError
from xds_server.policy.load import load_texts
from xds_server.policy.located import Source
from xds_server.policy.schema import generate_schema


def test_the_schema_and_the_loader_know_exactly_the_registered_kinds() -> None:
    registered = {spec.kind for spec in kinds.KIND_SPECS}
    schema_kinds = {
        d["properties"]["kind"]["const"]
        for d in generate_schema()["$defs"].values()
        if "kind" in d.get("properties", {})
    }
    assert schema_kinds == registered
    with pytest.raises(PolicyError) as refused:
        load_texts({"x.yaml": "apiVersion: agentxds.dev/v1\nkind: Nope\nmetadata: {name: x}\nspec: {}\n"})
    assert f"expected one of: {', '.join(sorted(registered))}" in str(refused.value)


def test_policy_set_groups_documents_by_registered_kind() -> None:
    policy_set = load_texts(
        {
            "all.yaml": """apiVersion: agentxds.dev/v1
kind: Gateway
metadata: {name: gw}
spec: {listen: {port: 10999}}
---
apiVersion: agentxds.dev/v1
kind: MCPBackend
metadata: {name: github}
spec: {endpoints: [{host: 127.0.0.1, port: 9}]}
"""
        }
    )
    assert set(policy_set.by_kind) == {spec.kind for spec in kinds.KIND_SPECS}
    assert [b.name for b in policy_set.backends] == ["github"] and policy_set.gateway_of(policy_set.backends[0]) == "gw"


def test_routed_documents_of_two_kinds_cannot_share_a_name(monkeypatch: pytest.MonkeyPatch) -> None:
    # A second routed kind, as A2A agents will be: registering it is all it takes.
    backend = kinds.KINDS["MCPBackend"]
    agent_kind = replace(backend, kind="A2AAgent", noun="A2A agent")
    monkeypatch.setattr(checks, "KINDS", {**kinds.KINDS, "A2AAgent": agent_kind})
    declared = [
        Declared("MCPBackend", "github", Source("mcp.yaml", 3)),
        Declared("A2AAgent", "github", Source("a2a.yaml", 3)),
        Declared("A2AAgent", "planner", Source("a2a.yaml", 9)),
    ]
    (diagnostic,) = cross_check(declared, [], complete=True)
    assert diagnostic.file == "a2a.yaml" and diagnostic.field == "A2AAgent/github metadata.name"
    assert "already used by MCPBackend/github (mcp.yaml:3)" in diagnostic.message


def test_an_a2a_agents_card_path_is_a_route_no_other_document_may_take() -> None:
    docs = """apiVersion: agentxds.dev/v1
kind: Gateway
metadata: {name: gw}
spec: {listen: {port: 10998}}
---
apiVersion: agentxds.dev/v1
kind: A2AAgent
metadata: {name: planner}
spec: {endpoints: [{host: 127.0.0.1, port: 1}]}
---
apiVersion: agentxds.dev/v1
kind: MCPBackend
metadata: {name: sneaky}
spec: {route: /a2a/planner/.well-known/agent-card.json, endpoints: [{host: 127.0.0.1, port: 2}]}
"""
    with pytest.raises(PolicyError) as refused:
        load_texts({"all.yaml": docs})
    assert "route '/a2a/planner/.well-known/agent-card.json' on gateway 'gw' is already used by" in str(refused.value)
