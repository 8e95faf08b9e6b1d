"""Identity at the edges of the gateway: unambiguous on the way in, verified on the way out.

On the way in, a request that carries one of the gateway's credential
headers (`GatewayIR.credential_headers`: the trusted header, the API-key
header, each JWT provider's token header) more than once, or with a comma in
it, is refused before anything reads it (`unambiguous_filter`). This cannot
be left to the RBAC allow-lists: Envoy's header principals match *any one*
value of a repeated header (verified with Envoy 1.40: `x-agent-id: mallory`
plus `x-agent-id: triage` is allowed as triage), whereas the matcher API's
`HttpRequestHeaderMatchInput` sees every value joined with commas, so one
"contains a comma" predicate catches both forms, on HTTP/1.1 and HTTP/2
alike. The refusal is an RBAC DENY with a policy name of its own; its local
reply is told apart by that name in the response code details
(`ambiguity_reply`).

On the way out, the backend gets who called as the gateway verified it, and
none of the caller's identity material (`backend_headers`):

- the trusted header and the API-key header are removed (JWT tokens are
  forwarded: backends may verify them themselves);
- the agent's name goes in `identity.agent_header`. Envoy names it natively:
  a second RBAC filter with only *shadow* rules, one policy per agent named
  after the agent, records the first agent (by name, as the policy service
  picks it) the request proves in `envoy.filters.http.rbac` metadata
  (`identify_filter`, ahead of the grants' RBAC, whose principals and
  native conditions read it too); the route sets the header from that
  metadata. Its configuration, which holds every agent's credentials, is
  discovered (ECDS) rather than the listener's: Envoy applies a new version
  to the next request on every connection, so a credential rotated in or
  out counts at once, not only on connections opened after the edit (a
  listener's filters stay as they were for the connections it already has,
  until they drain);
- the user's `sub` goes in `identity.user_header`, from a provider that
  names users on this gateway (`GatewayIR.user_providers`: the route's
  `auth` provider first, then those a backend's `auth` or a rule's `users`
  names, then those no agent is identified by); a provider only agents use
  never names the user;
- any client copy of those two headers is removed first; an empty value is
  not added, so a header present always holds a verified value.

Route-level header edits run in the router, after every filter: ext_authz
and ext_proc still see the caller's identity headers.
"""

from __future__ import annotations

from typing import Any

from xds_server.core import errors
from xds_server.core.wire import JWT_METADATA_NAMESPACE, typed
from xds_server.ir.types import AgentIR, GatewayIR, RouteIR
from xds_server.translate.cel import IDENTIFIED_AGENT, IDENTIFY_PREFIX
from xds_server.translate.filters import HttpFilter, Slot
from xds_server.translate.rbac import RBAC_PER_ROUTE_TYPE, RBAC_TYPE
from xds_server.translate.replies import cel_filter, mapper

UNAMBIGUOUS_FILTER = "agentxds.identity.unambiguous"
IDENTIFY_FILTER = "agentxds.identity.identify"
AMBIGUOUS_POLICY = "agentxds-ambiguous-identity"
#: The key prefix of the identify filter's shadow metadata (and of its stats).
_RBAC_ACTION_TYPE = "envoy.config.rbac.v3.Action"
_HEADER_INPUT_TYPE = "envoy.type.matcher.v3.HttpRequestHeaderMatchInput"


def _action(name: str, action: str) -> dict[str, Any]:
    return {"action": {"name": name, "typed_config": typed(_RBAC_ACTION_TYPE, {"name": name, "action": action})}}


def _has_comma(header: str) -> dict[str, Any]:
    """True when `header`'s values, joined with commas by Envoy, contain one: repeated, or comma-joined."""
    return {
        "single_predicate": {
            "input": {"name": header, "typed_config": typed(_HEADER_INPUT_TYPE, {"header_name": header})},
            "value_match": {"contains": ","},
        }
    }


def unambiguous_filter(gateway: GatewayIR) -> HttpFilter | None:
    """The RBAC filter that denies a request whose credential headers are ambiguous (None: the
    gateway has no credential headers)."""
    headers = gateway.credential_headers
    if not headers:
        return None
    predicates = [_has_comma(h) for h in headers]
    predicate = predicates[0] if len(predicates) == 1 else {"or_matcher": {"predicate": predicates}}
    config = {
        "matcher": {
            "matcher_list": {"matchers": [{"predicate": predicate, "on_match": _action(AMBIGUOUS_POLICY, "DENY")}]},
            "on_no_match": _action("agentxds-unambiguous", "ALLOW"),
        }
    }
    # Discovered (ECDS) like the identify filter, and for the same reason: the header names it checks must be
    # those the identify filter reads on every connection (a renamed header checked only on new connections
    # would let a repeated one through on the others, named by whichever value proves an agent).
    return HttpFilter(UNAMBIGUOUS_FILTER, Slot.IDENTITY, typed(RBAC_TYPE, config), off=typed(RBAC_PER_ROUTE_TYPE),
                      discovered=True)  # fmt: skip


