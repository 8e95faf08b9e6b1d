"""The operators' HTTP API for approvals (used by `agentxds approvals`).

    GET  /approvals                 pending (and approved, not yet used) approvals, newest first
    GET  /approvals?all=1           every approval remembered: decided, used and expired ones too
    GET  /approvals/{id}            one approval
    POST /approvals/{id}/approve    body (optional): {"by": "alice"}
    POST /approvals/{id}/deny       body (optional): {"by": "alice"}
    GET  /healthz                   "ok"

It binds to loopback by default and has no authentication of its own: keep
it on a network only operators reach.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from xds_server.authz.approvals import ApprovalError, ApprovalStore


def build_app(store: ApprovalStore) -> Starlette:
    async def list_approvals(request: Request) -> JSONResponse:
        include_done = request.query_params.get("all") in ("1", "true")
        return JSONResponse({"approvals": [a.to_json() for a in store.list(include_done=include_done)]})

    async def get_approval(request: Request) -> JSONResponse:
        approval = store.status(request.path_params["id"])
        if approval is None:
            return JSONResponse({"error": f"no approval {request.path_params['id']!r}"}, status_code=404)
        return JSONResponse(approval.to_json())

    async def decide(request: Request) -> JSONResponse:
        approval_id, action = request.path_params["id"], request.path_params["action"]
        by = await _by(request)
        try:
            approval = store.approve(approval_id, by) if action == "approve" else store.deny(approval_id, by)
        except ApprovalError as exc:
            return JSONResponse({"error": str(exc)}, status_code=409 if store.status(approval_id) else 404)
        return JSONResponse(approval.to_json())

    async def healthz(_: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            Route("/approvals", list_approvals, methods=["GET"]),
            Route("/approvals/{id}", get_approval, methods=["GET"]),
            Route("/approvals/{id}/{action:str}", decide, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
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
