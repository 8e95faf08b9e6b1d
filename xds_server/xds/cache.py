"""The latest snapshot per node group, and a way for ADS streams to await changes.

A node group is Envoy's `node.cluster`: every Envoy of one group gets the same
configuration. The publisher calls `set`; each ADS stream calls
`wait_for_change` with the version it last served and wakes when its group has
a different one. A group with no snapshot yet simply has nothing to wait for
but a first snapshot: an Envoy started before the control plane has config
keeps its stream open and receives config as soon as it is published.

`set` may be called from any thread (a file watcher, a test): waiters are woken
on their own event loop with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import threading

from .snapshot import Snapshot

_Waiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class SnapshotCache:
    """Thread-safe map of node group -> latest Snapshot, with change waiting."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshots: dict[str, Snapshot] = {}
        self._waiters: dict[str, list[_Waiter]] = {}

    def set(self, group: str, snapshot: Snapshot) -> bool:
        """Publish `snapshot` for `group`; returns False if its version was already current.

        Streams of the group are only woken when the version changed, so
        re-publishing identical content is free.
        """
        with self._lock:
            current = self._snapshots.get(group)
            if current is not None and current.version == snapshot.version:
                return False
            self._snapshots[group] = snapshot
            waiters = self._waiters.pop(group, [])
        for loop, fut in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_wake, fut)
        return True

    def get(self, group: str) -> Snapshot | None:
        """The current snapshot of `group`, or None if nothing was published yet."""
        with self._lock:
            return self._snapshots.get(group)

    def groups(self) -> dict[str, str]:
        """Group -> current snapshot version, for status reporting."""
        with self._lock:
            return {g: s.version for g, s in sorted(self._snapshots.items())}

    async def wait_for_change(self, group: str, known_version: str | None) -> Snapshot:
        """Return the group's snapshot once its version differs from `known_version`.

        Returns at once if it already differs; with `known_version=None` it
        returns the first snapshot ever published for the group. Cancellation
        is safe (the waiter is removed).
        """
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                snap = self._snapshots.get(group)
                if snap is not None and snap.version != known_version:
                    return snap
                fut: asyncio.Future[None] = loop.create_future()
                waiter = (loop, fut)
                self._waiters.setdefault(group, []).append(waiter)
            try:
                await fut
            finally:
                with self._lock:
                    pending = self._waiters.get(group)
                    if pending and waiter in pending:
                        pending.remove(waiter)
                        if not pending:
                            del self._waiters[group]
