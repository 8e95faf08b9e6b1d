"""End to end: MCP tasks through the gateway, each caller reaching only the tasks it created.

The demo backend (demo/tasks.py) hands any caller any task it names, as MCP
servers do; the gateway seals every task id it passes on with its owner and
the tool that created it, so another caller's task is "not found", an altered
id is "not found", and a task whose tool the owner may no longer call is "not
found" too. 2026-07-28: the SDK's own client, with the tasks extension
declared, follows a task through tasks/get. 2025-11-25: raw JSON-RPC in a
session (the SDK client has no task support for it): tools/call with
`params.task`, tasks/get, tasks/result (streamed), tasks/cancel, and
tasks/list refused.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Literal

import httpx
import mcp_types as types
import pytest
import pytest_asyncio
from mcp.client.extension import ClaimContext, ClientExtension, ResultClaim
from mcp.shared.exceptions import MCPError
from mcp_types import Request, RequestParams, Result
from pydantic import ConfigDict

from tests.e2e.gateway import IDENTITY_HEADER, RunningGateway, start_gateway, stop_gateway
from tests.e2e.harness import LEGACY_REVISION, McpBackend, mcp_client
from xds_server.core import errors

EXTENSION = "io.modelcontextprotocol/tasks"
NOT_FOUND = -32602
POLICY = """\
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {name: github}
spec:
  backend: github
  rules:
    - agents: [triage]
      tools: [build_report, whoami]
    - description: executor's reports are decided by the policy service
      agents: [executor]
      tools: [build_report]
      when: 'args.repo.startsWith("acme/")'
    - agents: [executor, auditor]
      tools: [whoami]
"""
WIKI = """\
---
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {name: wiki}
spec:
  backend: wiki
  rules:
    - agents: [triage]
      tools: [build_report]
