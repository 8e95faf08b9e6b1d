"""Deterministic Envoy resource names.

Every cross-reference between resources (listener → scoped routes, scope →
route config, route → cluster, cluster → endpoints) goes through these functions, so a rename is one
edit and `verify` can recompute what each reference must be. Resources that
belong to a route carry its protocol's kind (`mcp/github`), so routes of two
kinds can never share a cluster.
"""

from __future__ import annotations

from xds_server.core.wire import MCP_METADATA_NAMESPACE
from xds_server.ir.types import RouteIR

__all__ = [
    "MCP_METADATA_NAMESPACE", "cluster_name", "listener_name", "rbac_policy_name", "route_config_name", "scope_name",
    "shared_route_config_name",
    "scoped_routes_name",
]  # fmt: skip


def listener_name(gateway: str) -> str:
    return f"gateway/{gateway}"


def scoped_routes_name(gateway: str) -> str:
    """The listener's set of scopes (SRDS): which route configuration serves which path."""
    return f"gateway/{gateway}/scopes"


def route_config_name(route: RouteIR) -> str:
    """A route's own route configuration (RDS): its Envoy routes alone, so an edit of one route
    sends Envoy that configuration alone."""
    return f"routes/{route.kind}/{route.name}"


def shared_route_config_name(path: str) -> str:
    """The route configuration of a path several routes share, one per host name (RouteIR.hosts)."""
    return f"routes/hosts:{path}"


def scope_name(path: str) -> str:
    """The scope (SRDS) of one exact path (paths are unique across a gateway's routes)."""
    return f"path:{path}"


def cluster_name(route: RouteIR) -> str:
    """The route's upstream cluster (and its EDS resource): `<kind>/<name>`."""
    return f"{route.kind}/{route.name}"


def route_name(route: RouteIR) -> str:
    """The Envoy route entries' name is the route's: local replies show it as %ROUTE_NAME% (the
    backend a refusal names), and names are unique across routed kinds."""
    return route.name


def rbac_policy_name(agent: str) -> str:
    return f"agent/{agent}"


# RBAC policy names and metadata keys (translate/rbac.py), read by ext_authz and the local replies.

#: The grants engine's metadata key prefix (`rules_stat_prefix`), apart from the other RBAC filters' keys.
GRANTS_PREFIX = "agentxds_grants_"
#: The policy by which the grants engine allowed a request (the first, by name, that does).
EFFECTIVE_POLICY_KEY = f"{GRANTS_PREFIX}enforced_effective_policy_id"
#: Policies whose calls go on to the policy service start with this; ext_authz runs only for them.
DECIDED_PREFIX = "python/"
#: Native rules' policies: `cond/<rule id>`. Names sort so that Envoy prefers a grant (`agent/`),
#: then a native rule (`cond/`), and reaches the policy service (`python/`) only when nothing
#: native allows the call.
NATIVE_PREFIX = "cond/"
#: The shadow rules naming the native rule whose condition a refused call failed (for its reply).
CONDITIONS_PREFIX = "agentxds_conditions_"
CONDITION_RULE_KEY = f"{CONDITIONS_PREFIX}shadow_effective_policy_id"
