"""End to end: identity at the gateway's edges, through the real Envoy and control plane.

On the way in, a credential header sent twice, or with a comma in it, is
refused before anything reads it (raw HTTP/1.1 and HTTP/2, both protocol
revisions, native and policy-service paths), and the backend receives
nothing. On the way out, the backend learns the verified agent (and user)
from the gateway's own headers, and never sees the trusted header or the
API key; client-sent copies of the gateway's headers are removed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from mcp.shared.exceptions import MCPError

from tests.e2e.gateway import IDENTITY_HEADER, RunningGateway, launch, stop_gateway, write_policies
from tests.e2e.harness import LEGACY_REVISION, McpBackend, mcp_client, send_raw, tools_call_request
from xds_server.core import errors
from xds_server.runtime.ports import free_port

LEGACY = LEGACY_REVISION
API_KEY = "k-runner-0123456789"
AGENT_HEADER, USER_HEADER = "x-agentxds-agent", "x-agentxds-user"

POLICY = """\
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {name: github}
spec:
  backend: github
  rules:
    - agents: [triage]
      tools: [list_issues]
    - agents: [executor]
      tools: [create_issue]
      when: 'args.repo.startsWith("acme/")'
    - agents: ["*"]
      tools: [whoami]
"""

RUNNER = """\
---
apiVersion: agentxds.dev/v1
kind: Agent
metadata: {name: runner}
spec: {identity: {apiKey: {key: {file: runner.key}}}}
"""


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(
    mcp_backend_factory_module: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningGateway]:
    workdir = tmp_path_factory.mktemp("identity-edges")
    backends = {"github": mcp_backend_factory_module(name="github")}
    listen_port, policy_port = free_port(), free_port()
    policy_dir = workdir / "policies"
    write_policies(policy_dir, listen_port, backends, policy_port=policy_port, policy_yaml=POLICY)
    with (policy_dir / "agents.yaml").open("a") as agents:
        agents.write(RUNNER)
    (policy_dir / "runner.key").write_text(API_KEY + "\n")
    control, envoy = await launch(policy_dir, workdir, listen_port, policy_port)
    gw = RunningGateway(policy_dir, control, envoy, listen_port, backends)
    yield gw
    await stop_gateway(gw)


@pytest.fixture
def backend(gateway: RunningGateway) -> McpBackend:
    b = gateway.backends["github"]
    b.clear_requests()
    return b


# (identity headers, tool, arguments): each identity is ambiguous; the tool is one its
# legitimate agent may call, natively or (executor's create_issue) through the policy service.
AMBIGUOUS = {
    "unknown-then-agent": ([(IDENTITY_HEADER, "mallory"), (IDENTITY_HEADER, "triage")], "list_issues"),
    "agent-then-unknown": ([(IDENTITY_HEADER, "triage"), (IDENTITY_HEADER, "mallory")], "list_issues"),
    "agent-twice": ([(IDENTITY_HEADER, "triage"), (IDENTITY_HEADER, "triage")], "list_issues"),
    "comma-joined": ([(IDENTITY_HEADER, "triage,mallory")], "list_issues"),
    "two-agents": ([(IDENTITY_HEADER, "executor"), (IDENTITY_HEADER, "triage")], "create_issue"),
    "policy-service-path": ([(IDENTITY_HEADER, "mallory"), (IDENTITY_HEADER, "executor")], "create_issue"),
    "wrong-then-real-key": ([("x-api-key", "guess"), ("x-api-key", API_KEY)], "whoami"),
    "real-key-twice": ([("x-api-key", API_KEY), ("x-api-key", API_KEY)], "whoami"),
    "key-comma-joined": ([("x-api-key", f"{API_KEY},guess")], "whoami"),
}
ARGUMENTS = {"list_issues": {"repo": "acme/web"}, "create_issue": {"repo": "acme/web", "title": "t"}, "whoami": {}}


@pytest.mark.parametrize("transport", ["h1", "h2"])
@pytest.mark.parametrize("mode", ["modern", "legacy"])
@pytest.mark.parametrize("case", sorted(AMBIGUOUS))
async def test_an_ambiguous_identity_is_refused_and_never_reaches_the_backend(
    gateway: RunningGateway, backend: McpBackend, case: str, mode: str, transport: str
) -> None:
    identity, tool = AMBIGUOUS[case]
    request_id, headers, body = tools_call_request(mode, tool, ARGUMENTS[tool])
    status, answer = await send_raw(gateway.listen_port, transport, "POST", identity + headers, body)
    reply = json.loads(answer)
    assert status == 400, answer
    assert reply["id"] == request_id and type(reply["id"]) is type(request_id), reply
    assert reply["error"]["code"] == errors.AMBIGUOUS_IDENTITY.code == -32001
    assert reply["error"]["data"]["reason"] == "ambiguous_identity"
    assert "more than once or holds a comma" in reply["error"]["message"]
    assert backend.requests() == []


@pytest.mark.parametrize("transport", ["h1", "h2"])
@pytest.mark.parametrize("mode", ["modern", "legacy"])
async def test_the_same_request_with_one_identity_reaches_the_backend(
    gateway: RunningGateway, backend: McpBackend, mode: str, transport: str
) -> None:
    """The refusals above are for the repetition: each identity alone passes (a legacy call
    without a session is then the backend's to answer)."""
    for identity, tool in ([(IDENTITY_HEADER, "triage")], "list_issues"), ([("x-api-key", API_KEY)], "whoami"):
        backend.clear_requests()
        _, headers, body = tools_call_request(mode, tool, ARGUMENTS[tool])
        status, answer = await send_raw(gateway.listen_port, transport, "POST", identity + headers, body)
        assert b"ambiguous_identity" not in answer, answer
        assert [json.loads(r["body"])["params"]["name"] for r in backend.requests()] == [tool], (status, answer)


@pytest.mark.parametrize("transport", ["h1", "h2"])
async def test_an_ambiguous_identity_is_refused_on_get_streams_too(
    gateway: RunningGateway, backend: McpBackend, transport: str
) -> None:
    headers = [(IDENTITY_HEADER, "mallory"), (IDENTITY_HEADER, "triage"), ("accept", "text/event-stream"),
               ("mcp-protocol-version", LEGACY), ("mcp-session-id", "s-1")]  # fmt: skip
    status, answer = await send_raw(gateway.listen_port, transport, "GET", headers)
    reply = json.loads(answer)
    assert status == 400 and reply["id"] is None and reply["error"]["data"]["reason"] == "ambiguous_identity"
    assert backend.requests() == []


# ---------------------------------------------------------------- what the backend learns


@pytest.mark.parametrize("mode", ["modern", "legacy"])
async def test_the_backend_learns_the_verified_agent_and_none_of_its_credentials(
    gateway: RunningGateway, backend: McpBackend, mode: str
) -> None:
    forged = {AGENT_HEADER: "admin", USER_HEADER: "root"}  # what a client claims is ignored
    async with mcp_client(gateway.url(), {IDENTITY_HEADER: "triage", **forged}, mode) as client:
        listed = await client.call_tool("list_issues", {"repo": "acme/web"})
    async with mcp_client(gateway.url(), {IDENTITY_HEADER: "executor", **forged}, mode) as client:
        created = await client.call_tool("create_issue", {"repo": "acme/web", "title": "t"})  # policy service path
    async with mcp_client(gateway.url(), {"x-api-key": API_KEY, **forged}, mode) as client:
        who = await client.call_tool("whoami", {})
    assert not listed.is_error and not created.is_error and not who.is_error
    by_agent: dict[str, set[str]] = {}
    for request in backend.requests():
        seen = request["headers"]
        assert IDENTITY_HEADER not in seen and "x-api-key" not in seen, seen
        assert USER_HEADER not in seen, seen  # no user token: no user, and the forged one is gone
        body = json.loads(request["body"]) if request["body"] else {}
        by_agent.setdefault(seen[AGENT_HEADER], set()).add(body.get("params", {}).get("name", body.get("method")))
    assert {"list_issues", "create_issue", "whoami"} <= set().union(*by_agent.values())
    assert "list_issues" in by_agent["triage"] and "create_issue" in by_agent["executor"]
    assert "whoami" in by_agent["runner"] and "admin" not in by_agent


@pytest.mark.parametrize("mode", ["modern", "legacy"])
async def test_a_request_proving_two_agents_speaks_for_the_first_alone(
    gateway: RunningGateway, backend: McpBackend, mode: str
) -> None:
    """runner's key and triage's header at once: the request is runner's (the first by name, as Envoy's
    identify filter names it), so it gets runner's grants only, never triage's grant with runner's name
    upstream."""
    both = {IDENTITY_HEADER: "triage", "x-api-key": API_KEY}
    async with mcp_client(gateway.url(), both, mode) as client:
        who = await client.call_tool("whoami", {})
        with pytest.raises(MCPError) as refused:
            await client.call_tool("list_issues", {"repo": "acme/web"})  # triage's tool, not runner's
    assert not who.is_error
    assert refused.value.code == errors.TOOL_DENIED.code and "for agent 'runner'" in refused.value.message
    calls = [(r["headers"][AGENT_HEADER], json.loads(r["body"])["params"]["name"]) for r in backend.requests()
             if r["body"] and json.loads(r["body"]).get("method") == "tools/call"]  # fmt: skip
    assert calls == [("runner", "whoami")]
