"""Grants → RBAC allow-lists (the native hot path): one `RBACPerRoute` per Envoy route.

A route's RBAC has one policy per grant: its principal is the agent as the
identify filter named it (`proven`; translate/identity.py: the first agent the
request proves, by the principals of ir/principals.py, checked on every
request with the credentials of the version Envoy last accepted of that
filter's discovered configuration; a NACK of it shows in `agentxds status`) and, for a grant limited to
some users, the user's verified JWT claims as well (AND); its permissions
are what the grant allows, in the protocol's terms (the protocol
translator's `permissions`). What every grant allows alike (the protocol's
`common_permissions`: methods that name nothing) is one more policy, whose
principals are every grant's, rather than a copy in each grant's policy:
with hundreds of agents on a route that is most of the route's size. Only ALLOW lists are emitted: a body Envoy
could not parse carries no metadata and so matches nothing, which denies it
(a DENY list would let it through). The listener-level RBAC allows nothing,
so an Envoy route without a per-route config is denied too, and an empty
policy map denies everything, which is what a route without grants must do.
"""

from __future__ import annotations

from typing import Any

from envoy.extensions.filters.http.rbac.v3.rbac_pb2 import RBACPerRoute

from xds_server.core.cel_native import native_condition
from xds_server.core.wire import typed
from xds_server.ir.principals import metadata_principal
from xds_server.ir.types import AgentIR, GatewayIR, GrantIR, RouteIR
from xds_server.translate import cel
from xds_server.translate.filters import HttpFilter, RouteDefault, Slot
from xds_server.translate.memo import memoised
from xds_server.translate.names import (
    CONDITIONS_PREFIX,
    DECIDED_PREFIX,
    GRANTS_PREFIX,
    NATIVE_PREFIX,
    rbac_policy_name,
)
from xds_server.translate.proto import Prebuilt, prebuilt
from xds_server.translate.protocols.base import ProtocolTranslator

RBAC_FILTER = "envoy.filters.http.rbac"
RBAC_TYPE = "envoy.extensions.filters.http.rbac.v3.RBAC"
RBAC_PER_ROUTE_TYPE = "envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
COVERED_FILTER = "agentxds.conditions.covered"


def rbac_filter() -> HttpFilter:
    """The listener-level RBAC: allows nothing; each route brings its own (or switches it off)."""
    return HttpFilter(
        RBAC_FILTER,
        Slot.AUTHZ,
        typed(RBAC_TYPE, {"rules": {"action": "ALLOW", "policies": {}}}),
        # An RBACPerRoute without rules disables RBAC on that route only.
        off=typed(RBAC_PER_ROUTE_TYPE),
    )


def _or_ids(ids: list[dict[str, Any]]) -> dict[str, Any]:
    return ids[0] if len(ids) == 1 else {"or_ids": {"ids": ids}}


def identified_as(agent: str) -> dict[str, Any]:
    """The principal "the identify filter named `agent`" (translate/identity.py): the one agent a request
    speaks for, the first it proves by name, as the backend's agent header, native conditions, the access
    log and the policy service also take it."""
    return metadata_principal(cel.RBAC_NAMESPACE, [cel.IDENTIFIED_AGENT_KEY], {"string_match": {"exact": agent}})


def proven(agent: AgentIR) -> dict[str, Any] | None:
    """The principal of a request speaking for `agent` (None: the gateway cannot recognise it): the identify
    filter named it, so a request carrying proofs of several agents gets that one's grants only, never one
    agent's grant under another's name. Its credentials need no second check here: the identify filter's
    configuration is discovered (ECDS), so a rotated credential reaches the next request on every open
    connection there as it does here (provided Envoy accepts that configuration, as it must this one)."""
    return identified_as(agent.name) if agent.principals else None


def grant_principals(grant: GrantIR, agent: AgentIR) -> list[dict[str, Any]]:
    """The principals of one grant's policy (OR-ed by Envoy): the agent, and the user when the grant has one."""
    named = proven(agent)
    if named is None:  # grants name only agents the gateway can recognise
        return []
    return [named] if grant.user is None else [{"and_ids": {"ids": [named, grant.user.rbac()]}}]


#: The policy of what every grant on a route allows (not an agent's name: those are `agent/<name>`).
COMMON_POLICY = "any-grant"


def _native_rules(route: RouteIR, gateway: GatewayIR, protocol: ProtocolTranslator
                  ) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """(policies, shadow policies) of the route's native rules: each allows its calls when its
    agent check and condition hold; its shadow twin, without the `when`, names the rule a refused
    call fell under (the covered filter's)."""
    policies: dict[str, Any] = {}
    shadows: dict[str, Any] = {}
    native = [r for r in route.conditional_rules if r.native]
    if not native:
        return policies, shadows
    bindings = cel.Bindings(protocol.cel_arguments(), protocol.cel_target(),
                            cel.user_claims(gateway.user_providers(route)))  # fmt: skip
    by_name = {a.name: a for a in gateway.agents if a.principals}
    for rule in native:
        if not rule.agents:
            continue
        assert rule.when is not None
        every_agent = set(rule.agents) >= set(by_name)
        agents = cel.agent_check(rule.agents, every_agent=every_agent)
        user = [rule.user.rbac()] if rule.user is not None else []
        permissions = [protocol.target_permission(rule.targets)]
        condition = cel.rule_condition(native_condition(rule.when), bindings, agents)
        # Whose rule it is, the condition checks exactly (the agent the identify filter named); the
        # principals say the same in RBAC's terms, so that the shadow twin needs no CEL.
        speaking = [p for n in (by_name if every_agent else rule.agents) if n in by_name
                    if (p := proven(by_name[n])) is not None]  # fmt: skip
        if not speaking:  # none of its agents can be recognised: nobody can call under it
            continue
        principals = [{"and_ids": {"ids": [_or_ids(speaking), *user]}}] if user else speaking
        policies[f"{NATIVE_PREFIX}{rule.id}"] = {"permissions": permissions, "principals": principals,
                                                  "condition": cel.to_expr(condition)}  # fmt: skip
        # Naming the rule in a refusal needs no CEL: the request speaks for one of the rule's agents (a
        # stranger, or a credential rotated away, is refused as such, not under the rule).
        shadows[rule.id] = {"permissions": permissions, "principals": principals}
    return policies, shadows


