"""Shared decision state: policy-service replicas keeping quotas and approvals in a real Valkey server.

First the store on its own (two `SharedState`s standing for two replicas,
racing on one quota; approvals through their life), then the whole path: two
gateways (each its control plane, policy service and Envoy; one asks over
HTTP, the other over gRPC) with one policy set and one Valkey, called by SDK
clients in both protocol revisions. The quota holds across both exactly; an
approval asked through one is approved through the other's API and used
once; with the store stopped the calls that need it are refused (fail
closed) while other calls go on, and it works again once the store is back.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import valkey
from mcp.shared.exceptions import MCPError

from tests.e2e.gateway import IDENTITY_HEADER, RunningGateway, eventually, start_gateway, stop_gateway
from tests.e2e.harness import (
    MODERN_META,
    MODERN_REVISION,
    REPO_ROOT,
    mcp_client,
    python_env,
    raw_post,
)
from tests.e2e.stores import ValkeyServer
from xds_server.authz.approvals import ApprovalCall, ApprovalError, ApprovalState
from xds_server.authz.effects import SpendQuota, StateUnavailable
from xds_server.authz.engine import CallContext, Decision, Engine
from xds_server.authz.quota import QuotaKey
from xds_server.authz.shared_state import SharedState, quota_key
from xds_server.core import errors
from xds_server.ir.glob import compile_globs
from xds_server.ir.types import ConditionalRuleIR, QuotaIR, QuotaScope

QUOTA = 5

POLICY = f"""\
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {{name: github}}
spec:
  backend: github
  rules:
    - description: executor may list issues {QUOTA} times a minute, across every replica
      agents: [executor]
      tools: [list_issues]
      quota: {{calls: {QUOTA}, per: 1m, by: agent}}
    - description: deleting a repository needs an operator, through any replica
      agents: [executor]
      tools: [delete_repo]
      requireApproval: true
    - agents: ["*"]
      tools: [whoami]
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyServer]:
    server = ValkeyServer.start(tmp_path_factory.mktemp("valkey"))
    yield server
    server.stop()


@pytest.fixture
def empty_store(store: ValkeyServer) -> ValkeyServer:
    """The module's server, running and emptied (a test may have stopped it)."""
    if store.process is None:
        store.restart()
    with valkey.Valkey.from_url(store.url) as client:
        client.flushall()
    return store


# ---------------------------------------------------------------- the store alone

ONE_MINUTE = QuotaIR(10, 60_000, QuotaScope.AGENT)
KEY = QuotaKey("github", "github/rules[0]", "list_issues", "agent:executor")


async def test_two_replicas_racing_spend_one_quota_exactly(empty_store: ValkeyServer) -> None:
    replicas = [SharedState(empty_store.url), SharedState(empty_store.url)]
    try:
        spends = [replicas[i % 2].apply_async(SpendQuota(KEY, ONE_MINUTE)) for i in range(60)]
        results = await asyncio.gather(*spends)
    finally:
        for replica in replicas:
            await replica.aclose()
    allowed = [check for check, token in results if check.allowed]
    refused = [check for check, token in results if not check.allowed]
    assert len(allowed) == ONE_MINUTE.calls and len(refused) == 50
    assert sorted(check.remaining for check in allowed) == list(range(ONE_MINUTE.calls))
    assert all(0 < check.retry_after_s <= 60 for check in refused)
    assert all(token for check, token in results if check.allowed)
    with valkey.Valkey.from_url(empty_store.url) as client:
        assert client.zcard(quota_key(KEY)) == ONE_MINUTE.calls
        assert 0 < client.pttl(quota_key(KEY)) <= 60_000  # an idle key goes away with its window


def _rule(**kwargs: Any) -> ConditionalRuleIR:
    fields: dict[str, Any] = dict(id="github/rules[0]", agents=("executor",), targets=compile_globs(["list_issues"]),
                                  when=None, quota=None, require_approval=False, approval_ttl_ms=60_000, user=None)  # fmt: skip
    return ConditionalRuleIR(**{**fields, **kwargs})


