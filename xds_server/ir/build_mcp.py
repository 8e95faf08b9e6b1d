"""How MCPBackend, MCPPolicy and MCPToolLock documents become MCP routes of the IR (ir/mcp.py).

One route per MCPBackend a gateway serves, with the rules of the MCPPolicies
that name it (their ids "policy/rules[i]" kept for explanations) and the pins
of its MCPToolLock. The neutral parts come from ir/routes.py.
"""

from __future__ import annotations

from xds_server.ir import routes
from xds_server.ir.glob import compile_globs
from xds_server.ir.mcp import (
    ArgumentGrantIR,
    ArgumentMatchIR,
    DriftAction,
    McpAllowsIR,
    McpRouteIR,
    PinnedToolIR,
    ScreeningMode,
    ToolGuardIR,
    with_decisions,
)
from xds_server.ir.types import ConditionalRuleIR, GrantIR, RouteIR
from xds_server.policy.load import PolicySet
from xds_server.policy.located import Located
from xds_server.policy.mcp import MCPBackend, MCPToolLock, Rule


def _argument_grant(rule_id: str, rule: Rule) -> ArgumentGrantIR:
    matches = []
    for name, match in sorted(rule.arguments.items()):
        if match.one_of is not None:
            matches.append(ArgumentMatchIR(name, "one_of", tuple(sorted(set(match.one_of)))))
        else:
            kind, value = next((k, v) for k, v in (("exact", match.exact), ("prefix", match.prefix),
                               ("suffix", match.suffix), ("regex", match.regex)) if v is not None)  # fmt: skip
            matches.append(ArgumentMatchIR(name, kind, (value,)))
    return ArgumentGrantIR(compile_globs(rule.tools), tuple(matches), rule_id)


def _allows(rules: list[tuple[str, Rule]]) -> McpAllowsIR:
    """What the rules naming one agent (for one user match) allow together."""
    tools: list[str] = []
    conditional: list[str] = []
    native: list[str] = []
    with_arguments = []
    for rule_id, rule in rules:
        if rule.arguments:
            with_arguments.append(_argument_grant(rule_id, rule))
        elif not rule.is_conditional:
            tools.extend(rule.tools)
        else:
            (conditional if routes.why_not_native(rule) else native).extend(rule.tools)
    return McpAllowsIR(
        tools=compile_globs(tools),
        resources=compile_globs([r for _, rule in rules for r in rule.resources]),
        prompts=compile_globs([p for _, rule in rules for p in rule.prompts]),
        conditional_tools=compile_globs(conditional),
        argument_grants=tuple(sorted(with_arguments)),
        native_tools=compile_globs(native),
    )


def pins_of(lock: Located[MCPToolLock] | None) -> tuple[PinnedToolIR, ...] | None:
    """The tools an MCPToolLock pins, sorted by name (None: no lock)."""
    if lock is None:
        return None
    return tuple(sorted(PinnedToolIR(t.name, t.description_sha256, t.input_schema_sha256) for t in lock.doc.spec.tools))


def _tool_guard(backend: MCPBackend, lock: Located[MCPToolLock] | None) -> ToolGuardIR | None:
    guard = backend.spec.tool_guard
    if lock is None and guard.screening == "off":
        return None
    return ToolGuardIR(
        pins=pins_of(lock), unpinned=DriftAction(guard.unpinned), screening=ScreeningMode(guard.screening),
        refresh_ms=guard.refresh_ms,
    )  # fmt: skip


def rule_parts(
    rules: list[tuple[str, Rule]], build: routes.RouteBuild
) -> tuple[tuple[GrantIR, ...], tuple[ConditionalRuleIR, ...]]:
    return (routes.grants(rules, build, _allows),
            routes.conditional_rules(rules, build, lambda rule: compile_globs(rule.tools)))  # fmt: skip


def build_routes(policy_set: PolicySet, build: routes.RouteBuild) -> list[RouteIR]:
    """The MCP routes of one gateway: one per MCPBackend it serves, with the MCPPolicy rules on it."""
    out = []
    for located in policy_set.backends_of(build.gateway):
        backend = located.doc
        spec = backend.spec
        policies = policy_set.policies_for(backend.metadata.name)
        rules = [
            (f"{p.doc.metadata.name}/rules[{i}]", rule) for p in policies for i, rule in enumerate(p.doc.spec.rules)
        ]
        routes.check_user_providers(policies, build)
        grants, conditional = build.rule_parts(backend.metadata.name, tuple(p.doc for p in policies),
                                               lambda rules=rules: rule_parts(rules, build))  # type: ignore[misc]  # fmt: skip
        route = routes.route(located, build, grants=grants, conditional=conditional, protocol=McpRouteIR(
            list_filtering=spec.policy_service.list_filtering,
            tool_guard=_tool_guard(backend, policy_set.lock_for(backend.metadata.name)),
            refusals_as_tool_results=spec.denied_tool_calls == "toolResult",
            tasks=spec.tasks.enabled,
        ))  # fmt: skip
        out.append(build.memo.same(("route", build.gateway, route.name), with_decisions(route)))
    return out
