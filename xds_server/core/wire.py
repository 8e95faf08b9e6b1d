"""What Envoy's configuration and the policy service must agree on, named once.

The translators write these names into Envoy's configuration and the policy
service reads them back from what Envoy sends it, so neither may spell them
on its own: metadata namespaces, the gRPC metadata and HTTP path that name a
route to the policy service, and two helpers for Envoy's wire formats (an
`Any` in dict form, a literal inside a format string).
"""

from __future__ import annotations

from typing import Any

#: Where Envoy's MCP filter puts what it read from the JSON-RPC body (method, id, params.name, ...).
MCP_METADATA_NAMESPACE = "envoy.filters.http.mcp"
#: Where json_to_metadata puts the request's top-level JSON-RPC id, before any protocol filter:
#: `id` (its JSON type; numbers as doubles) and `id_text` (an integer's exact digits).
JSONRPC_METADATA_NAMESPACE = "agentxds.jsonrpc"
#: Where jwt_authn puts each verified token's payload, under the provider's name.
JWT_METADATA_NAMESPACE = "envoy.filters.http.jwt_authn"
#: gRPC metadata naming the route (its name) on ext_proc streams.
ROUTE_METADATA_KEY = "x-agentxds-backend"
#: gRPC metadata saying what an ext_proc stream is for: one of the PURPOSE_* values.
PURPOSE_METADATA_KEY = "x-agentxds-purpose"
#: Rewrite the response for the caller (lists filtered per caller).
PURPOSE_RESPONSES = "responses"
#: The response may hand out ids (task ids) the caller must get sealed with its identity.
PURPOSE_SEAL = "seal"
#: The request names a sealed id: check it is the caller's, restore it, seal it again in the answer.
PURPOSE_UNSEAL = "unseal"
#: The policy service reads the whole request (refusing it, or rewriting the ids it names) and rewrites
#: its answer as it streams (A2A: every request; the handler's `exchange`).
PURPOSE_EXCHANGE = "exchange"
#: The annotation the runtime registry puts on the documents it makes (sources/registry.py).
REGISTERED_ANNOTATION = "agentxds.dev/registered"
#: Where a caller asks a gateway which MCP servers and A2A agents it may use (GET, through Envoy).
DISCOVERY_PATH = "/.well-known/agentxds/discovery"
#: Envoy sends discovery requests to the policy service's HTTP port as `GET <DISCOVER_PREFIX><gateway>`.
DISCOVER_PREFIX = "/discover/"
#: ext_authz context extension naming the route (gRPC transport).
ROUTE_CONTEXT_EXTENSION = "backend"
#: ext_authz over HTTP: Envoy asks `POST <CHECK_PREFIX><route name><original path>`.
CHECK_PREFIX = "/check/"
#: Virtual MCP servers: Envoy passes what it does not route itself to `<VMCP_PREFIX><gateway>/<server>`.
VMCP_PREFIX = "/vmcp/"
#: ext_authz over HTTP: what Envoy verified travels in headers Envoy adds to the check request only
#: (never a client's: a client's headers reach the check only when named in its allow-list, which
#: never names these). A JWT provider's verified payload (JSON) in `<prefix><provider>`; the client
#: certificate's URI SANs (comma-separated) in the peer header.
VERIFIED_JWT_HEADER_PREFIX = "x-agentxds-verified-jwt-"
VERIFIED_PEER_HEADER = "x-agentxds-verified-peer"  # (the policy model reserves x-agentxds-verified-*)
#: The gateway's `policyService.secret`, which Envoy sends with every request to the policy service
#: (ext_authz over HTTP: a header it adds to the check; over gRPC and ext_proc: call metadata; virtual
#: servers' and discovery requests: a header their route sets, overwriting any client copy).
POLICY_SERVICE_SECRET_HEADER = "x-agentxds-policy-service-secret"
#: ext_authz over HTTP: the answer's list of request headers Envoy removes before the upstream.
AUTH_HEADERS_TO_REMOVE = "x-envoy-auth-headers-to-remove"
#: ext_authz over HTTP: Envoy takes a 5xx answer for a failure of the service, not a refusal, so
#: a refusal with a 5xx status (a credential that could not be had) is sent as 403 with its status
#: in this header; a local reply gives it back its status (translate/local_reply.py).
REPLY_STATUS_HEADER = "x-agentxds-reply-status"
#: Envoy closes its idle connections to the policy service's HTTP port after this many seconds; the
#: service closes a connection that sent nothing for twice as long (authz/ext_authz_http.py), so it
#: never closes one Envoy might be reusing.
POLICY_HTTP_IDLE_TIMEOUT_S = 30
#: The attribute ext_proc sends with the client certificate's URI SAN (the SPIFFE ID).
PEER_URI_SAN_ATTRIBUTE = "connection.uri_san_peer_certificate"

TYPE_PREFIX = "type.googleapis.com/"


def typed(type_name: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """An `Any` in dict form: `{"@type": type.googleapis.com/<type_name>, **body}`."""
    return {"@type": TYPE_PREFIX + type_name, **(body or {})}


def literal(text: str) -> str:
    """`text` as a literal inside an Envoy format string (`%` doubled)."""
    return text.replace("%", "%%")


def typed_struct(type_name: str, body: dict[str, Any]) -> dict[str, Any]:
    """An `Any` holding a `xds.type.v3.TypedStruct` for `type_name` with `body` as its value.

    For extensions whose xds-protos message lags Envoy 1.40 (fields Envoy has
    but the Python classes lack): Envoy converts it with its own descriptors
    and validates it exactly as if it had been sent typed.
    """
    return typed("xds.type.v3.TypedStruct", {"type_url": TYPE_PREFIX + type_name, "value": body})
