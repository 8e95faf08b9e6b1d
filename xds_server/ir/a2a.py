"""The A2A part of the IR.

An A2A route is the neutral `RouteIR` (path, upstream, grants, conditional
rules, decision needs, ...) with an `A2aRouteIR` part (where the agent
serves its card, and where the gateway serves it), and each grant allows an
`A2aAllowsIR`: the operations it may use (policy/a2a.py names them) and
the skills its card lists.

How A2AAgent and A2APolicy documents become these: ir/build_a2a.py.

What goes to the policy service (`with_decisions`), decided here once for
the translators and the policy service alike: every A2A request (ext_proc:
the body is read strictly, the task and context ids it names are opened,
the ids of the answer are sealed for the caller; the card is filtered per
caller), and the `send`/`stream` calls of the conditional rules (ext_authz).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from xds_server.ir.glob import compile_globs
from xds_server.ir.patterns import NamePattern
from xds_server.ir.types import DecisionNeedsIR, RouteIR


@dataclass(frozen=True, order=True)
class A2aAllowsIR:
    """What an A2A grant allows: operations granted outright (decided by Envoy alone), those of
    conditional rules the policy service decides, and the skills the caller's card lists."""

    KIND: ClassVar[str] = "a2a"
    operations: tuple[str, ...]  # sorted
    skills: tuple[NamePattern, ...]
    conditional_operations: tuple[str, ...] = ()  # sorted

    @property
    def all_operations(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.operations) | set(self.conditional_operations)))


@dataclass(frozen=True)
class A2aRouteIR:
    """The A2A part of a route: where the card is, on the agent (`card_path`) and on the gateway
    (`card_route`)."""

    KIND: ClassVar[str] = "a2a"
    card_path: str
    card_route: str
    pinned_skills: tuple[tuple[str, str], ...] | None = None  # (skill id, sha256 of core.a2a.skill_text), sorted


def with_decisions(route: RouteIR) -> RouteIR:
    """`route` with its decision needs (see the module docstring)."""
    targets = {p for rule in route.conditional_rules for p in rule.targets}
    needs = DecisionNeedsIR(
        every_request=route.credentials is not None,
        calls=tuple(sorted(targets)) if targets else None,
        responses=True,  # the card and the extended card, per caller
        tasks=True,  # every request: ids opened, answers sealed
    )
    return replace(route, decisions=needs)


def operation_patterns(operations: tuple[str, ...]) -> tuple[NamePattern, ...]:
    """The operations as exact patterns (conditional rules' targets)."""
    return compile_globs(list(operations))
