"""The endpoints API: move a backend (one with `runtimeEndpoints: true`) without a policy commit.

    GET    /endpoints               every backend: its endpoints now, where they come from
    PUT    /endpoints/{backend}     body {"endpoints": [{"host": "<IP>", "port": <n>}, ...]}
    DELETE /endpoints/{backend}     forget the API's entry (the file's, else Git's, apply again)
    GET    /healthz                 "ok" (no token needed)

Every other request needs `Authorization: Bearer <token>` (the token from a
file or the environment: `agentxds serve --endpoints-token-file`); a wrong or
missing one gets 401. A change is published before the answer (a rebuild of
the configuration, then EDS to the Envoys): 200 with the gateway's new
version. 400: endpoints that are not IP addresses and ports; 404: no such
backend; 409: a backend whose endpoints are defined in Git (Git wins; set
`runtimeEndpoints: true` in its MCPBackend to let it move). What the API set
is kept in the state directory and survives a restart.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from xds_server.controlplane.pipeline import Pipeline, ReloadResult
from xds_server.controlplane.runtime_endpoints import EndpointsError, RuntimeEndpoints, parse_endpoints, refusal
from xds_server.core.bearer import BearerToken


def build_app(
    pipeline: Pipeline, runtime: RuntimeEndpoints, token: str, reload: Callable[[], ReloadResult]
) -> Starlette:
    """The API over `runtime`; `reload` publishes a change (the control plane's reload)."""
    bearer = BearerToken(token, "agentxds-endpoints")
    authorized, refused = bearer.allows, bearer.refusal

    def routes() -> dict[str, Any]:
        ir = pipeline.ir
        return {r.name: r for g in (ir.gateways if ir is not None else ()) for r in g.routes}

    async def list_endpoints(request: Request) -> Response:
        if not authorized(request):
            return refused()
        out = {}
        for name, route in sorted(routes().items()):
            source = runtime.source_of(name) if route.upstream.runtime_endpoints else None
            out[name] = {"endpoints": [{"host": e.host, "port": e.port} for e in route.upstream.endpoints],
                         "source": source or "git", "runtimeEndpoints": route.upstream.runtime_endpoints}  # fmt: skip
        return JSONResponse({"backends": out})

    async def change(request: Request) -> Response:
        if not authorized(request):
            return refused()
        backend = request.path_params["backend"]
        route = routes().get(backend)
        if (
            request.method == "DELETE"
            and backend in runtime.api.endpoints
            and (route is None or not route.upstream.runtime_endpoints)
        ):
            runtime.api.set(backend, None)  # a stale entry (its backend gone, or fixed in Git): just forget it
            return JSONResponse({"backend": backend, "forgotten": True})
        if route is None:
            return JSONResponse({"error": f"no backend {backend!r} in the published policies"}, status_code=404)
        if not route.upstream.runtime_endpoints:
            return JSONResponse({"error": refusal(route)}, status_code=409)
        if request.method == "DELETE":
            runtime.api.set(backend, None)
        else:
            try:
                body = json.loads(await request.body() or b"null")
            except ValueError:
                return JSONResponse({"error": "the body is not JSON"}, status_code=400)
            if not isinstance(body, dict) or set(body) != {"endpoints"}:
                return JSONResponse({"error": 'the body must be {"endpoints": [{"host": ..., "port": ...}]}'},
                                    status_code=400)  # fmt: skip
            try:
                endpoints = parse_endpoints(body["endpoints"], "endpoints")
            except EndpointsError as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            runtime.api.set(backend, endpoints)
        result = reload()
        now = routes().get(backend)
        answer: dict[str, Any] = {
            "backend": backend,
            "endpoints": [{"host": e.host, "port": e.port} for e in now.upstream.endpoints] if now else [],
            "versions": dict(result.versions),
        }
        if not result.ok:  # the policies do not build now: the entry applies with the next good build
            answer["pending"] = "the policies do not build now; this applies with the next good build"
            return JSONResponse(answer, status_code=202)
        return JSONResponse(answer)

    async def healthz(_: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[
        Route("/endpoints", list_endpoints, methods=["GET"]),
        Route("/endpoints/{backend}", change, methods=["PUT", "DELETE"]),
        Route("/healthz", healthz, methods=["GET"]),
    ])  # fmt: skip
