"""The virtual part of an MCP route: a virtual MCP server federating several MCP backends.

A virtual server is an MCP route to its clients (RBAC, conditions, list
filtering and pins apply to the names they see, through the MCP
translator), with `McpRouteIR.virtual` set. Its upstream is the policy
service's HTTP port, where authz/vmcp/ answers what needs every member
(server/discover, initialize, the lists) and passes on what Envoy does not
route itself; `native_members` are the members whose prefixed calls Envoy
routes to them directly (translate/virtual_mcp.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from xds_server.ir.patterns import NamePattern
from xds_server.ir.types import UpstreamIR

#: The revision of stateless clients and servers; a member speaking it takes native calls.
STATELESS_REVISION = "2026-07-28"
LEGACY_REVISION = "2025-11-25"


@dataclass(frozen=True)
class VirtualMemberIR:
    """One member: its backend, the prefix of its names, the revisions it speaks, where it is."""

    backend: str
    prefix: str
    revisions: tuple[str, ...]  # sorted
    upstream: UpstreamIR

    @property
    def stateless(self) -> bool:
        return STATELESS_REVISION in self.revisions


@dataclass(frozen=True)
class VirtualServerIR:
    """How a virtual server names, curates and reads its members (policy/virtual_mcp.py)."""

    KIND: ClassVar[str] = "virtual"

    name: str
    separator: str
    mode: str  # always | onConflict | never
    members: tuple[VirtualMemberIR, ...]  # in policy order
    include: tuple[NamePattern, ...]
    exclude: tuple[NamePattern, ...]
    renames: tuple[tuple[str, str], ...]  # (prefixed name, new name), sorted
    descriptions: tuple[tuple[str, str], ...]  # (visible name, text), sorted
    fan_out_timeout_ms: int
    cache_ms: int
    pinned: bool = False  # an MCPToolLock pins it: every call is checked by the policy service

    def member(self, backend: str) -> VirtualMemberIR | None:
        return next((m for m in self.members if m.backend == backend), None)

    @property
    def native_members(self) -> tuple[VirtualMemberIR, ...]:
        """Members whose prefixed calls Envoy routes itself: every name is prefixed, the member is
        stateless, and no pin needs the policy service to see each call first."""
        if self.mode != "always" or self.pinned:
            return ()
        return tuple(m for m in self.members if m.stateless)
