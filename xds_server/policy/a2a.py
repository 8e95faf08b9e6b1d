"""The A2A kinds: A2AAgent (an agent reachable over A2A behind the gateway) and A2APolicy (which
calling agents may use which of its operations, and see which of its skills).

A2A names its operations differently in its two generations (0.3:
`message/send`, `tasks/get`, ...; 1.0: `SendMessage`, `GetTask`, ...); a
rule names the operation once, by the names below, and means both
(translate/protocols/a2a.py has the table). `ListTasks` is never allowed:
an agent's list holds every caller's tasks, and the gateway cannot limit it
to the caller's own without a store.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from .base import DocumentModel, Glob, HttpPath, Name, StrictModel
from .routes import RoutePolicyService, RouteSpec
from .rules import RuleBase

#: The operations a rule may grant (each stands for its 0.3 and 1.0 method names).
Operation = Literal["send", "stream", "getTask", "cancelTask", "subscribe", "pushNotifications", "extendedCard"]
#: What a rule grants when it names no operation: talking to the agent and following one's own tasks.
DEFAULT_OPERATIONS: tuple[Operation, ...] = ("send", "stream", "getTask", "cancelTask", "subscribe")
#: Where an A2A agent serves its AgentCard (A2A 0.3 and 1.0), on the agent and on its gateway route.
WELL_KNOWN_CARD = "/.well-known/agent-card.json"


Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class PinnedSkill(StrictModel):
    """One skill as it was screened (the runtime registry pins what it registered)."""

    id: str = Field(min_length=1, description="The skill's id.")
    sha256: Sha256 = Field(description="sha256 (hex) of its name, description, tags and examples as canonical JSON.")


class A2AAgentSpec(RouteSpec):
    """An A2A agent reachable through a gateway (JSON-RPC binding, A2A 0.3 or 1.0)."""

    route: HttpPath | None = Field(
        default=None,
        description='Path clients use on the gateway (the JSON-RPC endpoint); default "/a2a/<agent name>". '
        "The agent's card is served at <route>/.well-known/agent-card.json.",
    )
    path: HttpPath = Field(default="/", description="The JSON-RPC endpoint's path on the agent.")
    card_path: HttpPath = Field(default=WELL_KNOWN_CARD, description="Where the agent serves its AgentCard.")
    policy_service: RoutePolicyService = Field(
        default_factory=RoutePolicyService,
        description="How this agent's route uses the policy service (every A2A request goes through it: task "
        "ids are sealed per caller, cards are filtered per caller).",
    )
    pinned_skills: tuple[PinnedSkill, ...] | None = Field(
        default=None,
        description="Pin the card's skills: a skill not listed, or whose name, description, tags or examples "
        "changed, is left out of every card until pinned again (the runtime registry pins what it screened). "
        "Unset (default): no pins; skills whose description screens as an injection attempt are left out anyway.",
    )

    @model_validator(mode="after")
    def _no_hosts(self) -> A2AAgentSpec:
        if self.hosts:
            # The card rewrite names the route's path; shared routes by host are MCP's (actors) only.
            raise PydanticCustomError("a2a_hosts", "hosts is not supported for A2A agents: give each its own route")
        return self


class A2AAgent(DocumentModel):
    """An A2A agent the gateway routes to."""

    kind: Literal["A2AAgent"] = Field(description="Document kind.")
    spec: A2AAgentSpec = Field(description="Agent settings.")

    @property
    def route_path(self) -> str:
        """The gateway path of the agent's JSON-RPC endpoint, with the default applied."""
        return self.spec.route or f"/a2a/{self.metadata.name}"

    @property
    def card_route(self) -> str:
        """The gateway path of the agent's card."""
        return self.route_path.rstrip("/") + WELL_KNOWN_CARD

    @property
    def served_paths(self) -> tuple[str, ...]:
        """Every gateway path the agent is served at: its endpoint and its card."""
        return (self.route_path, self.card_route)


class A2ARule(RuleBase):
    """Grants the listed agents some operations of the A2A agent, and shows them some of its skills.

    A2A messages need not name a skill: `skills` decides what the caller's copy
    of the AgentCard lists (and the extended card), so a caller is never told
    of a skill it was not granted, and a message naming one in its metadata
    (`skillId`) must name a granted one. To keep a skill's work from a caller
    for certain, serve it as an agent of its own.
    """

    operations: tuple[Operation, ...] = Field(
        default=DEFAULT_OPERATIONS,
        min_length=1,
        description="Operations granted: send, stream, getTask, cancelTask, subscribe (the default: all five), "
        "pushNotifications (the task push-notification config methods), extendedCard. Task operations reach only "
        "the caller's own tasks.",
    )
    skills: tuple[Glob, ...] = Field(
        default=("*",),
        min_length=1,
        description="Skill id globs the caller's card lists and its messages may name "
        "(default: every skill); only in rules granting send or stream.",
    )

    @model_validator(mode="after")
    def _conditions_on_messages(self) -> A2ARule:
        if self.is_conditional and not set(self.operations) <= {"send", "stream"}:
            raise PydanticCustomError(
                "a2a_condition_scope",
                "when, quota and requireApproval apply to send and stream only: put the other operations in a "
                "rule of their own",
            )
        return self


class A2APolicySpec(StrictModel):
    """Rules for one A2A agent. Everything no rule allows is denied."""

    a2a_agent: Name = Field(alias="a2aAgent", description="Name of the A2AAgent these rules apply to.")
    rules: tuple[A2ARule, ...] = Field(min_length=1, description="Allow rules; their union is what is allowed.")


class A2APolicy(DocumentModel):
    """Access rules for one A2A agent."""

    kind: Literal["A2APolicy"] = Field(description="Document kind.")
    spec: A2APolicySpec = Field(description="Policy rules.")