def _ctx(**arguments: Any) -> CallContext:
    return CallContext(backend="github", agent="executor", user={}, target="list_issues", arguments=arguments,
                       now=dt.datetime.now(dt.UTC))  # fmt: skip


async def test_a_refused_rule_gives_its_quota_back(empty_store: ValkeyServer) -> None:
    state = SharedState(empty_store.url)
    engine = Engine(state)
    gated = _rule(quota=QuotaIR(1, 60_000, QuotaScope.AGENT), require_approval=True)
    try:
        pending = engine.decide(_ctx(), [gated], unconditional=False)
        assert not isinstance(pending, Decision)  # a quota: one round trip to the store
        refused = await pending
    finally:
        await state.aclose()
    assert refused.reason == "approval_required"
    with valkey.Valkey.from_url(empty_store.url) as client:
        assert client.zcard(quota_key(KEY)) == 0  # spent, then given back when the approval was missing


async def test_with_the_store_down_quotas_refuse_and_conditions_need_no_store(tmp_path: Path) -> None:
    server = ValkeyServer.start(tmp_path / "valkey")
    server.stop()
    state = SharedState(server.url, timeout_s=0.2)
    engine = Engine(state)
    try:
        with pytest.raises(StateUnavailable, match=f"127.0.0.1:{server.port}"):
            await state.ping()
        pending = engine.decide(_ctx(), [_rule(quota=ONE_MINUTE)], unconditional=False)
        assert not isinstance(pending, Decision)
        refused = await pending
        # A condition alone is decided at once, without the store.
        conditional = engine.decide(_ctx(repo="acme/web"), [_rule(when='args.repo.startsWith("acme/")')],
                                    unconditional=False)  # fmt: skip
    finally:
        await state.aclose()
    assert refused.reason == "state_unavailable" and not refused.allowed
    assert f"127.0.0.1:{server.port}" in refused.message
    assert isinstance(conditional, Decision) and conditional.allowed


CALL = ApprovalCall("github", "github/rules[1]", "executor", "alice", "delete_repo", {"repo": "acme/web", "n": 2**60})


async def test_an_approval_is_asked_once_approved_anywhere_and_used_once(empty_store: ValkeyServer) -> None:
    replicas = [SharedState(empty_store.url), SharedState(empty_store.url)]
    first, second = (r.approvals for r in replicas)
    try:
        asked = await first.request(CALL, 60)
        assert (await second.request(CALL, 60)).id == asked.id  # one open approval per call, whoever asks
        assert asked.state is ApprovalState.PENDING and asked.expires_at - asked.created_at == 60
        assert dict(asked.arguments) == {"repo": "acme/web", "n": 2**60}  # kept exactly (not parsed by Lua)
        assert await first.use(CALL) is None  # pending: nothing to use
        approved = await second.approve(asked.id, "bob")
        assert approved.state is ApprovalState.APPROVED and approved.decided_by == "bob"
        assert (await second.approve(asked.id, "carol")).decided_by == "bob"  # approving twice changes nothing
        uses = await asyncio.gather(first.use(CALL), second.use(CALL), first.use(CALL))
        assert sum(u is not None for u in uses) == 1  # used once, whichever replica got there first
        with pytest.raises(ApprovalError) as used:
            await first.deny(asked.id, "bob")
        assert used.value.kind == "used"
        again = await first.request(CALL, 60)
        assert again.id != asked.id and again.state is ApprovalState.PENDING  # the next call asks anew
        assert [a.id for a in await second.list()] == [again.id]
        assert {a.id for a in await second.list(include_done=True)} == {asked.id, again.id}
        assert (await first.status(asked.id)).state is ApprovalState.USED
        assert await first.status("ap_0000000000000000") is None
        with pytest.raises(ApprovalError) as unknown:
            await first.approve("ap_0000000000000000", "bob")
        assert unknown.value.kind == "unknown"
    finally:
        for replica in replicas:
            await replica.aclose()


