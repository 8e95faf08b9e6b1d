"""What every routed kind shares (MCPBackend today; A2A agents and LLM providers next):
upstream endpoints, timeouts, the gateway serving it, user tokens, delegated
credentials, upstream TLS and how it uses the policy service.

A routed kind's spec subclasses `RouteSpec` and adds its own fields (its
route and upstream path defaults, its protocol's settings).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from xds_server.core.wire import DISCOVERY_PATH

from .base import Duration, HostName, Name, Port, StrictModel, _check_host, duration_ms, is_ip
from .identity import BackendAuth, BackendCredentials, UpstreamTls


class Endpoint(StrictModel):
    """One upstream address of an MCP server."""

    host: Annotated[str, AfterValidator(_check_host)] = Field(description="IP address or DNS name.")
    port: Port = Field(description="TCP port (1-65535).")


class Timeouts(StrictModel):
    """Upstream timeouts."""

    connect: Duration = Field(default="5s", description="TCP connect timeout, e.g. 5s; must be above 0.")
    request: Duration = Field(
        default="0s", description="Whole-request timeout; 0s (default) means none, as MCP streams are long-lived."
    )
    idle: Duration = Field(
        default="300s",
        description="Close a request or SSE stream after this long with no bytes either way; 0s means never. "
        "Clients reopen idle SSE streams; raise it for tools that run silently for longer.",
    )

    @model_validator(mode="after")
    def _connect_positive(self) -> Timeouts:
        if duration_ms(self.connect) == 0:
            raise PydanticCustomError("timeout_zero", "connect timeout must be above 0", {"at": "connect"})
        return self

    @property
    def connect_ms(self) -> int:
        return duration_ms(self.connect)

    @property
    def request_ms(self) -> int:
        return duration_ms(self.request)

    @property
    def idle_ms(self) -> int:
        return duration_ms(self.idle)


class RoutePolicyService(StrictModel):
    """How one route uses the policy service: its failure mode and time budget."""

    fail_open: bool = Field(
        default=False,
        description="When the policy service is down or slow: false (default) refuses the calls that need it; "
        "true lets them through unchecked.",
    )
    timeout: Duration = Field(default="250ms", description="How long Envoy waits for a policy decision.")

    @property
    def timeout_ms(self) -> int:
        return duration_ms(self.timeout)


class HealthCheck(StrictModel):
    """Envoy probes each endpoint and sends nothing to one that fails: new sessions and stateless
    requests go to the healthy ones; a legacy session on an unhealthy one is told to start anew."""

    interval: Duration = Field(default="5s", description="Time between probes of one endpoint.")
    timeout: Duration = Field(default="1s", description="How long one probe may take.")
    unhealthy_threshold: int = Field(default=2, ge=1, le=100, description="Failed probes in a row before an "
                                     "endpoint counts as unhealthy.")  # fmt: skip
    healthy_threshold: int = Field(default=1, ge=1, le=100, description="Passed probes in a row before it counts as "
                                   "healthy again.")  # fmt: skip
    path: str | None = Field(
        default=None,
        pattern=r"^/[\x21-\x7e]*$",
        description="HTTP GET this path on the endpoint and expect a 2xx; unset (default): a TCP connect probe "
        "(MCP defines no health endpoint).",
    )

    @model_validator(mode="after")
    def _sane(self) -> HealthCheck:
        if duration_ms(self.interval) == 0 or duration_ms(self.timeout) == 0:
            raise PydanticCustomError("health_check_zero", "health check interval and timeout must be above 0")
        return self


def refuse_reserved(route: str | None) -> None:
    """Refuse a route the gateway serves itself (discovery), for any routed kind's `route`."""
    if route == DISCOVERY_PATH:
        raise PydanticCustomError("route_reserved", "route {route} is the gateway's own (discovery)",
                                  {"route": DISCOVERY_PATH})  # fmt: skip


class RouteSpec(StrictModel):
    """The settings every routed kind has. Subclasses add `route`, their upstream path and protocol fields."""

    gateway: Name | None = Field(
        default=None, description="Gateway serving this backend; optional when exactly one Gateway exists."
    )
    endpoints: tuple[Endpoint, ...] = Field(
        default=(),
        max_length=64,
        description="Upstream addresses (1-64), load balanced. May be empty with runtimeEndpoints.",
    )
    runtime_endpoints: bool = Field(
        default=False,
        description="Let the endpoints change at run time without a policy commit (the control plane's endpoints "
        "API or endpoints file); those listed here serve until then. Runtime endpoints are IP addresses.",
    )
    timeouts: Timeouts = Field(default_factory=Timeouts, description="Connect and request timeouts to the backend.")
    hosts: tuple[HostName, ...] = Field(
        default=(),
        max_length=64,
        description="Serve this backend only to requests for these host names (Host, any port), on its route: "
        "several backends may then share a route, one per name (e.g. my-agent-1.actors.example, an actor's "
        "stable name); a backend on that route without hosts serves the other names.",
    )
    load_balancing: Literal["roundRobin", "leastRequest"] = Field(
        default="roundRobin",
        description="How endpoints share new sessions and stateless requests: roundRobin (default) or "
        "leastRequest (the endpoint with fewer requests in flight, of two picked at random).",
    )
    health_check: HealthCheck | None = Field(
        default=None, description="Active health checks of the endpoints (default: none; a dead endpoint is "
        "noticed when a request to it fails).",
    )  # fmt: skip
    policy_service: RoutePolicyService = Field(
        default_factory=RoutePolicyService, description="How this route uses the policy service."
    )
    auth: BackendAuth | None = Field(
        default=None,
        description="Require a user token from a JWT provider (MCP authorization spec: 401 with "
        "WWW-Authenticate and a protected-resource metadata document).",
    )
    credentials: BackendCredentials | None = Field(
        default=None,
        description="What the backend receives instead of the caller's credentials (needs `auth`): "
        "a token exchanged for the user's, or the user's stored secret.",
    )
    tls: UpstreamTls | None = Field(default=None, description="TLS to the backend.")

    @model_validator(mode="after")
    def _not_reserved(self) -> RouteSpec:
        refuse_reserved(getattr(self, "route", None))
        return self

    @model_validator(mode="after")
    def _endpoints_somewhere(self) -> RouteSpec:
        if not self.endpoints and not self.runtime_endpoints:
            raise PydanticCustomError(
                "no_endpoints", "a backend needs endpoints (or runtimeEndpoints: true, to set them at run time)"
            )
        if self.runtime_endpoints and any(not is_ip(e.host) for e in self.endpoints):
            # Runtime endpoints are IPs (EDS): a DNS name would make a moved backend change cluster type.
            raise PydanticCustomError(
                "runtime_endpoints_dns",
                "with runtimeEndpoints, list IP addresses only (DNS names belong to fixed endpoints)",
            )
        return self

    @model_validator(mode="after")
    def _credentials_need_a_user(self) -> RouteSpec:
        if self.credentials is not None and self.auth is None:
            raise PydanticCustomError(
                "credentials_without_auth",
                "credentials are issued for the user the agent acts for: set `auth` (a user token provider) too",
            )
        if self.credentials is not None and self.policy_service.fail_open:
            # Failing open would send requests on without the backend's credential
            # (and with the user's own token): refuse the combination.
            raise PydanticCustomError(
                "credentials_fail_open",
                "a backend with credentials must fail closed: remove policyService.failOpen",
            )
        return self
