"""Human approvals for tool calls: request, approve or deny, then use once.

An approval is for one exact call: the backend, rule, agent, user, tool and
arguments hash to its id, so the agent retrying the same call finds the same
request, and an approval can never be spent on different arguments.

Life of an approval (times from the store's clock, seconds since the epoch
by default so they can be shown to people):

    pending  --approve-->  approved  --consume-->  used
       |                      |
       |--deny--> denied <----|          (an approved, unused one can be revoked)
       |                      |
       '--ttl--> expired <----'           pending: ttl after creation;
                                          approved: ttl after approval

A denial stands for `ttl` after it is made: the same call retried meanwhile
is refused as denied, after that it asks again. Finished entries are kept
`history_s` for status queries, then forgotten, so memory stays bounded by
the calls of the last ttl + history.
"""

from __future__ import annotations

import builtins
import copy
import dataclasses
import enum
import hashlib
import json
import threading
import time
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class ApprovalState(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    USED = "used"
    EXPIRED = "expired"


class ApprovalError(Exception):
    """An approve/deny that cannot be done; `str()` says why in one sentence.

    `kind` is "unknown", "expired", "used" or "denied", for an API to map to
    a status code.
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Approval:
    """One approval request and its state at the time it was read.

    `user` is the user subject (None when unknown); `arguments` a read-only
    copy of the call's arguments. `expires_at` is when a pending or approved
    approval stops being valid (for a denied one, when the denial lapses).
    `decided_by`/`decided_at` record the approve or deny; `used_at` the call
    that spent it.
    """

    id: str
    backend: str
    rule: str
    agent: str
    user: str | None
    tool: str
    arguments: Mapping[str, Any]
    state: ApprovalState
    created_at: float
    expires_at: float
    ttl_s: float
    decided_by: str | None = None
    decided_at: float | None = None
    used_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-ready dict for the HTTP API (times in the store clock's seconds)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["arguments"] = copy.deepcopy(dict(self.arguments))
        out["state"] = self.state.value
        return out


def approval_id(
    backend: str, rule_id: str, agent: str, user_sub: str | None, tool: str, arguments: Mapping[str, Any]
) -> str:
    """ "ap_" + 16 hex digits: a stable hash of the call (canonical JSON, keys sorted).

    The same call always gets the same id, in any process; any difference in
    the arguments gives another id.
    """
    canonical = json.dumps(
        {"backend": backend, "rule": rule_id, "agent": agent, "user": user_sub, "tool": tool, "arguments": arguments},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,  # arguments come from JSON; never fail on an odd value
    )
    return "ap_" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


class ApprovalStore:
    """The approvals of one policy service, safe to share between threads.

    `clock` returns seconds (wall-clock by default, since times are shown to
    people); tests inject their own.
    """

    def __init__(
        self, clock: Callable[[], float] = time.time, *, history_s: float = 3600.0, purge_interval_s: float = 1.0
    ) -> None:
        self._clock = clock
        self._history_s = history_s
        self._purge_interval_s = purge_interval_s
        self._next_purge = clock() + purge_interval_s
        self._entries: dict[str, Approval] = {}
        self._lock = threading.Lock()

    def request(
        self,
        backend: str,
        rule_id: str,
        agent: str,
        user_sub: str | None,
        tool: str,
        arguments: Mapping[str, Any],
        ttl_s: float,
    ) -> Approval:
        """The approval for this call: the existing pending, approved or (still
        standing) denied one as it is, else a new pending one expiring in `ttl_s`."""
        aid = approval_id(backend, rule_id, agent, user_sub, tool, arguments)
        with self._lock:
            now = self._clock()
            self._maybe_purge(now)
            existing = self._current(aid, now)
            if existing is not None and (
                existing.state in (ApprovalState.PENDING, ApprovalState.APPROVED)
                or (existing.state is ApprovalState.DENIED and now < existing.expires_at)
            ):
                return existing
            created = Approval(
                id=aid,
                backend=backend,
                rule=rule_id,
                agent=agent,
                user=user_sub,
                tool=tool,
                arguments=types.MappingProxyType(copy.deepcopy(dict(arguments))),
                state=ApprovalState.PENDING,
                created_at=now,
                expires_at=now + ttl_s,
                ttl_s=ttl_s,
            )
            self._entries[aid] = created
            return created

    def status(self, approval_id: str) -> Approval | None:
        """The approval as it stands now; None if unknown or already forgotten."""
        with self._lock:
            return self._current(approval_id, self._clock())

    def list(self, include_done: bool = False) -> builtins.list[Approval]:
        """Approvals newest first: the pending and approved-unused ones, or every
        one still remembered with `include_done`."""
        with self._lock:
            now = self._clock()
            self._maybe_purge(now)
            current = [self._current(aid, now) for aid in builtins.list(self._entries)]
        live = (ApprovalState.PENDING, ApprovalState.APPROVED)
        chosen = [a for a in current if a is not None and (include_done or a.state in live)]
        return sorted(chosen, key=lambda a: (-a.created_at, a.id))

    def approve(self, approval_id: str, by: str) -> Approval:
        """Approve a pending request; it is then valid for its ttl, for one call.

        Approving an already approved one returns it unchanged (its expiry is
        not extended). Raises ApprovalError if unknown, expired, used or denied.
        """
        with self._lock:
            now = self._clock()
            current = self._decidable(approval_id, now)
            if current.state is ApprovalState.DENIED:
                raise ApprovalError(f"approval {approval_id} was already denied by {current.decided_by}", "denied")
            if current.state is ApprovalState.APPROVED:
                return current
            return self._store(_decided(current, ApprovalState.APPROVED, by, now))

    def deny(self, approval_id: str, by: str) -> Approval:
        """Deny a pending request, or revoke an approved one not yet used.

        Denying a denied one returns it unchanged. Raises ApprovalError if
        unknown, expired or used.
        """
        with self._lock:
            now = self._clock()
            current = self._decidable(approval_id, now)
            if current.state is ApprovalState.DENIED:
                return current
            return self._store(_decided(current, ApprovalState.DENIED, by, now))

    def consume(self, approval_id: str) -> bool:
        """Spend an approved, unexpired approval: True once, then False."""
        with self._lock:
            now = self._clock()
            current = self._current(approval_id, now)
            if current is None or current.state is not ApprovalState.APPROVED:
                return False
            self._store(dataclasses.replace(current, state=ApprovalState.USED, used_at=now))
            return True

    def size(self) -> int:
        """How many approvals are remembered, finished ones included (for tests and metrics)."""
        with self._lock:
            return len(self._entries)

    # -- internals (called with the lock held) ---------------------------------

    def _store(self, approval: Approval) -> Approval:
        self._entries[approval.id] = approval
        return approval

    def _current(self, aid: str, now: float) -> Approval | None:
        """The entry with lapsed pending/approved states turned into expired."""
        entry = self._entries.get(aid)
        if entry is None:
            return None
        if entry.state in (ApprovalState.PENDING, ApprovalState.APPROVED) and now >= entry.expires_at:
            entry = self._store(dataclasses.replace(entry, state=ApprovalState.EXPIRED))
        return entry

    def _decidable(self, aid: str, now: float) -> Approval:
        current = self._current(aid, now)
        if current is None:
            raise ApprovalError(f"no approval request {aid} (unknown, or finished long ago)", "unknown")
        if current.state is ApprovalState.EXPIRED:
            raise ApprovalError(
                f"approval {aid} has expired; the agent must make the call again to ask anew", "expired"
            )
        if current.state is ApprovalState.USED:
            raise ApprovalError(f"approval {aid} was already used", "used")
        return current

    def _maybe_purge(self, now: float) -> None:
        # A full scan, so at most once per purge interval: a flood of distinct
        # calls must not make every request pay O(n).
        if now < self._next_purge:
            return
        self._next_purge = now + self._purge_interval_s
        done = [aid for aid, a in self._entries.items() if now >= _ended_at(a) + self._history_s]
        for aid in done:
            del self._entries[aid]


def _ended_at(approval: Approval) -> float:
    """When the approval stopped mattering (or will, if still live)."""
    if approval.state is ApprovalState.USED and approval.used_at is not None:
        return approval.used_at
    return approval.expires_at


def _decided(approval: Approval, state: ApprovalState, by: str, now: float) -> Approval:
    """`approval` as decided by `by` at `now`; the decision lasts the approval's TTL from now."""
    return dataclasses.replace(approval, state=state, decided_by=by, decided_at=now, expires_at=now + approval.ttl_s)