async def test_a_denial_stands_and_a_pending_approval_lapses(empty_store: ValkeyServer) -> None:
    state = SharedState(empty_store.url)
    approvals = state.approvals
    try:
        denied = await approvals.deny((await approvals.request(CALL, 60)).id, "bob")
        assert denied.state is ApprovalState.DENIED and (await approvals.request(CALL, 60)).id == denied.id
        with pytest.raises(ApprovalError) as refused:
            await approvals.approve(denied.id, "carol")
        assert refused.value.kind == "denied"
        other = ApprovalCall("github", "github/rules[1]", "executor", None, "delete_repo", {"repo": "acme/api"})
        short = await approvals.request(other, 0.2)
        await asyncio.sleep(0.3)
        assert (await approvals.status(short.id)).state is ApprovalState.EXPIRED
        with pytest.raises(ApprovalError) as expired:
            await approvals.approve(short.id, "bob")
        assert expired.value.kind == "expired"
        assert (await approvals.request(other, 60)).id != short.id
    finally:
        await state.aclose()


# ---------------------------------------------------------------- two gateways, one store


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def replicas(mcp_backend_factory_module: Any, tmp_path_factory: pytest.TempPathFactory,
                   store: ValkeyServer) -> AsyncIterator[tuple[RunningGateway, RunningGateway]]:  # fmt: skip
    github = mcp_backend_factory_module(name="github-shared", json_response=True)
    first = await start_gateway(tmp_path_factory.mktemp("replica-a"), {"github": github}, ext_authz="http",
                                policy_yaml=POLICY, state_store=store.url)  # fmt: skip
    try:
        second = await start_gateway(tmp_path_factory.mktemp("replica-b"), {"github": github}, ext_authz="grpc",
                                     policy_yaml=POLICY, state_store=store.url)  # fmt: skip
    except BaseException:
        await stop_gateway(first)
        raise
    yield first, second
    await stop_gateway(second)
    await stop_gateway(first)


def executor() -> dict[str, str]:
    return {IDENTITY_HEADER: "executor"}


async def call(client: Any, tool: str, **arguments: Any) -> Any:
    try:
        result = await client.call_tool(tool, arguments)
    except MCPError as exc:
        return exc
    assert not result.is_error, result
    return result.content[0].text


def tool_call(request_id: int, tool: str = "list_issues") -> str:
    """A 2026-07-28 tools/call (stateless: no session needed) with `request_id`."""
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                       "params": {"name": tool, "arguments": {"repo": "acme/web"}, "_meta": MODERN_META}})  # fmt: skip


def modern(tool: str = "list_issues") -> dict[str, str]:
    """The 2026-07-28 headers of a tools/call of `tool` by executor."""
    return {**executor(), "mcp-protocol-version": MODERN_REVISION, "mcp-method": "tools/call", "mcp-name": tool}


async def test_one_quota_holds_across_two_replicas_in_both_revisions(
    replicas: tuple[RunningGateway, RunningGateway], empty_store: ValkeyServer
) -> None:
    first, second = replicas
    backend = first.backends["github"]
    before = backend.tool_calls("list_issues")
    async with (
        mcp_client(first.url(), executor(), "modern") as on_first,
        mcp_client(second.url(), executor(), "legacy") as on_second,
    ):
        answers = []
        for i in range(QUOTA + 3):
            answers.append(await call(on_first if i % 2 == 0 else on_second, "list_issues", repo="acme/web"))
    served = [a for a in answers if isinstance(a, str)]
    refused = [a for a in answers if isinstance(a, MCPError)]
    assert len(served) == QUOTA and answers[:QUOTA] == served  # the first five, whichever replica decided
    assert len(refused) == 3
    for error in refused:
        assert error.code == errors.QUOTA_EXCEEDED.code and error.data["reason"] == "quota_exceeded"
        assert 1 <= error.data["retryAfterSeconds"] <= 60
    assert backend.tool_calls("list_issues") == before + QUOTA


async def test_concurrent_calls_through_both_replicas_get_exactly_the_quota(
    replicas: tuple[RunningGateway, RunningGateway], empty_store: ValkeyServer
) -> None:
    first, second = replicas
    backend = first.backends["github"]
    before = backend.tool_calls("list_issues")
    urls = [first.url(), second.url()]
    responses = await asyncio.gather(*(raw_post(urls[i % 2], tool_call(1000 + i), modern()) for i in range(24)))
    bodies = [r.json() for r in responses]
    assert [b["id"] for b in bodies] == [1000 + i for i in range(24)]  # each answer carries its request's id
    assert sum("result" in b for b in bodies) == QUOTA
    assert all(b["error"]["code"] == errors.QUOTA_EXCEEDED.code for b in bodies if "error" in b)
    assert backend.tool_calls("list_issues") == before + QUOTA


