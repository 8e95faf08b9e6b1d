"""How A2AAgent and A2APolicy documents become A2A routes of the IR (ir/a2a.py).

One route per A2AAgent a gateway serves, with the rules of the A2APolicies
that name it (their ids "policy/rules[i]" kept for explanations). The
neutral parts come from ir/routes.py. A2A conditions are always the policy
service's: Envoy's A2A filter deframes no message content for 1.0 methods,
so a condition could not be evaluated alike for both generations.
"""

from __future__ import annotations

from dataclasses import replace

from xds_server.ir import routes
from xds_server.ir.a2a import A2aAllowsIR, A2aRouteIR, operation_patterns, with_decisions
from xds_server.ir.glob import compile_globs
from xds_server.ir.types import ConditionalRuleIR, GrantIR, RouteIR
from xds_server.policy.a2a import A2ARule
from xds_server.policy.load import PolicySet

NOT_NATIVE = "A2A conditions are checked by the policy service"


def _allows(rules: list[tuple[str, A2ARule]]) -> A2aAllowsIR:
    """What the rules naming one agent (for one user match) allow together."""
    plain = {op for _, rule in rules if not rule.is_conditional for op in rule.operations}
    conditional = {op for _, rule in rules if rule.is_conditional for op in rule.operations} - plain
    return A2aAllowsIR(
        operations=tuple(sorted(plain)),
        # Skills are what messages are for: only rules that let the caller send one name skills it may see.
        skills=compile_globs(
            [s for _, rule in rules if {"send", "stream"} & set(rule.operations) for s in rule.skills]
        ),
        conditional_operations=tuple(sorted(conditional)),
    )


def _rule_parts(
    rules: list[tuple[str, A2ARule]], build: routes.RouteBuild
) -> tuple[tuple[GrantIR, ...], tuple[ConditionalRuleIR, ...]]:
    conditional = routes.conditional_rules(rules, build, lambda rule: operation_patterns(rule.operations))
    return (routes.grants(rules, build, _allows),
            tuple(replace(r, native=False, not_native=NOT_NATIVE) for r in conditional))  # fmt: skip


def build_routes(policy_set: PolicySet, build: routes.RouteBuild) -> list[RouteIR]:
    """The A2A routes of one gateway: one per A2AAgent it serves, with the A2APolicy rules on it."""
    out = []
    for located in policy_set.a2a_agents_of(build.gateway):
        agent = located.doc
        spec = agent.spec
        policies = policy_set.a2a_policies_for(agent.metadata.name)
        rules = [
            (f"{p.doc.metadata.name}/rules[{i}]", rule) for p in policies for i, rule in enumerate(p.doc.spec.rules)
        ]
        routes.check_user_providers(policies, build)
        grants, conditional = build.rule_parts(agent.metadata.name, tuple(p.doc for p in policies),
                                               lambda rules=rules: _rule_parts(rules, build))  # type: ignore[misc]  # fmt: skip
        pins = None if spec.pinned_skills is None else tuple(sorted((p.id, p.sha256) for p in spec.pinned_skills))
        route = routes.route(located, build, grants=grants, conditional=conditional,
                             protocol=A2aRouteIR(card_path=spec.card_path, card_route=agent.card_route,
                                                 pinned_skills=pins))  # fmt: skip
        out.append(build.memo.same(("route", build.gateway, route.name), with_decisions(route)))
    return out
