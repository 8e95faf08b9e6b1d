"""End to end: `when:` conditions that Envoy evaluates itself (native CEL in RBAC), against the policy service.

The differential test sends the same calls to two backends whose rules
carry the same conditions: on `native` Envoy decides them (RBAC's CEL over
the MCP filter's metadata, jwt_authn's payloads and the identify filter),
on `python` a huge quota keeps every rule with the policy service, which
evaluates them with the `cel` library. Every expression must give the
same answer on both, and the answer `core/cel.py` computes for the same
variables, over arguments of every JSON type (missing, null, lists,
objects, huge integers, control characters), users with and without a
verified `sub`, and two agents. The native backend's calls never reach the
policy service: Envoy's ext_authz counters and the service's own stay put.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from mcp.shared.exceptions import MCPError

from tests.e2e.gateway import GATEWAY, RunningGateway, backend_yaml, launch, policy_service_yaml, stop_gateway
from tests.e2e.harness import McpBackend, mcp_client
from tests.e2e.test_jwt import AUDIENCE, CORP, USER_ISSUER
from tests.e2e.test_mcp_gateway import MODERN, MODERN_META
from xds_server.core import errors
from xds_server.core.cel import compile_condition
from xds_server.runtime.ports import free_port

#: Conditions Envoy evaluates (each must come out native), `TOOL` standing for the rule's tool.
NATIVE = [
    'args.s.startsWith("acme/")',
    'args.s.endsWith("web")',
    'args.s.contains("/")',
    'args.s.contains("")',
    'args.s.matches("^acme/[a-z]+$")',
    'args.s.matches("é")',
    'args.s.matches("x{3,}|^$")',
    'args.s.matches("^[a-z/]{1,8}$")',
    'args.s == "acme/web"',
    '"evil/web" == args["s"]',
    "args.s == 5",
    "args.s == true",
    'args.s in ["acme/web", "", "evil/web"]',
    "args.s in [5, 6]",
    'args.s.a == "acme/"',
    "args.n > 5",
    "args.n <= -3",
    "5 < args.n",
    "args.n >= 9007199254740991",
    "args.n == 7.5",
    "args.n == 7",
    'tool == "TOOL"',
    'tool != "TOOL"',
    'tool.startsWith("probe_")',
    'agent.name == "prober"',
    'agent.name != "prober"',
    'agent["name"] in ["other", "nobody"]',
    'user.sub == "alice"',
    '"maintainers" in user.groups',
    '"sub" in user',
    "has(user.sub)",
    "!has(user.sub)",
    "has(user.groups)",
    "user.level > 2",
    'user.email.endsWith("@acme.com")',
    'now > timestamp("2020-01-01T00:00:00Z")',
    'now < timestamp("2020-01-01T00:00:00Z")',
    "now.getFullYear() >= 2026 && now.getDayOfWeek() < 7",
    "now.getHours() >= 0 && now.getHours() < 24 && now.getMonth() <= 11",
    'args.s.startsWith("acme/") || args.n > 5',
    'args.s.startsWith("acme/") && user.sub == "alice"',
    'args.missing.startsWith("x") || tool == "TOOL"',
    'args.missing == "x" && false',
    'false || args.s == "evil/web"',
    "true",
    "false",
]
#: Those of NATIVE that hold (or fail) whatever the call: the tool, the clock, literals.
CONSTANT = [
    'tool == "TOOL"', 'tool != "TOOL"', 'tool.startsWith("probe_")', 'now > timestamp("2020-01-01T00:00:00Z")',
    'now < timestamp("2020-01-01T00:00:00Z")', "now.getFullYear() >= 2026 && now.getDayOfWeek() < 7",
    "now.getHours() >= 0 && now.getHours() < 24 && now.getMonth() <= 11",
    'args.missing.startsWith("x") || tool == "TOOL"', 'args.missing == "x" && false', "true", "false",
]  # fmt: skip
#: Conditions that stay with the policy service on both backends (they must agree all the same).
NOT_NATIVE = [
    "has(args.s)",
    'args.s != "acme/web"',
    "size(args.s) > 3",
    'args.s.startsWith("acme/") ? true : false',
    'args.s.matches("^[a-z/]{1,40}$")',  # RE2 program too large for Envoy's CEL (it NACKs the routes)
    'args.s.matches("^\\\\<acme")',  # \< is a word boundary in Rust's regex, a literal '<' in RE2
]

ARGUMENTS: list[dict[str, Any]] = [
    {"s": "acme/web", "n": 7},
    {"s": "evil/web", "n": 5},
    {"s": "ACME/web", "n": -3},
    {"s": "", "n": 5.0},
    {"s": "é\u0000x/webxxx", "n": 7.5},
    {"s": 5, "n": "7"},
    {"s": True, "n": True},
    {"s": None, "n": None},
    {"s": ["acme/web"], "n": [7]},
    {"s": {"a": "acme/"}, "n": {"v": 7}},
    {},
    {"s": "acme/" + "x" * 2000, "n": 9007199254740993},
    {"s": "acme/web\n", "n": -9007199254740993},
    {"other": "acme/web", "n": 1e300},
    {"s": "evil/web", "x.s": "acme/web", "n": 1},  # Envoy must not file a dotted key under its last part
    {"x.s": "acme/web", "s": "evil/web", "n": 1},
    {"s": "evil/web", "x": {"s": "acme/web"}, "n": 1},
]
USERS: list[dict[str, Any] | None] = [
    None,
    {"sub": "alice", "groups": ["maintainers", "ops"], "level": 3, "email": "alice@acme.com"},
    {"sub": "bob", "groups": "maintainers", "level": "3"},
    {"email": "nosub@acme.com", "groups": ["maintainers"]},
]
HUGE_QUOTA = "      quota: {calls: 1000000, per: 1h, by: agent}\n"


def _rules(conditions: list[str], python: bool) -> str:
    rules = []
    for i, condition in enumerate(conditions):
        agents = '["*"]' if i % 2 == 0 else "[prober, other]"  # every agent, or a list of them
        when = condition.replace("TOOL", f"probe_{i}")
        rules.append(f"    - agents: {agents}\n      tools: [probe_{i}]\n      when: {json.dumps(when)}\n"
                     + (HUGE_QUOTA if python else ""))  # fmt: skip
    return "".join(rules)


def _files(listen_port: int, policy_port: int, backends: dict[str, McpBackend]) -> dict[str, str]:
    conditions = NATIVE + NOT_NATIVE
    gateway = f"""\
