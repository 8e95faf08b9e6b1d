"""Native `when:` conditions → Envoy's CEL (`google.api.expr.v1alpha1.Expr`, RBAC `Policy.condition`).

core/cel_native.py decides which conditions Envoy can evaluate with the
policy service's answer; this writes them in Envoy's terms, by putting, in
place of each variable, where Envoy holds the same value:

    args        what the protocol's filter extracted (MCP: params.arguments)    protocol
    tool        the call's target (MCP: params.name)                            protocol
    agent.name  the agent the identify filter named (the first, by name, the
                request proves: the policy service's `agent`)                   identity.py
    user        the verified payload of the user's JWT provider, as the policy
                service picks it (the route's `auth` provider, else the first
                provider by name whose payload has a string `sub`), else {}
    now         request.time

A rule's condition also checks that the agent the identify filter named is
one of the rule's, as the policy service applies a rule to that agent only
(the rule's RBAC principals, translate/rbac.py `proven`, let in a request
speaking for any of the rule's agents).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from xds_server.core.cel_native import NativeCondition
from xds_server.core.cel_syntax import Call, Expr, Ident, ListLit, Literal, MapLit, MessageLit, Select
from xds_server.core.wire import JWT_METADATA_NAMESPACE

RBAC_NAMESPACE = "envoy.filters.http.rbac"
#: The identify filter's (translate/identity.py) metadata key prefix, and where it records the agent's name.
IDENTIFY_PREFIX = "agentxds_identify_"
IDENTIFIED_AGENT_KEY = f"{IDENTIFY_PREFIX}shadow_effective_policy_id"
#: The agent's name as the identify filter recorded it, as an Envoy format string ("-" when none).
IDENTIFIED_AGENT = f"%DYNAMIC_METADATA({RBAC_NAMESPACE}:{IDENTIFIED_AGENT_KEY})%"


def metadata(namespace: str) -> Expr:
    """`metadata.filter_metadata["<namespace>"]`: a filter's dynamic metadata."""
    return Call("_[_]", (Select(Ident("metadata"), "filter_metadata"), Literal("string", namespace)))


def index(operand: Expr, key: str) -> Expr:
    return Call("_[_]", (operand, Literal("string", key)))


def _and(*terms: Expr) -> Expr:
    out = terms[0]
    for term in terms[1:]:
        out = Call("_&&_", (out, term))
    return out


def identified_agent() -> Expr:
    return index(metadata(RBAC_NAMESPACE), IDENTIFIED_AGENT_KEY)


def user_claims(providers: Sequence[str]) -> Expr:
    """The policy service's `user`: the payload of the first provider in `providers` that verified a
    token with a string `sub`, else {} (every test guarded, so this never errs)."""
    jwt = metadata(JWT_METADATA_NAMESPACE)
    out: Expr = MapLit(())
    for provider in reversed(providers):
        payload = index(jwt, provider)
        verified = _and(
            Call("@in", (Literal("string", JWT_METADATA_NAMESPACE), Select(Ident("metadata"), "filter_metadata"))),
            Call("@in", (Literal("string", provider), jwt)),
            Call("@in", (Literal("string", "sub"), payload)),
            Call("_==_", (Call("type", (index(payload, "sub"),)), Ident("string"))),
        )
        out = Call("_?_:_", (verified, payload, out))
    return out


@dataclass(frozen=True)
class Bindings:
    """Where Envoy holds each variable, for one route."""

    arguments: Expr  # the protocol's extracted arguments (a map)
    target: Expr  # the call's target (a string)
    user: Expr  # user_claims(...) for the route's providers


def _bind(expr: Expr, bindings: Bindings) -> Expr:
    if isinstance(expr, Ident):
        return {"args": bindings.arguments, "tool": bindings.target, "user": bindings.user,
                "now": Select(Ident("request"), "time")}.get(expr.name, expr)  # fmt: skip
    if isinstance(expr, Select):
        if isinstance(expr.operand, Ident) and expr.operand.name == "agent" and expr.field == "name":
            return identified_agent()
        return Select(_bind(expr.operand, bindings), expr.field, expr.test_only)
    if isinstance(expr, Call):
        if (expr.function == "_[_]" and isinstance(expr.args[0], Ident) and expr.args[0].name == "agent"
                and expr.args[1] == Literal("string", "name")):  # fmt: skip
            return identified_agent()
        target = _bind(expr.target, bindings) if expr.target is not None else None
        return Call(expr.function, tuple(_bind(a, bindings) for a in expr.args), target)
    if isinstance(expr, ListLit):
        return ListLit(tuple(_bind(e, bindings) for e in expr.elements))
    return expr


def agent_check(agents: Sequence[str], every_agent: bool) -> Expr:
    """True when the identified agent is one of `agents` (`every_agent`: any identified agent)."""
    if every_agent:
        return Call("@in", (Literal("string", IDENTIFIED_AGENT_KEY), metadata(RBAC_NAMESPACE)))
    return Call("@in", (identified_agent(), ListLit(tuple(Literal("string", a) for a in agents))))


def rule_condition(condition: NativeCondition, bindings: Bindings, agents: Expr) -> Expr:
    """A native rule's whole RBAC condition: its agent check, then its `when`."""
    return _and(agents, _bind(condition.tree, bindings))


# ---------------------------------------------------------------- to google.api.expr JSON


def to_expr(tree: Expr) -> dict[str, Any]:
    """`tree` as a `google.api.expr.v1alpha1.Expr` as a dict of proto field names (for the protobuf constructor), ids numbered from 1."""
    ids = itertools.count(1)
    return _expr(tree, ids)


def _expr(tree: Expr, ids: itertools.count[int]) -> dict[str, Any]:
    out: dict[str, Any] = {"id": next(ids)}
    if isinstance(tree, Literal):
        out["const_expr"] = _constant(tree)
    elif isinstance(tree, Ident):
        out["ident_expr"] = {"name": tree.name}
    elif isinstance(tree, Select):
        select: dict[str, Any] = {"operand": _expr(tree.operand, ids), "field": tree.field}
        if tree.test_only:
            select["test_only"] = True
        out["select_expr"] = select
    elif isinstance(tree, Call):
        call: dict[str, Any] = {"function": tree.function}
        if tree.target is not None:
            call["target"] = _expr(tree.target, ids)
        call["args"] = [_expr(a, ids) for a in tree.args]
        out["call_expr"] = call
    elif isinstance(tree, ListLit):
        out["list_expr"] = {"elements": [_expr(e, ids) for e in tree.elements]}
    elif isinstance(tree, MapLit):
        out["struct_expr"] = {"entries": [{"id": next(ids), "map_key": _expr(k, ids), "value": _expr(v, ids)}
                                          for k, v in tree.entries]}  # fmt: skip
    elif isinstance(tree, MessageLit):  # pragma: no cover - no native form builds messages
        raise ValueError("message literals are not native")
    return out


def _constant(literal: Literal) -> dict[str, Any]:
    kind, value = literal.kind, literal.value
    if kind == "string":
        return {"string_value": value}
    if kind == "bool":
        return {"bool_value": value}
    if kind == "int":
        return {"int64_value": value}
    if kind == "uint":
        return {"uint64_value": value}
    if kind == "double":
        return {"double_value": value}
    if kind == "null":
        return {"null_value": "NULL_VALUE"}
    raise ValueError(f"no native constant of kind {kind}")
