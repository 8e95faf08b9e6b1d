"""Grants → RBAC allow-lists (the native hot path): one `RBACPerRoute` per Envoy route.

A route's RBAC has one policy per grant: its principals are the agent's
(any of them proves it, see ir/principals.py) and, for a grant limited to
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

from xds_server.core.wire import typed
from xds_server.ir.types import AgentIR, GrantIR, RouteIR
from xds_server.translate.filters import HttpFilter, Slot
from xds_server.translate.memo import memoised
from xds_server.translate.names import rbac_policy_name
from xds_server.translate.proto import Prebuilt, prebuilt
from xds_server.translate.protocols.base import ProtocolTranslator

RBAC_FILTER = "envoy.filters.http.rbac"
RBAC_TYPE = "envoy.extensions.filters.http.rbac.v3.RBAC"
RBAC_PER_ROUTE_TYPE = "envoy.extensions.filters.http.rbac.v3.RBACPerRoute"


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


def grant_principals(grant: GrantIR, agent: AgentIR) -> list[dict[str, Any]]:
    """The principals of one grant's policy (OR-ed by Envoy): the agent, and the user when the grant has one."""
    agent_ids = [p.rbac() for p in agent.principals]
    if grant.user is None or not agent_ids:  # grants name only agents the gateway can recognise
        return agent_ids
    return [{"and_ids": {"ids": [_or_ids(agent_ids), grant.user.rbac()]}}]


#: The policy of what every grant on a route allows (not an agent's name: those are `agent/<name>`).
COMMON_POLICY = "any-grant"


def route_rbac_rules(route: RouteIR, agents: tuple[AgentIR, ...], protocol: ProtocolTranslator) -> dict[str, Any]:
    """The `RBACPerRoute` body of one route's Envoy routes (as a dict, for reading and tests)."""
    by_name = {a.name: a for a in agents}
    policies: dict[str, Any] = {}
    everyone: list[dict[str, Any]] = []
    for index, grant in enumerate(route.grants):
        agent = by_name[grant.agent]
        principals = grant_principals(grant, agent)
        everyone += principals
        permissions = protocol.permissions(route, grant.allows)
        if not permissions or not principals:
            continue
        # An agent can hold a plain grant and grants limited to some users: one policy each.
        name = rbac_policy_name(agent.name) if grant.user is None else f"{rbac_policy_name(agent.name)}/users[{index}]"
        policies[name] = {"permissions": permissions, "principals": principals}
    if everyone:
        policies[COMMON_POLICY] = {"permissions": protocol.common_permissions(route), "principals": everyone}
    return {"rbac": {"rules": {"action": "ALLOW", "policies": policies}}}


def route_rbac(route: RouteIR, agents: tuple[AgentIR, ...], protocol: ProtocolTranslator) -> Prebuilt:
    """The `RBACPerRoute` of one route's Envoy routes, built once (the largest part of a route
    configuration: protobuf's own constructor, not the dict parser) and shared by them."""
    by_name = memoised(("agents-by-name", id(agents)), agents, lambda: {a.name: a for a in agents})
    granted = tuple(by_name[g.agent] for g in route.grants)
    # The same route and agents (the IR build hands back the very same objects when they did not change).
    key = ("rbac", id(route), tuple(id(a) for a in granted))
    return memoised(key, (route, granted), lambda: prebuilt(RBACPerRoute, route_rbac_rules(route, agents, protocol)))
