"""The protocol translators, one per protocol, found by the IR part of a route.

    mcp.py    McpTranslator   routes whose part is ir.mcp.McpRouteIR
    a2a.py    A2aTranslator   routes whose part is ir.a2a.A2aRouteIR

A new protocol is one module here with its `ProtocolTranslator` subclass and
one entry in `TRANSLATORS`. A route whose part has no translator cannot be
translated at all (`UnknownProtocol`): nothing falls back to another
protocol's filters.
"""

from __future__ import annotations

from collections.abc import Iterable

from xds_server.ir.types import GatewayIR, RouteIR
from xds_server.translate.protocols.a2a import A2aTranslator
from xds_server.translate.protocols.base import ProtocolTranslator
from xds_server.translate.protocols.mcp import McpTranslator

TRANSLATORS: tuple[ProtocolTranslator, ...] = (McpTranslator(), A2aTranslator())

#: The protocol a gateway without routes speaks (so that its refusals are still JSON-RPC errors).
DEFAULT_KIND = McpTranslator.kind


class UnknownProtocol(TypeError):
    """A route's protocol part has no translator (a bug: the IR and the translators disagree)."""


def translator_of(kind: str, translators: Iterable[ProtocolTranslator] | None = None) -> ProtocolTranslator:
    for translator in TRANSLATORS if translators is None else translators:
        if translator.kind == kind:
            return translator
    raise UnknownProtocol(f"no translator for routes of protocol {kind!r}")


def translator_for(route: RouteIR, translators: Iterable[ProtocolTranslator] | None = None) -> ProtocolTranslator:
    """The translator of `route`'s protocol part (matched by its class, not only its name)."""
    for translator in TRANSLATORS if translators is None else translators:
        if isinstance(route.protocol, translator.part):
            return translator
    raise UnknownProtocol(
        f"route {route.name!r}: no translator for protocol part {type(route.protocol).__name__} "
        "(a protocol needs its ProtocolTranslator in translate/protocols)"
    )


def protocols_of(
    gateway: GatewayIR, translators: Iterable[ProtocolTranslator] = TRANSLATORS
) -> list[ProtocolTranslator]:
    """The translators of the protocols `gateway` serves, in registry order (the default one if it has no routes)."""
    translators = tuple(translators)
    used = [translator_for(r, translators) for r in gateway.routes] or [translator_of(DEFAULT_KIND, translators)]
    return [t for t in translators if t in used]
