"""Grants → RBAC allow-lists on the MCP filter's metadata (the native hot path).

Each backend route gets its own `RBACPerRoute` with one policy per agent that
has a grant there: the agent's principals, and a permission that is the OR of
 - the methods that carry no tool (lifecycle, lists, notifications, the
   client's answers to server requests, the GET stream, session DELETE),
 - `tools/call` AND `params.name` matches one of the agent's tool patterns,
 - `resources/read|subscribe|unsubscribe` AND `params.uri` matches a resource pattern,
 - `prompts/get` AND `params.name` matches a prompt pattern.
Only ALLOW lists are emitted: a body Envoy could not parse carries no metadata
and so matches nothing, which denies it (a DENY list would let it through).
The listener-level RBAC allows nothing, so a route without a per-route
config (none exists today) would be denied too.

A grant limited to some users (a rule's `users`) gets a policy of its own
whose principal is the agent AND the user: the agent's principals (any of
them) and the user's verified JWT claims, read from jwt_authn's metadata
under the user provider's name (`sub` one of the subjects, the groups claim
holding one of the groups, exact values of other claims). A request without
a valid token of that provider carries no such metadata and matches nothing.
"""

from __future__ import annotations

from typing import Any

from xds_server.core.secrets import read_secret
from xds_server.ir.types import (
    AgentIR,
    ArgumentMatchIR,
    BackendIR,
    GrantIR,
    HeaderPrincipal,
    JwtPrincipal,
    NamePattern,
    PatternKind,
    Principal,
    SpiffePrincipal,
    UserMatchIR,
)
from xds_server.translate.names import MCP_METADATA_NAMESPACE, rbac_policy_name
from xds_server.translate.proto import typed

RBAC_FILTER = "envoy.filters.http.rbac"
RBAC_TYPE = "envoy.extensions.filters.http.rbac.v3.RBAC"
RBAC_PER_ROUTE_TYPE = "envoy.extensions.filters.http.rbac.v3.RBACPerRoute"

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
    return {
        "sourced_metadata": {
            "metadata_matcher": {
                "filter": MCP_METADATA_NAMESPACE,
                "path": [{"key": k} for k in path],
                "value": value,
            }
        }
    }


def _method_is(method: str) -> dict[str, Any]:
    return _metadata(("method",), {"string_match": {"exact": method}})


def _any_of(patterns: tuple[NamePattern, ...]) -> dict[str, Any]:
    matchers = [string_matcher(p) for p in patterns]
    return matchers[0] if len(matchers) == 1 else {"or_match": {"value_matchers": matchers}}


def _or(rules: list[dict[str, Any]]) -> dict[str, Any]:
    return rules[0] if len(rules) == 1 else {"or_rules": {"rules": rules}}


def toolless_permission() -> dict[str, Any]:
    """Requests that carry no tool: lifecycle methods, lists, notifications, GET, DELETE."""
    rules = [_method_is(m) for m in TOOLLESS_METHODS]
    rules += [_metadata(("method",), {"string_match": {"prefix": p}}) for p in TOOLLESS_METHOD_PREFIXES]
    rules += [{"header": {"name": ":method", "string_match": {"exact": verb}}} for verb in ("DELETE", "GET")]
    return _or(rules)


def grant_permissions(grant: GrantIR) -> list[dict[str, Any]]:
    """The permissions (OR-ed by Envoy) that one grant allows, besides tool-less methods."""
    permissions = [toolless_permission()]
    if grant.all_tools:
        permissions.append(
            {
                "and_rules": {
                    "rules": [_method_is("tools/call"), _metadata(("params", "name"), _any_of(grant.all_tools))]
                }
            }
        )
    for argument_grant in grant.argument_grants:
        # The MCP filter extracts params.arguments.<name> (see listener.mcp_filter); a
        # missing or non-string argument leaves nothing to match, so it is denied.
        checks = [_metadata(("params", "arguments", m.name), argument_matcher(m)) for m in argument_grant.arguments]
        permissions.append({"and_rules": {"rules": [
            _method_is("tools/call"), _metadata(("params", "name"), _any_of(argument_grant.tools)), *checks]}})  # fmt: skip
    if grant.resources:
        methods = _or([_method_is(m) for m in RESOURCE_METHODS])
        permissions.append({"and_rules": {"rules": [methods, _metadata(("params", "uri"), _any_of(grant.resources))]}})
    if grant.prompts:
        permissions.append(
            {"and_rules": {"rules": [_method_is("prompts/get"), _metadata(("params", "name"), _any_of(grant.prompts))]}}
        )
    return permissions


