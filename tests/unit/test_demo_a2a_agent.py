"""The demo A2A agent as a subprocess, spoken to by the official a2a-sdk client in both protocol generations.

The card decides the generation: "1.0" (the default) makes the 1.x client use its JSON-RPC transport
(SendMessage, GetTask, ...); `--v03` advertises "0.3.0" and the client switches to its 0.3 compat
transport (message/send, tasks/get, ...). /_calls shows which method names reached the agent.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from a2a.client import Client, ClientConfig, create_client
from a2a.helpers import get_artifact_text, new_text_message
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    GetExtendedAgentCardRequest,
    GetTaskRequest,
    Role,
    SendMessageRequest,
    StreamResponse,
    TaskState,
)

TERMINAL = {TaskState.TASK_STATE_COMPLETED, TaskState.TASK_STATE_CANCELED, TaskState.TASK_STATE_FAILED}

#: What the 1.x client sends per generation: (send, stream, get, cancel, extended card).
METHODS = {
    "1.0": ("SendMessage", "SendStreamingMessage", "GetTask", "CancelTask", "GetExtendedAgentCard"),
    "0.3": ("message/send", "message/stream", "tasks/get", "tasks/cancel", "agent/getAuthenticatedExtendedCard"),
}


@dataclass
class Agent:
    name: str
    url: str
    generation: str  # "1.0" or "0.3"

    def calls(self) -> list[dict[str, Any]]:
        return httpx.get(self.url + "_calls").json()

    def clear_calls(self) -> None:
        httpx.delete(self.url + "_calls").raise_for_status()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module", params=["1.0", "0.3"])
def agent(request: pytest.FixtureRequest) -> Iterator[Agent]:
    generation: str = request.param
    name = f"agent-{generation}"
    port = _free_port()
    argv = [sys.executable, "-m", "xds_server.demo.a2a_agent", "--port", str(port), "--name", name]
    proc = subprocess.Popen([*argv, "--v03"] if generation == "0.3" else argv, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        line = ""
        assert proc.stdout is not None
        while not line.startswith("READY") and time.monotonic() < deadline and proc.poll() is None:
            if select.select([proc.stdout], [], [], 0.1)[0]:
                line = proc.stdout.readline()
        assert line.strip() == f"READY http://127.0.0.1:{port}/", f"agent did not start: {line!r}"
        yield Agent(name, f"http://127.0.0.1:{port}/", generation)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@asynccontextmanager
async def a2a_client(agent: Agent, **config: Any) -> AsyncIterator[Client]:
    client = await create_client(agent.url, ClientConfig(**config))
    try:
        yield client
    finally:
        await client.close()


def _message(text: str) -> SendMessageRequest:
    return SendMessageRequest(message=new_text_message(text, role=Role.ROLE_USER))


async def _send(client: Client, text: str) -> list[StreamResponse]:
    return [event async for event in client.send_message(_message(text))]


def test_card(agent: Agent) -> None:
    card = httpx.get(agent.url + ".well-known/agent-card.json").json()
    assert card["name"] == agent.name
    assert [s["id"] for s in card["skills"]] == ["echo", "count", "slow"]
    assert card["capabilities"] == {"streaming": True, "extendedAgentCard": True}
    (interface,) = card["supportedInterfaces"]
    assert interface["url"] == agent.url and interface["protocolBinding"] == "JSONRPC"
    if agent.generation == "0.3":
        assert interface["protocolVersion"] == "0.3.0"
        # The SDK adds the 0.3 top-level fields for a card with a 0.3 interface (and only then).
        assert card["url"] == agent.url and card["protocolVersion"] == "0.3.0"
        assert card["supportsAuthenticatedExtendedCard"] is True
    else:
        assert interface["protocolVersion"] == "1.0"
        assert "url" not in card and "protocolVersion" not in card


async def test_send_then_get(agent: Agent) -> None:
    agent.clear_calls()
    async with a2a_client(agent, streaming=False) as client:
        (event,) = await _send(client, "hi")
        task = event.task
        assert task.id and task.context_id
        assert task.status.state == TaskState.TASK_STATE_COMPLETED
        assert [get_artifact_text(a) for a in task.artifacts] == [f"[{agent.name}] echo: hi"]

        fetched = await client.get_task(GetTaskRequest(id=task.id))
        assert (fetched.id, fetched.context_id) == (task.id, task.context_id)
        assert fetched.status.state == TaskState.TASK_STATE_COMPLETED
        assert [get_artifact_text(a) for a in fetched.artifacts] == [f"[{agent.name}] echo: hi"]

    send, _, get, _, _ = METHODS[agent.generation]
    calls = agent.calls()
    assert [c["method"] for c in calls] == [send, get]
    assert "task_id" not in calls[0] and calls[1]["task_id"] == task.id
    assert {c["version"] for c in calls} == {agent.generation}  # the A2A-Version header the client sent


async def test_stream_count(agent: Agent) -> None:
    agent.clear_calls()
    async with a2a_client(agent, streaming=True) as client:
        events = await _send(client, "count 3")
    kinds = [e.WhichOneof("payload") for e in events]
    assert kinds == ["task", "status_update", "artifact_update", "artifact_update", "artifact_update", "status_update"]
    task_id = events[0].task.id
    assert all(getattr(e, kind).task_id == task_id for e, kind in zip(events[1:], kinds[1:], strict=True))
    texts = [get_artifact_text(e.artifact_update.artifact) for e in events if e.HasField("artifact_update")]
    assert texts == [f"[{agent.name}] count {i}/3" for i in (1, 2, 3)]
    assert events[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
    assert [c["method"] for c in agent.calls()] == [METHODS[agent.generation][1]]


async def test_cancel_slow(agent: Agent) -> None:
    agent.clear_calls()
    # polling: return_immediately (1.0) / blocking=false (0.3), so the send answers while the task runs.
    async with a2a_client(agent, streaming=False, polling=True) as client:
        (event,) = await _send(client, "slow")
        task = event.task
        assert task.status.state not in TERMINAL
        canceled = await client.cancel_task(CancelTaskRequest(id=task.id))
        assert canceled.id == task.id and canceled.status.state == TaskState.TASK_STATE_CANCELED
        assert canceled.status.message.parts[0].text == f"[{agent.name}] canceled"
        fetched = await client.get_task(GetTaskRequest(id=task.id))
        assert fetched.status.state == TaskState.TASK_STATE_CANCELED
    send, _, get, cancel, _ = METHODS[agent.generation]
    calls = agent.calls()
    assert [c["method"] for c in calls] == [send, cancel, get]
    assert [c.get("task_id") for c in calls] == [None, task.id, task.id]


async def test_extended_card(agent: Agent) -> None:
    agent.clear_calls()
    async with a2a_client(agent, streaming=False) as client:
        card = await client.get_extended_agent_card(GetExtendedAgentCardRequest())
    assert [s.id for s in card.skills] == ["echo", "count", "slow", "admin"]
    assert [c["method"] for c in agent.calls()] == [METHODS[agent.generation][4]]
