"""What the policy service knows: the IR, indexed per route for fast decisions.

Rebuilt whole on every published policy change (`PolicyIndex.from_ir`) and
swapped in one assignment, so a decision never sees half of two versions.

Callers are recognised exactly as the RBAC principals recognise them, by the
principals' own Python checks (ir/principals.py: the trusted header's value,
a verified JWT claim, the client certificate's SPIFFE ID when Envoy sends
it, an API key, read when the IR was built), looked up by value rather than
tried one agent after another (`AgentFinder`: a decision costs the same with
ten agents or ten thousand). A grant limited to some users counts only when
the verified token of the user's provider matches it.
"""

from __future__ import annotations

import functools
import hmac
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from xds_server.ir.principals import Caller, JwtPayloads, Principal, Source, caller_value
from xds_server.ir.types import IR, AgentIR, ConditionalRuleIR, GatewayIR, GrantIR, RouteIR


class AgentFinder:
    """Which of a gateway's agents a caller proves: each value the caller presents (a header, a
    claim, its certificate's SPIFFE ID) looked up among the agents' principals, then the few
    principals that can only be checked one by one (`Principal.lookup` is None: anonymous).

    The same answer as trying every principal's `matches` in agent order (a unit test holds
    them together), at a cost that depends on how many kinds of proof the gateway accepts, not
    on how many agents it has."""

    def __init__(self, agents: tuple[AgentIR, ...]) -> None:
        self._names = tuple(a.name for a in agents)
        self._by_value: dict[Source, dict[str, list[int]]] = {}  # source -> proving value -> agent positions
        self._checked: list[tuple[int, Principal]] = []
        for position, agent in enumerate(agents):
            for principal in agent.principals:
                found = principal.lookup()
                if found is None:
                    self._checked.append((position, principal))
                    continue
                source, value = found
                if not isinstance(value, str):  # a claim or header equal to a number would be missed by the lookup
                    raise TypeError(f"agent {agent.name!r}: a principal's value must be a string, not {value!r}")
                self._by_value.setdefault(source, {}).setdefault(value, []).append(position)

    def agents_of(self, caller: Caller) -> tuple[str, ...]:
        """The names of the agents `caller` proves, in the gateway's order."""
        proven: set[int] = set()
        for source, values in self._by_value.items():
            presented = caller_value(source, caller)
            # Every proving value is a string: anything else (a claim that is a list, a number) equals none.
            if isinstance(presented, str) and (positions := values.get(presented)):
                proven.update(positions)
        for position, principal in self._checked:
            if position not in proven and principal.matches(caller):
                proven.add(position)
        return tuple(self._names[p] for p in sorted(proven))


