"""Virtual MCP servers end to end: three real MCP SDK servers (both revisions, legacy-only,
stateless-only) behind one virtual server, the SDK client in both revisions, through the real Envoy.

What each test proves is in its docstring. The members are demo servers (`--name` is what `whoami`
answers), all with the same tools, so every name is shared and the prefixes decide.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from mcp.shared.exceptions import MCPError

from tests.e2e.gateway import (
    AGENTS_YAML,
    GATEWAY,
    IDENTITY_HEADER,
    RunningGateway,
    backend_yaml,
    eventually,
    gateway_yaml,
    launch,
    stop_gateway,
    wait_listening,
)
from tests.e2e.harness import (
    LEGACY_REVISION,
    MODERN_META,
    MODERN_REVISION,
    REPO_ROOT,
    McpBackend,
    mcp_client,
    python_env,
    raw_post,
    start_mcp_backend,
)
from xds_server.runtime.bootstrap import render_bootstrap
from xds_server.runtime.envoy import EnvoyProcess
from xds_server.runtime.ports import free_port

pytestmark = pytest.mark.asyncio(loop_scope="session")

VIRTUAL = """\
apiVersion: agentxds.dev/v1
kind: VirtualMCPServer
metadata: {name: tools}
spec:
  backends:
    - {backend: alpha}
    - {backend: beta, revisions: ["2025-11-25"]}
    - {backend: gamma, prefix: gm, revisions: ["2026-07-28"]}
  tools:
    exclude: ["*delete_repo"]
    rename: {gm__get_issue: find_issue}
    descriptions: {alpha__whoami: "Which server alpha is."}
  fanOut: {timeout: 1s, cache: 0s}
---
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {name: tools}
spec:
  backend: tools
  rules:
    - agents: [triage]
      tools: ["*"]
    - agents: [executor]
      tools: [alpha__whoami, beta__whoami]
    - agents: [auditor]
      tools: [alpha__list_issues]
      when: 'args.repo.startsWith("acme/")'
    - agents: [auditor]
      tools: [gm__list_issues]
      quota: {calls: 2, per: 1h}
"""

TOOLS = {"list_issues", "get_issue", "create_issue", "delete_repo", "whoami", "build_report"}
#: beta also talks back (--interactive): progress during a call, a list change outside one.
INTERACTIVE = {"count", "announce_tools", "archive_repo", "ask_model"}
BETA_ARGS = ("--only-revision", "2025-11-25", "--interactive")
EXPECTED = ({f"{p}__{t}" for p in ("alpha", "beta", "gm") for t in TOOLS if t != "delete_repo"}
            - {"gm__get_issue"}) | {"find_issue"} | {f"{p}__{t}" for p in ("alpha", "beta") for t in INTERACTIVE}  # fmt: skip


@dataclass
class Virtual:
    gateway: RunningGateway
    members: dict[str, McpBackend]
    workdir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.listen_port}/vmcp/tools"


def _members(workdir: Path) -> dict[str, McpBackend]:
    return {
        "alpha": start_mcp_backend(workdir, name="alpha", extra_args=("--interactive",)),
        "beta": start_mcp_backend(workdir, name="beta", extra_args=BETA_ARGS),
        "gamma": start_mcp_backend(workdir, name="gamma", extra_args=("--only-revision", "2026-07-28")),
    }


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def virtual(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Virtual]:
    workdir = tmp_path_factory.mktemp("vmcp")
    members = _members(workdir)
    listen_port, policy_port, authz_port = free_port(), free_port(), free_port()
    policies = workdir / "policies"
    policies.mkdir()
    (policies / "gateway.yaml").write_text(gateway_yaml(listen_port, policy_port, authz_http_port=authz_port))
    (policies / "agents.yaml").write_text(AGENTS_YAML)
    (policies / "backends.yaml").write_text("---\n".join(backend_yaml(n, b) for n, b in members.items()))
    (policies / "virtual.yaml").write_text(VIRTUAL)
    try:
        control, envoy = await launch(policies, workdir, listen_port, policy_port, authz_port)
        gateway = RunningGateway(policies, control, envoy, listen_port, members)
        yield Virtual(gateway, members, workdir)
        await stop_gateway(gateway)
    finally:
        for member in members.values():
            member.stop()


def _text(result: Any) -> str:
    return str(result.content[0].text)


@pytest.mark.parametrize("mode", ["modern", "legacy"])
async def test_merged_list_and_calls_reach_their_member(virtual: Virtual, mode: str) -> None:
    """One URL, three members: the list is every member's tools under prefixed names (curated), and a call
    reaches the member its prefix names with the member's own name, whatever revision each side speaks."""
    async with mcp_client(virtual.url, {IDENTITY_HEADER: "triage"}, mode) as client:  # type: ignore[arg-type]
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools) == EXPECTED
        assert tools["alpha__whoami"].description == "Which server alpha is."
        for name, server in (("alpha__whoami", "alpha"), ("beta__whoami", "beta"), ("gm__whoami", "gamma")):
            assert _text(await client.call_tool(name, {})) == f"server {server}"
        before = virtual.members["gamma"].tool_calls("get_issue")
        assert _text(await client.call_tool("find_issue", {"repo": "acme/web", "number": 7})) == "issue acme/web#7: bug"
        assert virtual.members["gamma"].tool_calls("get_issue") == before + 1
    for member in virtual.members.values():
        assert member.tool_calls("whoami") >= 1
        assert all(not json.loads(r["body"]).get("params", {}).get("name", "").startswith(("alpha__", "beta__", "gm__"))
                   for r in member.requests() if r["body"])  # fmt: skip


