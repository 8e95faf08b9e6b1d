"""Envoy's overload manager: the process-wide limits an Envoy starts with.

Two resources are watched, both per Envoy process (so they live in the
bootstrap, not in a Gateway, and change only when Envoy restarts):

- **heap** (`envoy.resource_monitors.fixed_heap`): as the heap nears
  `max_heap_bytes` Envoy frees memory back to the system (0.90), stops keeping
  connections alive (0.95), answers new requests with 503 (0.98; the gateway's
  local replies turn that into JSON-RPC -32051 `overloaded`) and finally
  refuses new connections (0.99). Memory stays bounded instead of growing
  until the kernel kills Envoy.
- **downstream connections** (`envoy.resource_monitors.global_downstream_max_connections`):
  past `max_connections` open client connections, Envoy closes new ones as it
  accepts them. Nothing has been read from such a connection, so there is no
  request to answer; the client sees the connection close. The admin listener
  is not counted.

Defaults come from the machine Envoy runs on (`limits_for_this_machine`): a
quarter of the memory it may use (the cgroup limit in a container, else the
physical memory), and most of the file descriptors the process may open.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIB = 1 << 20
# Envoy at rest takes ~30 MiB; below this a few busy connections would already trip it.
MIN_HEAP_BYTES = 64 * MIB
MAX_DEFAULT_HEAP_BYTES = 4096 * MIB
MIN_CONNECTIONS = 16
MAX_DEFAULT_CONNECTIONS = 50_000
# File descriptors kept back for upstream connections, the xDS stream, logs and the admin API.
RESERVED_FDS = 256

# (threshold of max heap, overload action), from the gentlest to the last resort.
HEAP_ACTIONS: tuple[tuple[float, str], ...] = (
    (0.90, "envoy.overload_actions.shrink_heap"),
    (0.95, "envoy.overload_actions.disable_http_keepalive"),
    (0.98, "envoy.overload_actions.stop_accepting_requests"),
    (0.99, "envoy.overload_actions.reject_incoming_connections"),
)
HEAP_MONITOR = "envoy.resource_monitors.fixed_heap"
CONNECTIONS_MONITOR = "envoy.resource_monitors.global_downstream_max_connections"


@dataclass(frozen=True)
class OverloadLimits:
    """What one Envoy process may use: heap bytes and open client connections."""

    max_heap_bytes: int
    max_connections: int

    def __post_init__(self) -> None:
        if self.max_heap_bytes < MIN_HEAP_BYTES:
            raise ValueError(f"max heap {self.max_heap_bytes} bytes is below the minimum of {MIN_HEAP_BYTES}")
        if self.max_connections < MIN_CONNECTIONS:
            raise ValueError(f"max connections {self.max_connections} is below the minimum of {MIN_CONNECTIONS}")


def _memory_limit_bytes() -> int:
    """The memory this process may use: its cgroup v2 limit if one is set, else the physical memory."""
    cgroup = Path("/sys/fs/cgroup/memory.max")
    try:
        text = cgroup.read_text().strip()
        if text != "max":
            return int(text)
    except (OSError, ValueError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def limits_for_this_machine() -> OverloadLimits:
    """Defaults for an Envoy started here: a quarter of the usable memory (64 MiB to 4 GiB) and
    the open-file limit less a reserve (16 to 50,000 connections)."""
    heap = min(max(_memory_limit_bytes() // 4, MIN_HEAP_BYTES), MAX_DEFAULT_HEAP_BYTES)
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fds = MAX_DEFAULT_CONNECTIONS + RESERVED_FDS if soft == resource.RLIM_INFINITY else soft
    connections = min(max(fds - RESERVED_FDS, MIN_CONNECTIONS), MAX_DEFAULT_CONNECTIONS)
    return OverloadLimits(max_heap_bytes=heap, max_connections=connections)


def parse_bytes(text: str) -> int:
    """`512MiB`, `2GiB`, `1048576` → bytes (binary units only, so there is one meaning)."""
    units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
    number, factor = text, 1
    for suffix, unit in units.items():
        if text.endswith(suffix):
            number, factor = text[: -len(suffix)], unit
    if not number.isdigit():
        raise ValueError(f"{text!r} is not a size: write bytes, or a whole number of KiB, MiB or GiB (512MiB)")
    return int(number) * factor


def overload_manager(limits: OverloadLimits) -> dict[str, Any]:
    """The bootstrap's `overload_manager` section for `limits`."""
    return {
        "refresh_interval": "0.25s",
        "resource_monitors": [
            {
                "name": HEAP_MONITOR,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
                    "max_heap_size_bytes": str(limits.max_heap_bytes),
                },
            },
            {
                "name": CONNECTIONS_MONITOR,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3."
                    "DownstreamConnectionsConfig",
                    "max_active_downstream_connections": str(limits.max_connections),
                },
            },
        ],
        "actions": [
            {"name": action, "triggers": [{"name": HEAP_MONITOR, "threshold": {"value": threshold}}]}
            for threshold, action in HEAP_ACTIONS
        ],
    }
