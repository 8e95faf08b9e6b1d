"""The policy decision for one `tools/call` that Envoy sent to ext_authz (pure logic).

Envoy has already checked everything it can (the body is one JSON-RPC
request, the caller is a known agent, RBAC lets this tool through for it), so
this decides only what is left: the tool guard (pinning, screening), then the
rules' conditions, approvals and quotas. Anything unexpected refuses: the
service fails closed, never open.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from xds_server import errors
from xds_server.authz.engine import CallContext, Decision, Engine
from xds_server.authz.jsonrpc import NotAToolCall, error_body, parse_tool_call, request_id_of
from xds_server.authz.state import PolicyIndex
from xds_server.authz.tool_guard import GuardState
from xds_server.errors import ErrorKind

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
    """What to answer Envoy. A refusal carries the HTTP status, headers and JSON-RPC body."""

    allowed: bool
    http_status: int = 200
    body: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    log: Mapping[str, Any] = field(default_factory=dict)  # one decision-log record


def _refuse(request_id: Any, kind: ErrorKind, message: str, log: dict[str, Any], *,
            headers: Mapping[str, str] | None = None, **data: Any) -> CheckOutcome:  # fmt: skip
    log.update(allowed=False, reason=data.get("reason_override") or kind.reason)
    data.pop("reason_override", None)
    return CheckOutcome(False, kind.http_status, error_body(request_id, kind, message, **data), dict(headers or {}), log)


def check_tool_call(
    index: PolicyIndex,
    engine: Engine,
    guard: GuardState,
    *,
    backend: str,
    headers: Mapping[str, str],
    body: str,
    now: datetime | None = None,
) -> CheckOutcome:
    """Decide one call. `headers` have lower-case names; `body` is the full request body."""
    log: dict[str, Any] = {"backend": backend}
    view = index.backend(backend)
    if view is None:
        return _refuse(request_id_of(body), errors.METHOD_DENIED,
                       f"Backend '{backend}' is not in the policy service's current policies", log, backend=backend)
    agent = view.agent_of(headers)
    if agent is None:
        return _refuse(request_id_of(body), errors.UNKNOWN_AGENT,
                       "Unknown agent: the request carries no identity of an agent known to this gateway", log)
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
        CallContext(backend=backend, agent=agent, user={}, tool=call.tool, arguments=call.arguments,
                    now=now or datetime.now(timezone.utc)),
        view.backend.conditional_rules,
        unconditional=view.has_unconditional_tool(agent, call.tool),
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


def _decision_refusal(request_id: Any, decision: Decision, backend: str, tool: str, log: dict[str, Any]) -> CheckOutcome:
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
            data["approvalExpiresAt"] = datetime.fromtimestamp(decision.approval_expires_at, timezone.utc).isoformat()
    if decision.reason == "condition_error":
        data["reason_override"] = "condition_not_met"
    return _refuse(request_id, kind, decision.message, log, headers=headers, **data)
