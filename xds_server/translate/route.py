"""A gateway's routes → one RouteConfiguration (RDS) per route, chosen by its exact path (SRDS).

The listener picks a route configuration by the request's path (scoped
routes keyed on `:path` up to its query): each route's own configuration
serves its path (and its metadata documents'), so an edit of one route's
rules changes one route configuration, which is all Envoy is sent and
rebuilds. Within it, the route's Envoy routes, matched on its exact path and
all carrying its RBAC allow-list, most specific first:

- a route with delegated credentials: the requests whose responses are
  rewritten (ext_authz and ext_proc on), then every other request (ext_authz on);
- otherwise: the calls that need a policy decision (ext_authz on), the
  requests whose responses are rewritten (ext_proc on), then the native
  route for everything else (RBAC only).

The protocol translator says how to match calls and rewritten responses
(`call_match`, `response_match`); the policy service's filters are enabled
by `policy_service`. Every Envoy route of one route is named after it, so
replies name it whichever matched. What each Envoy route does with each
listener filter is computed by `filters.RouteFilters`, never written per
route kind.

A route with `auth` also gets routes serving its OAuth protected-resource
metadata (plain GETs that need no token: protocol filters, jwt_authn, RBAC
and the policy filters off there; see `oauth`). A path no scope names has no
route at all: the listener-level RBAC refuses it, and the local replies
report it as a wrong path ("no backend"), not as a denial (local_reply.py).
"""

from __future__ import annotations

from typing import Any

from envoy.config.route.v3.route_components_pb2 import Route, VirtualHost
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.config.route.v3.scoped_route_pb2 import ScopedRouteConfiguration

from xds_server.core.wire import DISCOVERY_PATH, PURPOSE_EXCHANGE, PURPOSE_SEAL, typed
from xds_server.ir.types import GatewayIR, RouteIR
from xds_server.translate import discovery, identity, jwt, oauth, policy_service, rbac, virtual_mcp
from xds_server.translate.filters import FilterUses, HttpFilter, RouteFilters, Slot, Use
from xds_server.translate.listener import listener_filters
from xds_server.translate.names import (
    cluster_name,
    route_config_name,
    route_name,
    scope_name,
    shared_route_config_name,
)
from xds_server.translate.proto import to_message
from xds_server.translate.protocols import translator_for
from xds_server.translate.protocols.mcp import LISTEN_METHOD, route_method_matcher


