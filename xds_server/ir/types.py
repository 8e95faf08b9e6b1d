"""The intermediate representation: resolved, defaulted, sorted, serialisable.

The IR is what translators see; they never see policy models. Every value here
is already validated and defaulted by `ir.build`, every collection is a sorted
tuple, so the same policies always give the same IR (and the same xDS bytes).
`to_plain` turns any IR value into plain dicts/lists for YAML goldens and
`agentxds render --to ir`.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any


class PatternKind(str, enum.Enum):
    """How a name pattern from a policy compiles to an Envoy string matcher."""

    EXACT = "exact"  # no wildcard
    PREFIX = "prefix"  # "get_*"
    SUFFIX = "suffix"  # "*_issue"
    REGEX = "regex"  # any other glob, compiled to an anchored RE2 regex
    ANY = "any"  # "*"


@dataclass(frozen=True, order=True)
class NamePattern:
    """A compiled glob over tool names, prompt names or resource URIs.

    `value` is the literal for EXACT/PREFIX/SUFFIX, the RE2 regex for REGEX,
    and empty for ANY. `glob` keeps what the user wrote, for messages.
    """

    kind: PatternKind
    value: str
    glob: str


@dataclass(frozen=True, order=True)
class HeaderPrincipal:
    """Identity asserted by a request header the gateway trusts (development only)."""

    header: str  # lower-case header name
    value: str


# Later identity sources (SPIFFE, JWT claims) join this union.
Principal = HeaderPrincipal


@dataclass(frozen=True, order=True)
class AgentIR:
    """A named agent and every principal that proves it is that agent."""

    name: str
    principals: tuple[Principal, ...]


@dataclass(frozen=True, order=True)
class GrantIR:
    """What one agent may do on one backend: the union of its matching rules.

    `sources` names the rules that contributed ("policy-name/rules[2]") so a
    denial or an explain can say which rule set decided.
    """

    agent: str
    tools: tuple[NamePattern, ...]
    resources: tuple[NamePattern, ...]
    prompts: tuple[NamePattern, ...]
    sources: tuple[str, ...]


@dataclass(frozen=True, order=True)
class EndpointIR:
    host: str
    port: int


@dataclass(frozen=True)
class BackendIR:
    """An MCP backend as the gateway serves it.

    `route_path` is the path clients use on the gateway; `upstream_path` the
    MCP endpoint path on the backend. `grants` is sorted by agent name and has
    at most one entry per agent; an agent without a grant has no access at all.
    """

    name: str
    route_path: str
    upstream_path: str
    endpoints: tuple[EndpointIR, ...]
    connect_timeout_ms: int
    request_timeout_ms: int  # 0 = no timeout (long-lived streams)
    idle_timeout_ms: int  # 0 = never; no bytes either way for this long closes the stream
    grants: tuple[GrantIR, ...]


@dataclass(frozen=True)
class IdentityIR:
    """Where the gateway takes caller identity from."""

    trusted_header: str | None  # lower-case header name, or None if not trusted


@dataclass(frozen=True)
class GatewayIR:
    """One gateway: one Envoy node group (`node.cluster` == `name`)."""

    name: str
    listen_address: str
    listen_port: int
    max_request_body_bytes: int
    connection_buffer_bytes: int
    identity: IdentityIR
    agents: tuple[AgentIR, ...]  # every agent known to this gateway, sorted by name
    backends: tuple[BackendIR, ...]  # sorted by name


@dataclass(frozen=True)
class IR:
    """The whole resolved policy set."""

    gateways: tuple[GatewayIR, ...]  # sorted by name

    def gateway(self, name: str) -> GatewayIR | None:
        return next((g for g in self.gateways if g.name == name), None)


def to_plain(value: Any) -> Any:
    """Return `value` as plain dicts, lists, strings and numbers (for YAML)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [to_plain(v) for v in value]
    return value
