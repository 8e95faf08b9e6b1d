"""End to end: A2A agents behind the gateway, with the official a2a-sdk client, in both generations.

Three real a2a-sdk agents: `planner` (xds_server/demo/a2a_agent.py, a2a-sdk
1.3) speaks A2A 1.0 (SendMessage, GetTask, ... with A2A-Version: 1.0);
`legacy` (the same, advertising 0.3) and `oldtimer` (a2a-sdk 0.3.26 itself,
tests/e2e/peers/a2a_v03_agent.py, in a virtualenv of its own) speak A2A 0.3
(message/send, tasks/get, ...), and the 1.3 client speaks 0.3 to them. One
gateway, one MCP backend beside them (a gateway serving both protocols), the
real control plane and policy service, a real Envoy.

- The card comes through the gateway, names the gateway's URL, and lists
  only the caller's skills; a caller without a grant gets no card.
- A caller sends a message and gets the task's result, also streamed; the
  task and context ids it sees are sealed; the agent sees its own.
- Another caller cannot get or cancel that task: TaskNotFound (-32001), as
  for no task at all; an altered id likewise; nothing reaches the agent.
- A method or operation no rule grants is a JSON-RPC error with the
  request's exact id; ListTasks is refused to everyone.
- Raw attacks: repeated `method` keys (Envoy reads the first, the agent
  would run the last), batches, other content types: refused, never
  forwarded.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from a2a.client import Client, ClientConfig, create_client
from a2a.helpers import get_artifact_text, new_text_message
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    GetExtendedAgentCardRequest,
    GetTaskRequest,
    Role,
    SendMessageRequest,
    StreamResponse,
    SubscribeToTaskRequest,
    TaskState,
)

from tests.e2e.gateway import (
    AGENTS_YAML,
    IDENTITY_HEADER,
    RunningGateway,
    backend_yaml,
    eventually,
    gateway_yaml,
    launch,
    stop_gateway,
)
from tests.e2e.harness import A2aAgent, ManagedProcess, McpBackend, start_a2a_agent, start_mcp_backend
from xds_server.core import errors
from xds_server.runtime.ports import free_port

SEND = {"1.0": "SendMessage", "0.3": "message/send", "0.3-sdk": "message/send"}
GET = {"1.0": "GetTask", "0.3": "tasks/get", "0.3-sdk": "tasks/get"}
CANCEL = {"1.0": "CancelTask", "0.3": "tasks/cancel", "0.3-sdk": "tasks/cancel"}
VERSION = {"1.0": "1.0", "0.3": "0.3", "0.3-sdk": "0.3"}

POLICIES = """\
apiVersion: agentxds.dev/v1
kind: A2AAgent
metadata: {name: planner}
spec:
  endpoints: [{host: 127.0.0.1, port: PLANNER_PORT}]
---
apiVersion: agentxds.dev/v1
kind: A2AAgent
metadata: {name: legacy}
spec:
  route: /agents/legacy
  endpoints: [{host: 127.0.0.1, port: LEGACY_PORT}]
---
apiVersion: agentxds.dev/v1
kind: A2AAgent
metadata: {name: oldtimer}
spec:
  endpoints: [{host: 127.0.0.1, port: OLDTIMER_PORT}]
---
apiVersion: agentxds.dev/v1
kind: A2APolicy
metadata: {name: oldtimer}
spec:
  a2aAgent: oldtimer
  rules: [{agents: [triage, executor]}]
---
apiVersion: agentxds.dev/v1
kind: A2APolicy
metadata: {name: planner}
spec:
  a2aAgent: planner
  rules:
    - agents: [triage]
      operations: [send, stream, getTask, cancelTask, subscribe, pushNotifications, extendedCard]
      skills: [echo, count, slow]
    - agents: [executor]
      operations: [send, getTask, cancelTask, subscribe, pushNotifications]
      skills: [echo]
---
apiVersion: agentxds.dev/v1
kind: A2APolicy
metadata: {name: legacy}
spec:
  a2aAgent: legacy
  rules:
    - agents: [triage, executor]
    - description: auditor may send, with a ticket in the message's metadata, twice an hour
      agents: [auditor]
      operations: [send]
      when: 'has(args.ticket) && args.ticket.startsWith("T-")'
      quota: {calls: 2, per: 1h}
    - description: reviewer's messages need an operator's approval
      agents: [reviewer]
      operations: [send]
      requireApproval: true
