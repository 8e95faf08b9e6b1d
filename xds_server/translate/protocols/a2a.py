"""A2A routes in Envoy: the A2A filter, RBAC on the A2A method, the card route, A2A's local replies.

- **Filters.** `envoy.filters.http.a2a` (REJECT mode) deframes the JSON-RPC
  body into metadata (`method`, `id`; more for 0.3 names) and refuses what
  is not JSON-RPC. It is named after its metadata namespace (the filter
  writes under its own name) and sent as a TypedStruct (xds-protos lacks
  it). Verified on 1.40: it does not refuse duplicate keys (it takes the
  first `method`, a Python agent the last) nor batch arrays (no metadata),
  and it stops parsing once it has what it wants. So RBAC only ever allows
  what the metadata names, and every A2A POST also goes through the policy
  service (ext_proc, PURPOSE_EXCHANGE), which reads the body strictly
  (duplicate keys anywhere, a method other than Envoy's: refused) before
  anything reaches the agent. The same stream opens the sealed task and
  context ids a request names and seals those of the answer for the caller
  (task ownership), and filters the extended card per caller.
- **Routes** are chosen on headers only: the A2A filter does not clear the
  route cache, so routes cannot match on what it deframed. A POST to the
  route's path goes to the exchange (and to ext_authz, which runs only when
  RBAC allowed the call through a policy the policy service decides, see
  translate/policy_service.py); the card is a route of its own
  (`document_routes`: GET `<route>/.well-known/agent-card.json`, the A2A
  filter off, rewritten per caller: the gateway's URL, the caller's skills).
- **RBAC permissions** per grant: the granted operations' methods (0.3 and
  1.0 names, core/a2a.py); the card GET for every grant. Only ALLOW lists.
- **Local replies**: the A2A filter's refusals (by Envoy's response code
  details) and what a known caller was refused, as JSON-RPC errors.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from xds_server.core import errors
from xds_server.core.a2a import A2A_METADATA_NAMESPACE, OPERATION_METHODS
from xds_server.core.cel_syntax import Expr, Select
from xds_server.core.wire import PURPOSE_EXCHANGE, typed, typed_struct
from xds_server.ir.a2a import A2aAllowsIR, A2aRouteIR
from xds_server.ir.patterns import NamePattern, PatternKind
from xds_server.ir.principals import metadata_principal
from xds_server.ir.types import GatewayIR, RouteIR
from xds_server.translate import cel
from xds_server.translate.filters import HttpFilter, Slot
from xds_server.translate.protocols.base import DocumentRoute, ProtocolTranslator
from xds_server.translate.replies import all_of, cel_filter, mapper

A2A_TYPE = "envoy.extensions.filters.http.a2a.v3.A2a"
FILTER_CONFIG_TYPE = "envoy.config.route.v3.FilterConfig"

REQUEST_ID = f"%DYNAMIC_METADATA({A2A_METADATA_NAMESPACE}:id)%"
METHOD = f"%DYNAMIC_METADATA({A2A_METADATA_NAMESPACE}:method)%"
AGENT = "%ROUTE_NAME%"
_POST = {"name": ":method", "string_match": {"exact": "POST"}}


def _methods(operations: tuple[str, ...] | list[str]) -> list[str]:
    return sorted({m for op in operations for m in OPERATION_METHODS.get(op, ())})


def _method_in(methods: list[str]) -> dict[str, Any]:
    values = [{"string_match": {"exact": m}} for m in methods]
    value = values[0] if len(values) == 1 else {"or_match": {"value_matchers": values}}
    return metadata_principal(A2A_METADATA_NAMESPACE, ["method"], value)


def _details(*details: str) -> dict[str, Any]:
    return cel_filter(" || ".join(f"response.code_details == '{d}'" for d in details))


#: CEL: the A2A filter recorded no method for the request (none of its metadata, or no `method` in it).
_NO_METHOD = (f"(!({json.dumps(A2A_METADATA_NAMESPACE)} in metadata.filter_metadata) || "
              f"!('method' in metadata.filter_metadata[{json.dumps(A2A_METADATA_NAMESPACE)}]))")  # fmt: skip


class A2aTranslator(ProtocolTranslator):
    kind: ClassVar[str] = A2aRouteIR.KIND
    part: ClassVar[type] = A2aRouteIR
    noun: ClassVar[str] = "A2A agent"
    # Every answer is read and rewritten by the policy service: never ask the agent to compress it.
    upstream_headers_removed: ClassVar[tuple[str, ...]] = ("accept-encoding",)

    def http_filters(self, gateway: GatewayIR) -> list[HttpFilter]:
        config = typed_struct(A2A_TYPE, {
            "traffic_mode": "REJECT",
            # At or below the connection buffer, as for MCP (a larger limit with a smaller buffer hangs).
            "max_request_body_size": gateway.listener.max_request_body_bytes,
        })  # fmt: skip
        return [HttpFilter(A2A_METADATA_NAMESPACE, Slot.DEFRAME, config,
                           off=typed(FILTER_CONFIG_TYPE, {"disabled": True}), owner=self.kind)]  # fmt: skip

    def call_match(self, route: RouteIR) -> dict[str, Any] | None:
        # Header-only (see the module docstring): ext_authz itself runs only for decided calls.
        return None if route.decisions.calls is None else {"path": route.path, "headers": [_POST]}

    def response_match(self, route: RouteIR) -> dict[str, Any] | None:
        return None  # the card is a document route; the extended card is read in the exchange

    def sealing_matches(self, route: RouteIR) -> list[tuple[dict[str, Any], str]]:
        return [({"path": route.path, "headers": [_POST]}, PURPOSE_EXCHANGE)]

    def document_routes(self, route: RouteIR) -> list[DocumentRoute]:
        part = route.protocol
        assert isinstance(part, A2aRouteIR)
        return [DocumentRoute(part.card_route, part.card_path, PURPOSE_EXCHANGE)]

    def common_permissions(self, route: RouteIR) -> list[dict[str, Any]]:
        part = route.protocol
        assert isinstance(part, A2aRouteIR)
        # The card, to every caller with a grant (filtered to its skills by the policy service).
        return [{"and_rules": {"rules": [
            {"header": {"name": ":method", "string_match": {"exact": "GET"}}},
            {"url_path": {"path": {"exact": part.card_route}}},
        ]}}]  # fmt: skip

    def permissions(self, route: RouteIR, allows: A2aAllowsIR) -> list[dict[str, Any]]:
        return [_method_in(_methods(allows.operations))] if allows.operations else []

    def decided_permissions(self, route: RouteIR, allows: A2aAllowsIR) -> list[dict[str, Any]]:
        return [_method_in(_methods(allows.conditional_operations))] if allows.conditional_operations else []

    def target_permission(self, targets: tuple[NamePattern, ...]) -> dict[str, Any]:
        operations = [op for op in OPERATION_METHODS
                      if any(p.kind is PatternKind.ANY or (p.kind is PatternKind.EXACT and p.value == op)
                             for p in targets)]  # fmt: skip
        return _method_in(_methods(operations))

    def cel_arguments(self) -> Expr:
        # Never used: A2A conditions are the policy service's (ir/build_a2a.py).
        return Select(Select(cel.metadata(A2A_METADATA_NAMESPACE), "params"), "metadata")

    def cel_target(self) -> Expr:
        return Select(cel.metadata(A2A_METADATA_NAMESPACE), "method")

    def request_rejections(self, gateway: GatewayIR) -> list[dict[str, Any]]:
        limit = gateway.listener.max_request_body_bytes
        return [
            mapper(_details("a2a_filter_not_valid_jsonrpc"), errors.PARSE_ERROR,
                   "Parse error: the request body is not complete, valid JSON", REQUEST_ID),
            mapper(_details("a2a_filter_body_too_large"), errors.TOO_LARGE,
                   f"Request too large: the body exceeds the gateway's limit of {limit} bytes", REQUEST_ID),
            mapper(cel_filter("response.code_details.startsWith('a2a_filter')"), errors.NOT_A2A,
                   "Invalid Request: not an A2A request (a POST of one JSON-RPC 2.0 request object with "
                   "Content-Type: application/json; no batches)", REQUEST_ID, detail="%LOCAL_REPLY_BODY%"),
        ]  # fmt: skip

    def denials(self, gateway: GatewayIR, known: dict[str, Any]) -> list[dict[str, Any]]:
        name = cel.IDENTIFIED_AGENT
        return [
            mapper(all_of(known, cel_filter("request.method == 'GET'")), errors.METHOD_DENIED,
                   f"The card of A2A agent '{AGENT}' is not shown to agent '{name}': it has no grant there",
                   REQUEST_ID, method="GET", backend=AGENT),
            # The A2A filter lets a batch (a JSON array) through with no method (verified on 1.40), which
            # RBAC then refuses as no grant allows it: say what it is, not "method '-' is not allowed".
            mapper(all_of(known, cel_filter(f"request.method == 'POST' && {_NO_METHOD}")), errors.NOT_A2A,
                   "Invalid Request: the body is not one JSON-RPC 2.0 request object (a batch, an array, is "
                   "not accepted: send one request per POST)", REQUEST_ID),
            mapper(known, errors.METHOD_DENIED,
                   f"Method '{METHOD}' is not allowed for agent '{name}' on A2A agent '{AGENT}': no rule grants "
                   "its operation (tasks/list and ListTasks are never allowed: they list every caller's tasks)",
                   REQUEST_ID, method=METHOD, backend=AGENT),
        ]  # fmt: skip

    def condition_denials(self, gateway: GatewayIR, when: dict[str, Any]) -> list[dict[str, Any]]:
        return []  # no native A2A conditions

    def refusals_as_results(self, gateway: GatewayIR) -> dict[str, Any] | None:
        return None

    @property
    def metadata_namespace(self) -> str:
        return A2A_METADATA_NAMESPACE

    @property
    def request_id(self) -> str:
        return REQUEST_ID

    @property
    def access_log_field(self) -> str:
        return f"a2a={{{METHOD}}}"