JWT_METADATA_NAMESPACE = "envoy.filters.http.jwt_authn"


def principal(p: Principal) -> dict[str, Any]:
    """An RBAC principal for one identity source (raises SecretUnavailable for an unreadable API key)."""
    if isinstance(p, HeaderPrincipal):
        return {"header": {"name": p.header, "string_match": {"exact": p.value}}}
    if isinstance(p, SpiffePrincipal):
        # The URI SAN of a client certificate the TLS handshake already verified.
        return {"authenticated": {"principal_name": {"exact": p.spiffe_id}}}
    if isinstance(p, JwtPrincipal):
        # jwt_authn puts a verified token's payload in metadata under the provider's name.
        return _jwt_claim(p.provider, p.claim, {"string_match": {"exact": p.value}})
    key = read_secret(p.key_env, p.key_file, what=f"API key ({p.key_env or p.key_file})")
    return {"header": {"name": p.header, "string_match": {"exact": key}}}


def _jwt_claim(provider: str, claim: str | None, value: dict[str, Any]) -> dict[str, Any]:
    """A principal on a verified token's payload (`claim` None: the payload itself)."""
    path = [{"key": provider}] + ([{"key": claim}] if claim is not None else [])
    return {"sourced_metadata": {"metadata_matcher": {"filter": JWT_METADATA_NAMESPACE, "path": path, "value": value}}}


def _one_of(values: tuple[str, ...]) -> dict[str, Any]:
    matchers = [{"string_match": {"exact": v}} for v in values]
    return matchers[0] if len(matchers) == 1 else {"or_match": {"value_matchers": matchers}}


def _and_ids(ids: list[dict[str, Any]]) -> dict[str, Any]:
    return ids[0] if len(ids) == 1 else {"and_ids": {"ids": ids}}


def _or_ids(ids: list[dict[str, Any]]) -> dict[str, Any]:
    return ids[0] if len(ids) == 1 else {"or_ids": {"ids": ids}}


def user_principal(user: UserMatchIR) -> dict[str, Any]:
    """The user an agent acts for, from a verified token of `user.provider`: every given condition holds."""
    conditions = []
    if user.subjects:
        conditions.append(_jwt_claim(user.provider, "sub", _one_of(user.subjects)))
    if user.groups:
        groups = _one_of(user.groups)
        # A list of groups (the usual form) holding one of them, or a single group as a string.
        conditions.append(_jwt_claim(user.provider, user.groups_claim,
                                     {"or_match": {"value_matchers": [{"list_match": {"one_of": groups}}, groups]}}))  # fmt: skip
    for claim, value in user.claims:
        conditions.append(_jwt_claim(user.provider, claim, {"string_match": {"exact": value}}))
    if not conditions:
        # Any user with a valid token of the provider.
        conditions.append(_jwt_claim(user.provider, None, {"present_match": True}))
    return _and_ids(conditions)


def grant_principal(grant: GrantIR, agent: AgentIR) -> list[dict[str, Any]]:
    """The principals of one grant's policy (OR-ed by Envoy): the agent, and the user when the grant has one."""
    agent_ids = [principal(p) for p in agent.principals]
    if grant.user is None or not agent_ids:  # grants name only agents the gateway can recognise
        return agent_ids
    return [_and_ids([_or_ids(agent_ids), user_principal(grant.user)])]


def backend_rbac(backend: BackendIR, agents: tuple[AgentIR, ...]) -> dict[str, Any]:
    """`RBACPerRoute` (as an Any dict) for one backend's route."""
    by_name = {a.name: a for a in agents}
    policies: dict[str, Any] = {}
    for index, grant in enumerate(backend.grants):
        agent = by_name[grant.agent]
        # An agent can hold a plain grant and grants limited to some users: one policy each.
        name = rbac_policy_name(agent.name) if grant.user is None else f"{rbac_policy_name(agent.name)}/users[{index}]"
        policies[name] = {"permissions": grant_permissions(grant), "principals": grant_principal(grant, agent)}
    # An empty ALLOW policy map denies everything, which is what a backend
    # without grants must do.
    return typed(RBAC_PER_ROUTE_TYPE, {"rbac": {"rules": {"action": "ALLOW", "policies": policies}}})


def listener_rbac() -> dict[str, Any]:
    """The listener-level RBAC: allows nothing; each backend route overrides it."""
    return typed(RBAC_TYPE, {"rules": {"action": "ALLOW", "policies": {}}})
