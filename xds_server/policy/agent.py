"""The Agent kind: a caller the gateway can identify, and how it proves who it is."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from .base import DocumentModel, StrictModel, _check_header_value
from .identity import ApiKeyIdentity, JwtAgentIdentity, SpiffeId


def _check_identity_value(value: str) -> str:
    # The gateway refuses an identity header with a comma as ambiguous (two values joined).
    if "," in value:
        raise ValueError("cannot contain ',' (the gateway refuses a comma in an identity header as two values)")
    return value


class AgentIdentity(StrictModel):
    """How an agent proves who it is; at least one source must be set. Any one of them suffices."""

    header: Annotated[str, AfterValidator(_check_header_value), AfterValidator(_check_identity_value)] | None = Field(
        default=None,
        description="DEVELOPMENT ONLY: value of the gateway's trusted identity header that names this agent.",
    )
    spiffe: SpiffeId | None = Field(
        default=None, description="SPIFFE ID in the URI SAN of the agent's client certificate (mTLS)."
    )
    jwt: JwtAgentIdentity | None = Field(default=None, description="A JWT claim that names the agent.")
    api_key: ApiKeyIdentity | None = Field(default=None, description="An API key (kept out of the policy).")

    @model_validator(mode="after")
    def _some_source(self) -> AgentIdentity:
        if self.header is None and self.spiffe is None and self.jwt is None and self.api_key is None:
            raise PydanticCustomError(
                "identity_empty", "an agent identity needs at least one source (header, spiffe, jwt, apiKey)"
            )
        return self


class AgentSpec(StrictModel):
    """An agent: a caller the gateway can identify."""

    description: str | None = Field(default=None, description="Free text for humans.")
    identity: AgentIdentity | None = Field(
        default=None,
        description="How the gateway recognises this agent. Omitted only for the agent a Gateway's "
        "identity.anonymous names: callers with no credential become it.",
    )


class Agent(DocumentModel):
    """A calling agent, named in MCPPolicy rules."""

    kind: Literal["Agent"] = Field(description="Document kind.")
    spec: AgentSpec = Field(description="Agent settings.")
