"""Where each rule is decided (`agentxds render --to paths`), and what reaches the policy service."""

from __future__ import annotations

from tests.unit.test_policy_conditions import BASE, HEX, LOCK, policy
from xds_server.controlplane.paths import paths_text, route_paths
from xds_server.ir.build import build_ir
from xds_server.policy.load import load_texts
from xds_server.translate.protocols.mcp import McpTranslator
from xds_server.translate.rbac import route_rbac_rules

RULES = (
    "    - agents: [bot]\n      tools: [list_issues]\n"
    "    - agents: [bot]\n      tools: [create_issue]\n      arguments: {repo: {prefix: acme/}}\n"
    "    - agents: [bot]\n      tools: [close_issue]\n      when: 'args.repo == \"acme/web\"'\n"
    "    - agents: [bot]\n      tools: [edit_issue]\n      when: 'size(args.body) < 100'\n"
    "    - agents: [bot]\n      tools: [delete_issue]\n      requireApproval: true\n"
)


def test_each_rule_says_where_it_is_decided() -> None:
    ir = build_ir(load_texts({"base.yaml": BASE, "p.yaml": policy(RULES)}))
    route = ir.gateways[0].routes[0]
    assert route_paths(route) == [
        ("p/rules[0]", "envoy: a grant without conditions"),
        ("p/rules[1]", "envoy: argument conditions"),
        ("p/rules[2]", 'envoy: native CEL: args.repo == "acme/web"'),
        ("p/rules[3]", "policy service: its condition is not one Envoy evaluates: size() is not a value Envoy "
                       "can see (use args.x, user.x, tool or agent.name)"),
        ("p/rules[4]", "policy service: it needs approvals (kept by the policy service)"),
    ]  # fmt: skip
    # Only the policy service's tools are routed to it.
    assert sorted(p.glob for p in route.decisions.calls or ()) == ["delete_issue", "edit_issue"]
    policies = route_rbac_rules(route, ir.gateways[0], McpTranslator())["rbac"]["rules"]["policies"]
    assert sorted(policies) == ["agent/bot", "any-grant", "cond/p/rules[2]", "python/agent/bot"]
    assert "condition" in policies["cond/p/rules[2]"]


def test_a_guarded_backend_sends_every_call_to_the_policy_service() -> None:
    ir = build_ir(
        load_texts({"base.yaml": BASE, "p.yaml": policy(RULES), "lock.yaml": LOCK % ("l", "github", HEX, HEX)})
    )
    text = paths_text(ir)
    assert "(every call goes to the policy service (tool guard), after Envoy's checks)" in text
    route = ir.gateways[0].routes[0]
    policies = route_rbac_rules(route, ir.gateways[0], McpTranslator())["rbac"]["rules"]["policies"]
    assert all(name.startswith("python/") for name in policies)  # ext_authz runs for every one of them