async def test_with_the_store_stopped_calls_under_a_quota_fail_closed(
    replicas: tuple[RunningGateway, RunningGateway], empty_store: ValkeyServer
) -> None:
    first, second = replicas
    backend = first.backends["github"]
    before = backend.tool_calls("list_issues")
    empty_store.stop()
    try:
        for gateway, request_id in ((first, 7), (second, 8)):
            response = await raw_post(gateway.url(), tool_call(request_id), modern())
            error = response.json()["error"]
            assert response.json()["id"] == request_id
            assert error["code"] == errors.STATE_UNAVAILABLE.code, error
            assert error["data"]["reason"] == "state_unavailable"
            assert f"127.0.0.1:{empty_store.port}" in error["message"]
            # A call no quota covers does not need the store.
            whoami = await raw_post(gateway.url(), tool_call(request_id, "whoami"), modern("whoami"))
            assert "result" in whoami.json(), whoami.text
        assert backend.tool_calls("list_issues") == before
    finally:
        empty_store.restart()

    async def served_again() -> bool:
        response = await raw_post(first.url(), tool_call(9), modern())
        return "result" in response.json()

    await eventually(served_again, timeout=10, what="quota calls to be served once the store is back")
    assert backend.tool_calls("list_issues") == before + 1


def approvals_cli(gateway: RunningGateway, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xds_server.cli", "approvals", *args, "--url", gateway.approvals_url],
                          capture_output=True, text=True, timeout=30, env=python_env(), cwd=REPO_ROOT)  # fmt: skip


async def test_an_approval_asked_through_one_replica_is_approved_through_the_other(
    replicas: tuple[RunningGateway, RunningGateway], empty_store: ValkeyServer
) -> None:
    first, second = replicas
    backend = first.backends["github"]
    before = backend.tool_calls("delete_repo")
    async with (
        mcp_client(first.url(), executor(), "modern") as on_first,
        mcp_client(second.url(), executor(), "legacy") as on_second,
    ):
        asked = await call(on_first, "delete_repo", repo="acme/old")
        assert isinstance(asked, MCPError) and asked.code == errors.APPROVAL_REQUIRED.code
        approval_id = asked.data["approvalId"]
        waiting = await call(on_second, "delete_repo", repo="acme/old")
        assert isinstance(waiting, MCPError) and waiting.data["approvalId"] == approval_id  # the same approval
        listed = await asyncio.to_thread(approvals_cli, second, "list")
        assert listed.returncode == 0 and approval_id in listed.stdout, listed.stderr
        approved = await asyncio.to_thread(approvals_cli, second, "approve", approval_id, "--by", "alice")
        assert approved.returncode == 0, approved.stderr
        done = await call(on_first, "delete_repo", repo="acme/old")
        once_only = await call(on_second, "delete_repo", repo="acme/old")
    assert done == "deleted acme/old"
    assert isinstance(once_only, MCPError) and once_only.data["reason"] == "approval_required"
    assert once_only.data["approvalId"] != approval_id  # used once: the next call asks anew
    assert backend.tool_calls("delete_repo") == before + 1


async def test_with_the_store_stopped_approvals_fail_closed(
    replicas: tuple[RunningGateway, RunningGateway], empty_store: ValkeyServer
) -> None:
    first, second = replicas
    empty_store.stop()
    try:
        response = await raw_post(second.url(), tool_call(11, "delete_repo"), modern("delete_repo"))
        error = response.json()["error"]
        assert response.json()["id"] == 11 and error["code"] == errors.STATE_UNAVAILABLE.code, error
        listed = await asyncio.to_thread(approvals_cli, first, "list")
        assert listed.returncode != 0 and "cannot be reached" in listed.stderr + listed.stdout
    finally:
        empty_store.restart()