apiVersion: agentxds.dev/v1
kind: Gateway
metadata: {{name: {GATEWAY}}}
spec:
  listen: {{address: 127.0.0.1, port: {listen_port}}}
  limits: {{maxRequestBodyBytes: 16384, connectionBufferBytes: 65536}}
  policyService: {policy_service_yaml(policy_port)}
  identity:
    trustedHeader: x-agent-id
    jwtProviders:
      - name: corp
        issuer: {USER_ISSUER}
        audiences: [{AUDIENCE}]
        jwks: {{file: corp-jwks.json}}
"""
    agents = "---\n".join(
        f"apiVersion: agentxds.dev/v1\nkind: Agent\nmetadata: {{name: {n}}}\nspec: {{identity: {{header: {n}}}}}\n"
        for n in ("prober", "other", "idle")
    )
    policies = "---\n".join(
        f"apiVersion: agentxds.dev/v1\nkind: MCPPolicy\nmetadata: {{name: {name}}}\nspec:\n  backend: {name}\n"
        f"  rules:\n{_rules(conditions, python=name == 'python')}"
        for name in ("native", "python")
    )
    policies += """---
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {name: mixed}
spec:
  backend: mixed
  rules:
    - agents: [prober]
      tools: [shared]
      when: 'args.s.startsWith("acme/")'
    - agents: [other]
      tools: [shared]
      quota: {calls: 1000000, per: 1h, by: agent}
    - agents: [idle]
      tools: [shared]
