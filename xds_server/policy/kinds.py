"""The registry of policy kinds: each kind's model, the names it declares, what it references,
and the values that must be unique. Everything else about kinds derives from this table:
the `Document` union (and so the JSON Schema), the loader's list of kinds, how `PolicySet`
groups documents (`PolicySet.of(model)`; its named properties are conveniences over it), and
the cross-document checks in `checks.py`.

Adding a kind (an A2A agent, say) is one `KindSpec` here and its model in a module of
its own; no loader or checker code changes.

References and provided names are read from the raw YAML (paths with `*` for
every list item), so a document with an unrelated mistake still has its
references checked. Unique keys are read from validated models.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Union

from pydantic import Field

from .a2a import A2AAgent, A2APolicy
from .agent import Agent
from .base import DocumentModel
from .diagnostics import Path
from .gateway import Gateway
from .mcp import MCPBackend, MCPPolicy, MCPToolLock
from .virtual_mcp import VirtualMCPServer

#: A path into a raw document; "*" stands for every item of a list.
Pattern = tuple[str, ...]


@dataclass(frozen=True)
class Namespace:
    """A set of names documents refer to: a kind's metadata names, or names a kind provides.

    `noun` names one of them in messages ("backend", "JWT provider"); `none`
    is what a message says when there are none at all.
    """

    name: str
    noun: str
    none: str


@dataclass(frozen=True)
class RefSpec:
    """Where a kind refers to names of `namespace`.

    `optional` references may be left out and then mean the only name of
    the namespace (a backend's gateway); `missing` is the message when there
    is none to default to. `skip` values are not references ("*" = every agent).
    """

    pattern: Pattern
    namespace: str
    optional: bool = False
    missing: str = ""
    skip: frozenset[str] = frozenset()


@dataclass(frozen=True)
class UniqueKey:
    """A value two documents may not share (across every kind that uses the same `namespace`).

    `key(doc, gateways)` returns the value, or a list of values (None: the document has none), with
    `gateways` the Gateway names for kinds whose value depends on their gateway;
    `message(key, first)` says what clashes, `first` naming the earlier document.
    """

    namespace: str
    path: Path
    key: Callable[[Any, Sequence[str]], tuple[Any, ...] | list[tuple[Any, ...]] | None]
    message: Callable[[tuple[Any, ...], str], str]


@dataclass(frozen=True)
class KindSpec:
    """One policy kind: its name, model, and the noun messages use for one document of it."""

    kind: str
    model: type[DocumentModel]
    noun: str
    references: tuple[RefSpec, ...] = ()
    provides: tuple[tuple[str, Pattern], ...] = ()  # (namespace, where in the raw document)
    unique: tuple[UniqueKey, ...] = ()
    routed: bool = False  # served on a gateway route (it names its gateway)


def resolve_gateway(gateway: str | None, gateways: Sequence[str]) -> str | None:
    """The gateway a routed document is served on (its own, or the only one), or None if undecidable."""
    if gateway is not None:
        return gateway
    return gateways[0] if len(gateways) == 1 else None


def _route_keys(doc: Any, gateways: Sequence[str]) -> list[tuple[Any, ...]] | None:
    """(gateway, route, host) for each host the backend is served for ("*": every other host), and for
    each other path it is served at (an A2A agent's card)."""
    gateway = resolve_gateway(doc.spec.gateway, gateways)
    if gateway is None:
        return None
    hosts = getattr(doc.spec, "hosts", ()) or ("*",)
    return [(gateway, path, host) for path in doc.served_paths for host in hosts]


_ROUTE_UNIQUE = UniqueKey(
    "gateway route",
    ("spec", "route"),
    _route_keys,
    lambda key, first: (
        f"route {key[1]!r} on gateway {key[0]!r}"
        + (f" for host {key[2]!r}" if key[2] != "*" else "")
        + f" is already used by {first}"
    ),
)
_GATEWAY_REF = RefSpec(
    ("spec", "gateway"), "Gateway", optional=True, missing="no Gateway is defined to serve this backend"
)


JWT_PROVIDERS = Namespace("JwtProvider", "JWT provider", "no Gateway defines jwtProviders")
_AGENT_PROVIDER = RefSpec(("spec", "identity", "jwt", "provider"), JWT_PROVIDERS.name)
_BACKEND_PROVIDER = RefSpec(("spec", "auth", "provider"), JWT_PROVIDERS.name)

KIND_SPECS: tuple[KindSpec, ...] = (
    KindSpec(
        "Gateway",
        Gateway,
        "gateway",
        provides=((JWT_PROVIDERS.name, ("spec", "identity", "jwtProviders", "*", "name")),),
        references=(RefSpec(("spec", "identity", "anonymous", "agent"), "Agent"),),
        unique=(
            UniqueKey(
                "listen address",
                ("spec", "listen"),
                lambda doc, _: (doc.spec.listen.address, doc.spec.listen.port),
                lambda key, first: f"{key[0]}:{key[1]} is already the listen address of {first}",
            ),
        ),
    ),
    KindSpec(
        "MCPBackend",
        MCPBackend,
        "backend",
        references=(_GATEWAY_REF, _BACKEND_PROVIDER),
        unique=(_ROUTE_UNIQUE,),
        routed=True,
    ),
    KindSpec(
        "VirtualMCPServer",
        VirtualMCPServer,
        "virtual MCP server",
        # To clients and policies it is an MCP backend: MCPPolicy and MCPToolLock name it as one.
        provides=(("MCPBackend", ("metadata", "name")),),
        references=(_GATEWAY_REF, RefSpec(("spec", "backends", "*", "backend"), "MCPBackend")),
        unique=(_ROUTE_UNIQUE,),
        routed=True,
    ),
    KindSpec(
        "A2AAgent",
        A2AAgent,
        "A2A agent",
        references=(_GATEWAY_REF, _BACKEND_PROVIDER),
        unique=(_ROUTE_UNIQUE,),
        routed=True,
    ),
    KindSpec(
        "Agent",
        Agent,
        "agent",
        references=(_AGENT_PROVIDER,),
        unique=(
            # Agents are known to every gateway, so one header value naming two
            # agents would make the caller ambiguous wherever it is trusted.
            UniqueKey(
                "identity header value",
                ("spec", "identity", "header"),
                lambda doc, _: (
                    None
                    if doc.spec.identity is None or doc.spec.identity.header is None
                    else (doc.spec.identity.header,)
                ),
                lambda key, first: f"identity header value {key[0]!r} is already claimed by {first}",
            ),
        ),
    ),
    KindSpec(
        "MCPPolicy",
        MCPPolicy,
        "policy",
        references=(
            RefSpec(("spec", "backend"), "MCPBackend"),
            RefSpec(("spec", "rules", "*", "agents", "*"), "Agent", skip=frozenset({"*"})),
            RefSpec(("spec", "rules", "*", "users", "provider"), JWT_PROVIDERS.name),
        ),
    ),
    KindSpec(
        "MCPToolLock",
        MCPToolLock,
        "tool lock",
        references=(RefSpec(("spec", "backend"), "MCPBackend"),),
        unique=(
            UniqueKey(
                "pinned backend",
                ("spec", "backend"),
                lambda doc, _: (doc.spec.backend,),
                lambda key, first: f"backend {key[0]!r} is already pinned by {first}",
            ),
        ),
    ),
    KindSpec(
        "A2APolicy",
        A2APolicy,
        "A2A policy",
        references=(
            RefSpec(("spec", "a2aAgent"), "A2AAgent"),
            RefSpec(("spec", "rules", "*", "agents", "*"), "Agent", skip=frozenset({"*"})),
            RefSpec(("spec", "rules", "*", "users", "provider"), JWT_PROVIDERS.name),
        ),
    ),
)

KINDS: Mapping[str, KindSpec] = {spec.kind: spec for spec in KIND_SPECS}
MODELS: Mapping[str, type[DocumentModel]] = {spec.kind: spec.model for spec in KIND_SPECS}
KIND_OF_MODEL: Mapping[type[DocumentModel], str] = {spec.model: spec.kind for spec in KIND_SPECS}

#: Every namespace a reference may name: each kind's names, and the names kinds provide.
NAMESPACES: Mapping[str, Namespace] = {
    **{s.kind: Namespace(s.kind, s.noun, f"no {s.kind} is defined") for s in KIND_SPECS},
    JWT_PROVIDERS.name: JWT_PROVIDERS,
}

#: One policy document of any kind, told apart by `kind` (the JSON Schema is generated from it).
Document = Annotated[Union[tuple(s.model for s in KIND_SPECS)], Field(discriminator="kind")]  # type: ignore[valid-type]  # noqa: UP007


def values_at(raw: Any, pattern: Pattern, at: Path = ()) -> list[tuple[Path, Any]]:
    """Every (path, value) in `raw` that `pattern` reaches ("*": each item of a list)."""
    if not pattern:
        return [(at, raw)]
    head, rest = pattern[0], pattern[1:]
    if head == "*":
        items = raw if isinstance(raw, list) else []
        return [found for i, item in enumerate(items) for found in values_at(item, rest, (*at, i))]
    if not isinstance(raw, dict) or head not in raw:
        return []
    return values_at(raw[head], rest, (*at, head))
