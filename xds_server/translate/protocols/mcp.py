"""MCP routes in Envoy: the MCP filter, legacy sessions, RBAC on MCP metadata, MCP's local replies.

- **Filters.** `envoy.filters.http.mcp` deframes the JSON-RPC body into
  metadata (method, id, params.name, params.uri, named arguments) and refuses
  what is not one MCP message (REJECT_NO_MCP), duplicate keys included: with
  them Envoy would match RBAC on one `method` value while the backend may act
  on another. Sent as a TypedStruct because xds-protos lacks
  `reject_duplicate_keys`. Its body limit is kept at or below the connection
  buffer (a larger body with a smaller buffer limit hangs); the policy model
  guarantees it. `envoy.filters.http.stateful_session` with the envelope on
  `mcp-session-id` seals the upstream host into legacy session ids, so any
  Envoy replica routes a session to the backend that created it.
- **RBAC permissions** per grant, OR-ed: the methods that carry no tool
  (lifecycle, lists, notifications, the client's answers to server requests,
  the GET stream, session DELETE); `tools/call` AND `params.name` matches a
  tool pattern (AND each named argument matches, for argument grants);
  `resources/read|subscribe|unsubscribe` AND `params.uri` matches;
  `prompts/get` AND `params.name` matches; `completion/complete` of a
  granted prompt (`params.ref.name`) or resource template (`params.ref.uri`
  matched by the resource patterns). Only ALLOW lists: a body Envoy could
  not parse carries no metadata and so matches nothing.
- **Policy-service routes** match on the deframed method and tool (the MCP
  filter clears the route cache when some route needs it).
- **Tasks** (a backend with `tasks`): the task methods (`tasks/get`,
  `tasks/cancel`, `tasks/update`, `tasks/result`) are allowed to every agent with a grant there, and go to the policy
  service, which lets a caller reach only the tasks it created; the answers
  of `tools/call`s that may create a task (a legacy `params.task`, or a
  2026-07-28 client declaring the tasks extension) go to it to have their
  task ids sealed. `tasks/list` stays refused everywhere: the backend's list
  cannot be limited to the caller's tasks without a store.
- **Local replies**: the MCP filter's refusals as JSON-RPC errors, and per
  known caller what it was refused (tool, resource, prompt, method).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from xds_server.core import errors
from xds_server.core.cel_native import native_condition
from xds_server.core.cel_syntax import Expr, Select
from xds_server.core.tool_results import refused_call_result
from xds_server.core.wire import (
    MCP_METADATA_NAMESPACE,
    PURPOSE_SEAL,
    PURPOSE_UNSEAL,
    typed,
    typed_struct,
)
from xds_server.ir.mcp import ArgumentMatchIR, McpAllowsIR, McpRouteIR, mcp_allows, mcp_part
from xds_server.ir.patterns import NamePattern, PatternKind
from xds_server.ir.principals import metadata_principal
from xds_server.ir.types import GatewayIR, RouteIR
from xds_server.translate import cel
from xds_server.translate.filters import HttpFilter, Slot, disabled
from xds_server.translate.names import CONDITION_RULE_KEY
from xds_server.translate.protocols.base import DocumentRoute, ProtocolTranslator
from xds_server.translate.replies import all_of, cel_filter, mapper, metadata_is, status_is

MCP_TYPE = "envoy.extensions.filters.http.mcp.v3.Mcp"
FILTER_CONFIG_TYPE = "envoy.config.route.v3.FilterConfig"
SESSION_FILTER = "envoy.filters.http.stateful_session"

# JSON-RPC methods that name no tool, resource or prompt. Any agent with a
# grant on the backend may send them. "__jsonrpc_response" is how the MCP filter
# labels a JSON-RPC response the client sends back (to sampling/elicitation).
TOOLLESS_METHODS = (
    "__jsonrpc_response",
    "initialize",
    "logging/setLevel",
    "ping",
    "prompts/list",
    "resources/list",
    "resources/templates/list",
    "server/discover",
    "tools/list",
)
TOOLLESS_METHOD_PREFIXES = ("notifications/",)
RESOURCE_METHODS = ("resources/read", "resources/subscribe", "resources/unsubscribe")
#: The task methods that name a task (legacy and 2026-07-28); tasks/result waits for the task's end.
TASK_METHODS = ("tasks/cancel", "tasks/get", "tasks/update")
TASK_RESULT_METHOD = "tasks/result"
#: Where a 2026-07-28 client declares the tasks extension (SEP-2663), as a metadata path.
TASKS_EXTENSION_PATH = ("params", "_meta", "io.modelcontextprotocol/clientCapabilities", "extensions",
                        "io.modelcontextprotocol/tasks")  # fmt: skip
#: A 2026-07-28 client's stream of list changes (SEP-2575); served on virtual servers only.
LISTEN_METHOD = "subscriptions/listen"
LIST_METHODS = ("prompts/list", "resources/list", "resources/templates/list", "tools/list")

REQUEST_ID = f"%DYNAMIC_METADATA({MCP_METADATA_NAMESPACE}:id)%"
METHOD = f"%DYNAMIC_METADATA({MCP_METADATA_NAMESPACE}:method)%"
TOOL = f"%DYNAMIC_METADATA({MCP_METADATA_NAMESPACE}:params:name)%"
URI = f"%DYNAMIC_METADATA({MCP_METADATA_NAMESPACE}:params:uri)%"
BACKEND = "%ROUTE_NAME%"
SESSION_HEADER = "mcp-session-id"
# Envoy's response details when the session's host could not be reached (verified on 1.40 with a
# stopped server and with its endpoint removed, tests/e2e/test_fleet_sessions.py).
_HOST_GONE = ("response.code_details.contains('Connection_refused') || "
              "response.code_details.contains('connection_timeout') || "
              "response.code_details == 'no_healthy_upstream'")  # fmt: skip

CONDITION_RULE = f"%DYNAMIC_METADATA({cel.RBAC_NAMESPACE}:{CONDITION_RULE_KEY})%"

# ---------------------------------------------------------------- matchers


def string_matcher(pattern: NamePattern) -> dict[str, Any]:
    """An Envoy ValueMatcher for one compiled pattern."""
    if pattern.kind is PatternKind.ANY:
        return {"present_match": True}
    if pattern.kind is PatternKind.REGEX:
        return {"string_match": {"safe_regex": {"regex": pattern.value}}}
    return {"string_match": {pattern.kind.value: pattern.value}}


def argument_matcher(match: ArgumentMatchIR) -> dict[str, Any]:
    """An Envoy ValueMatcher for one argument condition."""
    if match.kind == "one_of":
        values = [{"string_match": {"exact": v}} for v in match.values]
        return values[0] if len(values) == 1 else {"or_match": {"value_matchers": values}}
    if match.kind == "regex":
        # Anchored: the whole argument must match, as the policy says.
        return {"string_match": {"safe_regex": {"regex": f"^(?:{match.values[0]})$"}}}
    return {"string_match": {match.kind: match.values[0]}}


def _metadata(path: tuple[str, ...], value: dict[str, Any]) -> dict[str, Any]:
    return metadata_principal(MCP_METADATA_NAMESPACE, path, value)


def _method_is(method: str) -> dict[str, Any]:
    return _metadata(("method",), {"string_match": {"exact": method}})


def _any_of(patterns: tuple[NamePattern, ...]) -> dict[str, Any]:
    matchers = [string_matcher(p) for p in patterns]
    return matchers[0] if len(matchers) == 1 else {"or_match": {"value_matchers": matchers}}


def _or(rules: list[dict[str, Any]]) -> dict[str, Any]:
    return rules[0] if len(rules) == 1 else {"or_rules": {"rules": rules}}


def _completion(ref_type: str, path: tuple[str, ...], patterns: tuple[NamePattern, ...]) -> dict[str, Any]:
    """`completion/complete` of a granted prompt (by name) or resource template (its URI template
    text, matched by the resource patterns). The MCP filter extracts the whole `params.ref`
    object; its `type` is checked too, so a prompt grant never completes a template of that name."""
    return {"and_rules": {"rules": [
        _method_is("completion/complete"),
        _metadata(("params", "ref", "type"), {"string_match": {"exact": ref_type}}),
        _metadata(path, _any_of(patterns)),
    ]}}  # fmt: skip


def toolless_permission() -> dict[str, Any]:
    """Requests that carry no tool: lifecycle methods, lists, notifications, GET, DELETE."""
    rules = [_method_is(m) for m in TOOLLESS_METHODS]
    rules += [_metadata(("method",), {"string_match": {"prefix": p}}) for p in TOOLLESS_METHOD_PREFIXES]
    rules += [{"header": {"name": ":method", "string_match": {"exact": verb}}} for verb in ("DELETE", "GET")]
    return _or(rules)


def route_method_matcher(*methods: str) -> dict[str, Any]:
    """A route's dynamic-metadata matcher: the MCP filter read one of these JSON-RPC methods."""
    values = [{"string_match": {"exact": m}} for m in methods]
    value = values[0] if len(values) == 1 else {"or_match": {"value_matchers": values}}
    return {"filter": MCP_METADATA_NAMESPACE, "path": [{"key": "method"}], "value": value}


