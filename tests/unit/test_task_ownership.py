"""Whose task it is (authz/sealed_ids.py), on views of a real IR: the owner, the backend and the tool's
grant must all hold, and everything else reads like an unknown task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xds_server.authz.mcp.tasks import McpTaskSealing
from xds_server.authz.sealed_ids import NotFound, Opened, open_request, owner_of, seal_stream
from xds_server.authz.sealing import Owner, Sealed, Sealer
from xds_server.authz.state import PolicyIndex, RouteView
from xds_server.controlplane.pipeline import compile_policies

SEALING = McpTaskSealing()
SEALER = Sealer(b"k" * 32)
POLICIES = """\
apiVersion: agentxds.dev/v1
kind: Gateway
metadata: {name: gw}
spec:
  listen: {address: 127.0.0.1, port: 10900}
  identity: {trustedHeader: x-agent-id}
---
apiVersion: agentxds.dev/v1
kind: MCPBackend
metadata: {name: reports}
spec: {endpoints: [{host: 127.0.0.1, port: 18900}], tasks: {enabled: true}}
---
apiVersion: agentxds.dev/v1
kind: MCPBackend
metadata: {name: wiki}
spec: {endpoints: [{host: 127.0.0.1, port: 18901}], tasks: {enabled: true}}
---
apiVersion: agentxds.dev/v1
kind: Agent
metadata: {name: alice}
spec: {identity: {header: alice}}
---
apiVersion: agentxds.dev/v1
kind: Agent
metadata: {name: bob}
spec: {identity: {header: bob}}
---
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {name: reports}
spec:
  backend: reports
  rules:
    - {agents: [alice, bob], tools: [build_report]}
    - {agents: [bob], tools: [whoami]}
---
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {name: wiki}
spec:
  backend: wiki
  rules:
    - {agents: [alice], tools: [build_report]}
"""


def _views(tmp_path: Path, policies: str = POLICIES) -> dict[str, RouteView]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "all.yaml").write_text(policies)
    ir, _ = compile_policies(tmp_path)
    return dict(PolicyIndex.from_ir(ir).routes)


def _request(sealed: str) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 4, "method": "tasks/get", "params": {"taskId": sealed}}).encode()


@pytest.fixture
def views(tmp_path: Path) -> dict[str, RouteView]:
    return _views(tmp_path)


def _sealed_for(view: RouteView, agent: str, raw: str = "raw-1", tool: str = "build_report") -> str:
    owner = owner_of(view, (agent,), {})
    assert owner is not None
    stream = seal_stream(SEALING, SEALER, view, owner, tool, "application/json", b"{}")
    answer = json.loads(stream.feed(json.dumps({"id": 1, "result": {"task": {"taskId": raw}}}).encode(), True))
    return answer["result"]["task"]["taskId"]  # type: ignore[no-any-return]


def _open(view: RouteView, agent: str, sealed: str, jwt: dict | None = None) -> Opened | NotFound:  # type: ignore[type-arg]
    return open_request(SEALING, SEALER, view, (agent,), jwt or {}, _request(sealed), {"mcp-name": sealed})


def test_the_owner_opens_its_own_task_on_its_backend(views: dict[str, RouteView]) -> None:
    sealed = _sealed_for(views["reports"], "alice")
    opened = _open(views["reports"], "alice", sealed)
    assert isinstance(opened, Opened)
    assert json.loads(opened.body)["params"]["taskId"] == "raw-1" and opened.headers == {"mcp-name": "raw-1"}
    assert opened.shown == {"raw-1": sealed}


def test_everything_else_reads_like_an_unknown_task(views: dict[str, RouteView], tmp_path: Path) -> None:
    sealed = _sealed_for(views["reports"], "alice")
    unknown = json.dumps({"jsonrpc": "2.0", "id": 4, "error": {"code": -32602,
                          "message": "Failed to retrieve task: Task not found"}}, separators=(",", ":"))  # fmt: skip
    another_user = SEALER.seal(Sealed("gw/reports", Owner("alice", "corp:someone"), "build_report", "raw-1"))
    other_tool = _sealed_for(views["reports"], "alice", tool="whoami")  # bob's tool, not alice's
    cases = {
        "another agent": _open(views["reports"], "bob", sealed),
        "another backend": _open(views["wiki"], "alice", sealed),
        "another user": _open(views["reports"], "alice", another_user),
        "a tool no longer granted": _open(views["reports"], "alice", other_tool),
        "the backend's own id": _open(views["reports"], "alice", "raw-1"),
        "an altered id": _open(views["reports"], "alice", sealed[:-1] + ("A" if sealed[-1] != "A" else "B")),
        "another key": open_request(SEALING, Sealer(b"x" * 32), views["reports"], ("alice",), {},
                                    _request(sealed), {}),
    }  # fmt: skip
    revoked = _views(tmp_path / "revoked", POLICIES.replace("agents: [alice, bob], tools: [build_report]",
                                                            "agents: [bob], tools: [build_report]"))  # fmt: skip
    cases["a revoked grant"] = _open(revoked["reports"], "alice", sealed)
    for what, outcome in cases.items():
        assert outcome == NotFound(unknown), what
