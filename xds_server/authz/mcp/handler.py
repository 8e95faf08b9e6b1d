"""The policy service's MCP handler: `tools/call` as the call, the tool guard, lists per caller.

- A call is a `tools/call`: its target is the tool name, its arguments the
  tool's arguments (parsed from the raw body, so the id keeps its JSON type).
- The tool guard withholds a pinned tool that changed, a tool the lock does
  not list (unless `unpinned: allow`) and, with `screening: block`, a tool
  whose description failed screening (-32003 `tool_changed`, naming why).
  Verdicts come from the list answers that pass (`rewrite_response`) and
  from re-reading each guarded backend's tools every `toolGuard.refresh`.
- List responses (`tools/list`, `prompts/list`, `resources/list`,
  `resources/templates/list`) keep only what the caller may use
  (`access.may_use`) and, on a guarded backend, no withheld tool.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any, ClassVar

from xds_server.authz.jsonrpc import error_body
from xds_server.authz.mcp import access
from xds_server.authz.mcp.listing import item_name, rewrite_list_response
from xds_server.authz.mcp.tasks import McpTaskSealing
from xds_server.authz.mcp.tool_guard import GuardState, judge_unseen
from xds_server.authz.protocols import (
    Call,
    Exchange,
    IdSealing,
    LogDecision,
    MalformedCall,
    NotACall,
    ProtocolHandler,
    Refusal,
    Refused,
    ResponseRewrite,
)
from xds_server.authz.sealing import Sealer
from xds_server.authz.state import PolicyIndex, RouteView
from xds_server.core import errors
from xds_server.core.errors import ErrorKind
from xds_server.core.tool_results import refused_call_result
from xds_server.core.wire import POLICY_SERVICE_SECRET_HEADER
from xds_server.ir.mcp import McpRouteIR, mcp_part
from xds_server.ir.principals import JwtPayloads
from xds_server.ir.types import RouteIR

log = logging.getLogger(__name__)


def parse_tool_call(body: str | bytes) -> Call:
    """The id, tool name and arguments of a `tools/call` body; raises NotACall.

    Envoy's MCP filter has already rejected anything that is not one JSON-RPC
    request, so this failing means a disagreement to refuse, not to guess at.
    """
    try:
        message = json.loads(body)
    except ValueError as exc:
        raise NotACall(f"body is not JSON: {exc}") from None
    except RecursionError:
        raise NotACall("body is nested too deeply") from None
    if not isinstance(message, dict) or message.get("method") != "tools/call":
        raise NotACall("not a tools/call request")
    params = message.get("params")
    if not isinstance(params, dict) or not isinstance(params.get("name"), str):
        raise MalformedCall("tools/call without params.name")
    arguments = params.get("arguments", {})
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise MalformedCall("params.arguments is not an object")
    return Call(message.get("id"), params["name"], arguments)


class McpHandler(ProtocolHandler):
    kind: ClassVar[str] = McpRouteIR.KIND
    noun: ClassVar[str] = "tool"
    denied = errors.TOOL_DENIED

    def __init__(self, log_decision: LogDecision) -> None:
        self.guard = GuardState()
        self._sealing = McpTaskSealing()
        self._log_decision = log_decision
        self._refreshers: dict[str, asyncio.Task[None]] = {}

    # -- calls ---------------------------------------------------------------

    def parse_call(self, body: str | bytes) -> Call:
        return parse_tool_call(body)

    def withheld(self, view: RouteView, call: Call) -> Refusal | None:
        part = mcp_part(view.route)
        if part.tool_guard is None:
            return None
        verdict = self.guard.verdict(view.name, call.target)
        if verdict is None:  # never seen listed: a backend may serve a tool it does not list
            verdict = judge_unseen(call.target, part.tool_guard)
        if verdict is None or verdict.usable:
            return None
        why = "; ".join(verdict.reasons) or "the tool failed the gateway's checks"
        return Refusal(
            errors.TOOL_DRIFTED,
            f"Tool '{call.target}' on backend '{view.name}' is withheld: {why}",
            {"tool": call.target, "backend": view.name, "details": why},
            rule="toolGuard",
        )

    def refusal_as_result(
        self, view: RouteView, call: Call, kind: ErrorKind, message: str, data: Mapping[str, Any]
    ) -> str | None:
        if not mcp_part(view.route).refusals_as_tool_results:
            return None
        if kind is errors.TOOL_DRIFTED:
            # The guard's reasons quote the backend's own text (a screened description): never
            # put that into what the model reads; it stays in _meta for the operator.
            message = f"Tool '{call.target}' on backend '{view.name}' is withheld by the gateway's tool guard"
        return json.dumps(refused_call_result(call.request_id, kind, message, **data), separators=(",", ":"))

    def unconditionally_allowed(self, view: RouteView, agent: str, call: Call, jwt: JwtPayloads) -> bool:
        return access.has_unconditional_tool(view, agent, call.target, jwt, call.arguments)

    # -- lists -----------------------------------------------------------------

    def rewrite_response(
        self, view: RouteView, agents: tuple[str, ...], jwt: JwtPayloads, body: bytes, content_type: str
    ) -> ResponseRewrite:
        guard = mcp_part(view.route).tool_guard

        def keep(kind: str, item: Mapping[str, Any]) -> bool:
            if not agents:
                return False
            name = item_name(kind, item)
            if not any(access.may_use(view, a, kind, name, jwt) for a in agents):
                return False
            if kind == "tools" and guard is not None:
                verdict = self.guard.observe(view.name, [item], guard).get(name)
                return verdict is None or verdict.usable
            return True

        result = rewrite_list_response(body, content_type, keep)
        if result.removed:
            self._log_decision({"backend": view.name, "agent": agents[0] if agents else None,
                                "user": view.user_claims(jwt).get("sub"), "list": True, "hidden": list(result.removed)})  # fmt: skip
        return ResponseRewrite(result.body, not result.parse_failed, result.removed)

    # -- task ids ----------------------------------------------------------------

    @property
    def sealing(self) -> IdSealing:
        return self._sealing

    def exchange(self, view: RouteView, sealer: Sealer, agents: tuple[str, ...], jwt: JwtPayloads,
                 headers: Mapping[str, str], metadata: Mapping[str, Any], body: bytes | None) -> Exchange | Refused:  # fmt: skip
        # MCP routes never ask for one (translate/protocols/mcp.py): refuse what cannot be checked.
        return Refused(502, error_body(None, errors.GATEWAY_ERROR, "The request could not be checked, so it is "
                                       "refused"), "no_exchange")  # fmt: skip

    # -- following the policies --------------------------------------------------

    def update(self, index: PolicyIndex, running: bool) -> None:
        """Forget backends no longer guarded; (re)start the tool refresh of the guarded ones."""
        guarded = {
            name: view
            for name, view in index.routes.items()
            if isinstance(view.route.protocol, McpRouteIR) and view.route.protocol.tool_guard is not None
        }
        for name in list(self._refreshers):
            if name not in guarded:
                self._refreshers.pop(name).cancel()
                self.guard.forget(name)
        if not running:
            return
        for name, view in guarded.items():
            # Refresh now, with the new guard settings.
            old = self._refreshers.pop(name, None)
            if old is not None:
                old.cancel()
            # A virtual server's tools are read from its front, this service's own HTTP port, which serves
            # the gateway's requests with its policy-service secret only.
            secret = view.gateway.policy_service_secret
            front = mcp_part(view.route).virtual is not None
            headers = {POLICY_SERVICE_SECRET_HEADER: secret.value} if front and secret is not None else {}
            self._refreshers[name] = asyncio.create_task(
                self._refresh_loop(view.route, headers), name=f"refresh-{name}"
            )

    async def _refresh_loop(self, route: RouteIR, headers: Mapping[str, str]) -> None:
        from xds_server.authz.mcp.pin import fetch_tools
        from xds_server.authz.upstream_tls import upstream_url

        guard = mcp_part(route).tool_guard
        assert guard is not None
        if not route.upstream.endpoints:  # runtimeEndpoints not set yet: the next update starts the refresh
            log.warning("tool guard of %s: the backend has no endpoint yet; its tools are not read", route.name)
            return
        url = upstream_url(route.upstream)
        while True:
            try:
                tools = await fetch_tools(url, headers=headers, timeout=10, tls=route.upstream.tls)
                verdicts = self.guard.observe(route.name, tools, guard)
                withheld = sorted(n for n, v in verdicts.items() if not v.usable)
                if withheld:
                    log.warning("backend %s: tools withheld by the tool guard: %s", route.name, ", ".join(withheld))
                # screening: flag (and unpinned: allow) let a tool through, and say why here.
                flagged = [f"{n} ({'; '.join(v.flags)})" for n, v in sorted(verdicts.items()) if v.usable and v.flags]
                if flagged:
                    log.warning("backend %s: tools flagged by the tool guard, still usable: %s", route.name,
                                ", ".join(flagged))  # fmt: skip
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the backend may be down; the next round tries again
                log.warning("backend %s: could not read its tools (%s)", route.name, exc)
            await asyncio.sleep(guard.refresh_ms / 1000)

    async def stop(self) -> None:
        tasks = list(self._refreshers.values())
        self._refreshers.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: PERF203 (each task ends on its own)
                pass