def covered_filter() -> HttpFilter:
    """A shadow-only RBAC filter, ahead of the grants' RBAC, naming the native rule that covers a call
    (`CONDITION_RULE_KEY`), so that the reply to a call RBAC then refuses can say whose condition
    failed: RBAC sets its own metadata only after it has sent its refusal. Off on routes without
    native rules."""
    return HttpFilter(COVERED_FILTER, Slot.AUTHZ, typed(RBAC_TYPE), RouteDefault.OFF, typed(RBAC_PER_ROUTE_TYPE))


def route_covered(route: RouteIR, gateway: GatewayIR, protocol: ProtocolTranslator) -> Prebuilt | None:
    """The covered filter's `RBACPerRoute` for `route` (None: the route has no native rule)."""
    if not any(r.native for r in route.conditional_rules):
        return None

    def build() -> Prebuilt | None:
        _, shadows = _native_rules(route, gateway, protocol)
        if not shadows:
            return None
        rules = {"shadow_rules": {"action": "ALLOW", "policies": shadows},
                 "shadow_rules_stat_prefix": CONDITIONS_PREFIX}  # fmt: skip
        return prebuilt(RBACPerRoute, {"rbac": rules})

    agents = gateway.agents
    return memoised(("covered", id(route), id(agents)), (route, agents), build)


def route_rbac_rules(route: RouteIR, gateway: GatewayIR, protocol: ProtocolTranslator) -> dict[str, Any]:
    """The `RBACPerRoute` body of one route's Envoy routes (as a dict, for reading and tests).

    Per grant, `agent/<name>` (what it allows without conditions) and
    `python/agent/<name>` (the tools of rules the policy service decides); per
    native rule `cond/<rule id>`; `any-grant` for what every grant allows. On a
    route where the policy service sees every call (a tool guard) or every
    request (delegated credentials), every name starts with `python/`.
    """
    by_name = {a.name: a for a in gateway.agents}
    policies: dict[str, Any] = {}
    everyone: list[dict[str, Any]] = []
    for index, grant in enumerate(route.grants):
        agent = by_name[grant.agent]
        principals = grant_principals(grant, agent)
        everyone += principals
        if not principals:
            continue
        # An agent can hold a plain grant and grants limited to some users: one policy each.
        name = rbac_policy_name(agent.name) if grant.user is None else f"{rbac_policy_name(agent.name)}/users[{index}]"
        permissions = protocol.permissions(route, grant.allows)
        if permissions:
            policies[name] = {"permissions": permissions, "principals": principals}
        decided = protocol.decided_permissions(route, grant.allows)
        if decided:
            policies[f"{DECIDED_PREFIX}{name}"] = {"permissions": decided, "principals": principals}
    native, _ = _native_rules(route, gateway, protocol)
    policies.update(native)
    if everyone:
        policies[COMMON_POLICY] = {"permissions": protocol.common_permissions(route), "principals": everyone}
    decisions = route.decisions
    if decisions.every_request or decisions.calls == ():
        policies = {n if n.startswith(DECIDED_PREFIX) else f"{DECIDED_PREFIX}{n}": p for n, p in policies.items()}
    return {"rbac": {"rules": {"action": "ALLOW", "policies": policies}, "rules_stat_prefix": GRANTS_PREFIX}}


def route_rbac(route: RouteIR, gateway: GatewayIR, protocol: ProtocolTranslator) -> Prebuilt:
    """The `RBACPerRoute` of one route's Envoy routes, built once (the largest part of a route
    configuration: protobuf's own constructor, not the dict parser) and shared by them."""
    agents = gateway.agents
    by_name = memoised(("agents-by-name", id(agents)), agents, lambda: {a.name: a for a in agents})
    granted = tuple(by_name[g.agent] for g in route.grants)
    # What else the rules read: who is recognisable (native rules for "every agent"), the providers
    # the user comes from. The same objects when they did not change (the IR build reuses them).
    everyone = agents if any(r.native for r in route.conditional_rules) else ()
    providers = gateway.user_providers(route)
    key = ("rbac", id(route), tuple(id(a) for a in granted), id(everyone), providers)
    return memoised(key, (route, granted, everyone),
                    lambda: prebuilt(RBACPerRoute, route_rbac_rules(route, gateway, protocol)))  # fmt: skip
