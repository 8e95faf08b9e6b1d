"""The MCP kinds: MCPBackend (an MCP server behind the gateway), MCPPolicy (who may call which
tools, read which resources, get which prompts) and MCPToolLock (pinned tool descriptions)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from .base import DocumentModel, Duration, Glob, HttpPath, Name, StrictModel, duration_ms
from .routes import RoutePolicyService, RouteSpec
from .rules import RuleBase

GlobList = tuple[Glob, ...]

# ---------------------------------------------------------------- MCPBackend


class BackendPolicyService(RoutePolicyService):
    """How one backend uses the policy service."""

    list_filtering: bool = Field(
        default=True,
        description="Filter tools/list, prompts/list and resources/list per caller, so each agent sees only "
        "what it may use (the policy service rewrites the responses).",
    )


def _yaml_off(value: object) -> object:
    # YAML 1.1 (PyYAML) reads a bare `off` as false: `screening: off` means "off", as written.
    return "off" if value is False else value


class ToolGuard(StrictModel):
    """Rug-pull defences. Active when the backend has an MCPToolLock or screening is not off."""

    screening: Annotated[Literal["off", "flag", "block"], BeforeValidator(_yaml_off)] = Field(
        default="off",
        description="Screen tool descriptions for prompt injection (hidden instructions, invisible Unicode, "
        "instruction-like tags): flag logs it, block hides and refuses the tool.",
    )
    unpinned: Literal["hide", "allow"] = Field(
        default="hide", description="With an MCPToolLock: what to do with a tool the lock does not list."
    )
    refresh: Duration = Field(default="30s", description="How often the policy service re-reads the backend's tools.")

    @property
    def refresh_ms(self) -> int:
        return duration_ms(self.refresh)


class BackendTasks(StrictModel):
    """MCP tasks through the gateway (2025-11-25 tasks; the 2026-07-28 tasks extension)."""

    enabled: bool = Field(
        default=False,
        description="Let callers use the tasks they create on this backend, and only those: the gateway seals "
        "each task id it passes on with its owner (agent and user) and the tool that created it, and answers "
        "another caller's tasks/get, tasks/result, tasks/cancel or tasks/update as if the task did not exist. "
        "Task-creating tools/call answers and tasks/* requests then go through the policy service.",
    )


class MCPBackendSpec(RouteSpec):
    """An MCP server reachable through a gateway."""

    route: HttpPath | None = Field(
        default=None, description='Path clients use on the gateway; default "/mcp/<backend name>".'
    )
    path: HttpPath = Field(default="/mcp", description="MCP endpoint path on the backend.")
    policy_service: BackendPolicyService = Field(
        default_factory=BackendPolicyService,
        description="How this backend uses the policy service (conditions, quotas, approvals, list filtering).",
    )
    tool_guard: ToolGuard = Field(
        default_factory=ToolGuard,
        description="Defences against the backend changing its tools: pinning (MCPToolLock) and description screening.",
    )
    tasks: BackendTasks = Field(
        default_factory=BackendTasks, description="MCP tasks (long-running tool calls polled by the client)."
    )
    denied_tool_calls: Literal["error", "toolResult"] = Field(
        default="error",
        description="How a refused tools/call is answered: a JSON-RPC error (default), or a tool result with "
        "isError true and the reason in its text, so the model reads why and can choose another way.",
    )


class MCPBackend(DocumentModel):
    """An MCP server the gateway routes to."""

    kind: Literal["MCPBackend"] = Field(description="Document kind.")
    spec: MCPBackendSpec = Field(description="Backend settings.")

    @property
    def route_path(self) -> str:
        """The gateway path for this backend, with the default applied."""
        return self.spec.route or f"/mcp/{self.metadata.name}"

    @property
    def served_paths(self) -> tuple[str, ...]:
        """Every gateway path the backend is served at (no two routed documents may share one)."""
        return (self.route_path,)


# ---------------------------------------------------------------- MCPPolicy


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


class Rule(RuleBase):
    """Grants the listed agents access to matching tools, resources and prompts.

    Globs use only `*` (any run of characters) and `?` (one character); every
    other character is literal. An omitted list grants nothing of that kind.
    """

    tools: GlobList = Field(default=(), min_length=1, description="Tool name globs (tools/call).")
    resources: GlobList = Field(
        default=(), min_length=1, description="Resource URI globs (resources/read, resources/subscribe)."
    )
    prompts: GlobList = Field(default=(), min_length=1, description="Prompt name globs (prompts/get).")
    arguments: dict[ArgumentName, ArgumentMatch] = Field(
        default_factory=dict,
        description='Conditions on named tool arguments, checked natively by Envoy, e.g. {repo: {prefix: "acme/"}}. '
        "Every one must hold.",
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


class MCPPolicySpec(StrictModel):
    """Rules for one backend. Everything no rule allows is denied."""

    backend: Name = Field(description="Name of the MCPBackend these rules apply to.")
    rules: tuple[Rule, ...] = Field(min_length=1, description="Allow rules; their union is what is allowed.")


class MCPPolicy(DocumentModel):
    """Access rules for one MCP backend."""

    kind: Literal["MCPPolicy"] = Field(description="Document kind.")
    spec: MCPPolicySpec = Field(description="Policy rules.")


# ---------------------------------------------------------------- MCPToolLock

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class PinnedTool(StrictModel):
    """One tool as `agentxds pin` saw it."""

    name: str = Field(min_length=1, description="Tool name.")
    description_sha256: Sha256 = Field(description="sha256 (hex) of the tool's description.")
    input_schema_sha256: Sha256 = Field(description="sha256 (hex) of the tool's inputSchema as canonical JSON.")


class MCPToolLockSpec(StrictModel):
    """The pinned tools of one backend. Written by `agentxds pin`; kept in Git."""

    backend: Name = Field(description="The MCPBackend whose tools are pinned.")
    tools: tuple[PinnedTool, ...] = Field(description="Pinned tools, sorted by name.")


class MCPToolLock(DocumentModel):
    """Pins a backend's tools: a pinned tool that changes is hidden and refused until the lock is updated."""

    kind: Literal["MCPToolLock"] = Field(description="Document kind.")
    spec: MCPToolLockSpec = Field(description="The pinned tools.")
