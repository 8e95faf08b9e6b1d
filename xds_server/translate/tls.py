"""Downstream TLS (mTLS with SPIFFE IDs) and its SDS secrets."""

from __future__ import annotations

from typing import Any

from xds_server.ir.types import GatewayIR


def downstream_transport_socket(gateway: GatewayIR) -> dict[str, Any] | None:
    """The listener's TLS transport socket, or None for plain HTTP."""
    return None
