"""Call quotas: at most N calls in any window of W, per tool and per scope.

Each key keeps a log of the times of its counted calls (a sliding-window log,
not fixed buckets), so the limit is exact: a burst at the end of one minute
and another at the start of the next cannot add up to twice the quota.

The store outlives policy reloads. Keys hold the backend, rule id, tool and
subject but not the quota numbers, so editing `calls` or `window` applies the
new limit to the calls already counted instead of starting afresh.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from xds_server.ir.types import QuotaIR, QuotaScope


@dataclass(frozen=True, order=True)
class QuotaKey:
    """What one counter counts: calls of `tool` on `backend` under rule `rule_id` by `subject`."""

    backend: str
    rule_id: str
    tool: str
    subject: str


@dataclass(frozen=True)
class QuotaCheck:
    """`allowed`: a call may go now. `remaining`: calls left in the window
    (after the consumed one, for `consume`). `retry_after_s`: when refused,
    seconds until a call is allowed again; 0.0 when allowed."""

    allowed: bool
    remaining: int
    retry_after_s: float


def quota_subject(scope: QuotaScope, agent: str, user_sub: str | None) -> str:
    """The subject string a quota of `scope` counts under.

        agent       "agent:<agent>"
        user        "user:<sub>"
        agent+user  "agent:<agent>+user:<sub>"

    When the user is unknown (`user_sub` None or empty), the user and
    agent+user scopes count the agent's user-less calls together under
    "agent:<agent>": the "agent:"/"user:" prefixes keep such a subject from
    ever colliding with a real user's (a sub may be any string, even an agent
    name). Agent names are DNS labels, so "+user:" cannot occur in one.
    """
    if scope is QuotaScope.AGENT or not user_sub:
        return f"agent:{agent}"
    if scope is QuotaScope.USER:
        return f"user:{user_sub}"
    return f"agent:{agent}+user:{user_sub}"


class _Log:
    """The counted call times of one key, oldest first, and the window they were counted for."""

    __slots__ = ("times", "window_s")

    def __init__(self, window_s: float) -> None:
        self.times: deque[float] = deque()
        self.window_s = window_s


class QuotaStore:
    """Sliding-window call counters, safe to share between threads.

    `clock` returns seconds and must never go backwards (monotonic by
    default; tests inject their own). Memory stays bounded: every access drops
    the key's times older than its window and forgets a key left empty, and
    at most every `sweep_interval_s` a sweep forgets keys nobody asked about
    since their window passed (rules removed, agents gone).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, sweep_interval_s: float = 60.0) -> None:
        self._clock = clock
        self._logs: dict[QuotaKey, _Log] = {}
        self._lock = threading.Lock()
        self._sweep_interval_s = sweep_interval_s
        self._next_sweep = clock() + sweep_interval_s

    def check(self, key: QuotaKey, quota: QuotaIR) -> QuotaCheck:
        """Whether one more call fits now; counts nothing."""
        with self._lock:
            now = self._clock()
            return self._check(self._log(key, quota, now), quota, now)

    def consume(self, key: QuotaKey, quota: QuotaIR) -> QuotaCheck:
        """Like `check`, and if allowed count the call (`remaining` is then after it)."""
        with self._lock:
            return self._consume(key, quota)

    def _consume(self, key: QuotaKey, quota: QuotaIR) -> QuotaCheck:
        now = self._clock()
        log = self._log(key, quota, now)
        result = self._check(log, quota, now)
        if not result.allowed:
            return result
        if log is None:
            log = self._logs[key] = _Log(quota.window_ms / 1000)
        log.times.append(now)
        return QuotaCheck(True, result.remaining - 1, 0.0)

    def spend(self, key: QuotaKey, quota: QuotaIR) -> tuple[QuotaCheck, float | None]:
        """`consume`, and the token that `refund` takes back (None when nothing was counted)."""
        with self._lock:
            result = self._consume(key, quota)
            log = self._logs.get(key)
            return result, (log.times[-1] if result.allowed and log is not None else None)

    def refund(self, key: QuotaKey, token: float) -> None:
        """Forget the call `spend` counted with `token` (a call refused after all)."""
        with self._lock:
            log = self._logs.get(key)
            if log is not None:
                with contextlib.suppress(ValueError):
                    log.times.remove(token)
                if not log.times:
                    del self._logs[key]

    def size(self) -> int:
        """How many keys are held (for tests and metrics)."""
        with self._lock:
            return len(self._logs)

    def _log(self, key: QuotaKey, quota: QuotaIR, now: float) -> _Log | None:
        """The key's log pruned to the quota's current window; None (and forgotten) if empty."""
        if now >= self._next_sweep:
            self._sweep(now)
        log = self._logs.get(key)
        if log is None:
            return None
        log.window_s = quota.window_ms / 1000  # a reload may have changed it
        _prune(log, now)
        if not log.times:
            del self._logs[key]
            return None
        return log

    @staticmethod
    def _check(log: _Log | None, quota: QuotaIR, now: float) -> QuotaCheck:
        used = len(log.times) if log is not None else 0
        if used < quota.calls:
            return QuotaCheck(True, quota.calls - used, 0.0)
        if log is None:  # calls <= 0 (the loader forbids it): nothing ever fits
            return QuotaCheck(False, 0, quota.window_ms / 1000)
        # A slot frees when enough of the oldest calls leave the window; after
        # `calls` was lowered, more than one may have to leave.
        freeing = log.times[used - quota.calls]
        return QuotaCheck(False, 0, max(0.0, freeing + log.window_s - now))

    def _sweep(self, now: float) -> None:
        for key in [k for k, log in self._logs.items() if not log.times or now - log.times[-1] >= log.window_s]:
            del self._logs[key]
        self._next_sweep = now + self._sweep_interval_s


def _prune(log: _Log, now: float) -> None:
    # A call at t counts in the window (now - W, now]: it leaves at t + W.
    times, window_s = log.times, log.window_s
    while times and now - times[0] >= window_s:
        times.popleft()
