"""MCPPolicy: the rules saying which agents may call which tools, read which
resources and get which prompts, and under which conditions (native argument
matches, CEL conditions, quotas, approvals, users behind the agent)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from .base import (
    AGENT_REF_PATTERN,
    Duration,
    Glob,
    Metadata,
    Name,
    StrictModel,
    duration_ms,
)
from .identity import UserMatch

AgentRef = Annotated[str, Field(pattern=AGENT_REF_PATTERN)]
GlobList = tuple[Glob, ...]


def _check_condition(value: str) -> str:
    # Imported here: the CEL library is only needed when a policy has conditions.
    from xds_server.core.cel import ConditionError, compile_condition

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


def _check_regex(value: str) -> str:
    # Envoy uses RE2; the common subset (no backreferences or lookarounds) is checked here.
    if re.search(r"\\[1-9]|\(\?[=!<]", value):
        raise ValueError("backreferences and lookarounds are not supported (Envoy uses RE2)")
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from None
    return value


class ArgumentMatch(StrictModel):
    """A condition on one tool argument, checked natively by Envoy (exactly one field).

    The argument must be a string; any other JSON type (or a missing argument) does not match.
    """

    exact: str | None = Field(default=None, description="The argument equals this string.")
    prefix: str | None = Field(default=None, min_length=1, description="The argument starts with this string.")
    suffix: str | None = Field(default=None, min_length=1, description="The argument ends with this string.")
    regex: Annotated[str, AfterValidator(_check_regex)] | None = Field(
        default=None, description="The whole argument matches this RE2 regular expression."
    )
    one_of: tuple[str, ...] | None = Field(
        default=None, min_length=1, description="The argument is one of these strings."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ArgumentMatch:
        given = [v for v in (self.exact, self.prefix, self.suffix, self.regex, self.one_of) if v is not None]
        if len(given) != 1:
            raise PydanticCustomError("argument_match", "give exactly one of exact, prefix, suffix, regex, oneOf")
        return self


ArgumentName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")]


class Rule(StrictModel):
    """Grants the listed agents access to matching tools, resources and prompts.

    Globs use only `*` (any run of characters) and `?` (one character); every
    other character is literal. An omitted list grants nothing of that kind.
    """

    agents: tuple[AgentRef, ...] = Field(min_length=1, description='Agent names, or "*" for every agent.')
    tools: GlobList = Field(default=(), min_length=1, description="Tool name globs (tools/call).")
    resources: GlobList = Field(
        default=(), min_length=1, description="Resource URI globs (resources/read, resources/subscribe)."
    )
    prompts: GlobList = Field(default=(), min_length=1, description="Prompt name globs (prompts/get).")
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
    arguments: dict[ArgumentName, ArgumentMatch] = Field(
        default_factory=dict,
        description='Conditions on named tool arguments, checked natively by Envoy, e.g. {repo: {prefix: "acme/"}}. '
        "Every one must hold.",
    )
    users: UserMatch | None = Field(
        default=None,
        description="Only when the agent acts for a matching user (from the user's JWT); checked by Envoy.",
    )

    @model_validator(mode="after")
    def _grants_something(self) -> Rule:
        if not (self.tools or self.resources or self.prompts):
            raise PydanticCustomError("rule_empty", "a rule must grant at least one of tools, resources, prompts")
        if self.arguments and (self.resources or self.prompts):
            raise PydanticCustomError(
                "rule_arguments_scope",
                "arguments apply to tool calls only: put resources and prompts in a rule of their own",
            )
        if self.arguments and self.is_conditional:
            raise PydanticCustomError(
                "rule_arguments_conditional",
                "a rule checked by the policy service (when, quota, requireApproval) states argument conditions in "
                '`when`, e.g. args.repo.startsWith("acme/")',
            )
        if self.is_conditional and (self.resources or self.prompts):
            raise PydanticCustomError(
                "rule_condition_scope",
                "when, quota and requireApproval apply to tool calls only: put resources and prompts in a rule "
                "of their own",
            )
        return self

    @property
    def is_conditional(self) -> bool:
        return self.when is not None or self.quota is not None or self.require_approval

    @property
    def approval_ttl_ms(self) -> int:
        return duration_ms(self.approval_ttl)


class MCPPolicySpec(StrictModel):
    """Rules for one backend. Everything no rule allows is denied."""

    backend: Name = Field(description="Name of the MCPBackend these rules apply to.")
    rules: tuple[Rule, ...] = Field(min_length=1, description="Allow rules; their union is what is allowed.")


class MCPPolicy(StrictModel):
    """Access rules for one MCP backend."""

    api_version: Literal["agentxds.dev/v1"] = Field(description="Always agentxds.dev/v1.")
    kind: Literal["MCPPolicy"] = Field(description="Document kind.")
    metadata: Metadata = Field(description="Name, labels and annotations.")
    spec: MCPPolicySpec = Field(description="Policy rules.")
