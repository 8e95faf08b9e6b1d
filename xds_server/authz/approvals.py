"""Human approvals for tool calls: request, approve or deny, then use once; kept in SQLite.

An approval is for one exact call (`ApprovalCall`: backend, rule, agent,
user, tool and arguments). Each approval has its own random id. A call has at
most one *open* approval at a time (pending, approved and not yet used, or a
denial still standing): the agent retrying the same call finds it, and an
approval can never be spent on a different call. Once used, expired or
lapsed, the call's next attempt opens a new approval with a new id, and the
old one stays in the history, with who decided it and when.

Life of an approval (times from the store's clock, seconds since the epoch
by default so they can be shown to people):

    pending  --approve-->  approved  --use-->  used
       |                      |
       |--deny--> denied <----|          (an approved, unused one can be revoked)
       |                      |
       '--ttl--> expired <----'           pending: ttl after creation;
                                          approved: ttl after approval

A denial stands for `ttl` after it is made: the same call retried meanwhile
is refused as denied; after that it asks again (a new approval). Finished
approvals (used, expired, denied) are kept `history_s` after they ended and
at most `max_finished` of them (the newest), so the store stays bounded.

The store is a SQLite database: a file (`path`) makes approvals, decisions
and history survive a restart of the policy service; None keeps them in
memory. Processes on one machine may share a file (SQLite transactions).
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import dataclasses
import enum
import hashlib
import json
import os
import secrets
import sqlite3
import threading
import time
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 1
DEFAULT_HISTORY_S = 7 * 24 * 3600.0
DEFAULT_MAX_FINISHED = 10_000


class ApprovalState(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    USED = "used"
    EXPIRED = "expired"


_LIVE = (ApprovalState.PENDING, ApprovalState.APPROVED)


class ApprovalError(Exception):
    """An approve/deny that cannot be done; `str()` says why in one sentence.

    `kind` is "unknown", "expired", "used" or "denied", for an API to map to
    a status code.
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ApprovalCall:
    """One exact call an approval is for; `user` is the user subject (None when unknown)."""

    backend: str
    rule: str
    agent: str
    user: str | None
    tool: str
    arguments: Mapping[str, Any]

    @property
    def key(self) -> str:
        """A stable hash of the call (canonical JSON, keys sorted): equal for the same call in any
        process, different for any difference in the arguments."""
        canonical = json.dumps(
            {"backend": self.backend, "rule": self.rule, "agent": self.agent, "user": self.user,
             "tool": self.tool, "arguments": self.arguments},
            sort_keys=True, separators=(",", ":"), ensure_ascii=False,
            default=str,  # arguments come from JSON; never fail on an odd value
        )  # fmt: skip
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Approval:
    """One approval and its state at the time it was read.

    `arguments` is a read-only copy of the call's arguments. `expires_at` is
    when a pending or approved approval stops being valid (for a denied one,
    when the denial lapses). `decided_by`/`decided_at` record the approve or
    deny; `used_at` the call that spent it.
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


def new_approval_id() -> str:
    """ "ap_" + 16 random hex digits (64 bits: never reused, not guessable from the call)."""
    return "ap_" + secrets.token_hex(8)


_COLUMNS = ("id", "call_key", "backend", "rule", "agent", "user", "tool", "arguments", "state", "created_at",
            "expires_at", "ttl_s", "decided_by", "decided_at", "used_at", "ended_at")  # fmt: skip

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY,
    call_key TEXT NOT NULL,
    backend TEXT NOT NULL, rule TEXT NOT NULL, agent TEXT NOT NULL, user TEXT, tool TEXT NOT NULL,
    arguments TEXT NOT NULL,              -- canonical JSON
    state TEXT NOT NULL,
    created_at REAL NOT NULL, expires_at REAL NOT NULL, ttl_s REAL NOT NULL,
    decided_by TEXT, decided_at REAL, used_at REAL,
    ended_at REAL                         -- when it stopped mattering (NULL while live)
);
CREATE INDEX IF NOT EXISTS approvals_by_call ON approvals (call_key, created_at);
CREATE INDEX IF NOT EXISTS approvals_live ON approvals (state, expires_at);
CREATE INDEX IF NOT EXISTS approvals_ended ON approvals (ended_at);
PRAGMA user_version = {SCHEMA_VERSION};
"""


