"""The policy service's answer to one request Envoy sent to ext_authz: the generic decision pipeline.

Envoy has already checked everything it can (the body is one request of the
route's protocol, the caller is a known agent, RBAC lets this call through
for it), so this decides only what is left, the same way for every protocol:

    the caller (as RBAC recognised it) ─► the call (the protocol's handler parses it)
        ─► the protocol's own refusals (MCP: the tool guard)
        ─► the rules: conditions, quotas, approvals (engine.py, pure logic)
        ─► on a route with delegated credentials, the upstream's credential for the user

Which requests come here is in the IR (`RouteIR.decisions`), read by the
translators and by `needs_decision` below alike. On a route with delegated
credentials every request comes here: a call that needs a decision is
decided first, then the credential is attached (`check_request`). Anything
unexpected refuses: the service fails closed, never open.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from xds_server.authz.credentials import CredentialError, CredentialIssuer
from xds_server.authz.engine import CallContext, Decision, Engine
from xds_server.authz.jsonrpc import error_body, request_id_of
from xds_server.authz.protocols import Call, MalformedCall, NotACall, ProtocolHandler
from xds_server.authz.state import PolicyIndex, RouteView
from xds_server.core import errors
from xds_server.core.errors import ErrorKind
from xds_server.ir.glob import glob_matches

_REFUSALS: Mapping[str, ErrorKind] = {
    "condition_not_met": errors.CONDITION_NOT_MET,
    "condition_error": errors.CONDITION_NOT_MET,
    "quota_exceeded": errors.QUOTA_EXCEEDED,
    "approval_required": errors.APPROVAL_REQUIRED,
    "approval_denied": errors.APPROVAL_DENIED,
    "state_unavailable": errors.STATE_UNAVAILABLE,
}


@dataclass(frozen=True)
class CheckOutcome:
    """What to answer Envoy.

    A refusal carries the HTTP status, `headers` and the JSON-RPC body. An
    allowed request may carry request headers to set on the way to the
    upstream (`set_headers`: its credential) and to remove (`remove_headers`:
    the caller's credentials). `set_headers` holds secrets: never log it.
    """

    allowed: bool
    http_status: int = 200
    body: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    log: Mapping[str, Any] = field(default_factory=dict)  # one decision-log record
    set_headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    remove_headers: tuple[str, ...] = ()


def failed_decision(body: str) -> CheckOutcome:
    """The refusal of a call whose decision raised (a bug, a store that failed): never let it through.

    Returned to Envoy as a denial, so a route with `failOpen` refuses it too
    (fail open covers a policy service that cannot be reached, not one that
    cannot decide)."""
    kind = errors.POLICY_SERVICE_UNAVAILABLE
    return CheckOutcome(False, kind.http_status, error_body(
        request_id_of(body), kind, "The policy service failed to decide; the call is refused"),
        log={"allowed": False, "reason": kind.reason})  # fmt: skip


def unreadable_body() -> CheckOutcome:
    """The refusal of a body that is not UTF-8 (so not JSON): Envoy's parsers refuse one before it gets
    here, so this is a peer that is not Envoy or a disagreement; nothing is read from it, not even its id."""
    kind = errors.PARSE_ERROR
    return CheckOutcome(False, kind.http_status, error_body(None, kind, "Parse error: the body is not UTF-8"),
                        log={"allowed": False, "reason": kind.reason})  # fmt: skip


def unproven_caller(body: str) -> CheckOutcome:
    """The refusal of a request that lacks its gateway's `policyService.secret`: not Envoy's (or an Envoy
    configured by a control plane with another secret than this service's). Names nothing of the policies."""
    kind = errors.POLICY_SERVICE_UNAVAILABLE
    return CheckOutcome(False, kind.http_status, error_body(
        request_id_of(body), kind, "The policy service refused the request: it does not carry its gateway's "
        "policy-service secret (the control plane and the policy service must share it)"),
        log={"allowed": False, "reason": "unproven_caller"})  # fmt: skip


@dataclass(frozen=True)
class Decider:
    """What a decision reads: the policies (as an index), the rules' engine, the protocol handlers
    (by kind) and the credential issuer."""

    index: PolicyIndex
    engine: Engine
    handlers: Mapping[str, ProtocolHandler]
    issuer: CredentialIssuer


def _refuse(
    request_id: Any,
    kind: ErrorKind,
    message: str,
    log: dict[str, Any],
    *,
    headers: Mapping[str, str] | None = None,
    reason: str | None = None,
    **data: Any,
) -> CheckOutcome:
    log.update(allowed=False, reason=reason or kind.reason)
    return CheckOutcome(
        False, kind.http_status, error_body(request_id, kind, message, **data), dict(headers or {}), log
    )


def is_decided(view: RouteView, call: Call) -> bool:
    """Whether the route's decision needs cover `call` (the same rule as the routes to ext_authz)."""
    calls = view.route.decisions.calls
    if calls is None:
        return False
    return not calls or any(glob_matches(p, call.target) for p in calls)


def check_call(
    decider: Decider,
    *,
    route: str,
    headers: Mapping[str, str],
    body: str,
    jwt_payloads: Mapping[str, Any] | None = None,
    peer_uri_san: str | None = None,
    now: datetime | None = None,
) -> CheckOutcome | Awaitable[CheckOutcome]:
    """Decide one call. `headers` have lower-case names; `body` is the full request body;
    `jwt_payloads` what jwt_authn verified (provider name → payload); `peer_uri_san` the
    client certificate's URI SAN (SPIFFE ID), if any.

    The outcome at once, or a coroutine giving it when the decision needs a round trip to a
    shared decision state (a quota or an approval kept in Valkey: effects.py)."""
    jwt_payloads = jwt_payloads or {}
    log: dict[str, Any] = {"backend": route}
    view = decider.index.route(route)
    handler = decider.handlers.get(view.route.kind) if view is not None else None
    if view is None:
        return _refuse(request_id_of(body), errors.METHOD_DENIED,
                       f"Backend '{route}' is not in the policy service's current policies", log, backend=route)  # fmt: skip
    if handler is None:
        return _refuse(request_id_of(body), errors.METHOD_DENIED,
                       f"Backend '{route}' speaks {view.route.kind!r}, which the policy service cannot decide on",
                       log, backend=route)  # fmt: skip
    agent = view.agent_of(headers, jwt_payloads, peer_uri_san)
    if agent is None:
        return _refuse(request_id_of(body), errors.UNKNOWN_AGENT,
                       "Unknown agent: the request carries no identity of an agent known to this gateway", log)  # fmt: skip
    log["agent"] = agent
    try:
        call = handler.parse_call(body)
    except NotACall as exc:
        return _refuse(request_id_of(body), errors.INVALID_REQUEST, f"Invalid Request: {exc}", log)
    log[handler.noun] = call.target

    refusal = handler.withheld(view, call)
    if refusal is not None:
        log["rule"] = refusal.rule
        return _refuse_call(view, handler, call, refusal.kind, refusal.message, log, dict(refusal.data))

    decision = decider.engine.decide(
        CallContext(backend=route, agent=agent, user=view.user_claims(jwt_payloads), target=call.target,
                    arguments=call.arguments, now=now or datetime.now(UTC), jwt=jwt_payloads, noun=handler.noun),
        view.conditional_rules_for(agent),
        unconditional=handler.unconditionally_allowed(view, agent, call, jwt_payloads),
    )  # fmt: skip
    if isinstance(decision, Decision):
        return _answer(view, call, decision, handler, log)
    return _answer_later(view, call, decision, handler, log)


async def _answer_later(view: RouteView, call: Call, decision: Awaitable[Decision], handler: ProtocolHandler,
                        log: dict[str, Any]) -> CheckOutcome:  # fmt: skip
    return _answer(view, call, await decision, handler, log)


def _answer(view: RouteView, call: Call, decision: Decision, handler: ProtocolHandler,
            log: dict[str, Any]) -> CheckOutcome:  # fmt: skip
    log["rule"] = decision.rule
    if decision.allowed:
        log.update(allowed=True, reason="allowed")
        return CheckOutcome(True, log=log)
    return _decision_refusal(view, call, decision, handler, log)


def _refuse_call(
    view: RouteView,
    handler: ProtocolHandler,
    call: Call,
    kind: ErrorKind,
    message: str,
    log: dict[str, Any],
    data: dict[str, Any],
    *,
    headers: Mapping[str, str] | None = None,
    reason: str | None = None,
) -> CheckOutcome:
    """Refuse a parsed call: a policy refusal (status 403) as the protocol's own result where the
    route asks for it (Envoy then sends it with status 200), else a JSON-RPC error."""
    result = handler.refusal_as_result(view, call, kind, message, data) if errors.is_policy_refusal(kind) else None
    if result is None:
        return _refuse(call.request_id, kind, message, log, headers=headers, reason=reason, **data)
    log.update(allowed=False, reason=reason or kind.reason, answered="result")
    return CheckOutcome(False, kind.http_status, result, dict(headers or {}), log)


def _decision_refusal(
    view: RouteView, call: Call, decision: Decision, handler: ProtocolHandler, log: dict[str, Any]
) -> CheckOutcome:
    route = view.name
    kind = _REFUSALS.get(decision.reason, handler.denied)
    data: dict[str, Any] = {handler.noun: call.target, "backend": route, "rule": decision.rule}
    headers: dict[str, str] = {}
    if decision.retry_after_s is not None:
        seconds = max(1, int(decision.retry_after_s + 0.999))
        data["retryAfterSeconds"] = seconds
        headers["retry-after"] = str(seconds)
    if decision.approval_id is not None:
        data["approvalId"] = decision.approval_id
        if decision.approval_expires_at is not None:
            data["approvalExpiresAt"] = datetime.fromtimestamp(decision.approval_expires_at, UTC).isoformat()
    reason = "condition_not_met" if decision.reason == "condition_error" else None
    return _refuse_call(view, handler, call, kind, decision.message, log, data, headers=headers, reason=reason)


# ---------------------------------------------------------------- every request of a route


def needs_decision(decider: Decider, view: RouteView, body: str) -> bool:
    """Whether this request is a call that the policy service decides on (or must refuse).

    True, so that `check_call` decides or refuses, for a route whose protocol
    has no handler here and for a call that cannot be read: neither may pass
    as "nothing to decide" with a credential attached.
    """
    handler = decider.handlers.get(view.route.kind)
    if handler is None:
        return True
    try:
        call = handler.parse_call(body)
    except MalformedCall:
        return True
    except NotACall:
        return False
    return is_decided(view, call)


async def check_request(
    decider: Decider,
    *,
    route: str,
    headers: Mapping[str, str],
    body: str,
    jwt_payloads: Mapping[str, Any],
    peer_uri_san: str | None = None,
    now: datetime | None = None,
) -> CheckOutcome:
    """Answer one ext_authz check: the decision (if the request needs one), then the credential.

    `jwt_payloads` is what jwt_authn verified (provider name → payload).
    A route without delegated credentials only sends the calls it decides
    on, so the answer is `check_call`'s.
    """
    view = decider.index.route(route)
    delegation = decider.issuer.delegation(route)
    if view is None or delegation is None or needs_decision(decider, view, body):
        decided = check_call(decider, route=route, headers=headers, body=body, jwt_payloads=jwt_payloads,
                             peer_uri_san=peer_uri_san, now=now)  # fmt: skip
        outcome = decided if isinstance(decided, CheckOutcome) else await decided
        if not outcome.allowed or delegation is None:
            return outcome
        log = dict(outcome.log)
    else:
        # Nothing to decide (RBAC did): only the credential to attach.
        log = {"backend": route, "agent": view.agent_of(headers, jwt_payloads, peer_uri_san),
               "method": _method_of(body, headers), "allowed": True, "reason": "allowed"}  # fmt: skip
    try:
        credential = await decider.issuer.issue(delegation, jwt_payloads, headers)
    except CredentialError as exc:
        log.update(credential=delegation.credentials.kind)
        return _refuse(request_id_of(body), exc.kind, exc.message, log, backend=route)
    log.update(credential=credential.kind, user=credential.user)
    return CheckOutcome(True, log=log, set_headers={credential.header: credential.value},
                        remove_headers=credential.remove)  # fmt: skip


def _method_of(body: str, headers: Mapping[str, str]) -> str:
    """The JSON-RPC method for the decision log, else the HTTP method (GET stream, DELETE)."""
    try:
        message = json.loads(body) if body else None
    except (ValueError, RecursionError):
        message = None
    method = message.get("method") if isinstance(message, dict) else None
    return method if isinstance(method, str) else headers.get(":method", "")
