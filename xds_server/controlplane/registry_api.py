"""The registry API: register, update and remove A2A agents and MCP servers at run time.

    GET    /registry          what is registered, held for approval, and left out (conflicts with Git)
    GET    /registry/{name}   one registration
    PUT    /registry/{name}   register or update (body: controlplane/registry.py)
    DELETE /registry/{name}   remove
    GET    /healthz           "ok" (no token needed)

Every other request needs `Authorization: Bearer <token>` (`agentxds serve
--registry-token-file`); a wrong or missing one gets 401. A registration
served is published before the answer (201 created, 200 updated or
unchanged, with the gateways' new versions, and `applied`: whether every
connected Envoy acknowledged it within 2 s, so it is routable now); 202: held for an operator's
approval (drift), with the approval's id; 400/403/409/422: refused, with why
(`error`) and the details (`details`: diagnostics, screening findings).
What is registered is kept in SQLite (in the state directory) and survives a
restart.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from xds_server.authz.effects import StateUnavailable
from xds_server.controlplane import registry
from xds_server.controlplane.pipeline import ReloadResult
from xds_server.core.bearer import BearerToken
from xds_server.sources.registry import RegisteredSource

_STATUS = {"created": 201, "updated": 200, "unchanged": 200, "held": 202}


def build_app(source: RegisteredSource, token: str, reload: Callable[[], ReloadResult],
              approvals: Callable[[], registry.DriftApprovals | None], fetch_tools: registry.FetchTools,
              applied: Callable[[ReloadResult, float], Awaitable[bool]],
              networks: registry.Networks = registry.DEFAULT_NETWORKS) -> Starlette:  # fmt: skip
    """The API over `source`'s registry; `reload` publishes (the control plane's reload), `approvals`
    gives the policy service's approvals store (None: no policy service), `applied` waits until the
    connected Envoys acknowledged a reload (started at a unix time); registrations must be in `networks`."""
    bearer = BearerToken(token, "agentxds-registry")
    authorized, refused = bearer.allows, bearer.refusal

    class Reloads:
        """One request's reloads (each request its own: two at once never mix their answers)."""

        def __init__(self) -> None:
            self.last: ReloadResult | None = None
            self.since = time.time()

        def __call__(self) -> ReloadResult:
            self.last = reload()
            return self.last

        async def settled(self) -> bool:
            return await applied(self.last, self.since) if self.last is not None else True

    async def list_all(request: Request) -> Response:
        if not authorized(request):
            return refused()
        return JSONResponse(registry.listing(source.registry, source.conflicts))

    async def one(request: Request) -> Response:
        if not authorized(request):
            return refused()
        name = request.path_params["name"]
        found = source.registry.get(name)
        if found is None:
            return JSONResponse({"error": f"no registration named {name!r}"}, status_code=404)
        return JSONResponse(found.to_json())

    async def put(request: Request) -> Response:
        if not authorized(request):
            return refused()
        name = request.path_params["name"]
        try:
            body: Any = json.loads(await request.body() or b"null")
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, status_code=400)
        reloads = Reloads()
        try:
            done = await registry.register(name, body, source=source, approvals=approvals(), reload=reloads,
                                           fetch_tools=fetch_tools, networks=networks)  # fmt: skip
        except registry.RegistrationRefused as exc:
            return JSONResponse({"error": exc.message, "details": exc.details}, status_code=exc.status)
        except StateUnavailable as exc:  # the shared approvals a drift waits in cannot be reached
            return JSONResponse({"error": f"the approvals store cannot be reached: {exc}"}, status_code=503)
        answer: dict[str, Any] = {"name": name, "status": done.status, "versions": dict(done.versions),
                                  "applied": await reloads.settled()}  # fmt: skip
        if done.approval_id is not None:
            answer["approvalId"] = done.approval_id
            answer["error"] = ("the skills or tool descriptions changed (drift): held until an operator approves "
                               f"(agentxds approvals approve {done.approval_id}), then register again")  # fmt: skip
        conflicts = [c for c in source.conflicts if f"registration {name!r}" in c]
        if conflicts:  # stored, but something keeps it from being served now
            answer["conflicts"] = conflicts
        return JSONResponse(answer, status_code=_STATUS[done.status])

    async def delete(request: Request) -> Response:
        if not authorized(request):
            return refused()
        name = request.path_params["name"]
        reloads = Reloads()
        result = registry.remove(name, source=source, reload=reloads)
        if result is None:
            return JSONResponse({"error": f"no registration named {name!r}"}, status_code=404)
        if not result.ok:  # forgotten, but what is served could not be rebuilt without it
            return JSONResponse({"name": name, "status": "removed", "error": "the configuration did not build "
                                 "without it; the last good one keeps serving", "details": list(result.errors)},
                                status_code=500)  # fmt: skip
        return JSONResponse({"name": name, "status": "removed", "versions": dict(result.versions),
                             "applied": await reloads.settled()})  # fmt: skip

    async def healthz(_: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def failed(_: Request, exc: Exception) -> JSONResponse:
        # The shared store down, or a bug: a JSON answer, never a traceback.
        return JSONResponse({"error": f"the registry request failed ({type(exc).__name__}: the store unreachable, or a bug); "
                             "the control plane's log says more"}, status_code=503)  # fmt: skip

    return Starlette(exception_handlers={Exception: failed}, routes=[
        Route("/registry", list_all, methods=["GET"]),
        Route("/registry/{name}", one, methods=["GET"]),
        Route("/registry/{name}", put, methods=["PUT"]),
        Route("/registry/{name}", delete, methods=["DELETE"]),
        Route("/healthz", healthz, methods=["GET"]),
    ])  # fmt: skip
