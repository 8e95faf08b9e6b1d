"""Quotas: an exact sliding window, per-scope keys, counts that survive reloads, bounded memory."""

from __future__ import annotations

import pytest

from xds_server.authz.quota import QuotaCheck, QuotaKey, QuotaStore, quota_subject
from xds_server.ir.types import QuotaIR, QuotaScope


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


THREE_PER_MINUTE = QuotaIR(calls=3, window_ms=60_000, scope=QuotaScope.AGENT)
KEY = QuotaKey("github", "p/rules[0]", "create_issue", "agent:triage")


def test_counts_and_refuses_with_retry_after() -> None:
    clock = Clock()
    store = QuotaStore(clock)
    assert store.check(KEY, THREE_PER_MINUTE) == QuotaCheck(True, 3, 0.0)
    assert store.consume(KEY, THREE_PER_MINUTE) == QuotaCheck(True, 2, 0.0)
    clock.now += 10
    assert store.consume(KEY, THREE_PER_MINUTE) == QuotaCheck(True, 1, 0.0)
    clock.now += 10
    assert store.consume(KEY, THREE_PER_MINUTE) == QuotaCheck(True, 0, 0.0)
    clock.now += 5
    # The first call (at t=1000) leaves the window at t=1060: 35 s from now.
    assert store.check(KEY, THREE_PER_MINUTE) == QuotaCheck(False, 0, 35.0)
    assert store.consume(KEY, THREE_PER_MINUTE) == QuotaCheck(False, 0, 35.0)


def test_check_does_not_consume() -> None:
    store = QuotaStore(Clock())
    for _ in range(10):
        assert store.check(KEY, THREE_PER_MINUTE).allowed
    assert store.size() == 0


def test_window_slides_one_call_at_a_time() -> None:
    clock = Clock()
    store = QuotaStore(clock)
    for step in (0, 20, 20):  # calls at t=1000, 1020, 1040
        clock.now += step
        assert store.consume(KEY, THREE_PER_MINUTE).allowed
    clock.now = 1059.9
    assert not store.check(KEY, THREE_PER_MINUTE).allowed
    clock.now = 1060.0  # the call at 1000 has left the window (now - W, now]
    assert store.consume(KEY, THREE_PER_MINUTE) == QuotaCheck(True, 0, 0.0)
    assert store.check(KEY, THREE_PER_MINUTE).retry_after_s == pytest.approx(20.0)


def test_no_burst_across_a_boundary() -> None:
    """Fixed buckets would allow 6 calls around a minute boundary; the log allows 3."""
    clock = Clock(1059.0)
    store = QuotaStore(clock)
    for _ in range(3):
        assert store.consume(KEY, THREE_PER_MINUTE).allowed
    clock.now = 1061.0
    assert not store.consume(KEY, THREE_PER_MINUTE).allowed


def test_keys_are_independent() -> None:
    store = QuotaStore(Clock())
    other_tool = QuotaKey("github", "p/rules[0]", "get_issue", "agent:triage")
    other_agent = QuotaKey("github", "p/rules[0]", "create_issue", "agent:executor")
    for _ in range(3):
        store.consume(KEY, THREE_PER_MINUTE)
    assert not store.check(KEY, THREE_PER_MINUTE).allowed
    assert store.check(other_tool, THREE_PER_MINUTE).allowed
    assert store.check(other_agent, THREE_PER_MINUTE).allowed


@pytest.mark.parametrize(
    ("scope", "agent", "user", "subject"),
    [
        (QuotaScope.AGENT, "triage", "alice", "agent:triage"),
        (QuotaScope.AGENT, "triage", None, "agent:triage"),
        (QuotaScope.USER, "triage", "alice", "user:alice"),
        (QuotaScope.USER, "executor", "alice", "user:alice"),  # all agents together
        (QuotaScope.USER, "triage", None, "agent:triage"),  # no user: the agent's own bucket
        (QuotaScope.USER, "triage", "", "agent:triage"),
        (QuotaScope.AGENT_USER, "triage", "alice", "agent:triage+user:alice"),
        (QuotaScope.AGENT_USER, "triage", None, "agent:triage"),
    ],
)
def test_subjects(scope: QuotaScope, agent: str, user: str | None, subject: str) -> None:
    assert quota_subject(scope, agent, user) == subject


def test_a_user_named_like_an_agent_never_shares_its_bucket() -> None:
    assert quota_subject(QuotaScope.USER, "triage", "triage") != quota_subject(QuotaScope.USER, "triage", None)


def test_counts_survive_a_quota_change() -> None:
    clock = Clock()
    store = QuotaStore(clock)
    for _ in range(3):
        store.consume(KEY, THREE_PER_MINUTE)
    raised = QuotaIR(calls=5, window_ms=60_000, scope=QuotaScope.AGENT)
    assert store.check(KEY, raised) == QuotaCheck(True, 2, 0.0)
    # Lowered below what was already used: two of the three calls must leave
    # the window before another fits.
    lowered = QuotaIR(calls=2, window_ms=60_000, scope=QuotaScope.AGENT)
    clock.now += 1
    store.consume(KEY, raised)  # calls at 1000 x3, 1001
    assert store.check(KEY, lowered) == QuotaCheck(False, 0, 59.0)  # the third call (1000) leaves at 1060
    # A shorter window applies to the calls already counted: only 1001 is still in.
    shorter = QuotaIR(calls=1, window_ms=1_000, scope=QuotaScope.AGENT)
    clock.now = 1001.5
    assert store.check(KEY, shorter) == QuotaCheck(False, 0, 0.5)
    assert store.check(KEY, QuotaIR(calls=2, window_ms=1_000, scope=QuotaScope.AGENT)) == QuotaCheck(True, 1, 0.0)


def test_memory_is_bounded() -> None:
    clock = Clock()
    store = QuotaStore(clock, sweep_interval_s=60)
    second = QuotaIR(calls=1, window_ms=1_000, scope=QuotaScope.AGENT)
    for i in range(100):
        store.consume(QuotaKey("b", "r", f"tool{i}", "agent:a"), second)
    assert store.size() == 100
    # Touching a key after its window drops its times and the key itself.
    clock.now += 2
    assert store.check(QuotaKey("b", "r", "tool0", "agent:a"), second).allowed
    assert store.size() == 99
    # Keys nobody asks about again are swept once the sweep interval passes.
    clock.now += 60
    store.check(QuotaKey("b", "r", "other", "agent:a"), second)
    assert store.size() == 0
    # The log of a busy key never holds more than its window's calls.
    key = QuotaKey("b", "r", "busy", "agent:a")
    for _ in range(1000):
        clock.now += 0.5
        store.consume(key, QuotaIR(calls=10, window_ms=2_000, scope=QuotaScope.AGENT))
    assert len(store._logs[key].times) <= 10
