"""What every kind of access rule shares: which agents, which users behind them, and the
conditions the policy service checks (CEL `when`, quotas, approvals).

A protocol's rule (MCP's `Rule`, in mcp.py) subclasses `RuleBase` and adds
what it grants: tools, resources and prompts for MCP.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from xds_server.core.cel import ConditionError, compile_condition

from .base import AGENT_REF_PATTERN, Duration, StrictModel, duration_ms
from .identity import UserMatch

AgentRef = Annotated[str, Field(pattern=AGENT_REF_PATTERN)]


def _check_condition(value: str) -> str:
    try:
        compile_condition(value)
    except ConditionError as exc:
        raise PydanticCustomError("cel", "invalid CEL condition: {detail}", {"detail": str(exc)}) from None
    return value


class Quota(StrictModel):
    """A call budget, counted per tool."""

    calls: int = Field(ge=1, le=1_000_000, description="Calls allowed per window.")
    per: Duration = Field(description="The window, e.g. 1m or 1h (a sliding window).")
    by: Literal["agent", "user", "agent+user"] = Field(
        default="agent", description="Whose calls are counted together: each agent, each user, or each pair."
    )

    @model_validator(mode="after")
    def _window_positive(self) -> Quota:
        if duration_ms(self.per) == 0:
            raise PydanticCustomError("window_zero", "a quota window must be above 0")
        return self

    @property
    def window_ms(self) -> int:
        return duration_ms(self.per)


class RuleBase(StrictModel):
    """The neutral part of a rule: who it is for and what must hold besides the grant itself."""

    agents: tuple[AgentRef, ...] = Field(min_length=1, description='Agent names, or "*" for every agent.')
    description: str | None = Field(default=None, description="Free text for humans.")
    when: Annotated[str, AfterValidator(_check_condition)] | None = Field(
        default=None,
        description="CEL condition the call must meet, over args (the tool's arguments), agent.name, user, "
        'tool and now; e.g. args.repo.startsWith("acme/"). Checked by the policy service.',
    )
    quota: Quota | None = Field(default=None, description="At most this many calls of each tool per window.")
    require_approval: bool = Field(
        default=False,
        description="Each call needs an operator's approval (agentxds approvals approve ID); the same call "
        "retried after approval passes once.",
    )
    approval_ttl: Duration = Field(default="15m", description="How long an approval request (or approval) stays valid.")
    users: UserMatch | None = Field(
        default=None,
        description="Only when the agent acts for a matching user (from the user's JWT); checked by Envoy.",
    )

    @property
    def is_conditional(self) -> bool:
        """Whether the policy service checks this rule on each call (a condition, a quota or an approval)."""
        return self.when is not None or self.quota is not None or self.require_approval

    @property
    def approval_ttl_ms(self) -> int:
        return duration_ms(self.approval_ttl)