def _route_tool_matcher(patterns: tuple[NamePattern, ...]) -> dict[str, Any]:
    return {"filter": MCP_METADATA_NAMESPACE, "path": [{"key": "params"}, {"key": "name"}], "value": _any_of(patterns)}


# ---------------------------------------------------------------- the translator


class McpTranslator(ProtocolTranslator):
    kind: ClassVar[str] = McpRouteIR.KIND
    part: ClassVar[type] = McpRouteIR
    noun: ClassVar[str] = "MCP backend"
    # Lists and task ids are read and rewritten by the policy service, which withholds a compressed
    # answer (it cannot read one): never ask a backend to compress.
    upstream_headers_removed: ClassVar[tuple[str, ...]] = ("accept-encoding",)

    def http_filters(self, gateway: GatewayIR) -> list[HttpFilter]:
        return [
            HttpFilter(MCP_METADATA_NAMESPACE, Slot.DEFRAME, self._mcp_filter_config(gateway),
                       off=typed(FILTER_CONFIG_TYPE, {"disabled": True}), owner=self.kind),
            HttpFilter(SESSION_FILTER, Slot.SESSION, _session_config(),
                       off=disabled("envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute"),
                       owner=self.kind),
        ]  # fmt: skip

    def _mcp_filter_config(self, gateway: GatewayIR) -> dict[str, Any]:
        config: dict[str, Any] = {
            "traffic_mode": "REJECT_NO_MCP",
            "max_request_body_size": gateway.listener.max_request_body_bytes,
            "reject_duplicate_keys": True,
        }
        if gateway.needs_policy_service or any(isinstance(r.protocol, McpRouteIR) and r.protocol.virtual
                                               for r in gateway.routes):  # fmt: skip
            # Pick the route again once the body is parsed: policy routes and a virtual server's member
            # routes match on the method and the tool.
            config["clear_route_cache"] = True
        routes = [r for r in gateway.routes if r.kind == self.kind]
        arguments = sorted({m.name for r in routes for g in r.grants for ag in mcp_allows(g.allows).argument_grants
                            for m in ag.arguments}
                           | {a for r in routes for rule in r.conditional_rules if rule.native and rule.when
                              for a in native_condition(rule.when).arguments})  # fmt: skip
        tasks = any(isinstance(r.protocol, McpRouteIR) and r.protocol.tasks for r in gateway.routes)
        if arguments or tasks:
            # Argument conditions and native `when`s are checked by RBAC on metadata; routes with tasks match on
            # whether a call may create one. A parser_config replaces the method's default
            # extraction, so params.name (and params._meta, 2026-07-28) are listed too.
            rules = [{"path": "params.name"}] + [{"path": f"params.arguments.{name}"} for name in arguments]
            if tasks:
                rules += [{"path": "params.task"}, {"path": "params._meta"}]
            config["parser_config"] = {"methods": [{"method": "tools/call", "extraction_rules": rules}]}
        return typed_struct(MCP_TYPE, config)

    def call_match(self, route: RouteIR) -> dict[str, Any] | None:
        """`tools/call` of the tools the policy service decides on (any tool for `()`)."""
        tools = route.decisions.calls
        if tools is None:
            return None
        metadata = [route_method_matcher("tools/call")]
        if tools:
            metadata.append(_route_tool_matcher(tools))
        return {"path": route.path, "dynamic_metadata": metadata}

    def response_match(self, route: RouteIR) -> dict[str, Any] | None:
        """The list methods, whose answers are filtered per caller."""
        if not route.decisions.responses:
            return None
        return {"path": route.path, "dynamic_metadata": [route_method_matcher(*LIST_METHODS)]}

    def sealing_matches(self, route: RouteIR) -> list[tuple[dict[str, Any], str]]:
        if not mcp_part(route).tasks:
            return []
        call = route_method_matcher("tools/call")

        def present(*path: str) -> dict[str, Any]:
            return {"filter": MCP_METADATA_NAMESPACE, "path": [{"key": k} for k in path],
                    "value": {"present_match": True}}  # fmt: skip

        return [
            ({"path": route.path, "dynamic_metadata": [route_method_matcher(*TASK_METHODS, TASK_RESULT_METHOD)]},
             PURPOSE_UNSEAL),
            # A call that may create a task: a legacy client asks with params.task; a 2026-07-28
            # server may answer any call with a task once the client declares the extension.
            ({"path": route.path, "dynamic_metadata": [call, present("params", "task")]}, PURPOSE_SEAL),
            ({"path": route.path, "dynamic_metadata": [call, present(*TASKS_EXTENSION_PATH)]}, PURPOSE_SEAL),
        ]  # fmt: skip

    def document_routes(self, route: RouteIR) -> list[DocumentRoute]:
        return []

    def common_permissions(self, route: RouteIR) -> list[dict[str, Any]]:
        permissions = [toolless_permission()]
        if mcp_part(route).virtual is not None:
            # A virtual server answers it itself with its members' list changes only (authz/vmcp/changes.py).
            permissions.append(_method_is(LISTEN_METHOD))
        if mcp_part(route).tasks:
            # Any task method; whose task it is, the policy service checks.
            permissions.append(_or([_method_is(m) for m in (*TASK_METHODS, TASK_RESULT_METHOD)]))
        return permissions

    def target_permission(self, targets: tuple[NamePattern, ...]) -> dict[str, Any]:
        """`tools/call` of a tool matching `targets`."""
        return {"and_rules": {"rules": [_method_is("tools/call"), _metadata(("params", "name"), _any_of(targets))]}}

    def decided_permissions(self, route: RouteIR, allows: McpAllowsIR) -> list[dict[str, Any]]:
        return [self.target_permission(allows.conditional_tools)] if allows.conditional_tools else []

    def cel_arguments(self) -> Expr:
        return Select(Select(cel.metadata(MCP_METADATA_NAMESPACE), "params"), "arguments")

    def cel_target(self) -> Expr:
        return Select(Select(cel.metadata(MCP_METADATA_NAMESPACE), "params"), "name")

    def permissions(self, route: RouteIR, allows: McpAllowsIR) -> list[dict[str, Any]]:
        permissions: list[dict[str, Any]] = []
        if allows.tools:
            permissions.append(self.target_permission(allows.tools))
        for argument_grant in allows.argument_grants:
            # The MCP filter extracts params.arguments.<name> (see _mcp_filter_config); a
            # missing or non-string argument leaves nothing to match, so it is denied.
            checks = [_metadata(("params", "arguments", m.name), argument_matcher(m)) for m in argument_grant.arguments]
            permissions.append({"and_rules": {"rules": [
                _method_is("tools/call"), _metadata(("params", "name"), _any_of(argument_grant.tools)), *checks]}})  # fmt: skip
        if allows.resources:
            methods = _or([_method_is(m) for m in RESOURCE_METHODS])
            permissions.append(
                {"and_rules": {"rules": [methods, _metadata(("params", "uri"), _any_of(allows.resources))]}}
            )
            permissions.append(_completion("ref/resource", ("params", "ref", "uri"), allows.resources))
        if allows.prompts:
            permissions.append(
                {"and_rules": {"rules": [_method_is("prompts/get"), _metadata(("params", "name"), _any_of(allows.prompts))]}}
            )  # fmt: skip
            permissions.append(_completion("ref/prompt", ("params", "ref", "name"), allows.prompts))
        return permissions

    session_header = SESSION_HEADER

    def lost_sessions(self, request_id: str) -> list[dict[str, Any]]:
        # The session filter is strict: a session's request goes to the host that created it or
        # nowhere. Nowhere (refused, unreachable, unhealthy or no longer an endpoint) means the
        # session is gone: 404 and a JSON-RPC error, so the client initializes a new one.
        gone = cel_filter(f"'{SESSION_HEADER}' in request.headers && ({_HOST_GONE})")
        return [mapper(all_of(status_is(500, "GE"), gone), errors.SESSION_GONE,
                       f"Session not found: the server of backend '{BACKEND}' that held this session is gone "
                       "(stopped, removed or unhealthy); initialize a new session", request_id,
                       backend=BACKEND, endpoint="%UPSTREAM_HOST%", detail="%RESPONSE_CODE_DETAILS%")]  # fmt: skip

    def request_rejections(self, gateway: GatewayIR) -> list[dict[str, Any]]:
        limit = gateway.listener.max_request_body_bytes

        def status(value: str) -> dict[str, Any]:
            return metadata_is(MCP_METADATA_NAMESPACE, "status", value)

        return [
            mapper(status("mcp_parse_error"), errors.PARSE_ERROR,
                   "Parse error: the request body is not complete, valid JSON", REQUEST_ID),
            mapper(status("mcp_body_too_large"), errors.TOO_LARGE,
                   f"Request too large: the body exceeds the gateway's limit of {limit} bytes", REQUEST_ID),
            mapper(status("mcp_duplicate_keys"), errors.DUPLICATE_KEYS,
                   "Invalid Request: a JSON object in the body repeats a key", REQUEST_ID),
            mapper(status("mcp_not_jsonrpc"), errors.INVALID_REQUEST,
                   "Invalid Request: the body is not one JSON-RPC 2.0 request (the gateway accepts one JSON-RPC "
                   "request object per HTTP request: no batches, no other content)", REQUEST_ID,
                   detail="%LOCAL_REPLY_BODY%"),
            # Envoy's MCP filter checks the method and headers before it reads the body (so the id
            # is unknown here): a POST needs Content-Type application/json and an Accept listing
            # application/json and text/event-stream, a GET an Accept listing text/event-stream
            # (*/* covers both); a missing Accept is refused, a DELETE needs Mcp-Session-Id.
            mapper(status("mcp_reject_no_mcp"), errors.NOT_MCP,
                   "Invalid Request: not an MCP request (a POST needs Content-Type: application/json and an "
                   "Accept header listing application/json and text/event-stream; a GET needs Accept: "
                   "text/event-stream; a DELETE needs Mcp-Session-Id)", REQUEST_ID),
        ]  # fmt: skip

    def refusals_as_results(self, gateway: GatewayIR) -> dict[str, Any] | None:
        routes = [r.name for r in gateway.routes if isinstance(r.protocol, McpRouteIR)
                  and r.protocol.refusals_as_tool_results]  # fmt: skip
        if not routes:
            return None
        names = ", ".join(json.dumps(n) for n in routes)
        return all_of(cel_filter(f"xds.route_name in [{names}]"), _method("tools/call"))

    def condition_denials(self, gateway: GatewayIR, when: dict[str, Any]) -> list[dict[str, Any]]:
        # The policy service's words for the same refusal (authz/engine.py), so both paths read alike.
        message = f"Call to tool '{TOOL}' refused: the condition of rule '{CONDITION_RULE}' is not met."
        as_results = self.refusals_as_results(gateway)
        results = [] if as_results is None else [
            refused_call_result_mapper(all_of(when, as_results), errors.CONDITION_NOT_MET, message, REQUEST_ID,
                                       tool=TOOL, backend=BACKEND, rule=CONDITION_RULE)
        ]  # fmt: skip
        return [*results, mapper(when, errors.CONDITION_NOT_MET, message, REQUEST_ID, tool=TOOL, backend=BACKEND,
                                 rule=CONDITION_RULE)]  # fmt: skip

    def denials(self, gateway: GatewayIR, known: dict[str, Any]) -> list[dict[str, Any]]:
        name = cel.IDENTIFIED_AGENT
        method = _method
        tool_denied = f"Tool '{TOOL}' is not allowed for agent '{name}' on backend '{BACKEND}'"
        as_results = self.refusals_as_results(gateway)
        results = [] if as_results is None else [
            refused_call_result_mapper(all_of(known, as_results), errors.TOOL_DENIED, tool_denied, REQUEST_ID,
                                       tool=TOOL, backend=BACKEND)
        ]  # fmt: skip
        return [
            *results,
            mapper(all_of(known, method("tools/call")), errors.TOOL_DENIED, tool_denied, REQUEST_ID,
                   tool=TOOL, backend=BACKEND),
            mapper(all_of(known, method(*RESOURCE_METHODS)), errors.RESOURCE_DENIED,
                   f"Resource '{URI}' is not allowed for agent '{name}' on backend '{BACKEND}'", REQUEST_ID,
                   resource=URI, backend=BACKEND),
            mapper(all_of(known, method("prompts/get")), errors.PROMPT_DENIED,
                   f"Prompt '{TOOL}' is not allowed for agent '{name}' on backend '{BACKEND}'", REQUEST_ID,
                   prompt=TOOL, backend=BACKEND),
            mapper(known, errors.METHOD_DENIED,
                   f"Method '{METHOD}' (HTTP %REQ(:method)%) is not allowed for agent '{name}' on backend "
                   f"'{BACKEND}': the agent has no grant there, or the method is not allowed through the gateway",
                   REQUEST_ID, method=METHOD, backend=BACKEND),
        ]  # fmt: skip

    @property
    def metadata_namespace(self) -> str:
        return MCP_METADATA_NAMESPACE

    @property
    def request_id(self) -> str:
        return REQUEST_ID

    @property
    def access_log_field(self) -> str:
        return f"mcp={{{METHOD} {TOOL}}}"


def _method(*values: str) -> dict[str, Any]:
    """A reply filter: the deframed JSON-RPC method is one of `values`."""
    return metadata_is(MCP_METADATA_NAMESPACE, "method", *values)


def refused_call_result_mapper(
    when: dict[str, Any], kind: errors.ErrorKind, message: str, request_id: str, **data: str
) -> dict[str, Any]:
    """A mapper answering a refused tools/call as a tool result with isError (HTTP 200)."""
    return {
        "filter": when,
        "status_code": 200,
        "body_format_override": {
            "content_type": "application/json",
            "json_format": refused_call_result(request_id, kind, message, **data),
        },
    }


def _session_config() -> dict[str, Any]:
    # strict: a session whose host is gone is refused (lost_sessions), never sent to another
    # host, which does not know it (and would answer 404 with an id of its own choosing).
    return typed(
        "envoy.extensions.filters.http.stateful_session.v3.StatefulSession",
        {
            "session_state": {
                "name": "envoy.http.stateful_session.envelope",
                "typed_config": typed(
                    "envoy.extensions.http.stateful_session.envelope.v3.EnvelopeSessionState",
                    {"header": {"name": SESSION_HEADER}},
                ),
            },
            "strict": True,
        },
    )
