"""Conditions, quotas, approvals and tool locks in policies: validated at load, with file and line."""

from __future__ import annotations

import pytest

from xds_server.ir.build import build_ir
from xds_server.ir.types import QuotaScope
from xds_server.policy.diagnostics import PolicyError
from xds_server.policy.load import load_texts

BASE = """\
apiVersion: agentxds.dev/v1
kind: Gateway
metadata: {name: gw}
spec:
  listen: {port: 10000}
  identity: {trustedHeader: x-agent-id}
---
apiVersion: agentxds.dev/v1
kind: MCPBackend
metadata: {name: github}
spec:
  endpoints: [{host: 127.0.0.1, port: 8080}]
---
apiVersion: agentxds.dev/v1
kind: Agent
metadata: {name: bot}
spec: {identity: {header: bot}}
"""

LOCK = """\
apiVersion: agentxds.dev/v1
kind: MCPToolLock
metadata: {name: %s}
spec:
  backend: %s
  tools:
    - name: x
      descriptionSha256: %s
      inputSchemaSha256: %s
"""
HEX = "ab" * 32


def policy(rule: str) -> str:
    return f"""\
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {{name: p}}
spec:
  backend: github
  rules:
{rule}"""


def errors_of(files: dict[str, str]) -> list[str]:
    with pytest.raises(PolicyError) as exc:
        load_texts(files)
    return [str(d) for d in exc.value.diagnostics]


def test_invalid_cel_is_a_load_error_with_file_line_and_field() -> None:
    rule = "    - agents: [bot]\n      tools: [t]\n      when: 'args.repo.startsWith(\"acme/\"'\n"
    (error,) = errors_of({"base.yaml": BASE, "p.yaml": policy(rule)})
    assert error.startswith("p.yaml:9: MCPPolicy/p spec.rules[0].when: invalid CEL condition: line 1, column "), error


def test_unknown_variable_in_a_condition_is_refused() -> None:
    rule = "    - agents: [bot]\n      tools: [t]\n      when: 'request.path == \"/\"'\n"
    (error,) = errors_of({"base.yaml": BASE, "p.yaml": policy(rule)})
    assert "unknown variable 'request'" in error and "spec.rules[0].when" in error


def test_conditions_apply_to_tools_only() -> None:
    rule = "    - agents: [bot]\n      tools: [t]\n      resources: [r]\n      requireApproval: true\n"
    (error,) = errors_of({"base.yaml": BASE, "p.yaml": policy(rule)})
    assert "when, quota and requireApproval apply to tool calls only" in error


def test_quota_needs_a_window() -> None:
    rule = "    - agents: [bot]\n      tools: [t]\n      quota: {calls: 5, per: 0s}\n"
    (error,) = errors_of({"base.yaml": BASE, "p.yaml": policy(rule)})
    assert "spec.rules[0].quota" in error and "window must be above 0" in error


def test_a_lock_must_name_an_existing_backend_and_be_the_only_one() -> None:
    errors = errors_of({
        "base.yaml": BASE,
        "a.yaml": LOCK % ("a", "github", HEX, HEX),
        "b.yaml": LOCK % ("b", "github", HEX, HEX),
        "c.yaml": LOCK % ("c", "gitlab", HEX, HEX),
    })  # fmt: skip
    assert any("b.yaml:5: MCPToolLock/b spec.backend: backend 'github' is already pinned by MCPToolLock/a" in e
               for e in errors), errors  # fmt: skip
    assert any("c.yaml:5: MCPToolLock/c spec.backend: unknown backend 'gitlab'" in e for e in errors), errors


def test_conditional_rules_reach_the_ir_apart_from_plain_grants() -> None:
    rules = (
        "    - agents: [bot]\n      tools: [list_issues]\n"
        '    - agents: ["*"]\n      tools: ["create_*"]\n      when: \'args.repo.startsWith("acme/")\'\n'
        "      quota: {calls: 10, per: 1m, by: agent+user}\n      requireApproval: true\n      approvalTtl: 5m\n"
    )
    ir = build_ir(
        load_texts({"base.yaml": BASE, "p.yaml": policy(rules), "lock.yaml": LOCK % ("l", "github", HEX, HEX)})
    )
    backend = ir.gateways[0].routes[0]
    (grant,) = backend.grants
    assert [p.glob for p in grant.allows.tools] == ["list_issues"]  # decided by Envoy alone
    assert [p.glob for p in grant.allows.conditional_tools] == ["create_*"]
    assert {p.glob for p in grant.allows.listed_tools} == {"create_*", "list_issues"}  # what lists show
    (rule,) = backend.conditional_rules
    assert not rule.native and "quota" in rule.not_native
    assert rule.id == "p/rules[1]" and rule.agents == ("bot",)
    assert rule.when == 'args.repo.startsWith("acme/")'
    assert rule.quota is not None and (rule.quota.calls, rule.quota.window_ms, rule.quota.scope) == (
        10,
        60000,
        QuotaScope.AGENT_USER,
    )
    assert rule.require_approval and rule.approval_ttl_ms == 300000
    guard = backend.protocol.tool_guard
    assert guard is not None and [p.name for p in guard.pins or ()] == ["x"]
    assert backend.decisions.calls == () and backend.decisions.responses  # guarded: every call and list goes to Python


def test_argument_conditions_are_validated() -> None:
    two = "    - agents: [bot]\n      tools: [t]\n      arguments: {repo: {prefix: a/, exact: b}}\n"
    (error,) = errors_of({"base.yaml": BASE, "p.yaml": policy(two)})
    assert "spec.rules[0].arguments.repo" in error and "exactly one of exact, prefix, suffix, regex, oneOf" in error
    lookaround = "    - agents: [bot]\n      tools: [t]\n      arguments: {repo: {regex: '(?!evil).*'}}\n"
    (error,) = errors_of({"base.yaml": BASE, "p.yaml": policy(lookaround)})
    assert "lookarounds are not supported" in error
    with_when = "    - agents: [bot]\n      tools: [t]\n      arguments: {repo: {prefix: a/}}\n      when: 'true'\n"
    (error,) = errors_of({"base.yaml": BASE, "p.yaml": policy(with_when)})
    assert "states argument conditions in `when`" in error


def test_argument_conditions_reach_the_ir_as_native_grants() -> None:
    rule = "    - agents: [bot]\n      tools: [create_issue]\n      arguments: {repo: {prefix: acme/}, env: {oneOf: [b, a]}}\n"
    ir = build_ir(load_texts({"base.yaml": BASE, "p.yaml": policy(rule)}))
    (grant,) = ir.gateways[0].routes[0].grants
    assert grant.allows.tools == () and grant.allows.conditional_tools == ()
    (argument_grant,) = grant.allows.argument_grants
    assert [(m.name, m.kind, m.values) for m in argument_grant.arguments] == [
        ("env", "one_of", ("a", "b")), ("repo", "prefix", ("acme/",))]  # fmt: skip
    assert [p.glob for p in grant.allows.listed_tools] == ["create_issue"]
    decisions = ir.gateways[0].routes[0].decisions
    assert decisions.calls is None and not decisions.every_request  # Envoy decides it alone
