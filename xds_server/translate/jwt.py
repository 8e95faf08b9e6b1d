"""JWT validation (envoy.filters.http.jwt_authn) for agent and user tokens."""

from __future__ import annotations

from typing import Any

from xds_server.ir.types import GatewayIR


def jwt_authn_filter(gateway: GatewayIR) -> dict[str, Any] | None:
    """The jwt_authn HTTP filter, or None when the gateway has no JWT providers."""
    return None
