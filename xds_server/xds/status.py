"""What the control plane knows about its Envoys, for `agentxds status` and tests.

`StatusRecorder` is written by the ADS servicer (connections, sends, ACKs,
NACKs) and by the publishing pipeline (`set_policy_errors`,
`set_internal_errors`, `set_policy_warnings`, `set_snapshot_version`), and
read through `view()` as an immutable `StatusView`. Records outlive streams: a node that disconnected is still listed
(`connected=False`) with its last versions and NACKs.

Every NACK is logged once at WARNING with node, type, version and Envoy's error
text; an identical NACK repeated later (e.g. after a reconnect) is logged at
DEBUG only, so a stuck bad config does not flood the log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

log = logging.getLogger(__name__)

#: How many recent NACKs are kept per node.
DEFAULT_NACK_HISTORY = 20


@dataclass(frozen=True)
class NackRecord:
    """One rejected response: Envoy's `error_detail.message` verbatim."""

    node_id: str
    type_url: str
    version: str
    message: str
    at: float  # unix time


@dataclass(frozen=True)
class TypeStatus:
    """Per xDS type of one node: what was sent, what was accepted, what was refused."""

    type_url: str
    sent_version: str = ""
    sent_at: float | None = None
    acked_version: str = ""
    acked_at: float | None = None
    last_nack: NackRecord | None = None


@dataclass(frozen=True)
class NodeStatus:
    node_id: str
    group: str
    connected: bool
    connected_since: float | None
    types: tuple[TypeStatus, ...]  # sorted by type URL
    recent_nacks: tuple[NackRecord, ...]  # oldest first


@dataclass(frozen=True)
class GroupStatus:
    group: str
    snapshot_version: str
    updated_at: float | None


@dataclass(frozen=True)
class StatusView:
    """A consistent copy of the recorder's state at one moment."""

    nodes: tuple[NodeStatus, ...]  # sorted by node id
    groups: tuple[GroupStatus, ...]  # sorted by group
    policy_errors: tuple[str, ...]
    internal_errors: tuple[str, ...] = ()  # the last build failed in the gateway itself (a bug)
    policy_warnings: tuple[str, ...] = ()  # about the served set (emptied files, gateways without grants)

    def node(self, node_id: str) -> NodeStatus | None:
        return next((n for n in self.nodes if n.node_id == node_id), None)


@dataclass
class _Node:
    group: str
    streams: int = 0
    connected_since: float | None = None
    types: dict[str, TypeStatus] = field(default_factory=dict)
    nacks: deque[NackRecord] = field(default_factory=deque)


class StatusRecorder:
    """Thread-safe record of nodes, group snapshot versions and policy errors.

    `clock` returns unix time; tests may pass a fake one. Unknown node ids are
    created on first use, so calls never fail because of ordering.
    """

    def __init__(self, *, nack_history: int = DEFAULT_NACK_HISTORY, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._nack_history = nack_history
        self._nodes: dict[str, _Node] = {}
        self._groups: dict[str, GroupStatus] = {}
        self._policy_errors: tuple[str, ...] = ()
        self._internal_errors: tuple[str, ...] = ()
        self._policy_warnings: tuple[str, ...] = ()

    # -- written by the ADS servicer ---------------------------------------

    def node_connected(self, node_id: str, group: str) -> None:
        """A stream of `node_id` opened. Several streams per id are counted."""
        with self._lock:
            node = self._node(node_id, group)
            node.group = group
            if node.streams == 0:
                node.connected_since = self._clock()
            node.streams += 1

    def node_disconnected(self, node_id: str) -> None:
        with self._lock:
            node = self._node(node_id)
            node.streams = max(0, node.streams - 1)
            if node.streams == 0:
                node.connected_since = None

    def on_subscribe(self, node_id: str, type_url: str, version: str) -> None:
        """A first request for a type; a non-empty `version` is what Envoy already runs."""
        with self._lock:
            ts = self._type(node_id, type_url)
            if version and not ts.acked_version:
                self._set_type(node_id, ts, acked_version=version, acked_at=self._clock())
            else:
                self._set_type(node_id, ts)

    def on_sent(self, node_id: str, type_url: str, version: str, nonce: str) -> None:
        with self._lock:
            ts = self._type(node_id, type_url)
            self._set_type(node_id, ts, sent_version=version, sent_at=self._clock())
        log.debug("sent %s version %s (nonce %s) to node %r", type_url, version, nonce, node_id)

    def on_ack(self, node_id: str, type_url: str, version: str) -> None:
        with self._lock:
            ts = self._type(node_id, type_url)
            self._set_type(node_id, ts, acked_version=version, acked_at=self._clock())

    def on_nack(self, node_id: str, type_url: str, version: str, message: str) -> None:
        """Envoy rejected `version` of `type_url`; `message` is kept verbatim."""
        with self._lock:
            ts = self._type(node_id, type_url)
            record = NackRecord(node_id, type_url, version, message, self._clock())
            prev = ts.last_nack
            repeated = prev is not None and (prev.version, prev.message) == (version, message)
            self._set_type(node_id, ts, last_nack=record)
            self._nodes[node_id].nacks.append(record)  # bounded: deque(maxlen=...)
        level = logging.DEBUG if repeated else logging.WARNING
        log.log(level, "NACK from node %r for %s version %s: %s", node_id, type_url, version, message)

    # -- written by the pipeline -------------------------------------------

    def set_policy_errors(self, errors: Iterable[str]) -> None:
        """The pipeline's last errors (empty when the last build was good)."""
        with self._lock:
            self._policy_errors = tuple(errors)

    def set_internal_errors(self, errors: Iterable[str]) -> None:
        """What went wrong inside the gateway in the last build (empty when it did not fail)."""
        with self._lock:
            self._internal_errors = tuple(errors)

    def set_policy_warnings(self, warnings: Iterable[str]) -> None:
        """Warnings about the set last published (kept while later changes are refused)."""
        with self._lock:
            self._policy_warnings = tuple(warnings)

    def set_snapshot_version(self, group: str, version: str) -> None:
        """The snapshot version the pipeline published for `group`."""
        with self._lock:
            self._groups[group] = GroupStatus(group, version, self._clock())

    # -- read ----------------------------------------------------------------

    def view(self) -> StatusView:
        with self._lock:
            nodes = tuple(
                NodeStatus(
                    node_id=node_id,
                    group=n.group,
                    connected=n.streams > 0,
                    connected_since=n.connected_since,
                    types=tuple(n.types[t] for t in sorted(n.types)),
                    recent_nacks=tuple(n.nacks),
                )
                for node_id, n in sorted(self._nodes.items())
            )
            groups = tuple(self._groups[g] for g in sorted(self._groups))
            return StatusView(
                nodes=nodes,
                groups=groups,
                policy_errors=self._policy_errors,
                internal_errors=self._internal_errors,
                policy_warnings=self._policy_warnings,
            )

    # -- helpers (call with the lock held) -----------------------------------

    def _node(self, node_id: str, group: str = "") -> _Node:
        node = self._nodes.get(node_id)
        if node is None:
            node = self._nodes[node_id] = _Node(group=group, nacks=deque(maxlen=self._nack_history))
        return node

    def _type(self, node_id: str, type_url: str) -> TypeStatus:
        return self._node(node_id).types.get(type_url) or TypeStatus(type_url)

    def _set_type(self, node_id: str, ts: TypeStatus, **changes: object) -> None:
        self._nodes[node_id].types[ts.type_url] = replace(ts, **changes)  # type: ignore[arg-type]
