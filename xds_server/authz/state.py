"""What the policy service knows: the IR, indexed per backend for fast decisions.

Rebuilt whole on every published policy change (`PolicyIndex.from_ir`) and
swapped in one assignment, so a decision never sees half of two versions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from xds_server.ir.glob import glob_matches
from xds_server.ir.types import IR, AgentIR, BackendIR, GrantIR, NamePattern


@dataclass(frozen=True)
class BackendView:
    """One backend plus the identity settings of the gateway serving it."""

    backend: BackendIR
    gateway: str
    identity_header: str | None
    agents_by_value: Mapping[str, str]  # identity header value → agent name
    grants: Mapping[str, GrantIR]  # agent name → its grant here

    def agent_of(self, headers: Mapping[str, str]) -> str | None:
        """The agent a request comes from (same rule as the RBAC principals), or None."""
        if self.identity_header is None:
            return None
        value = headers.get(self.identity_header)
        return self.agents_by_value.get(value) if value is not None else None

    def grant(self, agent: str) -> GrantIR | None:
        return self.grants.get(agent)

    def has_unconditional_tool(self, agent: str, tool: str) -> bool:
        grant = self.grants.get(agent)
        return grant is not None and _any_match(grant.tools, tool)

    def may_use(self, agent: str, kind: str, name: str) -> bool:
        """Whether `agent` may use a list item: a tool it may call, a resource or prompt it may get."""
        grant = self.grants.get(agent)
        if grant is None:
            return False
        if kind == "tools":
            return _any_match(grant.all_tools, name)
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


def _agents_by_value(agents: tuple[AgentIR, ...], header: str | None) -> dict[str, str]:
    return {p.value: a.name for a in agents for p in a.principals if p.header == header}


@dataclass(frozen=True)
class PolicyIndex:
    """Backends by name (names are unique across the policy set)."""

    backends: Mapping[str, BackendView] = field(default_factory=dict)
    version: str = ""

    @classmethod
    def from_ir(cls, ir: IR, version: str = "") -> PolicyIndex:
        views = {}
        for gateway in ir.gateways:
            header = gateway.identity.trusted_header
            by_value = _agents_by_value(gateway.agents, header)
            for backend in gateway.backends:
                views[backend.name] = BackendView(
                    backend=backend,
                    gateway=gateway.name,
                    identity_header=header,
                    agents_by_value=by_value,
                    grants={g.agent: g for g in backend.grants},
                )
        return cls(views, version)

    def backend(self, name: str) -> BackendView | None:
        return self.backends.get(name)
