"""Checks that need more than one document (go-control-plane's `Consistent()`).

Two inputs, on purpose:

* `declared` — every document whose kind and name could be read, valid or
  not. Names resolve against these, so a typo in an Agent's spec does not
  also produce "unknown agent" in every policy that names it.
* `valid` — documents that passed model validation. Conflicts between
  values (routes, listen addresses, identities) are only checked on these.

When part of the set could not be read at all (a YAML syntax error),
`complete` is False and unresolved references are not reported: the target
may well be in the unreadable part, and the syntax error is reported anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .diagnostics import Diagnostic, Path, join_field
from .model import Agent, Gateway, Located, MCPBackend, MCPToolLock, Source


@dataclass(frozen=True)
class Ref:
    """A name one document uses to point at another. `name` None = "the default"."""

    path: Path
    kind: str
    name: str | None


@dataclass(frozen=True)
class Declared:
    """A readable document, valid or not: its kind, name and references.

    `source` is where its metadata.name is written. `refs` come from the raw
    YAML (every string where a reference belongs), so a document with an
    unrelated mistake still has its references checked. `locate` maps a path
    in the document to its line.
    """

    kind: str
    name: str
    source: Source
    refs: tuple[Ref, ...] = ()
    locate: Callable[[Path], int] = field(default=lambda path: 0, compare=False, repr=False)

    def diagnostic(self, path: Path, message: str) -> Diagnostic:
        return Diagnostic(self.source.file, self.locate(path), join_field(f"{self.kind}/{self.name}", path), message)


def references(kind: str, raw: Mapping[str, Any]) -> tuple[Ref, ...]:
    """The references written in a raw document; ill-typed values are skipped
    (model validation reports those)."""
    spec = raw.get("spec")
    if not isinstance(spec, dict):
        return ()
    refs: list[Ref] = []
    if kind == "MCPBackend":
        gateway = spec.get("gateway")
        if gateway is None or isinstance(gateway, str):
            refs.append(Ref(("spec", "gateway"), "Gateway", gateway))
    elif kind == "MCPToolLock":
        if isinstance(spec.get("backend"), str):
            refs.append(Ref(("spec", "backend"), "MCPBackend", spec["backend"]))
    elif kind == "MCPPolicy":
        if isinstance(spec.get("backend"), str):
            refs.append(Ref(("spec", "backend"), "MCPBackend", spec["backend"]))
        rules = spec.get("rules")
        for i, rule in enumerate(rules if isinstance(rules, list) else []):
            agents = rule.get("agents") if isinstance(rule, dict) else None
            for j, agent in enumerate(agents if isinstance(agents, list) else []):
                if isinstance(agent, str) and agent != "*":
                    refs.append(Ref(("spec", "rules", i, "agents", j), "Agent", agent))
    return tuple(refs)


def cross_check(declared: Sequence[Declared], valid: Sequence[Located[Any]], *, complete: bool) -> list[Diagnostic]:
    """Every cross-document problem in the set, in document order."""
    names: dict[str, dict[str, Source]] = {}
    diags: list[Diagnostic] = []
    for item in declared:
        seen = names.setdefault(item.kind, {})
        if item.name in seen:
            diags.append(
                item.diagnostic(
                    ("metadata", "name"), f"duplicate {item.kind} {item.name!r} (first defined at {seen[item.name]})"
                )
            )
        else:
            seen[item.name] = item.source
    if complete:
        diags += _references(declared, names)
    diags += _conflicts(valid, sorted(names.get("Gateway", {})))
    diags += _provider_references(valid)
    return diags


def _provider_references(valid: Sequence[Located[Any]]) -> list[Diagnostic]:
    """JWT provider names used by agents, rules and backends must be defined on a Gateway."""
    from .model import MCPPolicy

    providers = {
        p.name for item in valid if isinstance(item.doc, Gateway) for p in item.doc.spec.identity.jwt_providers
    }
    known = f"known: {', '.join(sorted(providers))}" if providers else "no Gateway defines jwtProviders"
    diags: list[Diagnostic] = []

    def check(item: Located[Any], path: Path, name: str) -> None:
        if name not in providers:
            diags.append(item.diagnostic(path, f"unknown JWT provider {name!r} ({known})"))

    for item in valid:
        doc = item.doc
        if isinstance(doc, Agent) and doc.spec.identity.jwt is not None:
            check(item, ("spec", "identity", "jwt", "provider"), doc.spec.identity.jwt.provider)
        elif isinstance(doc, MCPBackend) and doc.spec.auth is not None:
            check(item, ("spec", "auth", "provider"), doc.spec.auth.provider)
        elif isinstance(doc, MCPPolicy):
            for i, rule in enumerate(doc.spec.rules):
                if rule.users is not None:
                    check(item, ("spec", "rules", i, "users", "provider"), rule.users.provider)
    return diags


def resolve_gateway(backend: MCPBackend, gateways: Sequence[str]) -> str | None:
    """The gateway a backend is served on, or None if it cannot be decided."""
    if backend.spec.gateway is not None:
        return backend.spec.gateway
    return gateways[0] if len(gateways) == 1 else None


def _known(kind: str, names: Mapping[str, Source]) -> str:
    return f"known: {', '.join(sorted(names))}" if names else f"no {kind} is defined"


def _references(declared: Sequence[Declared], names: Mapping[str, Mapping[str, Source]]) -> list[Diagnostic]:
    diags: list[Diagnostic] = []
    for item in declared:
        for ref in item.refs:
            targets = names.get(ref.kind, {})
            if ref.name is not None and ref.name not in targets:
                what = {"MCPBackend": "backend"}.get(ref.kind, ref.kind.lower())
                diags.append(item.diagnostic(ref.path, f"unknown {what} {ref.name!r} ({_known(ref.kind, targets)})"))
            elif ref.name is None and len(targets) != 1:
                # Only a Gateway reference may be left out: it defaults to the only one.
                problem = (
                    "no Gateway is defined to serve this backend"
                    if not targets
                    else (f"required when there are several gateways ({_known(ref.kind, targets)})")
                )
                diags.append(item.diagnostic(ref.path, problem))
    return diags


def _conflicts(valid: Sequence[Located[Any]], gateway_names: Sequence[str]) -> list[Diagnostic]:
    """Values two documents may not share; reported on the later document."""
    diags: list[Diagnostic] = []
    listens: dict[tuple[str, int], Located[Any]] = {}
    routes: dict[tuple[str, str], Located[Any]] = {}
    headers: dict[str, Located[Any]] = {}
    locks: dict[str, Located[Any]] = {}
    for item in valid:
        doc = item.doc
        if isinstance(doc, MCPToolLock):
            if (first := locks.setdefault(doc.spec.backend, item)) is not item:
                diags.append(
                    item.diagnostic(
                        ("spec", "backend"), f"backend {doc.spec.backend!r} is already pinned by {_ref(first)}"
                    )
                )
            continue
        if isinstance(doc, Gateway):
            key = (doc.spec.listen.address, doc.spec.listen.port)
            if (first := listens.setdefault(key, item)) is not item:
                diags.append(
                    item.diagnostic(
                        ("spec", "listen"),
                        f"{key[0]}:{key[1]} is already the listen address of {_ref(first)}",
                    )
                )
        elif isinstance(doc, MCPBackend):
            gw = resolve_gateway(doc, gateway_names)
            if gw is None:
                continue  # reported as a reference problem
            if (first := routes.setdefault((gw, doc.route_path), item)) is not item:
                diags.append(
                    item.diagnostic(
                        ("spec", "route"),
                        f"route {doc.route_path!r} on gateway {gw!r} is already used by {_ref(first)}",
                    )
                )
        elif isinstance(doc, Agent) and doc.spec.identity.header is not None:
            # Agents are known to every gateway, so one header value naming two
            # agents would make the caller ambiguous wherever it is trusted.
            value = doc.spec.identity.header
            if (first := headers.setdefault(value, item)) is not item:
                diags.append(
                    item.diagnostic(
                        ("spec", "identity", "header"),
                        f"identity header value {value!r} is already claimed by {_ref(first)}",
                    )
                )
    return diags


def _ref(item: Located[Any]) -> str:
    return f"{item.doc.kind}/{item.name} ({item.source.file}:{item.line_of(('metadata', 'name'))})"
