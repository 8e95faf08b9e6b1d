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

from collections.abc import AsyncIterator
from typing import Any

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
    github = mcp_backend_factory_module(name="interactive", extra_args=("--interactive",))  # SSE answers
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