def idle_filters() -> list[HttpFilter]:
    """The identity filters as configured on a gateway that has no use for them (no credential headers, no
    agent to recognise): served for an older listener that still names them (translate/listener.py)."""
    nobody = {"shadow_rules": {"action": "ALLOW", "policies": {}}, "shadow_rules_stat_prefix": IDENTIFY_PREFIX}
    return [
        HttpFilter(UNAMBIGUOUS_FILTER, Slot.IDENTITY, typed(RBAC_TYPE), discovered=True),  # no rules: refuses nothing
        HttpFilter(IDENTIFY_FILTER, Slot.AUTHZ, typed(RBAC_TYPE, nobody), discovered=True),  # names no one
    ]


def _recognisable_agents(gateway: GatewayIR) -> list[AgentIR]:
    """The agents this gateway can recognise (those it can check some principal of)."""
    return [a for a in gateway.agents if a.principals]


def identify_filter(gateway: GatewayIR) -> HttpFilter | None:
    """The shadow-only RBAC filter naming the agent a request proves (None: no agent to recognise).

    Before the grants' RBAC: native conditions read the name (`agent.name`,
    and which rules apply, translate/cel.py)."""
    agents = _recognisable_agents(gateway)
    if not agents:
        return None
    policies = {
        a.name: {"permissions": [{"any": True}], "principals": [p.rbac() for p in a.principals]} for a in agents
    }
    config = {"shadow_rules": {"action": "ALLOW", "policies": policies}, "shadow_rules_stat_prefix": IDENTIFY_PREFIX}
    # Discovered (ECDS), not the listener's: an edit of an agent's credentials reaches the next request on
    # every open connection, where a listener's filters change only for connections opened after it.
    return HttpFilter(IDENTIFY_FILTER, Slot.AUTHZ, typed(RBAC_TYPE, config), off=typed(RBAC_PER_ROUTE_TYPE),
                      discovered=True)  # fmt: skip


def _user_sub(provider: str) -> str:
    return f"%DYNAMIC_METADATA({JWT_METADATA_NAMESPACE}:{provider}:sub)%"


def user_providers(gateway: GatewayIR, route: RouteIR) -> list[str]:
    """The providers whose verified `sub` names the user on `route`, in the order they are tried."""
    return list(gateway.user_providers(route))


def backend_headers(gateway: GatewayIR, route: RouteIR) -> dict[str, Any]:
    """The header edits of `route`'s Envoy routes that forward to its backend."""
    identity = gateway.identity
    remove = {identity.api_key_header}
    if identity.trusted_header is not None:
        remove.add(identity.trusted_header)
    add: list[dict[str, Any]] = []
    if identity.agent_header is not None:
        remove.add(identity.agent_header)
        if any(a.principals for a in gateway.agents):  # else there is no identify filter to name anyone
            add.append({"header": {"key": identity.agent_header, "value": IDENTIFIED_AGENT},
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"})  # fmt: skip
    if identity.user_header is not None:
        remove.add(identity.user_header)
        # Removals come first; the first provider with a verified `sub` sets it, the others add nothing.
        add += [{"header": {"key": identity.user_header, "value": _user_sub(p)}, "append_action": "ADD_IF_ABSENT"}
                for p in user_providers(gateway, route)]  # fmt: skip
    out: dict[str, Any] = {"request_headers_to_remove": sorted(remove)}
    if add:
        out["request_headers_to_add"] = add
    return out


def ambiguity_reply(gateway: GatewayIR, request_id: str) -> list[dict[str, Any]]:
    """The local reply of a request refused by `unambiguous_filter` (none if it has none)."""
    headers = gateway.credential_headers
    if not headers:
        return []
    details = f"rbac_access_denied_matched_policy[{AMBIGUOUS_POLICY}]"
    names = ", ".join(headers)
    return [
        mapper(
            cel_filter(f"response.code_details == '{details}'"),
            errors.AMBIGUOUS_IDENTITY,
            f"Ambiguous identity: a credential header ({names}) was sent more than once or holds a comma; "
            "send each at most once, with one value",
            request_id,
            headers=names,
        )  # fmt: skip
    ]