"""
    return {
        "gateway.yaml": gateway,
        "corp-jwks.json": CORP.jwks(),
        "agents.yaml": agents,
        "backends.yaml": "---\n".join(backend_yaml(n, b) for n, b in backends.items()),
        "policies.yaml": policies,
    }


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(
    mcp_backend_factory_module: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningGateway]:
    backends = {name: mcp_backend_factory_module(name=name, json_response=True)
                for name in ("native", "python", "mixed")}  # fmt: skip
    workdir: Path = tmp_path_factory.mktemp("native-conditions")
    listen_port, policy_port = free_port(), free_port()
    policy_dir = workdir / "policies"
    policy_dir.mkdir()
    for name, text in _files(listen_port, policy_port, backends).items():
        (policy_dir / name).write_text(text)
    control, envoy = await launch(policy_dir, workdir, listen_port, policy_port)
    gw = RunningGateway(policy_dir, control, envoy, listen_port, backends)
    yield gw
    await stop_gateway(gw)


def _ext_authz_checks(gateway: RunningGateway) -> int:
    """Every check Envoy's ext_authz filters made (allowed, denied or failed), as the listener counts
    them (the policy service's cluster counts each again, under `cluster.`)."""
    stats = gateway.envoy.stats()
    return sum(int(v) for k, v in stats.items() if k.startswith("http.") and ".ext_authz." in k
               and k.rsplit(".", 1)[-1] in ("ok", "denied", "error") and isinstance(v, int))  # fmt: skip


Case = tuple[int, str, dict[str, Any], dict[str, Any] | None]  # (rule, agent, arguments, user claims)


def _cases() -> list[Case]:
    out: list[Case] = []
    for rule in range(len(NATIVE) + len(NOT_NATIVE)):
        for arguments in ARGUMENTS:
            out += [(rule, "prober", arguments, user) for user in USERS]
            out.append((rule, "other", arguments, None))
    return out


def _expected(rule: int, agent: str, arguments: dict[str, Any], user: dict[str, Any] | None) -> bool:
    """What core/cel.py says, for the variables the policy service would build."""
    condition = (NATIVE + NOT_NATIVE)[rule].replace("TOOL", f"probe_{rule}")
    claims = dict(user) if user is not None and isinstance(user.get("sub"), str) else {}
    if user is not None and claims:
        claims.update(iss=USER_ISSUER, aud=AUDIENCE)
    variables = {"args": arguments, "agent": {"name": agent}, "user": claims, "tool": f"probe_{rule}",
                 "now": dt.datetime.now(dt.UTC)}  # fmt: skip
    return compile_condition(condition).evaluate(variables).passed


async def _verdict(http: httpx.AsyncClient, url: str, case: Case, tokens: dict[int, str]) -> bool:
    """True when the gateway let the call through (the backend answered), False when it refused it for
    the condition; anything else fails the test."""
    rule, agent, arguments, user = case
    tool = f"probe_{rule}"
    headers = {"x-agent-id": agent, "content-type": "application/json", "accept": "application/json, text/event-stream",
               "mcp-method": "tools/call", "mcp-name": tool, "mcp-protocol-version": MODERN}  # fmt: skip
    if user is not None:
        headers["authorization"] = f"Bearer {tokens[USERS.index(user)]}"
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments, "_meta": MODERN_META}}  # fmt: skip
    response = await http.post(url, content=json.dumps(body), headers=headers)
    reply = response.json()
    error = reply.get("error") or {}
    if (error.get("data") or {}).get("reason") == "condition_not_met":
        assert error["code"] == errors.CONDITION_NOT_MET.code and reply["id"] == 1, reply
        return False
    assert response.status_code == 200 and "gateway" not in json.dumps(error), reply
    return True  # the backend's own answer (it has no probe tools: an error of its own)


async def _verdicts(gateway: RunningGateway, backend: str, cases: list[Case]) -> list[bool]:
    tokens = {i: CORP.token(**u) for i, u in enumerate(USERS) if u is not None}
    limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
    async with httpx.AsyncClient(timeout=10.0, trust_env=False, limits=limits) as http:
        gate = asyncio.Semaphore(8)

        async def one(case: Case) -> bool:
            async with gate:
                return await _verdict(http, gateway.url(backend), case, tokens)

        return list(await asyncio.gather(*(one(c) for c in cases)))


