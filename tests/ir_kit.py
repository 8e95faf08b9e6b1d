"""IR built by hand for unit tests of the translators and the policy service.

The IR builder is what real runs use; these helpers make the same shapes
directly (a gateway with one listener, MCP routes with their decision needs
derived exactly as the builder derives them), so a test can state only what
it is about.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from xds_server.ir import materials
from xds_server.ir.glob import compile_globs
from xds_server.ir.mcp import McpAllowsIR, McpRouteIR, ToolGuardIR, with_decisions
from xds_server.ir.types import (
    AgentIR,
    BackendAuthIR,
    ConditionalRuleIR,
    CredentialsIR,
    DownstreamTlsIR,
    EndpointIR,
    GatewayIR,
    GrantIR,
    IdentityIR,
    ListenerIR,
    PolicyServiceUse,
    RouteIR,
    UpstreamIR,
    UpstreamTlsIR,
    UserMatchIR,
)


def grant(
    agent: str,
    tools: list[str] | tuple[str, ...] = (),
    user: UserMatchIR | None = None,
    *,
    resources: list[str] | tuple[str, ...] = (),
    prompts: list[str] | tuple[str, ...] = (),
    conditional_tools: list[str] | tuple[str, ...] = (),
    sources: tuple[str, ...] = ("p/rules[0]",),
) -> GrantIR:
    """An MCP grant: `tools` without conditions, `conditional_tools` under a rule's conditions."""
    allows = McpAllowsIR(
        tools=compile_globs(list(tools)),
        resources=compile_globs(list(resources)),
        prompts=compile_globs(list(prompts)),
        conditional_tools=compile_globs(list(conditional_tools)),
    )
    return GrantIR(agent=agent, user=user, sources=sources, allows=allows)


def route(
    name: str,
    *,
    grants: tuple[GrantIR, ...] = (),
    endpoints: tuple[EndpointIR, ...] = (EndpointIR("127.0.0.1", 9),),
    path: str | None = None,
    upstream_path: str = "/mcp",
    tls: UpstreamTlsIR | None = None,
    auth: BackendAuthIR | None = None,
    credentials: CredentialsIR | None = None,
    conditional_rules: tuple[ConditionalRuleIR, ...] = (),
    tool_guard: ToolGuardIR | None = None,
    list_filtering: bool = False,
    fail_open: bool = False,
    timeout_ms: int = 250,
    connect_timeout_ms: int = 1000,
) -> RouteIR:
    """An MCP route (its decision needs derived as the IR builder derives them)."""
    return with_decisions(
        RouteIR(
            name=name,
            path=path or f"/mcp/{name}",
            upstream=UpstreamIR(endpoints, upstream_path, connect_timeout_ms, tls),
            request_timeout_ms=0,
            idle_timeout_ms=0,
            grants=grants,
            protocol=McpRouteIR(list_filtering=list_filtering, tool_guard=tool_guard),
            conditional_rules=conditional_rules,
            policy_service=PolicyServiceUse(fail_open=fail_open, timeout_ms=timeout_ms),
            auth=auth,
            credentials=credentials,
        )
    )


def gateway(
    name: str = "gw",
    *,
    agents: tuple[AgentIR, ...] = (),
    routes: tuple[RouteIR, ...] = (),
    identity: IdentityIR | None = None,
    port: int = 10400,
    max_request_body_bytes: int = 8192,
    connection_buffer_bytes: int = 65536,
    tls: DownstreamTlsIR | None = None,
    **kw: Any,
) -> GatewayIR:
    """A gateway with one listener on 127.0.0.1:`port`."""
    listener = ListenerIR("127.0.0.1", port, max_request_body_bytes, connection_buffer_bytes, routes, tls)
    return GatewayIR(name=name, identity=identity or IdentityIR("x-agent-id"), agents=agents, listener=listener, **kw)


def with_routes(gw: GatewayIR, *routes: RouteIR) -> GatewayIR:
    return replace(gw, listener=replace(gw.listener, routes=routes))


def upstream_tls(
    ca_file: str | None = None,
    sni: str | None = None,
    certificate_file: str | None = None,
    private_key_file: str | None = None,
) -> UpstreamTlsIR:
    """Upstream TLS with its files read as the IR builder reads them (raises MaterialError)."""
    return UpstreamTlsIR(
        ca_file,
        materials.pem_text(ca_file, "CA file") if ca_file else None,
        sni,
        certificate_file,
        materials.pem_text(certificate_file, "certificate") if certificate_file else None,
        materials.private_key_text(private_key_file, "private key") if private_key_file else None,
    )
