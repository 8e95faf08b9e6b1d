"""What a decision asks of the decision state (quotas, approvals), and who answers it.

The engine's rules are pure logic; counting a call against a quota or using
an approval is not. The engine says what it needs as *effects* (the
dataclasses below) and a `DecisionState` carries them out:

    LocalState   quotas in this process's memory, approvals in SQLite: answers at once,
                 so a decision stays one synchronous call (the embedded default)
    SharedState  (shared_state.py) quotas and approvals in Valkey/Redis, shared by every
                 policy-service replica: answers after a round trip, so a decision
                 that needs it becomes a coroutine

`run` drives one decision's effects: synchronously while the state answers
at once, as a coroutine from the first effect that needs a round trip. A
decision that needs no effect (a condition alone) never leaves the caller's
stack, whatever the state.

A state that cannot be reached raises `StateUnavailable`; the engine turns
it into a refusal (fail closed), never an allow.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Generator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from xds_server.authz.approvals import ApprovalCall, ApprovalStore
from xds_server.authz.quota import QuotaKey, QuotaStore
from xds_server.ir.types import QuotaIR

T = TypeVar("T")


@dataclass(frozen=True)
class SpendQuota:
    """Count one call under `key` if it fits `quota`, atomically. -> (QuotaCheck, token or None)"""

    key: QuotaKey
    quota: QuotaIR


@dataclass(frozen=True)
class RefundQuota:
    """Take back the call `SpendQuota` counted with `token` (refused after all). -> None"""

    key: QuotaKey
    token: Any


@dataclass(frozen=True)
class UseApproval:
    """Use the call's approved approval, if there is one. -> Approval or None"""

    call: ApprovalCall


@dataclass(frozen=True)
class RequestApproval:
    """The call's open approval, made pending now if there is none. -> Approval"""

    call: ApprovalCall
    ttl_s: float


Effect = SpendQuota | RefundQuota | UseApproval | RequestApproval
#: One decision's steps: yields effects, receives their results, returns the answer.
Steps = Generator[Effect, Any, T]


class StateUnavailable(Exception):
    """The decision state cannot be reached (or answered nonsense); `str()` says which and why."""


class DecisionState(Protocol):
    """Carries out effects. `immediate` says `apply` answers at once (no round trip)."""

    immediate: bool

    def apply(self, effect: Effect) -> Any: ...

    async def apply_async(self, effect: Effect) -> Any: ...

    def describe(self) -> str: ...


class LocalState:
    """Quotas in memory and approvals in an `ApprovalStore` (SQLite), in this process."""

    immediate = True

    def __init__(self, quotas: QuotaStore, approvals: ApprovalStore) -> None:
        self.quotas = quotas
        self.approvals = approvals

    def apply(self, effect: Effect) -> Any:
        if isinstance(effect, SpendQuota):
            return self.quotas.spend(effect.key, effect.quota)
        if isinstance(effect, RefundQuota):
            return self.quotas.refund(effect.key, effect.token)
        try:
            if isinstance(effect, UseApproval):
                return self.approvals.use(effect.call)
            return self.approvals.request(effect.call, effect.ttl_s)
        except sqlite3.Error as exc:  # e.g. the database locked by another process past its busy timeout
            raise StateUnavailable(f"approvals database: {exc}") from exc

    async def apply_async(self, effect: Effect) -> Any:
        return self.apply(effect)

    def describe(self) -> str:
        return "in memory (quotas) and SQLite (approvals), this process only"


def run(steps: Steps[T], state: DecisionState) -> T | Awaitable[T]:
    """Drive `steps` against `state`: the result at once, or a coroutine from the first effect
    that needs a round trip."""
    try:
        effect = next(steps)
        while state.immediate:
            try:
                result = state.apply(effect)
            except StateUnavailable as exc:
                effect = steps.throw(exc)
                continue
            effect = steps.send(result)
    except StopIteration as done:
        return done.value
    return _run_async(steps, effect, state)


async def _run_async(steps: Steps[T], effect: Effect, state: DecisionState) -> T:
    try:
        while True:
            try:
                result = await state.apply_async(effect)
            except StateUnavailable as exc:
                effect = steps.throw(exc)
                continue
            effect = steps.send(result)
    except StopIteration as done:
        return done.value