def _call(request_id: Any, tool: str, arguments: dict[str, Any] | None = None, modern: bool = True) -> str:
    params: dict[str, Any] = {"name": tool, "arguments": arguments or {}}
    if modern:
        params["_meta"] = MODERN_META
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params})


def _modern(agent: str, tool: str) -> dict[str, str]:
    return {IDENTITY_HEADER: agent, "mcp-protocol-version": MODERN_REVISION, "mcp-method": "tools/call",
            "mcp-name": tool}  # fmt: skip


async def _initialize(url: str, agent: str = "triage") -> str:
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": LEGACY_REVISION, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}  # fmt: skip
    answer = await raw_post(url, json.dumps(body), {IDENTITY_HEADER: agent})
    assert answer.status_code == 200, answer.text
    assert answer.json()["result"]["protocolVersion"] == LEGACY_REVISION
    return answer.headers["mcp-session-id"]


def _legacy(agent: str, session: str) -> dict[str, str]:
    return {IDENTITY_HEADER: agent, "mcp-protocol-version": LEGACY_REVISION, "mcp-session-id": session}


def _message(answer: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC response in an answer (JSON, or the last message of an SSE stream)."""
    if answer.headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[5:].strip() for line in answer.text.splitlines() if line.startswith("data:")]
        return dict(json.loads(data[-1]))
    return dict(answer.json())


async def test_native_calls_stay_in_envoy(virtual: Virtual) -> None:
    """A 2026-07-28 call to a stateless member is routed by Envoy alone (the policy service sees nothing of
    it); a call to the legacy-only member, or of a renamed tool, goes through the policy service."""
    front = virtual.gateway.control.policy_service.vmcp  # type: ignore[union-attr]
    passed_on = lambda: front.counters[("tools", "tools/call")]  # noqa: E731
    before = passed_on()
    for i, tool in enumerate(("alpha__whoami", "gm__whoami")):
        answer = await raw_post(virtual.url, _call(i, tool), _modern("triage", tool))
        assert (
            _message(answer)["result"]["content"][0]["text"] == f"server {tool.split('__')[0].replace('gm', 'gamma')}"
        )
    assert passed_on() == before
    answer = await raw_post(virtual.url, _call(7, "beta__whoami"), _modern("triage", "beta__whoami"))
    assert _message(answer)["result"]["content"][0]["text"] == "server beta"
    assert _message(answer)["result"]["resultType"] == "complete"  # the legacy member's answer, in 2026-07-28 terms
    assert passed_on() == before + 1
    # What reached alpha: its own name, in the body and in Mcp-Name (the SDK server checks they agree).
    last = [r for r in virtual.members["alpha"].requests() if r["body"] and "whoami" in r["body"]][-1]
    assert json.loads(last["body"])["params"]["name"] == "whoami" and last["headers"]["mcp-name"] == "whoami"


@pytest.mark.parametrize("mode", ["modern", "legacy"])
async def test_curation_and_callers(virtual: Virtual, mode: str) -> None:
    """Curation hides and refuses (an excluded tool, a tool under its old name), even for an agent granted
    every name; an agent granted two tools sees and calls only those (RBAC on the names clients see)."""
    modern = mode == "modern"
    session = None if modern else await _initialize(virtual.url)
    for tool in ("alpha__delete_repo", "gm__get_issue", "nobody__whoami"):
        headers = _modern("triage", tool) if modern else _legacy("triage", session)  # type: ignore[arg-type]
        error = _message(await raw_post(virtual.url, _call("q-1", tool, modern=modern), headers))["error"]
        assert error["code"] == -32602 and error["data"]["reason"] == "unknown_name", error
        assert tool in error["message"]
    assert virtual.members["alpha"].tool_calls("delete_repo") == 0
    async with mcp_client(virtual.url, {IDENTITY_HEADER: "executor"}, mode) as client:  # type: ignore[arg-type]
        assert {t.name for t in (await client.list_tools()).tools} == {"alpha__whoami", "beta__whoami"}
        assert _text(await client.call_tool("beta__whoami", {})) == "server beta"
    session = None if modern else await _initialize(virtual.url, "executor")
    headers = _modern("executor", "gm__whoami") if modern else _legacy("executor", session)  # type: ignore[arg-type]
    error = _message(await raw_post(virtual.url, _call(9, "gm__whoami", modern=modern), headers))["error"]
    assert error["code"] == -32003 and error["data"]["reason"] == "tool_not_allowed"


async def test_forged_sessions_are_refused(virtual: Virtual) -> None:
    """A legacy session id the virtual server did not seal (made up, or altered by one character) is
    refused with 404 and the request's id; the real one works."""
    session = await _initialize(virtual.url)
    answer = await raw_post(virtual.url, _call(3, "beta__whoami", modern=False), _legacy("triage", session))
    assert _message(answer)["result"]["content"][0]["text"] == "server beta"
    # The id is the sealed one itself (Envoy's session envelope is off on virtual servers: any replica opens it).
    assert session.startswith("t1.")
    altered = session[:-1] + ("A" if session[-1] != "A" else "B")
    for forged in ("t1.e30.AAAAAAAAAAAAAAAAAAAAAA", altered, base64.b64encode(session.encode()).decode()):
        answer = await raw_post(virtual.url, _call("f", "beta__whoami", modern=False), _legacy("triage", forged))
        assert answer.status_code == 404, answer.text
        assert answer.json()["id"] == "f" and answer.json()["error"]["data"]["reason"] == "session_unknown"


async def test_passed_on_calls_are_read_strictly(virtual: Virtual) -> None:
    """What the policy service passes on is what Envoy checked: a body repeating a key anywhere (a second
    `params` naming another tool, say) is refused in both revisions, and reaches no member."""
    session = await _initialize(virtual.url, "executor")
    calls = virtual.members["beta"].tool_calls("create_issue")
    meta = json.dumps(MODERN_META)
    bodies = {
        "legacy": '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"beta__whoami","arguments":{}},'
                  '"params":{"name":"beta__create_issue","arguments":{"repo":"a/b","title":"t"}}}',
        "modern": '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"beta__whoami","arguments":{},'
                  f'"_meta":{meta}}},"params":{{"name":"beta__create_issue","arguments":{{"repo":"a/b","title":"t"}},'
                  f'"_meta":{meta}}}}}',
    }  # fmt: skip
    for mode, body in bodies.items():
        headers = _legacy("executor", session) if mode == "legacy" else _modern("executor", "beta__whoami")
        error = _message(await raw_post(virtual.url, body, headers))["error"]
        assert error["data"]["reason"] == "duplicate_keys", (mode, error)
    assert virtual.members["beta"].tool_calls("create_issue") == calls


async def test_a_member_down_drops_out_and_comes_back(virtual: Virtual) -> None:
    """A member stopped: its tools leave the list within the fan-out bound, its calls (native or passed on)
    get an error naming it, the others keep working; started again, it is back without any change."""
    alpha = virtual.members["alpha"]
    alpha.stop()
    try:
        async with mcp_client(virtual.url, {IDENTITY_HEADER: "triage"}, "modern") as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert names == {n for n in EXPECTED if not n.startswith("alpha__")}
            assert _text(await client.call_tool("beta__whoami", {})) == "server beta"
            assert _text(await client.call_tool("gm__whoami", {})) == "server gamma"
        answer = await raw_post(virtual.url, _call("down", "alpha__whoami"), _modern("triage", "alpha__whoami"))
        error = _message(answer)["error"]
        assert error["code"] == -32053 and error["data"]["backend"] == "alpha", error
        assert "Backend 'alpha' of virtual server 'tools'" in error["message"] and answer.json()["id"] == "down"
        session = await _initialize(virtual.url)
        answer = await raw_post(virtual.url, _call("down2", "alpha__whoami", modern=False), _legacy("triage", session))
        error = _message(answer)["error"]
        assert error["code"] == -32053 and error["data"]["backend"] == "alpha", error
    finally:
        virtual.members["alpha"] = start_mcp_backend(virtual.workdir, name="alpha", port=alpha.port,
                                                     extra_args=("--interactive",))  # fmt: skip

    async def listed_again() -> bool:  # a member that failed is not asked again for a second
        async with mcp_client(virtual.url, {IDENTITY_HEADER: "triage"}, "modern") as client:
            return {t.name for t in (await client.list_tools()).tools} == EXPECTED

    await eventually(listed_again, timeout=10, what="the member to be listed again")
    async with mcp_client(virtual.url, {IDENTITY_HEADER: "triage"}, "legacy") as client:
        assert {t.name for t in (await client.list_tools()).tools} == EXPECTED
        assert _text(await client.call_tool("alpha__whoami", {})) == "server alpha"


async def test_a_session_continues_through_another_envoy(virtual: Virtual) -> None:
    """A legacy client's session holds its members' sessions in its id alone: started through one Envoy,
    it goes on through another Envoy of the same gateway."""
    port = free_port()
    bootstrap = render_bootstrap(node_id="vmcp-second", node_cluster=GATEWAY, xds_host="127.0.0.1",
                                 xds_port=virtual.gateway.control.port, admin_port=0, listen_port=port)  # fmt: skip
    second = EnvoyProcess(bootstrap, workdir=virtual.workdir / "envoy-2", log_level="warning").start()
    try:
        await second.wait_live_async(20)
        await wait_listening(port)
        sessions_before = {r["headers"].get("mcp-session-id") for r in virtual.members["beta"].requests()}
        session = await _initialize(virtual.url)
        elsewhere = f"http://127.0.0.1:{port}/vmcp/tools"
        for i, (url, tool) in enumerate([(elsewhere, "beta__whoami"), (virtual.url, "beta__whoami"),
                                         (elsewhere, "alpha__whoami")]):  # fmt: skip
            answer = await raw_post(url, _call(i, tool, modern=False), _legacy("triage", session))
            assert _message(answer)["result"]["content"][0]["text"] == f"server {tool.split('__')[0]}"
        # Both calls to beta went in the one session opened for this client at initialize.
        used = [r["headers"].get("mcp-session-id") for r in virtual.members["beta"].requests()
                if r["body"] and '"whoami"' in r["body"]][-2:]  # fmt: skip
        assert used[0] == used[1] and used[0] not in sessions_before
    finally:
        second.stop()


async def test_conditions_and_quotas_on_the_names_clients_see(virtual: Virtual) -> None:
    """Rules on a virtual server's names work as on a backend: a native condition is decided by Envoy alone
    (no decision asked of the policy service), a quota by the policy service before Envoy routes the call
    to its member natively."""
    service = virtual.gateway.control.policy_service
    assert service is not None
    checks = service.checks["tools"]
    async with mcp_client(virtual.url, {IDENTITY_HEADER: "auditor"}, "modern") as client:
        assert {t.name for t in (await client.list_tools()).tools} == {"alpha__list_issues", "gm__list_issues"}
        assert "acme/web" in _text(await client.call_tool("alpha__list_issues", {"repo": "acme/web"}))
        with pytest.raises(MCPError) as refused:
            await client.call_tool("alpha__list_issues", {"repo": "evil/web"})
        assert refused.value.error.data["reason"] == "condition_not_met"
        assert service.checks["tools"] == checks  # decided in Envoy
        for _ in range(2):
            assert "acme/api" in _text(await client.call_tool("gm__list_issues", {"repo": "acme/api"}))
        with pytest.raises(MCPError) as refused:
            await client.call_tool("gm__list_issues", {"repo": "acme/api"})
        assert refused.value.error.data["reason"] == "quota_exceeded"
    assert service.checks["tools"] == checks + 3


async def test_members_messages_reach_the_client(virtual: Virtual) -> None:
    """What a member sends reaches the client: progress during a passed-on call (both revisions), and a
    legacy member's list change outside any call, on the legacy client's stream (its GET, merged by the
    virtual server from its members' streams) and to a 2026-07-28 client listening."""
    for mode in ("modern", "legacy"):
        seen: list[float] = []

        async def progress(done: float, total: float | None, message: str | None, seen: list[float] = seen) -> None:
            seen.append(done)

        async with mcp_client(virtual.url, {IDENTITY_HEADER: "triage"}, mode) as client:  # type: ignore[arg-type]
            result = await client.call_tool("beta__count", {"n": 3}, progress_callback=progress)
            assert _text(result) == "counted to 3" and seen == [1, 2, 3], (mode, seen)
    changed = asyncio.Event()

    async def on_message(message: Any) -> None:
        if type(message).__name__ == "ToolListChangedNotification" or "tools/list_changed" in repr(message):
            changed.set()

    async with mcp_client(virtual.url, {IDENTITY_HEADER: "triage"}, "legacy", message_handler=on_message) as client:
        await asyncio.sleep(0.3)  # the client opens its stream after initialize
        assert _text(await client.call_tool("beta__announce_tools", {})) == "announced"
        await asyncio.wait_for(changed.wait(), timeout=10)
        # A stateless member's change too (it announces to its listeners: the gateway follows it).
        changed.clear()
        await _announce_until(client, "alpha__announce_tools", changed.wait)
    # A 2026-07-28 client listens (subscriptions/listen): the virtual server follows its members' changes.
    async with mcp_client(virtual.url, {IDENTITY_HEADER: "triage"}, "modern") as client:
        async with client.listen(tools_list_changed=True, resource_subscriptions=["docs://readme"]) as subscription:
            assert subscription.honored.tools_list_changed is True
            assert not subscription.honored.resource_subscriptions  # resource updates are not passed on
            for tool in ("beta__announce_tools", "alpha__announce_tools"):  # legacy-only, then stateless (native)
                event = await _announce_until(client, tool, lambda: anext(aiter(subscription)))
                assert type(event).__name__ == "ToolsListChanged"
            # A change of the virtual server's policies ends the stream gracefully: the client listens again.
            path = virtual.gateway.policy_dir / "virtual.yaml"
            original = path.read_text()
            reloads = virtual.gateway.control.reloads
            path.write_text(original.replace('descriptions: {alpha__whoami: "Which server alpha is."}',
                                             'descriptions: {alpha__whoami: "Which server alpha is, now."}'))  # fmt: skip
            try:
                await virtual.gateway.wait_reloads(reloads + 1)
                with pytest.raises(StopAsyncIteration):
                    while True:
                        await asyncio.wait_for(anext(aiter(subscription)), timeout=10)
            finally:
                reloads = virtual.gateway.control.reloads
                path.write_text(original)
                await virtual.gateway.wait_reloads(reloads + 1)


async def _announce_until(client: Any, tool: str, heard: Any) -> Any:
    """Call `tool` (a member announcing a list change) until `heard()` returns within a second: the gateway's
    stream to the member may still be opening when the first announcement is made."""
    for _ in range(10):
        assert _text(await client.call_tool(tool, {})) == "announced"
        try:
            return await asyncio.wait_for(heard(), timeout=1)
        except TimeoutError:
            continue
    raise AssertionError(f"no list change reached the client after {tool}")


async def test_stateless_clients_share_the_gateways_session_safely(virtual: Virtual) -> None:
    """2026-07-28 clients reach the legacy-only member through the one session the gateway holds with it:
    many at once, all with the same JSON-RPC id, each gets its own answer under its id."""
    answers = await asyncio.gather(*(raw_post(virtual.url, _call(1, "beta__whoami"), _modern("triage", "beta__whoami"))
                                     for _ in range(12)))  # fmt: skip
    for answer in answers:
        message = _message(answer)
        assert message["id"] == 1 and message["result"]["content"][0]["text"] == "server beta", message


async def test_a_member_that_ended_the_session_asks_for_a_new_one(virtual: Virtual) -> None:
    """A legacy client's session whose member session is gone (the member restarted) gets HTTP 404,
    -32600 `session_gone`, with the request's id; a new session works."""
    session = await _initialize(virtual.url)
    beta = virtual.members["beta"]
    beta.stop()
    virtual.members["beta"] = start_mcp_backend(virtual.workdir, name="beta", port=beta.port,
                                                extra_args=BETA_ARGS)  # fmt: skip
    answer = await raw_post(virtual.url, _call("gone", "beta__whoami", modern=False), _legacy("triage", session))
    assert answer.status_code == 404, answer.text
    assert answer.json()["id"] == "gone" and answer.json()["error"]["data"]["reason"] == "session_gone"
    # Its stream too: told to start anew at once, never a stream that ends and is opened again each second.
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        stream = await http.get(virtual.url, headers={**_legacy("triage", session), "accept": "text/event-stream"})
        assert stream.status_code == 404 and stream.json()["error"]["data"]["reason"] == "session_gone"
        modern = await http.get(virtual.url, headers={IDENTITY_HEADER: "triage", "accept": "text/event-stream",
                                                      "mcp-protocol-version": MODERN_REVISION})  # fmt: skip
        assert modern.status_code == 405
    async with mcp_client(virtual.url, {IDENTITY_HEADER: "triage"}, "legacy") as client:
        assert _text(await client.call_tool("beta__whoami", {})) == "server beta"


async def test_a_pinned_tool_changed_on_a_member_is_hidden(virtual: Virtual) -> None:
    """`agentxds pin` of the virtual server pins its tools as clients see them; when one member changes a
    pinned tool, that tool is hidden and refused (the others stay), in both revisions."""
    gateway = virtual.gateway
    lock = gateway.policy_dir / "tools.lock.yaml"
    reloads = gateway.control.reloads
    pinned = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "xds_server.cli", "pin",
                                     str(gateway.policy_dir), "--backend", "tools"], capture_output=True, text=True,
                                     timeout=60, env=python_env(), cwd=REPO_ROOT)  # fmt: skip
    assert pinned.returncode == 0, pinned.stderr
    assert f"pinned {len(EXPECTED)} tool(s) of tools" in pinned.stdout
    await gateway.wait_reloads(reloads + 1)
    beta = virtual.members["beta"]
    beta.stop()
    virtual.members["beta"] = start_mcp_backend(virtual.workdir, name="beta", port=beta.port,
                                                extra_args=(*BETA_ARGS, "--poison", "whoami"))  # fmt: skip
    calls_before = virtual.members["beta"].tool_calls("whoami")
    try:
        service = gateway.control.policy_service
        assert service is not None
        guard = service.handlers["mcp"].guard  # type: ignore[attr-defined]

        async def seen() -> bool:  # by the policy service's own refresh (no client lists the tools here)
            verdict = guard.verdict("tools", "beta__whoami")
            return verdict is not None and not verdict.usable

        # The refresh reads the virtual server's tools from its front, the policy service's HTTP port, which
        # serves this gateway's requests with its policy-service secret only (every e2e gateway has one).
        await eventually(seen, timeout=20, what="the tool guard's refresh to see the changed tool")
        for mode in ("modern", "legacy"):
            async with mcp_client(virtual.url, {IDENTITY_HEADER: "triage"}, mode) as client:  # type: ignore[arg-type]
                assert {t.name for t in (await client.list_tools()).tools} == EXPECTED - {"beta__whoami"}
                assert _text(await client.call_tool("alpha__whoami", {})) == "server alpha"
                with pytest.raises(MCPError) as refused:
                    await client.call_tool("beta__whoami", {})
                assert refused.value.error.data["reason"] == "tool_changed"
        assert virtual.members["beta"].tool_calls("whoami") == calls_before
    finally:
        lock.unlink()


