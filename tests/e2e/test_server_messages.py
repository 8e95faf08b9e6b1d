"""End to end: what the server sends the client during a call passes through the gateway, both revisions.

A real MCP SDK server with tools that report progress, ask the user to
confirm (elicitation) and ask the client's model (sampling), behind the real
Envoy, called by the SDK client in both revisions: on 2025-11-25 the
server's requests arrive on the call's SSE stream and the client's answers
are POSTed back in the session; on 2026-07-28 the call returns
"input required" and the client calls again with its answers. Either way
the gateway applies the same rules to every request of the exchange: a
native condition, and one the policy service decides.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import mcp_types as types
import pytest
import pytest_asyncio
from mcp.shared.exceptions import MCPError

from tests.e2e.gateway import RunningGateway, start_gateway, stop_gateway
from tests.e2e.harness import mcp_client
from xds_server.core import errors

POLICY = """\
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {name: github}
spec:
  backend: github
  rules:
    - agents: [triage]
      tools: [count]
    - description: "archiving is for acme repositories (Envoy decides)"
      agents: [triage]
      tools: [archive_repo]
      when: 'args.repo.startsWith("acme/")'
    - description: "short questions only (size() keeps it with the policy service)"
      agents: [triage]
      tools: [ask_model]
      when: 'args.question.size() < 100'
"""

MODES = ["modern", "legacy"]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(mcp_backend_factory_module: Any,
                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGateway]:  # fmt: skip
    github = mcp_backend_factory_module(name="interactive", extra_args=("--interactive", "--resumable"))  # SSE answers
    gw = await start_gateway(tmp_path_factory.mktemp("server-messages"), {"github": github}, policy_yaml=POLICY)
    yield gw
    await stop_gateway(gw)


TRIAGE = {"x-agent-id": "triage"}


@pytest.mark.parametrize("mode", MODES)
async def test_progress_notifications_reach_the_client(gateway: RunningGateway, mode: str) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def progress(value: float, total: float | None, message: str | None) -> None:
        seen.append((value, total, message))

    async with mcp_client(gateway.url(), TRIAGE, mode) as client:
        result = await client.call_tool("count", {"n": 4}, progress_callback=progress)
    assert result.content[0].text == "counted to 4"
    assert seen == [(i, 4, f"step {i} of 4") for i in range(1, 5)]


@pytest.mark.parametrize("mode", MODES)
async def test_an_elicitation_round_trip_passes_the_gateway(gateway: RunningGateway, mode: str) -> None:
    asked: list[str] = []

    async def answer(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"ok": "acme/keep" not in params.message})

    async with mcp_client(gateway.url(), TRIAGE, mode, elicitation_callback=answer) as client:
        archived = await client.call_tool("archive_repo", {"repo": "acme/old"})
        kept = await client.call_tool("archive_repo", {"repo": "acme/keep"})
        with pytest.raises(MCPError) as refused:  # the rule's condition, before the server is asked anything
            await client.call_tool("archive_repo", {"repo": "evil/old"})
    assert archived.content[0].text == "archived acme/old" and kept.content[0].text == "kept acme/keep"
    assert asked == ["Archive acme/old? It becomes read-only.", "Archive acme/keep? It becomes read-only."]
    assert refused.value.error.code == errors.CONDITION_NOT_MET.code


@pytest.mark.parametrize("mode", MODES)
async def test_a_sampling_round_trip_passes_the_gateway_and_the_policy_service(
    gateway: RunningGateway, mode: str
) -> None:
    questions: list[str] = []

    async def model(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        questions.append(params.messages[0].content.text)  # type: ignore[union-attr]
        return types.CreateMessageResult(role="assistant", model="test-model",
                                         content=types.TextContent(type="text", text="forty-two"))  # fmt: skip

    service = gateway.control.policy_service
    assert service is not None
    checks = service.checks["github"]
    async with mcp_client(gateway.url(), TRIAGE, mode, sampling_callback=model) as client:
        answered = await client.call_tool("ask_model", {"question": "What is six times seven?"})
        with pytest.raises(MCPError) as refused:
            await client.call_tool("ask_model", {"question": "why? " * 30})
    assert answered.content[0].text == "the model says: forty-two"
    assert questions == ["What is six times seven?"]
    assert refused.value.error.code == errors.CONDITION_NOT_MET.code
    assert service.checks["github"] > checks  # the policy service decided them


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(id, JSON-RPC message) of each SSE event with data."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line and not line.startswith(":"))
        if fields.get("data", "").strip():
            events.append((fields.get("id", "").strip(), json.loads(fields["data"])))
    return events


async def test_a_client_resumes_a_stream_with_last_event_id(gateway: RunningGateway) -> None:
    """A legacy client that lost the call's stream after the first progress event reconnects with a GET
    carrying Last-Event-ID; the server's replay of what it missed comes through the gateway."""
    legacy = {"x-agent-id": "triage", "mcp-protocol-version": "2025-11-25", "content-type": "application/json",
              "accept": "application/json, text/event-stream"}  # fmt: skip
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-11-25",
            "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}  # fmt: skip
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        answer = await http.post(gateway.url(), content=json.dumps(init), headers=legacy)
        session = {**legacy, "mcp-session-id": answer.headers["mcp-session-id"]}
        await http.post(gateway.url(), content=json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
                        headers=session)  # fmt: skip
        call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                "params": {"name": "count", "arguments": {"n": 3}, "_meta": {"progressToken": "p"}}}  # fmt: skip
        streamed = sse_events((await http.post(gateway.url(), content=json.dumps(call), headers=session)).text)
        assert [m.get("method") or "result" for _, m in streamed] == ["notifications/progress"] * 3 + ["result"]
        assert all(event_id for event_id, _ in streamed), streamed  # the server numbers its events
        first = streamed[0][0]
        received = ""
        # The replay stays open for what comes next (a live stream): read until the missed events are in.
        async with http.stream("GET", gateway.url(), headers={**session, "accept": "text/event-stream",
                                                              "last-event-id": first}) as replayed:  # fmt: skip
            assert replayed.status_code == 200
            async for chunk in replayed.aiter_text():
                received += chunk
                if len(sse_events(received)) >= len(streamed) - 1:
                    break
    assert [m for _, m in sse_events(received)] == [m for _, m in streamed[1:]]  # all it missed, in order
