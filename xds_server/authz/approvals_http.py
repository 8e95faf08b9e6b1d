"""The operators' HTTP API for approvals (used by `agentxds approvals`).

    GET  /approvals                 pending (and approved, not yet used) approvals, newest first
    GET  /approvals?all=1           every approval remembered: decided, used and expired ones too
    GET  /approvals/{id}            one approval
    POST /approvals/{id}/approve    body (optional): {"by": "alice"}
    POST /approvals/{id}/deny       body (optional): {"by": "alice"}
    GET  /healthz                   "ok"

It binds to loopback by default (`agentxds serve --approvals-host`); with a
token (`--approvals-token-file` or `$AGENTXDS_APPROVALS_TOKEN`, required
off loopback) every request but `/healthz` must carry `Authorization:
Bearer <token>` (core/bearer.py): whoever can approve lets a held call
through. It serves the approvals of this
service's store: SQLite, or the shared store (Valkey) every replica using it
sees, so an operator may approve through any replica. A shared store that
cannot be reached answers 503.
"""

from __future__ import annotations

import builtins
import json
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from xds_server.authz.approvals import Approval, ApprovalError, ApprovalStore
from xds_server.authz.effects import StateUnavailable
from xds_server.core.bearer import BearerToken


class Approvals(Protocol):
    """What the API needs of a store (shared_approvals.SharedApprovals has it as is)."""

    async def list(self, include_done: bool = False) -> builtins.list[Approval]: ...

    async def status(self, approval_id: str) -> Approval | None: ...

    async def approve(self, approval_id: str, by: str) -> Approval: ...

    async def deny(self, approval_id: str, by: str) -> Approval: ...


class LocalApprovals:
    """The SQLite store behind the same awaitable methods (each answers at once)."""

    def __init__(self, store: ApprovalStore) -> None:
        self._store = store

    async def list(self, include_done: bool = False) -> builtins.list[Approval]:
        return self._store.list(include_done=include_done)

    async def status(self, approval_id: str) -> Approval | None:
        return self._store.status(approval_id)

    async def approve(self, approval_id: str, by: str) -> Approval:
        return self._store.approve(approval_id, by)

    async def deny(self, approval_id: str, by: str) -> Approval:
        return self._store.deny(approval_id, by)


def build_app(approvals: ApprovalStore | Approvals, token: str | None = None) -> Starlette:
    """The API over `approvals`; with `token`, only for requests that carry it (not /healthz)."""
    store: Approvals = LocalApprovals(approvals) if isinstance(approvals, ApprovalStore) else approvals
    bearer = BearerToken(token, "agentxds-approvals") if token is not None else None

    async def list_approvals(request: Request) -> JSONResponse:
        if bearer is not None and not bearer.allows(request):
            return bearer.refusal()
        include_done = request.query_params.get("all") in ("1", "true")
        return JSONResponse({"approvals": [a.to_json() for a in await store.list(include_done=include_done)]})

    async def get_approval(request: Request) -> JSONResponse:
        if bearer is not None and not bearer.allows(request):
            return bearer.refusal()
        approval = await store.status(request.path_params["id"])
        if approval is None:
            return JSONResponse({"error": f"no approval {request.path_params['id']!r}"}, status_code=404)
        return JSONResponse(approval.to_json())

    async def decide(request: Request) -> JSONResponse:
        if bearer is not None and not bearer.allows(request):
            return bearer.refusal()
        approval_id, action = request.path_params["id"], request.path_params["action"]
        if action not in ("approve", "deny"):  # never "anything else denies"
            return JSONResponse({"error": f"no action {action!r}: approve or deny"}, status_code=404)
        by = await _by(request)
        try:
            approval = await (store.approve(approval_id, by) if action == "approve" else store.deny(approval_id, by))
        except ApprovalError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404 if exc.kind == "unknown" else 409)
        return JSONResponse(approval.to_json())

    async def unavailable(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"the approvals store cannot be reached: {exc}"}, status_code=503)

    async def healthz(_: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(
        exception_handlers={StateUnavailable: unavailable},
        routes=[
            Route("/approvals", list_approvals, methods=["GET"]),
            Route("/approvals/{id}", get_approval, methods=["GET"]),
            Route("/approvals/{id}/{action:str}", decide, methods=["POST"]),  # approve | deny (else 404)
            Route("/healthz", healthz, methods=["GET"]),
        ],
    )


async def _by(request: Request) -> str:
    raw = await request.body()
    if not raw:
        return "operator"
    try:
        body: Any = json.loads(raw)
    except ValueError:
        return "operator"
    by = body.get("by") if isinstance(body, dict) else None
    return by if isinstance(by, str) and by else "operator"