def _both(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """A route match true when matches `a` and `b` (of one path) both are."""
    if a["path"] != b["path"]:
        raise ValueError(f"matches of two paths cannot be combined: {a['path']} and {b['path']}")
    both: dict[str, Any] = {"path": a["path"]}
    for key in ("headers", "dynamic_metadata"):
        if values := [*a.get(key, ()), *(v for v in b.get(key, ()) if v not in a.get(key, ()))]:
            both[key] = values
    return both


def connect_retry(session_header: str | None) -> dict[str, Any]:
    """The route's retry policy. A request whose connection was refused never reached the backend:
    try again on another endpoint, so an endpoint that died is noticed without a failed call. Not a request of a protocol session (`session_header`): a retry
    leaves its replica (verified on 1.40: the strict session filter does not hold retries, and the
    other replica answered "Session not found"); it fails, and the client is told to start anew."""
    policy: dict[str, Any] = {
        "retry_on": "connect-failure",
        "num_retries": 2,
        # Another endpoint than the one that refused: least request would pick the idle dead one again.
        "retry_host_predicate": [{
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": typed("envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate", {}),
        }],
        "host_selection_retry_max_attempts": 3,
    }  # fmt: skip
    if session_header is not None:
        policy["retriable_request_headers"] = [{"name": session_header, "present_match": True, "invert_match": True}]
    return policy


def _variants(route: RouteIR, gateway: GatewayIR) -> list[tuple[dict[str, Any], FilterUses]]:
    """(match, policy-service filter uses) of the route's Envoy routes, most specific first."""
    protocol = translator_for(route)
    whole = {"path": route.path}
    calls, responses = protocol.call_match(route), protocol.response_match(route)
    sealing = protocol.sealing_matches(route)
    authz = policy_service.ext_authz_use(route, gateway)
    proc = policy_service.ext_proc_use(route)

    def sealed(purpose: str) -> FilterUses:
        return policy_service.ext_proc_use(route, purpose)

    variants: list[tuple[dict[str, Any], FilterUses]] = []
    if route.decisions.every_request:
        # Every request needs the policy service (for its credential); rewritten
        # responses and sealed ids also go through ext_proc, so their routes turn both on.
        variants += [(match, {**authz, **sealed(purpose)}) for match, purpose in sealing]
        if responses is not None:
            variants.append((responses, {**authz, **proc}))
        return [*variants, (whole, authz)]
    if calls is not None:
        # A call that needs a decision and may create a task: both, before either alone.
        variants += [(_both(match, calls), {**authz, **sealed(purpose)}) for match, purpose in sealing
                     if purpose in (PURPOSE_SEAL, PURPOSE_EXCHANGE)]  # fmt: skip
        variants.append((calls, authz))
    variants += [(match, sealed(purpose)) for match, purpose in sealing]
    if responses is not None:
        variants.append((responses, proc))
    return [*variants, (whole, {})]


def _action(route: RouteIR, session_header: str | None) -> dict[str, Any]:
    return {
        "cluster": cluster_name(route),
        "timeout": f"{route.request_timeout_ms / 1000:.3f}s",
        # Set explicitly: Envoy's own default (5 min) would otherwise apply unseen.
        "idle_timeout": f"{route.idle_timeout_ms / 1000:.3f}s",
        "retry_policy": connect_retry(session_header),
    }


#: A document rewritten per caller (A2A's card): no validator or cache may serve one caller's copy to another.
_PER_CALLER = {
    "response_headers_to_remove": ["etag", "last-modified"],
    "response_headers_to_add": [{"header": {"key": "cache-control", "value": "private, no-store"},
                                 "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
}  # fmt: skip


def _route_entries(route: RouteIR, gateway: GatewayIR, filters: list[HttpFilter]) -> list[dict[str, Any]]:
    protocol = translator_for(route)
    action = _action(route, protocol.session_header)
    if route.upstream.path != route.path:
        action["prefix_rewrite"] = route.upstream.path
    covered = rbac.route_covered(route, gateway, protocol)
    common: FilterUses = {
        # A virtual server's sessions are sealed ids any replica opens: no replica to stick to.
        **({Slot.SESSION: Use.OFF} if virtual_mcp.virtual_part(route) is not None else {}),
        rbac.RBAC_FILTER: rbac.route_rbac(route, gateway, protocol),
        **({rbac.COVERED_FILTER: covered} if covered is not None else {}),
        **jwt.route_requirement(gateway, route),
    }
    documents = [
        # A GET the protocol serves besides its endpoint (A2A's card): no body to deframe.
        ({"path": d.path, "headers": [{"name": ":method", "string_match": {"exact": "GET"}}]},
         {**action, "prefix_rewrite": d.upstream_path},
         {Slot.DEFRAME: Use.OFF, **policy_service.ext_proc_use(route, d.purpose)}, _PER_CALLER)
        for d in protocol.document_routes(route)
    ]  # fmt: skip
    # The backend learns who called as verified, never the caller's key or trusted header.
    upstream = identity.backend_headers(gateway, route)
    upstream["request_headers_to_remove"] = sorted({*upstream["request_headers_to_remove"],
                                                    *protocol.upstream_headers_removed})  # fmt: skip
    front = _to_front(route, gateway, upstream)
    return [
        {
            "name": route_name(route),
            "match": match,
            "route": route_action,
            # To the route's own upstream (for a virtual server, its front) or to a native member's.
            **(front if route_action["cluster"] == action["cluster"] else upstream),
            **answer,
            "typed_per_filter_config": RouteFilters(route.kind, {**common, **uses}).config(filters),
        }
        for match, route_action, uses, answer in [
            *documents,
            *_native_member_entries(route, gateway, action),
            *((m, action, u, {}) for m, u in _variants(route, gateway)),
        ]
    ]


def _to_front(route: RouteIR, gateway: GatewayIR, upstream: dict[str, Any]) -> dict[str, Any]:
    """`upstream`'s header edits on a route to `route`'s upstream: for a virtual server, whose upstream is
    its front (the policy service's HTTP port), with the gateway's policy-service secret too; a
    backend's (and a virtual server's native members') never carry it."""
    secret = policy_service.secret_route_headers(gateway) if virtual_mcp.virtual_part(route) is not None else {}
    if not secret:
        return upstream
    return {**upstream, "request_headers_to_add": [*upstream.get("request_headers_to_add", []),
                                                   *secret["request_headers_to_add"]]}  # fmt: skip


def _native_member_entries(route: RouteIR, gateway: GatewayIR, action: dict[str, Any]) -> list[
        tuple[dict[str, Any], dict[str, Any], FilterUses, dict[str, Any]]]:  # fmt: skip
    """A virtual server's calls Envoy routes to their member itself (translate/virtual_mcp.py), each with
    the checks its route's other entries have: a call some rule needs a decision on asks for one first;
    and its GET (a legacy client's stream, relayed by the policy service), without the calls' timeout."""
    virtual = virtual_mcp.virtual_part(route)
    if virtual is None:
        return []
    stream = {"path": route.path, "headers": [{"name": ":method", "string_match": {"exact": "GET"}}]}
    listen = {"path": route.path, "dynamic_metadata": [route_method_matcher(LISTEN_METHOD)]}
    unbounded = {**action, "timeout": "0s", "idle_timeout": virtual_mcp.STREAM_IDLE_TIMEOUT}
    streams: list[tuple[dict[str, Any], dict[str, Any], FilterUses, dict[str, Any]]] = [
        (stream, unbounded, {}, {}),
        (listen, unbounded, {}, {}),
    ]
    protocol = translator_for(route)
    calls = protocol.call_match(route)
    authz = policy_service.ext_authz_use(route, gateway)
    restore: FilterUses = {virtual_mcp.RESTORE_NAME_FILTER: Use.LISTENER_CONFIG}
    out: list[tuple[dict[str, Any], dict[str, Any], FilterUses, dict[str, Any]]] = []
    for member in virtual.native_members:
        to_member = {**virtual_mcp.member_action(route, member), "retry_policy": connect_retry(None)}
        metadata = {"metadata": virtual_mcp.member_metadata(virtual, member)}
        for method in virtual_mcp.NATIVE_METHODS:
            match = virtual_mcp.member_match(route, virtual, member, method)
            if calls is not None and method == "tools/call":
                out.append((_both(match, calls), to_member, {**authz, **restore}, metadata))
            out.append((match, to_member, restore, metadata))
    return [*streams, *out]


def _metadata_routes(gateway: GatewayIR, route: RouteIR, filters: list[HttpFilter]) -> list[dict[str, Any]]:
    """The protected-resource metadata documents of a route with `auth` (bodies: local replies)."""
    if route.auth is None:
        return []
    # Not protocol traffic: a plain GET a protocol filter would refuse; no token, no RBAC.
    uses: FilterUses = {Slot.DEFRAME: Use.OFF, Slot.IDENTITY: Use.OFF, rbac.RBAC_FILTER: Use.OFF,
                        **jwt.route_disabled(gateway)}  # fmt: skip
    config = RouteFilters(None, uses).config(filters)
    return [
        {
            "name": oauth.metadata_route_name(route),
            "match": {"path": path},
            "direct_response": {"status": 200},
            "typed_per_filter_config": config,
        }
        for path in oauth.document_paths(gateway, route)
    ]


def build_route_configs(gateway: GatewayIR) -> tuple[list[RouteConfiguration], list[ScopedRouteConfiguration]]:
    """One route configuration per route (its Envoy routes and metadata documents), and the scopes
    that send each of its exact paths to it; a path no scope names has no route (see the module
    docstring: `no_backend`). Routes that share a path by host name (`RouteIR.hosts`) share one
    route configuration, a virtual host each (the one without hosts, if any, serves other names)."""
    filters = listener_filters(gateway)
    by_path: dict[str, list[RouteIR]] = {}
    for route in gateway.routes:
        by_path.setdefault(route.path, []).append(route)
    configs, scopes = [], []
    for path, members in by_path.items():
        shared = len(members) > 1 or bool(members[0].hosts)
        name = shared_route_config_name(path) if shared else route_config_name(members[0])
        hosts, paths = [], {path}
        # Named hosts first: Envoy picks an exact domain over "*" anyway; the order keeps the output stable.
        for route in sorted(members, key=lambda r: (not r.hosts, r.name)):
            entries = [*_metadata_routes(gateway, route, filters), *_route_entries(route, gateway, filters)]
            # Each entry is its own message (under a translation memo, an unchanged entry is not built
            # again); the configuration is put together from them by protobuf's constructor.
            domains = [d for h in route.hosts for d in (h, f"{h}:*")] or ["*"]
            hosts.append(VirtualHost(name=route.name if shared else gateway.name, domains=domains,
                                     routes=[to_message(Route, e) for e in entries]))  # fmt: skip
            paths |= {e["match"]["path"] for e in entries}
        configs.append(RouteConfiguration(name=name, virtual_hosts=hosts))
        scopes += [scope(p, name) for p in sorted(paths)]
    found = discovery.route_config(gateway, filters)
    if found is not None:
        configs.append(found)
        scopes.append(scope(DISCOVERY_PATH, found.name))
    if not scopes:
        # A gateway with no route yet (all its agents registered at run time, say): one scope all the
        # same, as the scoped routes always hold one (ADS never sends an empty set of them). Its route
        # configuration routes nothing: every path is answered no_backend.
        name = f"agentxds/no-routes/{gateway.name}"
        configs.append(RouteConfiguration(name=name, virtual_hosts=[VirtualHost(name=gateway.name, domains=["*"])]))
        scopes.append(scope(NO_ROUTES_PATH, name))
    return configs, scopes


#: The path of the one scope of a gateway with no routes (nothing is served there either).
NO_ROUTES_PATH = "/.well-known/agentxds/no-routes"


def scope(path: str, route_config: str) -> ScopedRouteConfiguration:
    """The scope sending requests for exactly `path` to `route_config`."""
    key = ScopedRouteConfiguration.Key(fragments=[ScopedRouteConfiguration.Key.Fragment(string_key=path)])
    return ScopedRouteConfiguration(name=scope_name(path), route_configuration_name=route_config, key=key)