---
apiVersion: agentxds.dev/v1
kind: Agent
metadata: {name: reviewer}
spec: {identity: {header: reviewer}}
"""
MCP_POLICY = """\
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {name: github}
spec:
  backend: github
  rules:
    - agents: [triage]
      tools: [whoami]
"""


A2A03 = Path(__file__).resolve().parents[2] / ".venv-a2a03"


def a2a03_python() -> Path:
    """The interpreter of the a2a-sdk 0.3 virtualenv (`make test` builds it; built here if it is missing)."""
    python = A2A03 / "bin" / "python"
    if not (A2A03 / "bin" / "uvicorn").exists():
        subprocess.run([sys.executable, "-m", "venv", str(A2A03)], check=True, timeout=120)
        subprocess.run([str(A2A03 / "bin" / "pip"), "install", "-q", "a2a-sdk[http-server]==0.3.26", "uvicorn>=0.30"],
                       check=True, timeout=600)  # fmt: skip
    return python


def start_v03_peer(workdir: Path, name: str) -> A2aAgent:
    """The real a2a-sdk 0.3 agent, on a port it picks (its READY line names it)."""
    script = Path(__file__).resolve().parent / "peers" / "a2a_v03_agent.py"
    process = ManagedProcess([str(a2a03_python()), str(script), "--port", "0", "--name", name],
                             log_path=workdir / f"{name}.log", name=name)  # fmt: skip
    line = process.start(ready_line=r"^READY ", timeout=30)
    assert line is not None
    return A2aAgent(name, line.split()[1], process)


@dataclass
class A2aGateway:
    gateway: RunningGateway
    planner: A2aAgent
    legacy: A2aAgent
    mcp: McpBackend
    oldtimer: A2aAgent

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.gateway.listen_port}{path}"

    def peer(self, generation: str) -> tuple[A2aAgent, str]:
        """The agent of a generation, and its route on the gateway ("0.3-sdk": a2a-sdk 0.3 itself)."""
        if generation == "0.3-sdk":
            return self.oldtimer, "/a2a/oldtimer"
        return (self.planner, "/a2a/planner") if generation == "1.0" else (self.legacy, "/agents/legacy")


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def a2a(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[A2aGateway]:
    workdir = tmp_path_factory.mktemp("a2a")
    planner, legacy = start_a2a_agent(workdir, "planner"), start_a2a_agent(workdir, "legacy", v03=True)
    oldtimer = start_v03_peer(workdir, "oldtimer")
    mcp = start_mcp_backend(workdir / "mcp", name="github")
    listen_port, policy_port, authz_port = free_port(), free_port(), free_port()
    policies = workdir / "policies"
    policies.mkdir()
    (policies / "gateway.yaml").write_text(gateway_yaml(listen_port, policy_port, authz_http_port=authz_port,
                                                        max_body=65536))  # fmt: skip
    (policies / "agents.yaml").write_text(AGENTS_YAML)
    (policies / "a2a.yaml").write_text(POLICIES.replace("PLANNER_PORT", planner.url.rsplit(":", 1)[1].strip("/"))
                                       .replace("LEGACY_PORT", legacy.url.rsplit(":", 1)[1].strip("/"))
                                       .replace("OLDTIMER_PORT", oldtimer.url.rsplit(":", 1)[1].strip("/")))  # fmt: skip
    (policies / "mcp.yaml").write_text(backend_yaml("github", mcp) + "---\n" + MCP_POLICY)
    try:
        control, envoy = await launch(policies, workdir, listen_port, policy_port, authz_port)
        gateway = RunningGateway(policies, control, envoy, listen_port, {"github": mcp})
        yield A2aGateway(gateway, planner, legacy, mcp, oldtimer)
        await stop_gateway(gateway)
    finally:
        for process in (planner.process, legacy.process, oldtimer.process):
            process.stop()
        mcp.stop()


@pytest.fixture(params=["1.0", "0.3", "0.3-sdk"])
def generation(request: pytest.FixtureRequest) -> Iterator[str]:
    yield request.param


def caller(name: str) -> dict[str, str]:
    return {IDENTITY_HEADER: name}


@asynccontextmanager
async def a2a_client(a2a: A2aGateway, route: str, agent: str, **config: Any) -> AsyncIterator[Client]:
    http = httpx.AsyncClient(headers=caller(agent), timeout=30)
    client = await create_client(a2a.url(route), ClientConfig(httpx_client=http, **config))
    try:
        yield client
    finally:
        await client.close()
        await http.aclose()


def _message(text: str) -> SendMessageRequest:
    return SendMessageRequest(message=new_text_message(text, role=Role.ROLE_USER))


async def _send(client: Client, text: str) -> list[StreamResponse]:
    return [event async for event in client.send_message(_message(text))]


async def rpc(a2a: A2aGateway, route: str, agent: str, body: Any, *, version: str = "1.0", raw: bytes | None = None,
              content_type: str = "application/json") -> httpx.Response:  # fmt: skip
    """A raw POST (the control plane and the policy service run in the test's event loop: never block it)."""
    headers = {**caller(agent), "content-type": content_type, "a2a-version": version}
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(a2a.url(route), content=raw if raw is not None else json.dumps(body), headers=headers)


async def get(a2a: A2aGateway, path: str, agent: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.get(a2a.url(path), headers=caller(agent))


def assert_error(response: httpx.Response, request_id: Any, code: int, reason: str | None = None) -> dict[str, Any]:
    body = response.json()
    assert body["jsonrpc"] == "2.0" and body["id"] == request_id and "result" not in body, body
    assert body["error"]["code"] == code, body
    if reason is not None:
        assert body["error"]["data"]["reason"] == reason, body
    return dict(body["error"])


# ---------------------------------------------------------------- cards


async def test_the_card_names_the_gateway_and_the_callers_skills(a2a: A2aGateway, generation: str) -> None:
    _, route = a2a.peer(generation)
    card_path = route + "/.well-known/agent-card.json"
    triage = (await get(a2a, card_path, "triage")).json()
    # A 0.3 card of a2a-sdk 0.3 has no supportedInterfaces (1.x adds them to every card it serves).
    interfaces = triage.get("supportedInterfaces", []) if generation == "0.3-sdk" else triage["supportedInterfaces"]
    assert [i["url"] for i in interfaces] in ([a2a.url(route)], []) and all(
        i["protocolBinding"] == "JSONRPC" for i in interfaces
    )
    if generation != "1.0":
        assert triage["url"] == a2a.url(route) and triage["preferredTransport"] == "JSONRPC"
    if generation == "1.0":
        assert [s["id"] for s in triage["skills"]] == ["echo", "count", "slow"]
        executor = (await get(a2a, card_path, "executor")).json()
        assert [s["id"] for s in executor["skills"]] == ["echo"]
        # executor was not granted the extended card: its card does not offer one.
        assert executor["capabilities"]["extendedAgentCard"] is False
        assert triage["capabilities"]["extendedAgentCard"] is True
        # auditor has no grant on planner: no card at all.
        refused = await get(a2a, card_path, "auditor")
        error = assert_error(refused, None, errors.METHOD_DENIED.code, errors.METHOD_DENIED.reason)
        assert "skills" not in refused.text and "not shown to agent 'auditor'" in error["message"], error


async def test_the_extended_card_is_filtered_too(a2a: A2aGateway) -> None:
    async with a2a_client(a2a, "/a2a/planner", "triage", streaming=False) as client:
        card = await client.get_extended_agent_card(GetExtendedAgentCardRequest())
    # The agent's extended card adds "admin": not one of triage's skills.
    assert [s.id for s in card.skills] == ["echo", "count", "slow"]
    assert [i.url for i in card.supported_interfaces] == [a2a.url("/a2a/planner")]


# ---------------------------------------------------------------- messages and tasks


async def test_a_caller_sends_and_follows_its_task(a2a: A2aGateway, generation: str) -> None:
    peer, route = a2a.peer(generation)
    peer.clear()
    async with a2a_client(a2a, route, "triage", streaming=False) as client:
        (event,) = await _send(client, "hi")
        task = event.task
        assert task.status.state == TaskState.TASK_STATE_COMPLETED
        assert [get_artifact_text(a) for a in task.artifacts] == [f"[{peer.name}] echo: hi"]
        fetched = await client.get_task(GetTaskRequest(id=task.id))
    assert (fetched.id, fetched.context_id) == (task.id, task.context_id)
    assert [get_artifact_text(a) for a in fetched.artifacts] == [f"[{peer.name}] echo: hi"]
    calls = peer.calls()
    assert [c["method"] for c in calls] == [SEND[generation], GET[generation]]
    assert {c["version"] for c in calls} == {VERSION[generation]}  # A2A-Version reached the agent
    # The caller sees sealed ids; the agent its own.
    assert task.id.startswith("t1.") and task.context_id.startswith("t1.")
    assert calls[1]["task_id"] != task.id and not calls[1]["task_id"].startswith("t1.")


async def test_a_stream_flows_with_sealed_ids(a2a: A2aGateway, generation: str) -> None:
    peer, route = a2a.peer(generation)
    async with a2a_client(a2a, route, "triage", streaming=True) as client:
        events = await _send(client, "count 3")
    kinds = [e.WhichOneof("payload") for e in events]
    assert kinds == ["task", "status_update", "artifact_update", "artifact_update", "artifact_update", "status_update"]
    task_id = events[0].task.id
    assert task_id.startswith("t1.")
    assert all(getattr(e, kind).task_id == task_id for e, kind in zip(events[1:], kinds[1:], strict=True))
    texts = [get_artifact_text(e.artifact_update.artifact) for e in events if e.HasField("artifact_update")]
    assert texts == [f"[{peer.name}] count {i}/3" for i in (1, 2, 3)]
    assert events[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED


async def test_another_caller_cannot_get_or_cancel_the_task(a2a: A2aGateway, generation: str) -> None:
    peer, route = a2a.peer(generation)
    async with a2a_client(a2a, route, "triage", streaming=False, polling=True) as client:
        (event,) = await _send(client, "slow")
    task = event.task
    assert task.id.startswith("t1.") and task.status.state not in (TaskState.TASK_STATE_COMPLETED,)
    peer.clear()
    for method in (GET[generation], CANCEL[generation]):
        answer = await rpc(a2a, route, "executor", {"jsonrpc": "2.0", "id": "x-1", "method": method,
                                              "params": {"id": task.id}}, version=VERSION[generation])  # fmt: skip
        assert_error(answer, "x-1", -32001)
        assert answer.json()["error"]["message"] == "Task not found"
    altered = task.id[:-2] + ("AA" if not task.id.endswith("AA") else "BB")
    answer = await rpc(a2a, route, "triage", {"jsonrpc": "2.0", "id": 5, "method": GET[generation],
                                        "params": {"id": altered}}, version=VERSION[generation])  # fmt: skip
    assert_error(answer, 5, -32001)
    assert peer.calls() == []  # none of it reached the agent
    async with a2a_client(a2a, route, "triage", streaming=False) as client:
        canceled = await client.cancel_task(CancelTaskRequest(id=task.id))
    assert canceled.id == task.id and canceled.status.state == TaskState.TASK_STATE_CANCELED
    assert [c["method"] for c in peer.calls()] == [CANCEL[generation]]


# ---------------------------------------------------------------- discovery


async def test_discovery_lists_what_each_caller_may_use(a2a: A2aGateway) -> None:
    def names(answer: dict[str, Any]) -> tuple[list[str], list[str]]:
        return [m["name"] for m in answer["mcpServers"]], [a["name"] for a in answer["a2aAgents"]]

    seen = {}
    for agent in ("triage", "executor", "auditor"):
        answer = await get(a2a, "/.well-known/agentxds/discovery", agent)
        assert answer.status_code == 200, answer.text
        seen[agent] = names(answer.json())
    assert seen == {"triage": (["github"], ["legacy", "oldtimer", "planner"]),
                    "executor": ([], ["legacy", "oldtimer", "planner"]), "auditor": ([], ["legacy"])}  # fmt: skip
    planner = next(a for a in (await get(a2a, "/.well-known/agentxds/discovery", "triage")).json()["a2aAgents"]
                   if a["name"] == "planner")  # fmt: skip
    assert planner == {"name": "planner", "kind": "a2a", "url": a2a.url("/a2a/planner"), "registered": False,
                       "card": a2a.url("/a2a/planner/.well-known/agent-card.json")}  # fmt: skip
    unknown = await get(a2a, "/.well-known/agentxds/discovery", "nobody")
    assert unknown.status_code == 403 and "a2aAgents" not in unknown.text
    # A forged "verified" certificate header does not make an agent of the caller.
    async with httpx.AsyncClient(timeout=10) as http:
        forged = await http.get(a2a.url("/.well-known/agentxds/discovery"),
                                headers={"x-agentxds-verified-peer": "spiffe://example.org/triage"})  # fmt: skip
    assert forged.status_code == 403


async def test_subscriptions_and_push_configs_reach_only_the_owners_tasks(a2a: A2aGateway) -> None:
    async with a2a_client(a2a, "/a2a/planner", "triage", streaming=False, polling=True) as client:
        (event,) = await _send(client, "slow")
    task = event.task
    a2a.planner.clear()
    hook = {"taskId": task.id, "url": "http://127.0.0.1:9/hook"}
    for agent, method, params in (("executor", "SubscribeToTask", {"id": task.id}),
                                  ("executor", "CreateTaskPushNotificationConfig", hook),
                                  ("executor", "ListTaskPushNotificationConfigs", {"taskId": task.id})):  # fmt: skip
        answer = await rpc(a2a, "/a2a/planner", agent, {"jsonrpc": "2.0", "id": method, "method": method,
                                                        "params": params})  # fmt: skip
        assert_error(answer, method, -32001)
    assert a2a.planner.calls() == []
    # The owner's push config reaches the agent with the agent's own id (which does not support them).
    own = await rpc(a2a, "/a2a/planner", "triage", {"jsonrpc": "2.0", "id": "p", "method":
                                                    "CreateTaskPushNotificationConfig", "params": hook})  # fmt: skip
    assert own.json()["id"] == "p" and "error" in own.json()
    (call,) = a2a.planner.calls()
    assert call["method"] == "CreateTaskPushNotificationConfig" and not call["task_id"].startswith("t1.")
    # The owner follows its task until it is canceled: every event names the sealed id.
    events: list[StreamResponse] = []
    async with a2a_client(a2a, "/a2a/planner", "triage", streaming=True) as client:

        async def follow() -> None:
            async for streamed in client.subscribe(SubscribeToTaskRequest(id=task.id)):
                events.append(streamed)

        follower = asyncio.create_task(follow())
        await eventually(lambda: _asked(a2a.planner, "SubscribeToTask"), 10, "the subscription reached the agent")
        canceled = await rpc(a2a, "/a2a/planner", "triage", {"jsonrpc": "2.0", "id": 9, "method": "CancelTask",
                                                             "params": {"id": task.id}})  # fmt: skip
        assert canceled.json()["result"]["id"] == task.id
        await asyncio.wait_for(follower, 15)
    updates = [e for e in events if e.HasField("status_update")]
    assert updates and updates[-1].status_update.status.state == TaskState.TASK_STATE_CANCELED
    kinds = [e.WhichOneof("payload") for e in events]
    assert {
        e.task.id if kind == "task" else getattr(e, kind).task_id for e, kind in zip(events, kinds, strict=True)
    } == {task.id}


async def _asked(peer: A2aAgent, method: str) -> bool:
    return any(c["method"] == method for c in peer.calls())


async def test_a_wrong_path_on_a_gateway_of_both_protocols_is_no_backend(a2a: A2aGateway) -> None:
    answer = await rpc(a2a, "/nowhere", "triage", {"jsonrpc": "2.0", "id": 3, "method": "SendMessage", "params": {}})
    assert_error(answer, 3, errors.NO_BACKEND.code, errors.NO_BACKEND.reason)


async def test_a_message_needing_approval_passes_once_approved(a2a: A2aGateway) -> None:
    body = {"jsonrpc": "2.0", "id": "r1", "method": "message/send", "params": {"message": {
        "kind": "message", "role": "user", "messageId": "m1", "parts": [{"kind": "text", "text": "hi"}],
        "metadata": {"change": "CHG-7"}}}}  # fmt: skip
    asked = await rpc(a2a, "/agents/legacy", "reviewer", body, version="0.3")
    error = assert_error(asked, "r1", errors.APPROVAL_REQUIRED.code, errors.APPROVAL_REQUIRED.reason)
    approval = error["data"]["approvalId"]
    service = a2a.gateway.control.policy_service
    assert service is not None
    async with httpx.AsyncClient(timeout=10) as http:
        decided = await http.post(f"http://127.0.0.1:{service.approvals_port}/approvals/{approval}/approve",
                                  json={"by": "ops"})  # fmt: skip
    assert decided.status_code == 200
    passed = (await rpc(a2a, "/agents/legacy", "reviewer", body, version="0.3")).json()
    assert passed["id"] == "r1" and passed["result"]["status"]["state"] == "completed", passed


async def test_a_message_naming_a_skill_not_granted_is_refused(a2a: A2aGateway) -> None:
    a2a.planner.clear()

    def send(request_id: int, skill: Any) -> dict[str, Any]:
        message = {"role": "ROLE_USER", "messageId": f"s{request_id}", "parts": [{"text": "hi"}],
                   "metadata": {"skillId": skill}}  # fmt: skip
        return {"jsonrpc": "2.0", "id": request_id, "method": "SendMessage", "params": {"message": message}}

    for request_id, skill in ((1, "count"), (2, "admin"), (3, 7)):
        refused = await rpc(a2a, "/a2a/planner", "executor", send(request_id, skill))
        error = assert_error(refused, request_id, errors.SKILL_DENIED.code, errors.SKILL_DENIED.reason)
        assert error["data"]["skill"] == skill
        if not isinstance(skill, str):  # the message says why, in the client's JSON terms
            assert "'skillId' must be a string, not a number" in error["message"], error
    # A skill named under another key than skillId is refused, naming the key to use.
    other = send(5, "echo")
    other["params"]["message"]["metadata"] = {"skill_id": "echo"}
    error = assert_error(await rpc(a2a, "/a2a/planner", "executor", other), 5, errors.SKILL_DENIED.code)
    assert "under 'skill_id'" in error["message"] and "'skillId'" in error["message"], error
    allowed = (await rpc(a2a, "/a2a/planner", "executor", send(4, "echo"))).json()
    assert allowed["id"] == 4 and allowed["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED", allowed
    assert [c["method"] for c in a2a.planner.calls()] == ["SendMessage"]


# ---------------------------------------------------------------- refusals


async def test_conditions_and_quotas_apply_to_messages(a2a: A2aGateway) -> None:
    a2a.legacy.clear()

    def send(request_id: int, metadata: dict[str, Any] | None) -> dict[str, Any]:
        message: dict[str, Any] = {"kind": "message", "role": "user", "messageId": f"m{request_id}",
                                   "parts": [{"kind": "text", "text": "hi"}]}  # fmt: skip
        if metadata is not None:
            message["metadata"] = metadata
        return {"jsonrpc": "2.0", "id": request_id, "method": "message/send", "params": {"message": message}}

    refused = await rpc(a2a, "/agents/legacy", "auditor", send(1, None), version="0.3")
    assert_error(refused, 1, errors.CONDITION_NOT_MET.code, errors.CONDITION_NOT_MET.reason)
    refused = await rpc(a2a, "/agents/legacy", "auditor", send(2, {"ticket": "X-9"}), version="0.3")
    assert_error(refused, 2, errors.CONDITION_NOT_MET.code, errors.CONDITION_NOT_MET.reason)
    for request_id in (3, 4):
        allowed = (
            await rpc(a2a, "/agents/legacy", "auditor", send(request_id, {"ticket": "T-1"}), version="0.3")
        ).json()
        assert allowed["id"] == request_id and allowed["result"]["status"]["state"] == "completed", allowed
        assert allowed["result"]["id"].startswith("t1.")
    over = await rpc(a2a, "/agents/legacy", "auditor", send(5, {"ticket": "T-1"}), version="0.3")
    assert_error(over, 5, errors.QUOTA_EXCEEDED.code, errors.QUOTA_EXCEEDED.reason)
    assert [c["method"] for c in a2a.legacy.calls()] == ["message/send", "message/send"]
    # Only send was granted to the auditor: reading the task it made is refused.
    denied = await rpc(a2a, "/agents/legacy", "auditor", {"jsonrpc": "2.0", "id": 6, "method": "tasks/get",
                                                          "params": {"id": allowed["result"]["id"]}}, version="0.3")  # fmt: skip
    assert_error(denied, 6, errors.METHOD_DENIED.code)


async def test_an_operation_no_rule_grants_is_a_jsonrpc_error_with_the_id(a2a: A2aGateway) -> None:
    a2a.planner.clear()
    message = {"role": "ROLE_USER", "messageId": "m1", "parts": [{"text": "hi"}]}
    cases = [
        ("executor", "SendStreamingMessage", {"message": message}, 41),  # not granted stream
        ("executor", "GetExtendedAgentCard", {}, "card"),
        ("auditor", "SendMessage", {"message": message}, 42),  # no grant at all
        ("triage", "ListTasks", {}, 43),  # never: it lists every caller's tasks
        ("triage", "tasks/list", {}, 44),
        ("triage", "NoSuchMethod", {}, 45),
    ]
    for agent, method, params, request_id in cases:
        answer = await rpc(a2a, "/a2a/planner", agent, {"jsonrpc": "2.0", "id": request_id, "method": method,
                                                  "params": params})  # fmt: skip
        error = assert_error(answer, request_id, errors.METHOD_DENIED.code, errors.METHOD_DENIED.reason)
        assert method in error["message"] and agent in error["message"]
    unknown = await rpc(a2a, "/a2a/planner", "nobody", {"jsonrpc": "2.0", "id": 46, "method": "SendMessage",
                                                  "params": {"message": message}})  # fmt: skip
    assert_error(unknown, 46, errors.UNKNOWN_AGENT.code, errors.UNKNOWN_AGENT.reason)
    assert a2a.planner.calls() == []


async def test_raw_attacks_are_refused_and_never_forwarded(a2a: A2aGateway) -> None:
    a2a.planner.clear()
    message = '{"role":"ROLE_USER","messageId":"m1","parts":[{"text":"hi"}]}'
    # Envoy's A2A filter reads the first method (granted), a Python agent runs the last one.
    repeated = ('{"jsonrpc":"2.0","id":7,"method":"SendMessage","method":"SendStreamingMessage",'
                f'"params":{{"message":{message}}}}}').encode()  # fmt: skip
    assert_error(
        await rpc(a2a, "/a2a/planner", "executor", None, raw=repeated), 7, -32600, errors.DUPLICATE_KEYS.reason
    )
    nested = f'{{"jsonrpc":"2.0","id":8,"method":"SendMessage","params":{{"message":{message},"message":{{}}}}}}'
    assert_error(await rpc(a2a, "/a2a/planner", "triage", None, raw=nested.encode()), 8, -32600)
    batch = f'[{{"jsonrpc":"2.0","id":9,"method":"SendMessage","params":{{"message":{message}}}}}]'
    # A batch carries no metadata for RBAC to allow: refused, and said to be a batch.
    answer = await rpc(a2a, "/a2a/planner", "triage", None, raw=batch.encode())
    assert answer.status_code == errors.NOT_A2A.http_status
    assert "a batch" in assert_error(answer, None, -32600, errors.NOT_A2A.reason)["message"]
    # A stranger's batch is refused for being a stranger first.
    stranger = await rpc(a2a, "/a2a/planner", "mallory", None, raw=batch.encode())
    assert_error(stranger, None, errors.UNKNOWN_AGENT.code, errors.UNKNOWN_AGENT.reason)
    plain = f'{{"jsonrpc":"2.0","id":10,"method":"SendMessage","params":{{"message":{message}}}}}'
    answer = await rpc(a2a, "/a2a/planner", "triage", None, raw=plain.encode(), content_type="text/plain")
    assert_error(answer, 10, -32600, errors.NOT_A2A.reason)
    # Envoy's A2A filter stops reading once it has the method and id: the policy service reads it all.
    broken = b'{"jsonrpc":"2.0","id":11,"method":"SendMessage","params":{'
    assert_error(await rpc(a2a, "/a2a/planner", "triage", None, raw=broken), 11, -32700)
    assert a2a.planner.calls() == []


async def test_the_mcp_backend_beside_them_still_works(a2a: A2aGateway) -> None:
    from tests.e2e.harness import mcp_client

    async with mcp_client(a2a.url("/mcp/github"), headers=caller("triage")) as session:
        result = await session.call_tool("whoami", {})
    assert not result.is_error
    async with httpx.AsyncClient(timeout=30) as http:
        denied = await http.post(a2a.url("/mcp/github"), headers={**caller("executor"), "accept": "application/json, "
                                 "text/event-stream", "content-type": "application/json"},
                                 json={"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                                       "params": {"name": "whoami", "arguments": {}}})  # fmt: skip
    assert_error(denied, 3, errors.TOOL_DENIED.code, errors.TOOL_DENIED.reason)
