"""Deterministic Envoy resource names.

Every cross-reference between resources (listener → route config, route →
cluster, cluster → endpoints) goes through these functions, so a rename is one
edit and `verify` can recompute what each reference must be.
"""

from __future__ import annotations

MCP_METADATA_NAMESPACE = "envoy.filters.http.mcp"


def listener_name(gateway: str) -> str:
    return f"gateway/{gateway}"


def route_config_name(gateway: str) -> str:
    return f"gateway/{gateway}/routes"


def cluster_name(backend: str) -> str:
    return f"mcp/{backend}"


def route_name(backend: str) -> str:
    """The route's name is the backend's: local replies show it as %ROUTE_NAME%."""
    return backend


def rbac_policy_name(agent: str) -> str:
    return f"agent/{agent}"