async def test_native_and_python_cel_agree(gateway: RunningGateway) -> None:
    service = gateway.control.policy_service
    assert service is not None
    native_rules = service.index.route("native").route.conditional_rules  # type: ignore[union-attr]
    python_rules = service.index.route("python").route.conditional_rules  # type: ignore[union-attr]
    assert [r.native for r in native_rules] == [True] * len(NATIVE) + [False] * len(NOT_NATIVE), [
        (r.when, r.not_native) for r in native_rules if r.native != (r.when in NATIVE)]  # fmt: skip
    assert not any(r.native for r in python_rules)

    cases = _cases()
    expected = [_expected(*case) for case in cases]
    not_native_cases = sum(1 for c in cases if c[0] >= len(NATIVE))
    checks_before, service_before = _ext_authz_checks(gateway), dict(service.checks)
    native = await _verdicts(gateway, "native", cases)
    # Only the conditions left to the policy service went there from the native backend.
    assert service.checks["native"] - service_before.get("native", 0) == not_native_cases
    assert _ext_authz_checks(gateway) - checks_before == not_native_cases
    python = await _verdicts(gateway, "python", cases)
    assert service.checks["python"] - service_before.get("python", 0) == len(cases)

    conditions = NATIVE + NOT_NATIVE
    disagreements = [
        (conditions[c[0]], c[1], c[2] if len(json.dumps(c[2])) < 80 else "<long>", c[3] and c[3].get("sub"), n, p, e)
        for c, n, p, e in zip(cases, native, python, expected, strict=True)
        if not n == p == e
    ]
    assert not disagreements, "\n".join(map(str, disagreements[:40]))
    # Both answers occur for every condition that does not hold or fail whatever the call.
    allowed = {conditions[c[0]] for c, e in zip(cases, expected, strict=True) if e}
    refused = {conditions[c[0]] for c, e in zip(cases, expected, strict=True) if not e}
    assert set(conditions) - (allowed & refused) == set(CONSTANT)


# ---------------------------------------------------------------- through SDK clients, both revisions


@pytest.mark.parametrize("mode", ["modern", "legacy"])
async def test_a_native_condition_allows_and_refuses_without_the_policy_service(
    gateway: RunningGateway, mode: str
) -> None:
    service = gateway.control.policy_service
    assert service is not None
    first = NATIVE.index('args.s.startsWith("acme/")')
    tool = f"probe_{first}"
    checks_before, service_before = _ext_authz_checks(gateway), service.checks["native"]
    async with mcp_client(gateway.url("native"), {"x-agent-id": "prober"}, mode) as client:
        allowed = await client.call_tool(tool, {"s": "acme/web"})
        with pytest.raises(MCPError) as refused:
            await client.call_tool(tool, {"s": "evil/web"})
    assert allowed.is_error  # the backend's own answer: it has no probe tools, but the gateway let it through
    error = refused.value.error
    assert error.code == errors.CONDITION_NOT_MET.code
    assert error.data == {"reason": "condition_not_met", "tool": tool, "backend": "native",
                          "rule": f"native/rules[{first}]"}  # fmt: skip
    assert error.message == f"Call to tool '{tool}' refused: the condition of rule 'native/rules[{first}]' is not met."
    assert service.checks["native"] == service_before
    assert _ext_authz_checks(gateway) == checks_before


async def test_one_decision_per_call_on_a_tool_shared_by_native_and_python_rules(gateway: RunningGateway) -> None:
    """`shared` is prober's under a native condition, other's under a quota (the policy service),
    idle's without conditions: only other's calls cross to Python."""
    service = gateway.control.policy_service
    assert service is not None
    limits = httpx.Limits(max_connections=1)

    async def verdict(agent: str, s: str) -> bool:
        async with httpx.AsyncClient(timeout=10.0, trust_env=False, limits=limits) as http:
            url = gateway.url("mixed")
            headers = {"x-agent-id": agent, "content-type": "application/json",
                       "accept": "application/json, text/event-stream"}  # fmt: skip
            body = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "shared", "arguments": {"s": s}},
            }
            reply = (await http.post(url, content=json.dumps(body), headers=headers)).json()
            return (reply.get("error") or {}).get("data", {}).get("reason") != "condition_not_met"

    before = service.checks["mixed"]
    assert await verdict("prober", "acme/web") and not await verdict("prober", "evil/web")
    assert await verdict("idle", "evil/web")
    assert service.checks["mixed"] == before  # Envoy decided all three
    assert await verdict("other", "evil/web")
    assert service.checks["mixed"] == before + 1  # the quota's call, and only it
