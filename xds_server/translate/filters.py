"""The listener's HTTP filters, their order, and what each Envoy route says about each of them.

The order is the security design, so it is defined once, here, as slots:

    | slot      | filters (contributed by)                 | why there                                       |
    |-----------|------------------------------------------|-------------------------------------------------|
    | REQUEST_ID| agentxds.jsonrpc.id (request_id)         | the body's JSON-RPC id, exactly, for the replies|
    |           |                                          | of every refusal, whatever comes after refuses  |
    | DEFRAME   | envoy.filters.http.mcp (mcp)             | the body into metadata; what is not one message |
    |           |                                          | of the protocol is refused before anything else |
    | IDENTITY  | agentxds.identity.unambiguous (identity) | a repeated or comma-joined credential header is |
    |           |                                          | refused before anything reads it                |
    | AUTHN     | envoy.filters.http.jwt_authn (jwt)       | tokens verified, claims into metadata; after    |
    |           |                                          | deframing so its errors carry the request id    |
    | AUTHZ     | agentxds.identity.identify (identity)    | names the agent (shadow rules), for the backend |
    |           |                                          | and for native conditions                       |
    |           | agentxds.conditions.covered (rbac)       | names the native rule covering a call (shadow), |
    |           |                                          | for the reply if its condition fails            |
    |           | envoy.filters.http.rbac (rbac)           | the native allow-list, per route; the listener  |
    |           |                                          | level allows nothing                            |
    | RESPONSES | envoy.filters.http.ext_proc (policy      | rewrites list responses, seals task ids in      |
    |           | service)                                 | answers and restores them in task requests;     |
    |           |                                          | before ext_authz so it sees the caller's        |
    |           |                                          | identity headers, which ext_authz strips on     |
    |           |                                          | delegated routes                                |
    | DECISIONS | ext_authz fail-closed, fail-open (policy | decisions after RBAC, so Python only sees what  |
    |           | service)                                 | RBAC let through                                |
    | SESSION   | envoy.filters.http.stateful_session (mcp)| legacy sessions stick to their upstream host    |
    | RESTORE   | agentxds.vmcp.restore_name (virtual MCP) | a virtual server's call routed to its member    |
    |           |                                          | gets the member's name, after every check saw   |
    |           |                                          | the name the client sent                        |
    | TERMINAL  | envoy.filters.http.router                | terminal                                        |

Each filter says, once, what happens on an Envoy route that does not mention
it (`route_default`), and how it is switched off there (`off`). The
per-route configuration of every route is computed from that (`route_config`),
so a new kind of route cannot forget to switch a filter off:

1. what the route declares for the filter (by name; or `OFF` for its whole
   slot, the only thing that can be said of a slot);
2. else, a filter that belongs to another protocol than the route's is off
   (a protocol's filters run on its own routes only);
3. else the filter's own default: `OFF` (the policy-service filters: they
   refuse what they were not configured for) or `LISTENER` (the listener-level
   configuration applies; for RBAC that is "allow nothing").

A route that enables a filter the listener does not have is a translator bug
and raises `FilterError`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from xds_server.core.wire import typed
from xds_server.translate.proto import Prebuilt


class Slot(enum.IntEnum):
    """Where a filter sits in the chain (lower runs first on requests)."""

    REQUEST_ID = 0
    DEFRAME = 1
    IDENTITY = 2
    AUTHN = 3
    AUTHZ = 4
    RESPONSES = 5
    DECISIONS = 6
    SESSION = 7
    RESTORE = 8
    TERMINAL = 9


class RouteDefault(enum.Enum):
    """What a filter does on an Envoy route that does not mention it."""

    LISTENER = "listener"  # the listener's configuration applies (it must be safe on its own)
    OFF = "off"  # switched off: it runs only where a route turns it on


class FilterError(ValueError):
    """The translators asked for a filter configuration that cannot be built (a bug, not a policy error)."""


@dataclass(frozen=True)
class HttpFilter:
    """One HTTP filter of the listener.

    `owner` is the protocol kind that contributed it (None: a neutral one);
    `off` the per-route configuration that switches it off (None: it cannot
    be switched off per route). A `discovered` filter's configuration is not
    in the listener: the listener names it and ADS serves it as an extension
    configuration (ECDS) of the filter's name (`extension_config`), which
    Envoy applies to the next request on every connection, where a listener
    change reaches only connections opened after it.
    """

    name: str
    slot: Slot
    config: dict[str, Any]
    route_default: RouteDefault = RouteDefault.LISTENER
    off: dict[str, Any] | None = None
    owner: str | None = None
    discovered: bool = False

    def as_config(self) -> dict[str, Any]:
        if not self.discovered:
            return {"name": self.name, "typed_config": self.config}
        # No default configuration: the listener waits for this one (warming; Envoy gives up after its
        # 15 s initial fetch timeout), and a request finding none is refused by Envoy with a 500 (flag
        # NFCF, answered "Gateway not ready", translate/local_reply.py), never let through.
        source = {"ads": {}, "resource_api_version": "V3"}
        return {"name": self.name, "config_discovery": {"config_source": source, "type_urls": [self.config["@type"]]}}

    def extension_config(self) -> dict[str, Any]:
        """The ECDS resource of a `discovered` filter (its name is the filter's: Envoy asks for it so)."""
        return {"name": self.name, "typed_config": self.config}


#: A route's declaration for one filter: its per-route config, or `LISTENER_CONFIG` (run with the
#: listener's config), or `OFF` (switched off).
class Use(enum.Enum):
    LISTENER_CONFIG = "listener"
    OFF = "off"


FilterUses = Mapping[str | Slot, dict[str, Any] | Prebuilt | Use]


def ordered(filters: Iterable[HttpFilter]) -> list[HttpFilter]:
    """`filters` in slot order (contribution order within a slot); names must be unique."""
    chain = sorted(filters, key=lambda f: f.slot)
    names = [f.name for f in chain]
    if len(names) != len(set(names)):
        raise FilterError(f"two HTTP filters share a name: {names}")
    return chain


@dataclass(frozen=True)
class RouteFilters:
    """How one Envoy route treats the listener's filters (see the module docstring)."""

    kind: str | None  # the route's protocol kind; None for the gateway's own routes (404, metadata documents)
    uses: FilterUses = field(default_factory=dict)

    def config(self, listener: list[HttpFilter]) -> dict[str, Any]:
        """The route's `typed_per_filter_config`."""
        present = {f.name for f in listener}
        named = [k for k in self.uses if isinstance(k, str)]
        missing = sorted(set(named) - present)
        if missing:
            raise FilterError(f"route declares filters the listener does not have: {', '.join(missing)}")
        for slot, declared in self.uses.items():
            # A slot holds filters of different owners: it can only be switched off as a whole.
            if isinstance(slot, Slot) and declared is not Use.OFF:
                raise FilterError(f"a whole slot ({slot.name}) can only be switched off, not configured")
        out: dict[str, Any] = {}
        for f in listener:
            use = self.uses[f.name] if f.name in self.uses else self.uses.get(f.slot)
            if use is None:
                if f.owner is not None and self.kind is not None and f.owner != self.kind:
                    use = Use.OFF  # another protocol's filter
                elif f.route_default is RouteDefault.OFF:
                    use = Use.OFF
                else:
                    use = Use.LISTENER_CONFIG
            if use is Use.OFF:
                if f.off is None:
                    raise FilterError(f"filter {f.name} cannot be switched off on a route (kind {self.kind})")
                out[f.name] = f.off
            elif use is not Use.LISTENER_CONFIG:
                out[f.name] = use
        return out


def disabled(per_route_type: str) -> dict[str, Any]:
    """The usual per-route "off": the filter's per-route message with `disabled: true`."""
    return typed(per_route_type, {"disabled": True})