class ApprovalStore:
    """The approvals of one policy service, safe to share between threads.

    `clock` returns seconds (wall-clock by default, since times are shown to
    people and outlive restarts); tests inject their own. `path`: the SQLite
    file (created with its directory if missing), or None for memory only.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        *,
        path: str | os.PathLike[str] | None = None,
        history_s: float = DEFAULT_HISTORY_S,
        max_finished: int = DEFAULT_MAX_FINISHED,
        purge_interval_s: float = 1.0,
    ) -> None:
        self._clock = clock
        self._history_s = history_s
        self._max_finished = max_finished
        self._purge_interval_s = purge_interval_s
        self._next_purge = clock() + purge_interval_s
        self._lock = threading.Lock()
        self.path = os.fspath(path) if path is not None else None
        if self.path is not None:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), mode=0o700, exist_ok=True)
            # Approvals hold tool arguments: readable by the service's user only.
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
            os.chmod(self.path, 0o600)
        # Autocommit; every change runs in an explicit transaction (`_tx`) under the lock.
        # A short busy timeout: decisions run on the event loop and Envoy waits 250 ms at most.
        self._db = sqlite3.connect(self.path or ":memory:", isolation_level=None, check_same_thread=False,
                                   timeout=0.1)  # fmt: skip
        self._db.row_factory = sqlite3.Row
        if self.path is not None:
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise RuntimeError(
                f"approvals database {self.path} has schema version {version}; this agentxds knows {SCHEMA_VERSION}"
            )
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def request(self, call: ApprovalCall, ttl_s: float) -> Approval:
        """The call's open approval as it is (pending, approved, or a denial still standing),
        else a new pending one with a new id, expiring in `ttl_s`."""
        with self._tx() as now:
            self._maybe_purge(now)
            existing = self._open(call.key, now)
            if existing is not None:
                return existing
            created = Approval(
                id=new_approval_id(),
                backend=call.backend,
                rule=call.rule,
                agent=call.agent,
                user=call.user,
                tool=call.tool,
                arguments=types.MappingProxyType(copy.deepcopy(dict(call.arguments))),
                state=ApprovalState.PENDING,
                created_at=now,
                expires_at=now + ttl_s,
                ttl_s=ttl_s,
            )
            self._insert(created, call.key)
            return created

    def use(self, call: ApprovalCall) -> Approval | None:
        """Spend the call's approved, unexpired approval: it is returned (now used) once, then None."""
        with self._tx() as now:
            current = self._open(call.key, now)
            if current is None or current.state is not ApprovalState.APPROVED:
                return None
            return self._update(current, state=ApprovalState.USED, used_at=now, ended_at=now)

    def status(self, approval_id: str) -> Approval | None:
        """The approval as it stands now; None if unknown or already forgotten."""
        with self._tx() as _:
            return self._get(approval_id)

    def list(self, include_done: bool = False) -> builtins.list[Approval]:
        """Approvals newest first: the pending and approved-unused ones, or with `include_done`
        every one still remembered (used, denied and expired ones too)."""
        with self._tx() as now:
            self._maybe_purge(now)
            where = "" if include_done else "WHERE state IN ('pending', 'approved')"
            rows = self._db.execute(f"SELECT * FROM approvals {where} ORDER BY created_at DESC, rowid DESC").fetchall()
        return [_from_row(r) for r in rows]

    def approve(self, approval_id: str, by: str) -> Approval:
        """Approve a pending request; it is then valid for its ttl, for one call.

        Approving an already approved one returns it unchanged (its expiry is
        not extended). Raises ApprovalError if unknown, expired, used or denied.
        """
        with self._tx() as now:
            current = self._decidable(approval_id)
            if current.state is ApprovalState.DENIED:
                raise ApprovalError(f"approval {approval_id} was already denied by {current.decided_by}", "denied")
            if current.state is ApprovalState.APPROVED:
                return current
            return self._update(current, state=ApprovalState.APPROVED, decided_by=by, decided_at=now,
                                expires_at=now + current.ttl_s)  # fmt: skip

    def deny(self, approval_id: str, by: str) -> Approval:
        """Deny a pending request, or revoke an approved one not yet used; the denial stands for
        the approval's ttl from now.

        Denying a denied one returns it unchanged. Raises ApprovalError if
        unknown, expired or used.
        """
        with self._tx() as now:
            current = self._decidable(approval_id)
            if current.state is ApprovalState.DENIED:
                return current
            until = now + current.ttl_s
            return self._update(current, state=ApprovalState.DENIED, decided_by=by, decided_at=now,
                                expires_at=until, ended_at=until)  # fmt: skip

    def size(self) -> int:
        """How many approvals are remembered, finished ones included (for tests and metrics)."""
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM approvals").fetchone()[0])

    # -- internals (called inside `_tx`) -----------------------------------------

    @contextlib.contextmanager
    def _tx(self) -> Iterator[float]:
        """Under the lock, one write transaction; yields the time now, with lapsed
        pending/approved approvals already turned into expired ones."""
        with self._lock:
            now = self._clock()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "UPDATE approvals SET state = 'expired', ended_at = expires_at "
                    "WHERE state IN ('pending', 'approved') AND expires_at <= ?",
                    (now,),
                )
                yield now
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _get(self, approval_id: str) -> Approval | None:
        row = self._db.execute("SELECT * FROM approvals WHERE id = ?", (approval_id,)).fetchone()
        return _from_row(row) if row is not None else None

    def _open(self, call_key: str, now: float) -> Approval | None:
        """The call's newest approval if it is still open (live, or a denial still standing)."""
        row = self._db.execute(
            "SELECT * FROM approvals WHERE call_key = ? ORDER BY rowid DESC LIMIT 1", (call_key,)
        ).fetchone()
        if row is None:
            return None
        latest = _from_row(row)
        if latest.state in _LIVE or (latest.state is ApprovalState.DENIED and now < latest.expires_at):
            return latest
        return None

    def _insert(self, approval: Approval, call_key: str) -> None:
        values = {**_to_row(approval), "call_key": call_key, "ended_at": None}
        self._db.execute(
            f"INSERT INTO approvals ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})",
            [values[c] for c in _COLUMNS],
        )

    def _update(self, approval: Approval, *, ended_at: float | None = None, **changes: Any) -> Approval:
        changed = dataclasses.replace(approval, **changes)
        values = {**_to_row(changed), "ended_at": ended_at}
        names = [c for c in _COLUMNS if c not in ("id", "call_key")]
        self._db.execute(
            f"UPDATE approvals SET {', '.join(f'{c} = ?' for c in names)} WHERE id = ?",
            [*(values[c] for c in names), approval.id],
        )
        return changed

    def _decidable(self, approval_id: str) -> Approval:
        current = self._get(approval_id)
        if current is None:
            raise ApprovalError(f"no approval request {approval_id} (unknown, or finished long ago)", "unknown")
        if current.state is ApprovalState.EXPIRED:
            raise ApprovalError(
                f"approval {approval_id} has expired; the agent must make the call again to ask anew", "expired"
            )
        if current.state is ApprovalState.USED:
            raise ApprovalError(f"approval {approval_id} was already used", "used")
        return current

    def _maybe_purge(self, now: float) -> None:
        # Scans, so at most once per purge interval: a flood of distinct calls
        # must not make every request pay for them.
        if now < self._next_purge:
            return
        self._next_purge = now + self._purge_interval_s
        self._db.execute("DELETE FROM approvals WHERE ended_at IS NOT NULL AND ended_at + ? <= ?",
                         (self._history_s, now))  # fmt: skip
        self._db.execute(
            "DELETE FROM approvals WHERE id IN (SELECT id FROM approvals WHERE ended_at IS NOT NULL AND ended_at <= ?"
            " ORDER BY ended_at DESC, created_at DESC LIMIT -1 OFFSET ?)",
            (now, self._max_finished),
        )


def _to_row(approval: Approval) -> dict[str, Any]:
    row = {f.name: getattr(approval, f.name) for f in dataclasses.fields(approval)}
    row["arguments"] = json.dumps(dict(approval.arguments), sort_keys=True, ensure_ascii=False, default=str)
    row["state"] = approval.state.value
    return row


def _from_row(row: sqlite3.Row) -> Approval:
    values = {f.name: row[f.name] for f in dataclasses.fields(Approval)}
    values["arguments"] = types.MappingProxyType(json.loads(row["arguments"]))
    values["state"] = ApprovalState(row["state"])
    return Approval(**values)