async def test_native_name_restoring_reads_json_not_bytes(virtual: Virtual) -> None:
    """Raw bodies against the native path: the member's name is restored in the JSON value of params.name
    only (escaped spellings decoded, an argument or id spelling the same name untouched), and a lying
    Mcp-Name or a repeated name is refused before any member sees it."""
    gamma = virtual.members["gamma"]
    meta = json.dumps(MODERN_META)

    async def send(body: str, agent: str = "triage", header: str = "gm__whoami") -> dict[str, Any]:
        return _message(await raw_post(virtual.url, body, _modern(agent, header)))

    escaped = ('{"jsonrpc":"2.0","id":"x1","method":"tools/call","params":{"n\\u0061me":"gm\\u005f_whoami",'
               f'"arguments":{{}},"_meta":{meta}}}}}')  # fmt: skip
    assert (await send(escaped))["result"]["content"][0]["text"] == "server gamma"
    tricky = ('{"jsonrpc":"2.0","id":"gm__list_issues","method":"tools/call","params":{"arguments":'
              f'{{"repo":"gm__list_issues"}},"name":"gm__list_issues","_meta":{meta}}}}}')  # fmt: skip
    answer = await send(tricky, header="gm__list_issues")
    assert answer["id"] == "gm__list_issues" and "gm__list_issues" in answer["result"]["content"][0]["text"]
    last = json.loads([r for r in gamma.requests() if r["body"] and "list_issues" in r["body"]][-1]["body"])
    assert last["params"]["name"] == "list_issues" and last["params"]["arguments"] == {"repo": "gm__list_issues"}
    assert last["id"] == "gm__list_issues"
    # A lying Mcp-Name is refused by Envoy's MCP filter before anything else reads it.
    calls = gamma.tool_calls("whoami")
    for agent, header in (("triage", "gm__delete_repo"), ("executor", "alpha__whoami")):
        lied = await send(_call(5, "gm__whoami"), agent=agent, header=header)
        assert lied["id"] == 5 and lied["error"]["code"] == -32020, lied
    assert gamma.tool_calls("whoami") == calls
    twice = ('{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"gm__whoami","name":"gm__delete_repo",'
             f'"arguments":{{}},"_meta":{meta}}}}}')  # fmt: skip
    assert (await send(twice))["error"]["data"]["reason"] == "duplicate_keys"
