"""The policy service's decision for one call (an MCP `tools/call`, ...): pure logic over the IR's rules.

The generic part of every protocol's decisions: conditions, quotas and
approvals, over the call's target (MCP: the tool) and arguments.

Envoy's RBAC already let the call through because some rule could allow it;
this decides whether one actually does. Each matching conditional rule is
tried in policy order: its condition, then its quota (spent atomically, and
given back if the rule refuses after all), then its approval. The first rule
that allows wins, so a call refused for any reason never uses up quota. If
none allows, the refusal returned is the one the caller can act on best:

    approval_required / approval_denied  >  quota_exceeded  >  condition_error
        >  condition_not_met  >  no_matching_rule

Approval requests are created only for that final refusal, so a call that
another rule allows, or that is refused for a quota, never bothers a human.
A decision state that cannot be reached refuses the call (state_unavailable).

Quotas and approvals live in a `DecisionState` (effects.py): the rules are
written once as steps that yield what they need of it, and the state answers
at once (in this process) or after a round trip (shared by replicas).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from xds_server.authz.approvals import ApprovalCall, ApprovalState
from xds_server.authz.effects import (
    DecisionState,
    RefundQuota,
    RequestApproval,
    SpendQuota,
    StateUnavailable,
    Steps,
    UseApproval,
    run,
)
from xds_server.authz.quota import QuotaKey, quota_subject
from xds_server.core.cel import ConditionError, compile_condition
from xds_server.ir.glob import glob_matches
from xds_server.ir.types import ConditionalRuleIR


class Reason(enum.StrEnum):
    """Why a call was allowed or refused (values are what `Decision.reason` holds)."""

    ALLOWED = "allowed"
    CONDITION_NOT_MET = "condition_not_met"
    CONDITION_ERROR = "condition_error"
    QUOTA_EXCEEDED = "quota_exceeded"
    APPROVAL_REQUIRED = "approval_required"
    APPROVAL_DENIED = "approval_denied"
    NO_MATCHING_RULE = "no_matching_rule"
    STATE_UNAVAILABLE = "state_unavailable"


# Higher is more actionable for the caller (see the module docstring).
_RANK = {
    Reason.NO_MATCHING_RULE: 0,
    Reason.CONDITION_NOT_MET: 1,
    Reason.CONDITION_ERROR: 2,
    Reason.QUOTA_EXCEEDED: 3,
    Reason.APPROVAL_REQUIRED: 4,
    Reason.APPROVAL_DENIED: 4,
    Reason.STATE_UNAVAILABLE: 5,
}


@dataclass(frozen=True)
class CallContext:
    """One call as the policy service sees it: `target` is what is called (MCP: the tool),
    `noun` what a target is called in messages ("tool").

    `user` holds what is known of the user the agent acts for ({} when
    unknown); `user["sub"]`, when present, is the user's subject.
    """

    backend: str
    agent: str
    user: Mapping[str, Any]
    target: str
    arguments: Mapping[str, Any]
    now: dt.datetime
    jwt: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # provider → verified token payload
    noun: str = "tool"

    @property
    def user_sub(self) -> str | None:
        sub = self.user.get("sub")
        return sub if isinstance(sub, str) and sub else None


@dataclass(frozen=True)
class Decision:
    """The answer for one call.

    `rule` is the id of the rule that allowed the call or that the refusal is
    about (None for an unconditional grant or when no rule matched);
    `message` one sentence for humans naming the target and the rule.
    `retry_after_s` is set for quota_exceeded; `approval_id` and
    `approval_expires_at` (the approval store's clock) for approval_required
    and approval_denied.
    """

    allowed: bool
    reason: str
    rule: str | None
    message: str
    retry_after_s: float | None = None
    approval_id: str | None = None
    approval_expires_at: float | None = None


class Engine:
    """Decides calls against conditional rules, with the quota and approval state in `state`."""

    def __init__(self, state: DecisionState) -> None:
        self.state = state

    def decide(
        self, ctx: CallContext, rules: Sequence[ConditionalRuleIR], *, unconditional: bool
    ) -> Decision | Awaitable[Decision]:
        """Allow or refuse `ctx` under `rules` (the backend's conditional rules naming the agent, or all of
        them, in policy order: a rule not naming `ctx.agent` is skipped):
        the decision, or a coroutine giving it when the state needs a round trip (effects.run).

        `unconditional` says the agent also has a plain grant for this target:
        the call is then allowed without looking at any rule. Side effects,
        only on the outcome: an allowing rule spends its quota and its
        approval; an approval refusal creates (or finds) the approval request.
        If the state cannot be reached, the call is refused (state_unavailable).
        """
        return run(self._steps(ctx, rules, unconditional), self.state)

    def _steps(self, ctx: CallContext, rules: Sequence[ConditionalRuleIR], unconditional: bool) -> Steps[Decision]:
        if unconditional:
            return Decision(
                True,
                Reason.ALLOWED,
                None,
                f"{ctx.noun.capitalize()} '{ctx.target}' is allowed by a grant without conditions.",
            )
        best: Decision | None = None  # the most actionable refusal so far
        best_rule: ConditionalRuleIR | None = None
        variables: dict[str, Any] | None = None  # built once, only if some rule has a condition
        try:
            for rule in rules:
                if rule.user is not None and not rule.user.matches(ctx.jwt):
                    continue  # the rule is for other users (RBAC let the call in through another rule)
                if ctx.agent not in rule.agents or not any(glob_matches(p, ctx.target) for p in rule.targets):
                    continue
                if rule.when is not None and variables is None:
                    variables = _variables(ctx)
                refusal = yield from self._refusal(ctx, rule, variables)
                if refusal is None:
                    return Decision(
                        True,
                        Reason.ALLOWED,
                        rule.id,
                        f"{ctx.noun.capitalize()} '{ctx.target}' is allowed by rule '{rule.id}'.",
                    )
                if best is None or _RANK[Reason(refusal.reason)] > _RANK[Reason(best.reason)]:
                    best, best_rule = refusal, rule
            if best is None or best_rule is None:
                return Decision(
                    False,
                    Reason.NO_MATCHING_RULE,
                    None,
                    f"No rule lets agent '{ctx.agent}' call {ctx.noun} '{ctx.target}' on backend '{ctx.backend}'.",
                )
            if best.reason == Reason.APPROVAL_REQUIRED:
                return (yield from self._approval_refusal(ctx, best_rule))
            return best
        except StateUnavailable as exc:
            return Decision(
                False,
                Reason.STATE_UNAVAILABLE,
                None,
                f"Call to {ctx.noun} '{ctx.target}' refused: it needs the shared decision state "
                f"(quotas, approvals), which cannot be reached: {exc}.",
            )

    def _refusal(
        self, ctx: CallContext, rule: ConditionalRuleIR, variables: Mapping[str, Any] | None
    ) -> Steps[Decision | None]:
        """None if `rule` allows the call (its quota and approval then spent), else why not.

        The quota is spent at once (atomically, so replicas sharing it stay
        exact) and given back if the approval is missing: a refused call never
        uses up quota. An approval refusal is only a placeholder here: the
        request is made by `decide` once this rule's refusal is known to be the
        final answer.
        """
        if rule.when is not None:
            assert variables is not None
            refusal = _condition_refusal(ctx, rule, variables)
            if refusal is not None:
                return refusal
        spent = None
        if rule.quota is not None:
            key = self._quota_key(ctx, rule)
            check, spent = yield SpendQuota(key, rule.quota)
            if not check.allowed:
                return _quota_refusal(ctx, rule, check.retry_after_s)
        if rule.require_approval:
            try:
                approval = yield UseApproval(_approval_call(ctx, rule))
            except StateUnavailable:
                if spent is not None:  # the call is refused: give its quota back if the store still answers
                    with contextlib.suppress(StateUnavailable):
                        yield RefundQuota(key, spent)
                raise
            if approval is None:
                if spent is not None:
                    yield RefundQuota(key, spent)
                return Decision(False, Reason.APPROVAL_REQUIRED, rule.id, "")
        return None

    def _quota_key(self, ctx: CallContext, rule: ConditionalRuleIR) -> QuotaKey:
        assert rule.quota is not None
        return QuotaKey(ctx.backend, rule.id, ctx.target, quota_subject(rule.quota.scope, ctx.agent, ctx.user_sub))

    def _approval_refusal(self, ctx: CallContext, rule: ConditionalRuleIR) -> Steps[Decision]:
        approval = yield RequestApproval(_approval_call(ctx, rule), rule.approval_ttl_ms / 1000)
        if approval.state is ApprovalState.DENIED:
            return Decision(
                False,
                Reason.APPROVAL_DENIED,
                rule.id,
                f"Call to {ctx.noun} '{ctx.target}' refused: approval {approval.id} under rule '{rule.id}' "
                f"was denied by {approval.decided_by}.",
                approval_id=approval.id,
                approval_expires_at=approval.expires_at,
            )
        return Decision(
            False,
            Reason.APPROVAL_REQUIRED,
            rule.id,
            f"Call to {ctx.noun} '{ctx.target}' needs a human approval under rule '{rule.id}': "
            f"ask an operator to approve {approval.id}, then retry the same call.",
            approval_id=approval.id,
            approval_expires_at=approval.expires_at,
        )


def _approval_call(ctx: CallContext, rule: ConditionalRuleIR) -> ApprovalCall:
    return ApprovalCall(ctx.backend, rule.id, ctx.agent, ctx.user_sub, ctx.target, ctx.arguments)


def _variables(ctx: CallContext) -> dict[str, Any]:
    """The CEL variables for `ctx` (see cel_conditions)."""
    return {
        "args": dict(ctx.arguments),
        "agent": {"name": ctx.agent},
        "user": dict(ctx.user),
        "tool": ctx.target,  # CEL's name for the target
        "now": ctx.now,
    }


def _condition_refusal(ctx: CallContext, rule: ConditionalRuleIR, variables: Mapping[str, Any]) -> Decision | None:
    """None if the rule's condition holds, else the refusal (an error refuses too: fail closed)."""
    assert rule.when is not None
    try:
        result = compile_condition(rule.when).evaluate(variables)
    except ConditionError as exc:  # the IR checks conditions compile; stay closed if one slipped through
        error: str | None = str(exc)
    else:
        if result.passed:
            return None
        error = result.error
    if error is None:
        return Decision(
            False,
            Reason.CONDITION_NOT_MET,
            rule.id,
            f"Call to {ctx.noun} '{ctx.target}' refused: the condition of rule '{rule.id}' is not met.",
        )
    return Decision(
        False,
        Reason.CONDITION_ERROR,
        rule.id,
        f"Call to {ctx.noun} '{ctx.target}' refused: the condition of rule '{rule.id}' could not be evaluated ({error}).",
    )


def _quota_refusal(ctx: CallContext, rule: ConditionalRuleIR, retry_after_s: float) -> Decision:
    assert rule.quota is not None
    return Decision(
        False,
        Reason.QUOTA_EXCEEDED,
        rule.id,
        f"Call to {ctx.noun} '{ctx.target}' refused: rule '{rule.id}' allows {rule.quota.calls} "
        f"call{'s' if rule.quota.calls != 1 else ''} per {_window(rule.quota.window_ms)}; "
        f"retry in {retry_after_s:.1f}s.",
        retry_after_s=retry_after_s,
    )


def _window(ms: int) -> str:
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"