"""
REVOKED = POLICY.replace("tools: [build_report, whoami]", "tools: [whoami]")
# The policy service down must not open the task methods, even where other calls fail open.
TASKS = "  tasks: {enabled: true}\n  policyService: {failOpen: true}\n"


@pytest_asyncio.fixture(loop_scope="session")
async def gateway(mcp_backend_factory: Any, tmp_path: Any) -> AsyncIterator[RunningGateway]:
    backends = {"github": mcp_backend_factory(name="github"), "wiki": mcp_backend_factory(name="wiki")}
    gw = await start_gateway(tmp_path / "gw", backends, policy_yaml=POLICY + WIKI,
                             backend_extra={"github": TASKS, "wiki": TASKS})  # fmt: skip
    yield gw
    await stop_gateway(gw)


def agent(name: str) -> dict[str, str]:
    return {IDENTITY_HEADER: name}


def task_ids_seen_by(backend: McpBackend, method: str) -> list[str]:
    out = []
    for r in backend.requests():
        body = json.loads(r["body"]) if r["body"] else {}
        if isinstance(body, dict) and body.get("method") == method:
            out.append(body["params"]["taskId"])
    return out


# ---------------------------------------------------------------- 2026-07-28: the SDK client


class TaskHandle(Result):
    model_config = ConfigDict(extra="allow")
    result_type: Literal["task"]
    task_id: str
    status: str


class TaskIdParams(RequestParams):
    task_id: str


class GetTask(Request[TaskIdParams, Literal["tasks/get"]]):
    method: Literal["tasks/get"] = "tasks/get"
    params: TaskIdParams
    name_param = "taskId"  # SEP-2663: Mcp-Name carries the task id


class CancelTask(Request[TaskIdParams, Literal["tasks/cancel"]]):
    method: Literal["tasks/cancel"] = "tasks/cancel"
    params: TaskIdParams
    name_param = "taskId"


class DetailedTask(Result):
    model_config = ConfigDict(extra="allow")
    task_id: str
    status: str
    result: dict[str, Any] | None = None


async def _poll(session: Any, task_id: str) -> DetailedTask:
    import asyncio

    for _ in range(100):
        task: DetailedTask = await session.send_request(GetTask(params=TaskIdParams(task_id=task_id)), DetailedTask)
        if task.status != "working":
            return task
        await asyncio.sleep(0.1)
    raise AssertionError(f"task {task_id} never ended")


class Tasks(ClientExtension):
    """The client side of the tasks extension: declared on every request; a task handle answering a
    tools/call is followed through tasks/get until it ends."""

    identifier = EXTENSION

    def claims(self) -> list[ResultClaim[Any]]:
        async def follow(handle: TaskHandle, ctx: ClaimContext) -> types.CallToolResult:
            task = await _poll(ctx.session, handle.task_id)
            assert task.status == "completed" and task.result is not None, task
            return types.CallToolResult.model_validate(task.result)

        return [ResultClaim(result_type="task", model=TaskHandle, resolve=follow)]


async def test_a_modern_client_follows_its_task_and_the_backend_sees_its_own_ids(
    gateway: RunningGateway,
) -> None:
    backend = gateway.backends["github"]
    async with mcp_client(gateway.url(), agent("triage"), extensions=[Tasks()]) as client:
        result = await client.call_tool("build_report", {"repo": "acme/web"})
        handle = await client.session.call_tool("build_report", {"repo": "acme/api"}, allow_claimed=True)
    assert result.content[0].text == "report of acme/web: 2 open issues"
    assert isinstance(handle, TaskHandle) and handle.task_id.startswith("t1."), handle
    polled = task_ids_seen_by(backend, "tasks/get")
    assert polled and not any(t.startswith("t1.") for t in polled)  # the backend only ever sees its own ids
    headers = [r["headers"] for r in backend.requests() if '"tasks/get"' in r["body"]]
    assert all(h["mcp-name"] == json.loads(b["body"])["params"]["taskId"]
               for h, b in zip(headers, [r for r in backend.requests() if '"tasks/get"' in r["body"]], strict=True))  # fmt: skip


async def test_another_agent_an_altered_id_and_a_revoked_tool_all_get_not_found(gateway: RunningGateway) -> None:
    async with mcp_client(gateway.url(), agent("triage"), extensions=[Tasks()]) as triage:
        handle = await triage.session.call_tool("build_report", {"repo": "acme/web"}, allow_claimed=True)
        own = await _poll(triage.session, handle.task_id)
        altered = handle.task_id[:-2] + ("AA" if not handle.task_id.endswith("AA") else "BB")
        with pytest.raises(MCPError) as forged:
            await triage.session.send_request(GetTask(params=TaskIdParams(task_id=altered)), DetailedTask)
    assert own.task_id == handle.task_id and own.status == "completed"  # the same sealed id throughout
    assert forged.value.code == NOT_FOUND and "not found" in forged.value.message.lower()
    async with mcp_client(gateway.url(), agent("executor"), extensions=[Tasks()]) as executor:
        with pytest.raises(MCPError) as foreign:
            await executor.session.send_request(GetTask(params=TaskIdParams(task_id=handle.task_id)), DetailedTask)
        with pytest.raises(MCPError) as cancel:
            await executor.session.send_request(CancelTask(params=TaskIdParams(task_id=handle.task_id)), Result)
    assert foreign.value.code == cancel.value.code == NOT_FOUND
    assert foreign.value.message == forged.value.message  # a foreign task reads exactly like a forged one

    async with mcp_client(gateway.url("wiki"), agent("triage"), extensions=[Tasks()]) as elsewhere:
        with pytest.raises(MCPError) as replayed:  # triage may build reports there too: the seal names github
            await elsewhere.session.send_request(GetTask(params=TaskIdParams(task_id=handle.task_id)), DetailedTask)
    assert replayed.value.code == NOT_FOUND
    assert task_ids_seen_by(gateway.backends["wiki"], "tasks/get") == []

    reloads = gateway.control.reloads
    gateway.write("github-policy.yaml", REVOKED + WIKI)
    await gateway.wait_reloads(reloads + 1)
    await gateway.wait_acked(gateway.control.cache.get("e2e").version)  # type: ignore[union-attr]
    async with mcp_client(gateway.url(), agent("triage"), extensions=[Tasks()]) as triage:
        with pytest.raises(MCPError) as revoked:
            await triage.session.send_request(GetTask(params=TaskIdParams(task_id=handle.task_id)), DetailedTask)
    assert revoked.value.code == NOT_FOUND


async def test_a_conditional_tool_is_decided_then_its_task_sealed(gateway: RunningGateway) -> None:
    async with mcp_client(gateway.url(), agent("executor"), extensions=[Tasks()]) as executor:
        handle = await executor.session.call_tool("build_report", {"repo": "acme/web"}, allow_claimed=True)
        with pytest.raises(MCPError) as refused:
            await executor.session.call_tool("build_report", {"repo": "evil/web"}, allow_claimed=True)
        done = await _poll(executor.session, handle.task_id)
    assert handle.task_id.startswith("t1.") and done.status == "completed"
    assert refused.value.code == errors.CONDITION_NOT_MET.code


# ---------------------------------------------------------------- 2025-11-25: raw JSON-RPC in a session


class LegacySession:
    """A 2025-11-25 session opened with raw JSON-RPC (initialize, initialized), then request by request."""

    def __init__(self, http: httpx.AsyncClient, url: str, who: str) -> None:
        self.http, self.url, self.who = http, url, who
        self.session = ""
        self.next_id = 1

    def _headers(self) -> dict[str, str]:
        headers = {**agent(self.who), "content-type": "application/json",
                   "accept": "application/json, text/event-stream", "mcp-protocol-version": LEGACY_REVISION}  # fmt: skip
        if self.session:
            headers["mcp-session-id"] = self.session
        return headers

    async def open(self) -> LegacySession:
        answer = await self.request("initialize", {"protocolVersion": LEGACY_REVISION, "capabilities": {},
                                                   "clientInfo": {"name": "raw", "version": "1"}})  # fmt: skip
        assert answer["result"]["capabilities"]["tasks"], answer
        sent = await self.http.post(self.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                                    headers=self._headers())  # fmt: skip
        assert sent.status_code == 202, sent.text
        return self

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """The JSON-RPC response to one request (the last message of an SSE answer)."""
        self.next_id += 1
        body = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}
        response = await self.http.post(self.url, json=body, headers=self._headers())
        self.session = self.session or response.headers.get("mcp-session-id", "")
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            events = [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")
                      and line[5:].strip()]  # fmt: skip
            answer = [e for e in events if e.get("id") == self.next_id][-1]
        else:
            answer = response.json()
        assert answer["id"] == self.next_id, answer
        return answer  # type: ignore[no-any-return]


async def test_a_legacy_session_creates_follows_and_cancels_its_tasks_and_lists_none(
    gateway: RunningGateway,
) -> None:
    backend = gateway.backends["github"]
    url = gateway.url()
    async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
        triage = await LegacySession(http, url, "triage").open()
        tools = await triage.request("tools/list", {})
        assert {t["name"]: t.get("execution") for t in tools["result"]["tools"]}["build_report"] == {
            "taskSupport": "optional"}  # fmt: skip
        created = await triage.request("tools/call", {"name": "build_report", "arguments": {"repo": "acme/web"},
                                                      "task": {"ttl": 60000}})  # fmt: skip
        task_id = created["result"]["task"]["taskId"]
        assert task_id.startswith("t1."), created
        got = await triage.request("tasks/get", {"taskId": task_id})
        result = await triage.request("tasks/result", {"taskId": task_id})  # waits for the end; streamed
        listed = await triage.request("tasks/list", {})
        second = await triage.request("tools/call", {"name": "build_report", "arguments": {"repo": "acme/api"},
                                                     "task": {}})  # fmt: skip
        cancelled = await triage.request("tasks/cancel", {"taskId": second["result"]["task"]["taskId"]})

        executor = await LegacySession(http, url, "executor").open()
        seen = len(backend.requests())
        raw = task_ids_seen_by(backend, "tasks/get")[0]
        refusals = [
            await executor.request("tasks/get", {"taskId": task_id}),
            await executor.request("tasks/result", {"taskId": task_id}),
            await executor.request("tasks/cancel", {"taskId": task_id}),
            await executor.request("tasks/get", {"taskId": raw}),  # the backend's own id
            await triage.request("tasks/result", {"taskId": raw}),
            await triage.request("tasks/cancel", {"taskId": raw}),
        ]
        reached = backend.requests()[seen:]

    assert got["result"]["taskId"] == task_id and got["result"]["status"] in ("working", "completed")
    assert result["result"]["content"][0]["text"] == "report of acme/web: 2 open issues"
    assert result["result"]["_meta"]["io.modelcontextprotocol/related-task"]["taskId"] == task_id
    assert listed["error"]["code"] == errors.METHOD_DENIED.code, listed  # cannot be limited to the caller's tasks
    assert cancelled["result"]["status"] == "cancelled" and cancelled["result"]["taskId"].startswith("t1.")
    for refused in refusals:  # another caller's, and the backend's own id
        assert refused["error"] == {"code": NOT_FOUND, "message": "Failed to retrieve task: Task not found"}
    assert [json.loads(r["body"]).get("method") for r in reached if r["body"]] == []  # answered by the gateway
    assert "tasks/list" not in [json.loads(r["body"]).get("method") for r in backend.requests() if r["body"]]


async def test_a_backend_without_tasks_refuses_the_task_methods(mcp_backend_factory: Any, tmp_path: Any) -> None:
    gw = await start_gateway(tmp_path / "plain", {"github": mcp_backend_factory(name="plain")}, policy_yaml=POLICY)
    try:
        async with mcp_client(gw.url(), agent("triage")) as client:
            with pytest.raises(MCPError) as refused:
                await client.session.send_request(GetTask(params=TaskIdParams(task_id="anything")), DetailedTask)
    finally:
        await stop_gateway(gw)
    assert refused.value.code == errors.METHOD_DENIED.code


async def test_a_modern_client_naming_the_backends_own_id_reaches_nothing(gateway: RunningGateway) -> None:
    backend = gateway.backends["github"]
    async with mcp_client(gateway.url(), agent("triage"), extensions=[Tasks()]) as triage:
        handle = await triage.session.call_tool("build_report", {"repo": "acme/web"}, allow_claimed=True)
        await _poll(triage.session, handle.task_id)
        raw = task_ids_seen_by(backend, "tasks/get")[-1]
        seen = len(backend.requests())
        with pytest.raises(MCPError) as refused:  # Mcp-Name carries the raw id too (name_param)
            await triage.session.send_request(GetTask(params=TaskIdParams(task_id=raw)), DetailedTask)
    assert refused.value.code == NOT_FOUND
    assert backend.requests()[seen:] == []


async def test_task_methods_fail_closed_when_the_policy_service_is_down(gateway: RunningGateway) -> None:
    """The backend fails open for its other calls (failOpen: true); never for task ids."""
    backend = gateway.backends["github"]
    async with mcp_client(gateway.url(), agent("triage"), extensions=[Tasks()]) as triage:
        handle = await triage.session.call_tool("build_report", {"repo": "acme/web"}, allow_claimed=True)
        service = gateway.control.policy_service
        assert service is not None
        port = service.port
        await service.stop()
        try:
            seen = len(backend.requests())
            with pytest.raises(MCPError) as down:
                await triage.session.send_request(GetTask(params=TaskIdParams(task_id=handle.task_id)), DetailedTask)
            reached = backend.requests()[seen:]
        finally:
            service.port = port
            await service.start()
    assert down.value.code == errors.POLICY_SERVICE_UNAVAILABLE.code
    assert reached == []