@dataclass(frozen=True)
class RouteView:
    """One route plus the identity settings of the gateway serving it."""

    route: RouteIR
    gateway: GatewayIR
    grants_by_agent: Mapping[str, tuple[GrantIR, ...]] = field(default_factory=dict)  # agent → its grants here
    #: The gateway's (shared by its routes); None: made from `gateway.agents`.
    finder: AgentFinder | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        return self.route.name

    @functools.cached_property
    def user_providers(self) -> tuple[str, ...]:
        return self.gateway.user_providers(self.route)

    @property
    def agents(self) -> tuple[AgentIR, ...]:
        return self.gateway.agents

    def agents_of(
        self, headers: Mapping[str, str], jwt_payloads: JwtPayloads | None = None, peer_uri_san: str | None = None
    ) -> tuple[str, ...]:
        """Every agent the request proves, in the gateway's order. Only the first counts (`agent_of`): Envoy
        names it (the identify filter) and RBAC grants that one's rules, never another's."""
        return self._finder.agents_of(Caller(headers, jwt_payloads or {}, peer_uri_san))

    @functools.cached_property
    def _finder(self) -> AgentFinder:
        return self.finder if self.finder is not None else AgentFinder(self.gateway.agents)

    def conditional_rules_for(self, agent: str) -> tuple[ConditionalRuleIR, ...]:
        """The route's conditional rules naming `agent`, in policy order: the only ones that can decide
        its calls (engine.py skips the others), without reading every agent's."""
        return self._rules_by_agent.get(agent, ())

    @functools.cached_property
    def _rules_by_agent(self) -> dict[str, tuple[ConditionalRuleIR, ...]]:
        rules: dict[str, list[ConditionalRuleIR]] = defaultdict(list)
        for rule in self.route.conditional_rules:
            for agent in dict.fromkeys(rule.agents):
                rules[agent].append(rule)
        return {agent: tuple(found) for agent, found in rules.items()}

    def agent_of(
        self, headers: Mapping[str, str], jwt_payloads: JwtPayloads | None = None, peer_uri_san: str | None = None
    ) -> str | None:
        """The agent a request speaks for (the first in the gateway's order if it proves several, as Envoy's
        identify filter picks it), or None."""
        agents = self.agents_of(headers, jwt_payloads, peer_uri_san)
        return agents[0] if agents else None

    def grants_for(self, agent: str, jwt_payloads: JwtPayloads | None = None) -> tuple[GrantIR, ...]:
        """The agent's grants that apply: unlimited ones, and those whose user matches the verified token."""
        return tuple(g for g in self.grants_by_agent.get(agent, ()) if g.user is None or g.user.matches(jwt_payloads))

    def user_claims(self, jwt_payloads: JwtPayloads) -> dict[str, Any]:
        """The user the agent acts for (CEL's `user`, quotas by user, the decision log): the first
        verified payload with a string `sub` of the providers that name users on this route
        (`GatewayIR.user_providers`, as for the backend's user header and in Envoy); {} when
        there is none."""
        found = self.user_of(jwt_payloads)
        return dict(found[1]) if found is not None else {}

    def user_of(self, jwt_payloads: JwtPayloads) -> tuple[str, Mapping[str, Any]] | None:
        """(provider, verified payload) of the user the agent acts for, as `user_claims` picks it."""
        for provider in self.user_providers:
            payload = jwt_payloads.get(provider)
            if isinstance(payload, Mapping) and isinstance(payload.get("sub"), str):
                return provider, payload
        return None

    def grant(self, agent: str) -> GrantIR | None:
        """The agent's grant for whoever the user is (None if it has only user-limited ones, or none)."""
        return next((g for g in self.grants_by_agent.get(agent, ()) if g.user is None), None)


@dataclass(frozen=True)
class PolicyIndex:
    """Routes by name (names are unique across routed kinds), the gateways, and each gateway's policy-service
    secret."""

    routes: Mapping[str, RouteView] = field(default_factory=dict)
    version: str = ""
    # gateway → the policy-service secrets it accepts: `secret`, and `previousSecret` while it is replaced
    # (only gateways that have one; never shown: not in repr)
    secrets: Mapping[str, tuple[str, ...]] = field(default_factory=dict, repr=False)
    gateways: frozenset[str] = frozenset()  # every gateway's name, with a secret or not

    def admits(self, gateway: str | None, presented: str | None) -> bool:
        """Whether a request about `gateway` may be served: it shows one of the gateway's secrets, or the
        gateway has none.

        A request about no gateway this service knows (None: an unknown route; or a name no gateway has)
        must show the secret of some gateway when any has one, and is then refused on its own grounds
        (unknown route): without a secret, a caller cannot tell the routes that exist from those that do not."""
        if gateway is not None and gateway in self.gateways:
            accepted = self.secrets.get(gateway, ())
        else:
            accepted = tuple(s for of_gateway in self.secrets.values() for s in of_gateway)
        if not accepted:
            return True
        shown = presented.encode() if presented is not None else None
        # Every one compared (no early exit): the time taken says nothing of which came close.
        matches = [shown is not None and hmac.compare_digest(shown, s.encode()) for s in accepted]
        return any(matches)

    def gateway_of(self, route: str) -> str | None:
        """The gateway serving `route` (None: no such route)."""
        view = self.routes.get(route)
        return view.gateway.name if view is not None else None

    @classmethod
    def from_ir(cls, ir: IR, version: str = "") -> PolicyIndex:
        views = {}
        secrets = {
            g.name: tuple(s.value for s in (g.policy_service_secret, g.policy_service_previous_secret) if s is not None)
            for g in ir.gateways
            if g.policy_service_secret is not None
        }
        for gateway in ir.gateways:
            finder = AgentFinder(gateway.agents)
            for route in gateway.routes:
                grants: dict[str, list[GrantIR]] = defaultdict(list)
                for grant in route.grants:
                    grants[grant.agent].append(grant)
                views[route.name] = RouteView(route, gateway, {a: tuple(g) for a, g in grants.items()}, finder)
        return cls(views, version, secrets, frozenset(g.name for g in ir.gateways))

    def route(self, name: str) -> RouteView | None:
        return self.routes.get(name)
