"""The policy service's answer to one request Envoy sent to ext_authz.

Envoy has already checked everything it can (the body is one JSON-RPC
request, the caller is a known agent, RBAC lets this tool through for it), so
this decides only what is left: the tool guard (pinning, screening), then the
rules' conditions, approvals and quotas (`check_tool_call`, pure logic). On a
backend with delegated credentials every request comes here: a `tools/call`
that needs a decision is decided first, then the backend's credential for the
user is attached (`check_request`). Anything unexpected refuses: the service
fails closed, never open.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from xds_server.authz.credentials import CredentialError, CredentialIssuer
from xds_server.authz.engine import CallContext, Decision, Engine
from xds_server.authz.jsonrpc import (
    NotAToolCall,
    error_body,
    parse_tool_call,
    request_id_of,
)
from xds_server.authz.mcp.tool_guard import GuardState
from xds_server.authz.state import BackendView, PolicyIndex
from xds_server.core import errors
from xds_server.core.errors import ErrorKind
from xds_server.ir.glob import glob_matches

_REFUSALS: Mapping[str, ErrorKind] = {
    "condition_not_met": errors.CONDITION_NOT_MET,
    "condition_error": errors.CONDITION_NOT_MET,
    "quota_exceeded": errors.QUOTA_EXCEEDED,
    "approval_required": errors.APPROVAL_REQUIRED,
    "approval_denied": errors.APPROVAL_DENIED,
    "no_matching_rule": errors.TOOL_DENIED,
}


@dataclass(frozen=True)
class CheckOutcome:
    """What to answer Envoy.

    A refusal carries the HTTP status, `headers` and the JSON-RPC body. An
    allowed request may carry request headers to set on the way to the backend
    (`set_headers`: its credential) and to remove (`remove_headers`: the
    caller's credentials). `set_headers` holds secrets: never log it.
    """

    allowed: bool
    http_status: int = 200
    body: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    log: Mapping[str, Any] = field(default_factory=dict)  # one decision-log record
    set_headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    remove_headers: tuple[str, ...] = ()


def _refuse(request_id: Any, kind: ErrorKind, message: str, log: dict[str, Any], *,
            headers: Mapping[str, str] | None = None, **data: Any) -> CheckOutcome:  # fmt: skip
    log.update(allowed=False, reason=data.get("reason_override") or kind.reason)
    data.pop("reason_override", None)
    return CheckOutcome(
        False, kind.http_status, error_body(request_id, kind, message, **data), dict(headers or {}), log
    )


def check_tool_call(
    index: PolicyIndex,
    engine: Engine,
    guard: GuardState,
    *,
    backend: str,
    headers: Mapping[str, str],
    body: str,
    jwt_payloads: Mapping[str, Any] | None = None,
    peer_uri_san: str | None = None,
    now: datetime | None = None,
) -> CheckOutcome:
    """Decide one call. `headers` have lower-case names; `body` is the full request body;
    `jwt_payloads` what jwt_authn verified (provider name → payload); `peer_uri_san` the
    client certificate's URI SAN (SPIFFE ID), if any."""
    jwt_payloads = jwt_payloads or {}
    log: dict[str, Any] = {"backend": backend}
    view = index.backend(backend)
    if view is None:
        return _refuse(
            request_id_of(body),
            errors.METHOD_DENIED,
            f"Backend '{backend}' is not in the policy service's current policies",
            log,
            backend=backend,
        )
    agent = view.agent_of(headers, jwt_payloads, peer_uri_san)
    if agent is None:
        return _refuse(
            request_id_of(body),
            errors.UNKNOWN_AGENT,
            "Unknown agent: the request carries no identity of an agent known to this gateway",
            log,
        )
    log["agent"] = agent
    try:
        call = parse_tool_call(body)
    except NotAToolCall as exc:
        return _refuse(request_id_of(body), errors.INVALID_REQUEST, f"Invalid Request: {exc}", log)
    log["tool"] = call.tool

    refusal = _guard_refusal(view.backend.tool_guard is not None, guard, backend, call.tool)
    if refusal is not None:
        log["rule"] = "toolGuard"
        return _refuse(call.request_id, errors.TOOL_DRIFTED,
                       f"Tool '{call.tool}' on backend '{backend}' is withheld: {refusal}", log,
                       tool=call.tool, backend=backend, details=refusal)  # fmt: skip

    decision = engine.decide(
        CallContext(backend=backend, agent=agent, user=user_claims(view, jwt_payloads), tool=call.tool,
                    arguments=call.arguments, now=now or datetime.now(UTC), jwt=jwt_payloads),
        view.backend.conditional_rules,
        unconditional=view.has_unconditional_tool(agent, call.tool, jwt_payloads),
    )  # fmt: skip
    log["rule"] = decision.rule
    if decision.allowed:
        log.update(allowed=True, reason="allowed")
        return CheckOutcome(True, log=log)
    return _decision_refusal(call.request_id, decision, backend, call.tool, log)


def _guard_refusal(guarded: bool, guard: GuardState, backend: str, tool: str) -> str | None:
    if not guarded:
        return None
    verdict = guard.verdict(backend, tool)
    if verdict is None or verdict.usable:
        return None
    return "; ".join(verdict.reasons) or "the tool failed the gateway's checks"


def _decision_refusal(
    request_id: Any, decision: Decision, backend: str, tool: str, log: dict[str, Any]
) -> CheckOutcome:
    kind = _REFUSALS.get(decision.reason, errors.TOOL_DENIED)
    data: dict[str, Any] = {"tool": tool, "backend": backend, "rule": decision.rule}
    headers: dict[str, str] = {}
    if decision.retry_after_s is not None:
        seconds = max(1, int(decision.retry_after_s + 0.999))
        data["retryAfterSeconds"] = seconds
        headers["retry-after"] = str(seconds)
    if decision.approval_id is not None:
        data["approvalId"] = decision.approval_id
        if decision.approval_expires_at is not None:
            data["approvalExpiresAt"] = datetime.fromtimestamp(decision.approval_expires_at, UTC).isoformat()
    if decision.reason == "condition_error":
        data["reason_override"] = "condition_not_met"
    return _refuse(request_id, kind, decision.message, log, headers=headers, **data)


# ---------------------------------------------------------------- every request of a backend


def user_claims(view: BackendView, jwt_payloads: Mapping[str, Any]) -> dict[str, Any]:
    """The user the agent acts for (CEL's `user`, quotas by user): the verified payload of the
    backend's user-token provider; without `auth`, the first verified payload (by provider name)
    with a `sub`; {} when there is none."""
    auth = view.backend.auth
    providers = [auth.provider] if auth is not None else sorted(jwt_payloads)
    for provider in providers:
        payload = jwt_payloads.get(provider)
        if isinstance(payload, Mapping) and isinstance(payload.get("sub"), str):
            return dict(payload)
    return {}


def needs_decision(view: BackendView, body: str) -> bool:
    """Whether this request is a `tools/call` that the policy service decides on.

    The same rule as the routes that send tool calls to ext_authz
    (`translate.policy_service.authz_tools`): any tool on a guarded backend,
    else the tools a conditional rule covers.
    """
    from xds_server.translate.policy_service import authz_tools

    tools = authz_tools(view.backend)
    if tools is None:
        return False
    try:
        call = parse_tool_call(body)
    except NotAToolCall:
        return False
    return not tools or any(glob_matches(p, call.tool) for p in tools)


async def check_request(
    index: PolicyIndex,
    engine: Engine,
    guard: GuardState,
    issuer: CredentialIssuer,
    *,
    backend: str,
    headers: Mapping[str, str],
    body: str,
    jwt_payloads: Mapping[str, Any],
    peer_uri_san: str | None = None,
    now: datetime | None = None,
) -> CheckOutcome:
    """Answer one ext_authz check: the decision (if the request needs one), then the credential.

    `jwt_payloads` is what jwt_authn verified (provider name → payload).
    A backend without delegated credentials only sends the tool calls it
    decides on, so the answer is `check_tool_call`'s.
    """
    view = index.backend(backend)
    delegation = issuer.delegation(backend)
    if view is None or delegation is None or needs_decision(view, body):
        outcome = check_tool_call(index, engine, guard, backend=backend, headers=headers, body=body,
                                  jwt_payloads=jwt_payloads, peer_uri_san=peer_uri_san, now=now)  # fmt: skip
        if not outcome.allowed or delegation is None:
            return outcome
        log = dict(outcome.log)
    else:
        # Nothing to decide (RBAC did): only the credential to attach.
        log = {"backend": backend, "agent": view.agent_of(headers, jwt_payloads, peer_uri_san),
               "method": _method_of(body, headers), "allowed": True, "reason": "allowed"}  # fmt: skip
    try:
        credential = await issuer.issue(delegation, jwt_payloads, headers)
    except CredentialError as exc:
        log.update(credential=delegation.credentials.kind)
        return _refuse(request_id_of(body), exc.kind, exc.message, log, backend=backend)
    log.update(credential=credential.kind, user=credential.user)
    return CheckOutcome(True, log=log, set_headers={credential.header: credential.value},
                        remove_headers=credential.remove)  # fmt: skip


def _method_of(body: str, headers: Mapping[str, str]) -> str:
    """The JSON-RPC method for the decision log, else the HTTP method (GET stream, DELETE)."""
    try:
        message = json.loads(body) if body else None
    except ValueError:
        message = None
    method = message.get("method") if isinstance(message, dict) else None
    return method if isinstance(method, str) else headers.get(":method", "")
