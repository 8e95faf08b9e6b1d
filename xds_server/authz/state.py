"""What the policy service knows: the IR, indexed per backend for fast decisions.

Rebuilt whole on every published policy change (`PolicyIndex.from_ir`) and
swapped in one assignment, so a decision never sees half of two versions.

Callers are recognised exactly as the RBAC principals recognise them: the
trusted header's value, a verified JWT claim (jwt_authn's metadata, which
Envoy forwards to the policy service), the SPIFFE ID of the client
certificate (when Envoy sends it), an API key. A grant limited to some users
counts only when the verified token of the user's provider matches it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from xds_server.core.secrets import SecretUnavailable, read_secret
from xds_server.ir.glob import glob_matches
from xds_server.ir.types import (
    IR,
    AgentIR,
    ApiKeyPrincipal,
    BackendIR,
    GrantIR,
    HeaderPrincipal,
    JwtPrincipal,
    NamePattern,
    SpiffePrincipal,
    UserMatchIR,
)

log = logging.getLogger(__name__)

JwtPayloads = Mapping[str, Any]  # provider name → verified token payload (jwt_authn's metadata)


def user_matches(user: UserMatchIR, jwt_payloads: JwtPayloads | None) -> bool:
    """Whether the verified token of `user.provider` satisfies every condition of `user` (as RBAC checks it)."""
    payload = (jwt_payloads or {}).get(user.provider)
    if not isinstance(payload, Mapping):
        return False
    if user.subjects and payload.get("sub") not in user.subjects:
        return False
    if user.groups:
        groups = payload.get(user.groups_claim)
        held = [groups] if isinstance(groups, str) else groups if isinstance(groups, list) else []
        if not any(isinstance(g, str) and g in user.groups for g in held):
            return False
    return all(isinstance(payload.get(k), str) and payload.get(k) == v for k, v in user.claims)


@dataclass(frozen=True)
class Caller:
    """What the policy service sees of a request's identity."""

    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    jwt: JwtPayloads = field(default_factory=dict)
    peer_uri_san: str | None = None  # the client certificate's URI SAN (SPIFFE ID), if Envoy sent it


def _principal_matches(principal: Any, caller: Caller, api_keys: Mapping[ApiKeyPrincipal, str]) -> bool:
    if isinstance(principal, HeaderPrincipal):
        return caller.headers.get(principal.header) == principal.value
    if isinstance(principal, JwtPrincipal):
        payload = caller.jwt.get(principal.provider)
        return isinstance(payload, Mapping) and payload.get(principal.claim) == principal.value
    if isinstance(principal, SpiffePrincipal):
        return caller.peer_uri_san == principal.spiffe_id
    if isinstance(principal, ApiKeyPrincipal):
        key = api_keys.get(principal)
        return key is not None and caller.headers.get(principal.header) == key
    return False


@dataclass(frozen=True)
class BackendView:
    """One backend plus the identity settings of the gateway serving it."""

    backend: BackendIR
    gateway: str
    identity_header: str | None
    agents: tuple[AgentIR, ...] = ()
    grants_by_agent: Mapping[str, tuple[GrantIR, ...]] = field(default_factory=dict)  # agent → its grants here
    api_keys: Mapping[ApiKeyPrincipal, str] = field(default_factory=dict)  # read when the index was built

    def agents_of(self, headers: Mapping[str, str], jwt_payloads: JwtPayloads | None = None,
                  peer_uri_san: str | None = None) -> tuple[str, ...]:  # fmt: skip
        """Every agent the request proves (RBAC lets a request through if any of them may)."""
        caller = Caller(headers, jwt_payloads or {}, peer_uri_san)
        return tuple(
            a.name for a in self.agents if any(_principal_matches(p, caller, self.api_keys) for p in a.principals)
        )

    def agent_of(self, headers: Mapping[str, str], jwt_payloads: JwtPayloads | None = None,
                 peer_uri_san: str | None = None) -> str | None:  # fmt: skip
        """The agent a request comes from (the first, by name, if it proves several), or None."""
        agents = self.agents_of(headers, jwt_payloads, peer_uri_san)
        return agents[0] if agents else None

    def grants_for(self, agent: str, jwt_payloads: JwtPayloads | None = None) -> tuple[GrantIR, ...]:
        """The agent's grants that apply: unlimited ones, and those whose user matches the verified token."""
        return tuple(
            g for g in self.grants_by_agent.get(agent, ()) if g.user is None or user_matches(g.user, jwt_payloads)
        )

    def grant(self, agent: str) -> GrantIR | None:
        """The agent's grant for whoever the user is (None if it has only user-limited ones, or none)."""
        return next((g for g in self.grants_by_agent.get(agent, ()) if g.user is None), None)

    def has_unconditional_tool(self, agent: str, tool: str, jwt_payloads: JwtPayloads | None = None) -> bool:
        return any(_any_match(g.tools, tool) for g in self.grants_for(agent, jwt_payloads))

    def may_use(self, agent: str, kind: str, name: str, jwt_payloads: JwtPayloads | None = None) -> bool:
        """Whether `agent` (acting for the user of `jwt_payloads`) may use a list item:
        a tool it may call, a resource or prompt it may get."""
        return any(_grant_allows(g, kind, name) for g in self.grants_for(agent, jwt_payloads))


def _grant_allows(grant: GrantIR, kind: str, name: str) -> bool:
    if kind == "tools":
        return _any_match(grant.listed_tools, name)
    if kind == "prompts":
        return _any_match(grant.prompts, name)
    if kind == "resources":
        return _any_match(grant.resources, name)
    if kind == "resourceTemplates":
        # A template is not a URI: show it to agents that may read some resource.
        return bool(grant.resources)
    return False


def _any_match(patterns: tuple[NamePattern, ...], name: str) -> bool:
    return any(glob_matches(p, name) for p in patterns)


def _api_keys(agents: tuple[AgentIR, ...]) -> dict[ApiKeyPrincipal, str]:
    keys = {}
    for agent in agents:
        for p in agent.principals:
            if isinstance(p, ApiKeyPrincipal):
                try:
                    keys[p] = read_secret(p.key_env, p.key_file, what=f"agent {agent.name}: API key")
                except SecretUnavailable as exc:  # the build that published this IR read it; it went away since
                    log.warning("%s; the agent is not recognised by the policy service", exc)
    return keys


@dataclass(frozen=True)
class PolicyIndex:
    """Backends by name (names are unique across the policy set)."""

    backends: Mapping[str, BackendView] = field(default_factory=dict)
    version: str = ""

    @classmethod
    def from_ir(cls, ir: IR, version: str = "") -> PolicyIndex:
        views = {}
        for gateway in ir.gateways:
            keys = _api_keys(gateway.agents)
            for backend in gateway.backends:
                grants: dict[str, list[GrantIR]] = defaultdict(list)
                for grant in backend.grants:
                    grants[grant.agent].append(grant)
                views[backend.name] = BackendView(
                    backend=backend,
                    gateway=gateway.name,
                    identity_header=gateway.identity.trusted_header,
                    agents=gateway.agents,
                    grants_by_agent={a: tuple(g) for a, g in grants.items()},
                    api_keys=keys,
                )
        return cls(views, version)

    def backend(self, name: str) -> BackendView | None:
        return self.backends.get(name)
