"""The VirtualMCPServer kind: one MCP endpoint federating several MCPBackends, with curation.

Clients see one server. Its tools and prompts are the members' under
client-visible names: `<prefix><separator><name>` (the prefix defaults to
the member's backend name), prefixed always, only where two members share a
name, or never (then a shared name is refused when the lists are read, and
reported). Curation works on those names, in this order: `include` and
`exclude` (globs), then `rename`, then `descriptions`. What a client sees
after that is what MCPPolicy rules name: a policy for a virtual server names
its tools as its clients see them (`github__whoami`, or the new name of a
renamed tool), never a member's own name. The members' own MCPPolicies
govern their own routes only.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from .base import DocumentModel, Duration, Glob, HttpPath, Name, StrictModel, duration_ms
from .routes import RoutePolicyService, refuse_reserved

#: MCP protocol revisions a member may speak.
Revision = Literal["2026-07-28", "2025-11-25"]
#: The characters a visible tool or prompt name may have (the MCP spec's tool-name charset).
VISIBLE_NAME_PATTERN = r"^[A-Za-z0-9_.\-/]{1,128}$"
VisibleName = Annotated[str, Field(pattern=VISIBLE_NAME_PATTERN)]
Prefix = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]


class Member(StrictModel):
    """One MCPBackend a virtual server federates."""

    backend: Name = Field(description="The MCPBackend (not another virtual server).")
    prefix: Prefix | None = Field(default=None, description="Prefix of its names; default the backend's name.")
    revisions: tuple[Revision, ...] = Field(
        default=("2026-07-28", "2025-11-25"),
        min_length=1,
        description="The MCP revisions the backend speaks. With 2026-07-28, prefixed tools/call and prompts/get "
        "of 2026-07-28 clients are routed to it by Envoy alone; otherwise the gateway holds a legacy session "
        "with it and passes calls on.",
    )


class Naming(StrictModel):
    """How members' names become the names clients see."""

    separator: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,8}$")] = Field(
        default="__", description='Between the prefix and the name (default "__").'
    )
    mode: Literal["always", "onConflict", "never"] = Field(
        default="always",
        description="always (default: every name prefixed; calls routed by Envoy alone), onConflict (only names "
        "two members share), never (a name two members share is hidden and reported).",
    )


class Curation(StrictModel):
    """Which tools clients see, under which names and descriptions (on the prefixed names)."""

    include: tuple[Glob, ...] = Field(default=("*",), min_length=1, description="Tool globs shown (default all).")
    exclude: tuple[Glob, ...] = Field(default=(), description="Tool globs hidden (and refused), after include.")
    rename: dict[VisibleName, VisibleName] = Field(
        default_factory=dict, description="New names for tools: {prefixed name: new name}."
    )
    descriptions: dict[VisibleName, str] = Field(
        default_factory=dict, description="Descriptions replacing the backend's: {name clients see: text}."
    )

    @model_validator(mode="after")
    def _renames_unique(self) -> Curation:
        targets = list(self.rename.values())
        if len(set(targets)) != len(targets):
            raise PydanticCustomError("rename_clash", "two tools are renamed to the same name")
        if clash := sorted(set(targets) & set(self.rename)):
            raise PydanticCustomError("rename_chain", "{names} is both renamed and a new name",
                                      {"names": ", ".join(clash)})  # fmt: skip
        return self


class FanOut(StrictModel):
    """How the gateway reads its members' lists (initialize, server/discover, */list)."""

    timeout: Duration = Field(
        default="2s", description="How long a list waits for a member; a slower member is left out of that answer."
    )
    cache: Duration = Field(
        default="5s",
        description="How long a member's lists are reused (0s: read every time). A member that stops answering "
        "stays listed at most this long (a call to it through the policy service ends it at once).",
    )

    @property
    def timeout_ms(self) -> int:
        return duration_ms(self.timeout)

    @property
    def cache_ms(self) -> int:
        return duration_ms(self.cache)


class VirtualMCPServerSpec(StrictModel):
    """A virtual MCP server on a gateway."""

    gateway: Name | None = Field(
        default=None, description="Gateway serving it; optional when exactly one Gateway exists."
    )
    route: HttpPath | None = Field(default=None, description='Path clients use; default "/vmcp/<name>".')
    backends: tuple[Member, ...] = Field(min_length=1, max_length=32, description="The MCPBackends it federates.")
    naming: Naming = Field(default_factory=Naming, description="How names are prefixed.")
    tools: Curation = Field(default_factory=Curation, description="Which tools clients see, and as what.")
    fan_out: FanOut = Field(default_factory=FanOut, description="How members' lists are read.")
    request_timeout: Duration = Field(default="60s", description="How long a call may take.")
    policy_service: RoutePolicyService = Field(
        default_factory=RoutePolicyService, description="How its calls use the policy service (conditions, quotas)."
    )
    list_filtering: bool = Field(
        default=True, description="Filter its lists per caller, so each agent sees only what it may use."
    )

    @model_validator(mode="after")
    def _members_distinct(self) -> VirtualMCPServerSpec:
        refuse_reserved(self.route)
        names = [m.backend for m in self.backends]
        if len(set(names)) != len(names):
            raise PydanticCustomError("member_twice", "a backend is listed twice")
        prefixes = [m.prefix or m.backend for m in self.backends]
        if len(set(prefixes)) != len(prefixes):
            raise PydanticCustomError("prefix_twice", "two backends have the same prefix")
        starts = sorted(p + self.naming.separator for p in prefixes)
        # A name starting with both would belong to both: Envoy and the lists could disagree on whose it is.
        for a, b in zip(starts, starts[1:], strict=False):
            if b.startswith(a):
                raise PydanticCustomError("prefix_overlap", "prefixes {a!r} and {b!r} overlap (with the separator): "
                                          "a name could carry both", {"a": a, "b": b})  # fmt: skip
        for new in self.tools.rename.values():
            if any(new.startswith(start) for start in starts):
                raise PydanticCustomError("rename_prefixed", "new name {name!r} starts like a backend's prefixed "
                                          "names: give it a name of its own", {"name": new})  # fmt: skip
        return self


class VirtualMCPServer(DocumentModel):
    """One MCP endpoint federating several MCP backends."""

    kind: Literal["VirtualMCPServer"] = Field(description="Document kind.")
    spec: VirtualMCPServerSpec = Field(description="Virtual server settings.")

    @property
    def route_path(self) -> str:
        return self.spec.route or f"/vmcp/{self.metadata.name}"

    @property
    def served_paths(self) -> tuple[str, ...]:
        return (self.route_path,)

    def prefix_of(self, backend: str) -> str:
        member = next(m for m in self.spec.backends if m.backend == backend)
        return member.prefix or member.backend
