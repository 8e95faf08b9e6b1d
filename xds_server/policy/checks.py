"""Checks that need more than one document (go-control-plane's `Consistent()`), driven by the
kinds registry (`kinds.py`): duplicate names, references, and values that must be unique.

Two inputs, on purpose:

* `declared` — every document whose kind and name could be read, valid or
  not, with the references and provided names read from its raw YAML. Names
  resolve against these, so a typo in an Agent's spec does not also produce
  "unknown agent" in every policy that names it.
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
from .kinds import KINDS, NAMESPACES, values_at
from .located import Located, Source


@dataclass(frozen=True)
class Ref:
    """A name one document uses to point at another. `name` None = "the default"."""

    path: Path
    namespace: str
    name: str | None
    missing: str = ""  # the message when a default is needed and there is none


@dataclass(frozen=True)
class Declared:
    """A readable document, valid or not: its kind, name, references and provided names.

    `source` is where its metadata.name is written. `refs` and `provides`
    come from the raw YAML, so a document with an unrelated mistake still
    takes part. `locate` maps a path in the document to its line.
    """

    kind: str
    name: str
    source: Source
    refs: tuple[Ref, ...] = ()
    provides: tuple[tuple[str, str], ...] = ()  # (namespace, name)
    locate: Callable[[Path], int] = field(default=lambda path: 0, compare=False, repr=False)

    def diagnostic(self, path: Path, message: str) -> Diagnostic:
        return Diagnostic(self.source.file, self.locate(path), join_field(f"{self.kind}/{self.name}", path), message)


def references(kind: str, raw: Mapping[str, Any]) -> tuple[Ref, ...]:
    """The references written in a raw document, as its kind declares them; ill-typed values are
    skipped (model validation reports those)."""
    refs: list[Ref] = []
    for spec in KINDS[kind].references:
        if spec.optional:
            parent = values_at(raw, spec.pattern[:-1])
            for path, mapping in parent:
                if not isinstance(mapping, dict):
                    continue
                value = mapping.get(spec.pattern[-1])
                if value is None or isinstance(value, str):
                    refs.append(Ref((*path, spec.pattern[-1]), spec.namespace, value, spec.missing))
            continue
        for path, value in values_at(raw, spec.pattern):
            if isinstance(value, str) and value not in spec.skip:
                refs.append(Ref(path, spec.namespace, value))
    return tuple(refs)


def provided(kind: str, raw: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The names a raw document provides to other namespaces (a Gateway's JWT providers)."""
    return tuple(
        (namespace, value)
        for namespace, pattern in KINDS[kind].provides
        for _, value in values_at(raw, pattern)
        if isinstance(value, str)
    )


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
    diags += _routed_names(declared)
    for item in declared:
        for namespace, name in item.provides:
            names.setdefault(namespace, {}).setdefault(name, item.source)
    if complete:
        diags += _references(declared, names)
    diags += _conflicts(valid, sorted(names.get("Gateway", {})))
    diags += _anonymous_agents(valid)
    return diags


def _anonymous_agents(valid: Sequence[Located[Any]]) -> list[Diagnostic]:
    """An agent has identity sources unless it is a Gateway's anonymous agent, and then it has none:
    a caller proving it and a caller proving nothing must not be one agent by accident."""
    anonymous: dict[str, Located[Any]] = {}
    for item in valid:
        if item.doc.kind == "Gateway" and item.doc.spec.identity.anonymous is not None:
            anonymous.setdefault(item.doc.spec.identity.anonymous.agent, item)
    diags: list[Diagnostic] = []
    for item in valid:
        if item.doc.kind != "Agent":
            continue
        gateway = anonymous.get(item.name)
        if item.doc.spec.identity is None and gateway is None:
            diags.append(item.diagnostic(("spec",), "identity is required (header, spiffe, jwt or apiKey); only "
                                         "the agent a Gateway's identity.anonymous names has none"))  # fmt: skip
        elif item.doc.spec.identity is not None and gateway is not None:
            diags.append(gateway.diagnostic(("spec", "identity", "anonymous", "agent"),
                                            f"agent {item.name!r} has identity sources ({_ref(item)}); the anonymous "
                                            "agent must have none: define a separate agent for callers with no "
                                            "credential"))  # fmt: skip
    return diags


def _routed_names(declared: Sequence[Declared]) -> list[Diagnostic]:
    """Routed documents of every kind share one name space: a route's name names it in replies, logs and
    the policy service, so an MCPBackend and another routed kind may not both be `github`. (Two
    documents of one kind are already reported as duplicates.)"""
    first: dict[str, Declared] = {}
    diags = []
    for item in declared:
        if not KINDS[item.kind].routed:
            continue
        seen = first.setdefault(item.name, item)
        if seen.kind != item.kind:
            diags.append(
                item.diagnostic(
                    ("metadata", "name"),
                    f"name {item.name!r} is already used by {seen.kind}/{seen.name} ({seen.source}); routed "
                    "documents of every kind share one name space",
                )
            )
    return diags


def _known(namespace: str, names: Mapping[str, Source]) -> str:
    return f"known: {', '.join(sorted(names))}" if names else NAMESPACES[namespace].none


def _references(declared: Sequence[Declared], names: Mapping[str, Mapping[str, Source]]) -> list[Diagnostic]:
    diags: list[Diagnostic] = []
    for item in declared:
        for ref in item.refs:
            targets = names.get(ref.namespace, {})
            if ref.name is not None and ref.name not in targets:
                noun = NAMESPACES[ref.namespace].noun
                diags.append(
                    item.diagnostic(ref.path, f"unknown {noun} {ref.name!r} ({_known(ref.namespace, targets)})")
                )
            elif ref.name is None and len(targets) != 1:
                # An optional reference defaults to the only name there is.
                problem = (
                    ref.missing
                    if not targets
                    else f"required when there are several {NAMESPACES[ref.namespace].noun}s "
                    f"({_known(ref.namespace, targets)})"
                )
                diags.append(item.diagnostic(ref.path, problem))
    return diags


def _conflicts(valid: Sequence[Located[Any]], gateway_names: Sequence[str]) -> list[Diagnostic]:
    """Values two documents may not share (each kind's unique keys); reported on the later document."""
    diags: list[Diagnostic] = []
    seen: dict[tuple[str, tuple[Any, ...]], Located[Any]] = {}
    for item in valid:
        for unique in KINDS[item.doc.kind].unique:
            keys = unique.key(item.doc, gateway_names)
            if keys is None:
                continue  # e.g. a backend whose gateway is undecidable (reported as a reference problem)
            for key in keys if isinstance(keys, list) else [keys]:
                first = seen.setdefault((unique.namespace, key), item)
                if first is not item:
                    diags.append(item.diagnostic(unique.path, unique.message(key, _ref(first))))
                    break
    return diags


def _ref(item: Located[Any]) -> str:
    return f"{item.doc.kind}/{item.name} ({item.source.file}:{item.line_of(('metadata', 'name'))})"
