"""The policy service's decision for one tools/call: conditions, quotas, approvals, precedence."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from xds_server.authz.approvals import ApprovalStore
from xds_server.authz.effects import LocalState
from xds_server.authz.engine import CallContext, Decision, Engine
from xds_server.authz.quota import QuotaStore
from xds_server.ir.glob import compile_globs
from xds_server.ir.types import ConditionalRuleIR, QuotaIR, QuotaScope

NOW = dt.datetime(2024, 1, 2, 13, 0, tzinfo=dt.UTC)  # a Tuesday, 13:00 UTC


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rule(
    id: str,
    *,
    agents: tuple[str, ...] = ("executor",),
    tools: tuple[str, ...] = ("merge_*",),
    when: str | None = None,
    quota: QuotaIR | None = None,
    approval: bool = False,
    ttl_ms: int = 900_000,
) -> ConditionalRuleIR:
    return ConditionalRuleIR(id, agents, compile_globs(tools), when, quota, approval, ttl_ms)


def call(
    tool: str = "merge_pr", agent: str = "executor", user: dict[str, Any] | None = None, **args: Any
) -> CallContext:
    return CallContext("github", agent, user or {}, tool, args or {"repo": "acme/web", "pr": 7}, NOW)


class World:
    def __init__(self) -> None:
        self.quota_clock = Clock(100.0)
        self.wall_clock = Clock(1_700_000_000.0)
        self.quotas = QuotaStore(self.quota_clock)
        self.approvals = ApprovalStore(self.wall_clock)
        self.engine = Engine(LocalState(self.quotas, self.approvals))

    def decide(self, ctx: CallContext, *rules: ConditionalRuleIR, unconditional: bool = False) -> Decision:
        decision = self.engine.decide(ctx, rules, unconditional=unconditional)
        assert isinstance(decision, Decision)  # a local state answers at once
        return decision


@pytest.fixture
def world() -> World:
    return World()


def test_unconditional_grant_short_circuits(world: World) -> None:
    decision = world.decide(call(), rule("p/rules[0]", approval=True), unconditional=True)
    assert (decision.allowed, decision.reason, decision.rule) == (True, "allowed", None)
    assert world.approvals.size() == 0


def test_no_matching_rule(world: World) -> None:
    rules = (rule("p/rules[0]", agents=("triage",)), rule("p/rules[1]", tools=("get_*",)))
    decision = world.decide(call(), *rules)
    assert decision == Decision(
        False, "no_matching_rule", None, "No rule lets agent 'executor' call tool 'merge_pr' on backend 'github'."
    )


def test_condition_met_and_not_met(world: World) -> None:
    r = rule("p/rules[0]", when='args.repo.startsWith("acme/") && now.getHours() >= 9')
    allowed = world.decide(call(repo="acme/web"), r)
    assert allowed == Decision(True, "allowed", "p/rules[0]", "Tool 'merge_pr' is allowed by rule 'p/rules[0]'.")
    refused = world.decide(call(repo="evil/web"), r)
    assert (refused.allowed, refused.reason, refused.rule) == (False, "condition_not_met", "p/rules[0]")
    assert refused.message == "Call to tool 'merge_pr' refused: the condition of rule 'p/rules[0]' is not met."


def test_condition_sees_agent_user_tool_and_time(world: World) -> None:
    r = rule(
        "p/rules[0]",
        when='agent.name == "executor" && tool == "merge_pr" && user.sub == "alice" && now.getDayOfWeek() == 2',
    )
    assert world.decide(call(user={"sub": "alice"}), r).allowed
    assert world.decide(call(user={"sub": "bob"}), r).reason == "condition_not_met"


def test_missing_argument_is_a_condition_error(world: World) -> None:
    decision = world.decide(call(pr=7), rule("p/rules[0]", when='args.repo.startsWith("acme/")'))
    assert (decision.allowed, decision.reason) == (False, "condition_error")
    assert decision.message == (
        "Call to tool 'merge_pr' refused: the condition of rule 'p/rules[0]' could not be evaluated"
        " (no such key: repo)."
    )


def test_uncompilable_condition_fails_closed(world: World) -> None:
    decision = world.decide(call(), rule("p/rules[0]", when="args.repo =="))
    assert decision.reason == "condition_error"
    assert "line 1, column 13: syntax error" in decision.message


def test_quota_counts_and_refuses_with_retry_after(world: World) -> None:
    r = rule("p/rules[0]", quota=QuotaIR(2, 60_000, QuotaScope.AGENT))
    assert world.decide(call(), r).allowed
    world.quota_clock.now += 15
    assert world.decide(call(), r).allowed
    refused = world.decide(call(), r)
    assert (refused.reason, refused.rule, refused.retry_after_s) == ("quota_exceeded", "p/rules[0]", 45.0)
    assert refused.message == (
        "Call to tool 'merge_pr' refused: rule 'p/rules[0]' allows 2 calls per 1m; retry in 45.0s."
    )
    world.quota_clock.now += 45
    assert world.decide(call(), r).allowed


def test_quota_per_user_scope(world: World) -> None:
    r = rule("p/rules[0]", agents=("executor", "triage"), quota=QuotaIR(1, 60_000, QuotaScope.USER))
    assert world.decide(call(user={"sub": "alice"}), r).allowed
    assert world.decide(call(agent="triage", user={"sub": "alice"}), r).reason == "quota_exceeded"
    assert world.decide(call(user={"sub": "bob"}), r).allowed
    assert world.decide(call(user={}), r).allowed  # no user: the agent's own bucket


def test_quota_is_not_spent_by_a_call_refused_by_a_condition(world: World) -> None:
    r = rule("p/rules[0]", when='args.repo.startsWith("acme/")', quota=QuotaIR(1, 60_000, QuotaScope.AGENT))
    for _ in range(3):
        assert world.decide(call(repo="evil/x"), r).reason == "condition_not_met"
    assert world.decide(call(repo="acme/x"), r).allowed


def test_approval_flow(world: World) -> None:
    r = rule("p/rules[0]", approval=True, ttl_ms=600_000)
    first = world.decide(call(), r)
    assert (first.allowed, first.reason, first.rule) == (False, "approval_required", "p/rules[0]")
    assert first.approval_id is not None and first.approval_id.startswith("ap_")
    assert first.approval_expires_at == world.wall_clock.now + 600
    assert first.message == (
        f"Call to tool 'merge_pr' needs a human approval under rule 'p/rules[0]': "
        f"ask an operator to approve {first.approval_id}, then retry the same call."
    )
    world.wall_clock.now += 30
    assert world.decide(call(), r) == first  # the same call finds the same request
    other = world.decide(call(repo="acme/web", pr=8), r)
    assert other.reason == "approval_required" and other.approval_id != first.approval_id

    world.approvals.approve(first.approval_id, by="bob")
    allowed = world.decide(call(), r)
    assert (allowed.allowed, allowed.rule) == (True, "p/rules[0]")
    again = world.decide(call(), r)  # single use: the retry asks anew, under a new id
    assert again.reason == "approval_required" and again.approval_id not in (None, first.approval_id)
    used = world.approvals.status(first.approval_id)
    assert used is not None and (used.state, used.decided_by) == ("used", "bob")
    assert again.approval_expires_at == world.wall_clock.now + 600  # a fresh request


def test_approval_denied(world: World) -> None:
    r = rule("p/rules[0]", approval=True)
    aid = world.decide(call(), r).approval_id
    assert aid is not None
    world.approvals.deny(aid, by="bob")
    denied = world.decide(call(), r)
    assert (denied.allowed, denied.reason, denied.approval_id) == (False, "approval_denied", aid)
    assert denied.message == (
        f"Call to tool 'merge_pr' refused: approval {aid} under rule 'p/rules[0]' was denied by bob."
    )


def test_approval_expiry(world: World) -> None:
    r = rule("p/rules[0]", approval=True, ttl_ms=60_000)
    aid = world.decide(call(), r).approval_id
    assert aid is not None
    world.wall_clock.now += 50
    world.approvals.approve(aid, by="bob")
    world.wall_clock.now += 60  # approved, unused for the whole ttl
    decision = world.decide(call(), r)
    assert decision.reason == "approval_required"
    assert decision.approval_expires_at == world.wall_clock.now + 60


def test_quota_is_not_spent_by_a_call_refused_for_approval(world: World) -> None:
    r = rule("p/rules[0]", approval=True, quota=QuotaIR(1, 60_000, QuotaScope.AGENT))
    aid = world.decide(call(), r).approval_id
    assert aid is not None
    assert world.decide(call(), r).reason == "approval_required"
    assert world.quotas.size() == 0
    world.approvals.approve(aid, by="bob")
    assert world.decide(call(), r).allowed
    # Quota spent now: the next call is refused for the quota, and no new
    # approval is asked for a call that could not run anyway.
    refused = world.decide(call(), r)
    assert refused.reason == "quota_exceeded"
    assert world.approvals.list() == []


def test_first_allowing_rule_wins(world: World) -> None:
    rules = (
        rule("p/rules[0]", when='args.repo.startsWith("acme/")'),
        rule("p/rules[1]", quota=QuotaIR(5, 60_000, QuotaScope.AGENT)),
        rule("p/rules[2]"),
    )
    assert world.decide(call(repo="acme/web"), *rules).rule == "p/rules[0]"
    assert world.decide(call(repo="evil/web"), *rules).rule == "p/rules[1]"
    assert world.quotas.size() == 1  # only the allowing rule spent quota


def test_an_allowing_rule_after_an_approval_rule_asks_nobody(world: World) -> None:
    rules = (rule("p/rules[0]", approval=True), rule("p/rules[1]", when='args.repo == "acme/web"'))
    assert world.decide(call(), *rules).rule == "p/rules[1]"
    assert world.approvals.size() == 0


def test_an_approved_call_is_allowed_by_the_approval_rule(world: World) -> None:
    rules = (rule("p/rules[0]", approval=True), rule("p/rules[1]", quota=QuotaIR(1, 60_000, QuotaScope.AGENT)))
    world.decide(call(), rules[0])
    aid = world.approvals.list()[0].id
    world.approvals.approve(aid, by="bob")
    assert world.decide(call(), *rules).rule == "p/rules[0]"
    assert world.quotas.size() == 0


@pytest.mark.parametrize(
    ("reasons", "expected"),
    [
        (("condition_not_met", "condition_error"), ("condition_error", "p/rules[1]")),
        (("condition_error", "quota_exceeded", "condition_not_met"), ("quota_exceeded", "p/rules[1]")),
        (("quota_exceeded", "approval_required", "condition_error"), ("approval_required", "p/rules[1]")),
        (("approval_required", "quota_exceeded"), ("approval_required", "p/rules[0]")),
        (("condition_not_met", "condition_not_met"), ("condition_not_met", "p/rules[0]")),
    ],
)
def test_most_actionable_refusal(world: World, reasons: tuple[str, ...], expected: tuple[str, str]) -> None:
    exhausted = QuotaIR(1, 60_000, QuotaScope.AGENT)
    makers = {
        "condition_not_met": lambda i: rule(f"p/rules[{i}]", when="false"),
        "condition_error": lambda i: rule(f"p/rules[{i}]", when="args.missing == 1"),
        "quota_exceeded": lambda i: rule(f"p/rules[{i}]", quota=exhausted),
        "approval_required": lambda i: rule(f"p/rules[{i}]", approval=True),
    }
    rules = [makers[reason](i) for i, reason in enumerate(reasons)]
    for i, reason in enumerate(reasons):  # exhaust the quota rules first
        if reason == "quota_exceeded":
            assert world.decide(call(), rules[i]).allowed
    decision = world.decide(call(), *rules)
    assert (decision.reason, decision.rule) == expected
    # Approval requests are made only for the refusal returned.
    assert world.approvals.size() == (1 if expected[0] == "approval_required" else 0)


def test_denied_approval_outranks_a_quota(world: World) -> None:
    rules = (rule("p/rules[0]", quota=QuotaIR(1, 60_000, QuotaScope.AGENT)), rule("p/rules[1]", approval=True))
    assert world.decide(call(), *rules).rule == "p/rules[0]"
    aid = world.decide(call(), *rules).approval_id
    assert aid is not None
    world.approvals.deny(aid, by="bob")
    assert world.decide(call(), *rules).reason == "approval_denied"


def test_a_rule_limited_to_users_only_applies_to_those_users() -> None:
    from xds_server.ir.types import UserMatchIR

    maintainers = UserMatchIR("corp", (), ("maintainers",), "groups", ())
    limited = ConditionalRuleIR(
        id="p/rules[0]", agents=("bot",), targets=compile_globs(["merge_*"]), when=None,
        quota=None, require_approval=False, approval_ttl_ms=60_000, user=maintainers,
    )  # fmt: skip
    engine = Engine(LocalState(QuotaStore(), ApprovalStore()))
    base = dict(backend="b", agent="bot", user={}, target="merge_pr", arguments={}, now=NOW)
    allowed = engine.decide(CallContext(**base, jwt={"corp": {"sub": "alice", "groups": ["maintainers"]}}),
                            [limited], unconditional=False)  # fmt: skip
    refused = engine.decide(CallContext(**base, jwt={"corp": {"sub": "bob", "groups": ["devs"]}}),
                            [limited], unconditional=False)  # fmt: skip
    anonymous = engine.decide(CallContext(**base), [limited], unconditional=False)
    assert allowed.allowed and allowed.rule == "p/rules[0]"
    assert not refused.allowed and refused.reason == "no_matching_rule"
    assert not anonymous.allowed
