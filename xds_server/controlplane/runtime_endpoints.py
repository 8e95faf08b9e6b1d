"""Endpoints set at run time, without a policy commit: the endpoints API and the endpoints file.

A backend whose policy says `runtimeEndpoints: true` may be moved while the
gateway runs; its endpoints in Git (if any) are where it starts. Two
sources set them, the API over the file for the same backend:

    the endpoints file   YAML, `endpoints: {<backend>: [{host: <IP>, port: <n>}, ...]}`,
                         followed like the policy files (a bad edit is refused with
                         file, line and field; the last good content stays)
    the endpoints API    controlplane/endpoints_api.py; kept in the state directory
                         (`runtime-endpoints.json`), so a restart keeps them

Runtime endpoints are IP addresses only: the backend's cluster is then
always an EDS cluster, and a move is one EDS update that leaves every other
backend, and this backend's cluster, alone (but with `tls` and no `sni`: the
certificate names checked are the endpoints', so the cluster changes too). A backend whose endpoints are
defined in Git (no `runtimeEndpoints`) keeps them: a runtime entry for it
is a conflict, refused by the API and reported (never applied) for the file.

`apply(ir, endpoints)` gives the IR with the runtime endpoints in place, and
the conflicts; the rest of the pipeline (translate, snapshot, ADS) is as for
any edit.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from xds_server.ir.types import IR, EndpointIR, RouteIR

MAX_ENDPOINTS = 64  # as for endpoints in Git


class EndpointsError(ValueError):
    """Endpoints that cannot be used; `str()` says where and why."""


def parse_endpoints(value: Any, where: str) -> tuple[EndpointIR, ...]:
    """A list of {host: <IP>, port: <1-65535>} as EndpointIRs (sorted, de-duplicated); EndpointsError if not."""
    if not isinstance(value, list) or not value:
        raise EndpointsError(f"{where}: a non-empty list of {{host, port}} is expected")
    if len(value) > MAX_ENDPOINTS:
        raise EndpointsError(f"{where}: at most {MAX_ENDPOINTS} endpoints")
    out = set()
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(item, Mapping) or set(item) != {"host", "port"}:
            raise EndpointsError(f"{at}: exactly the fields host and port are expected")
        host, port = item["host"], item["port"]
        try:
            if not isinstance(host, str) or "%" in host:  # an int is an "address" to ipaddress; no scoped IPv6
                raise ValueError(host)
            host = str(ipaddress.ip_address(host))
        except ValueError:
            raise EndpointsError(f"{at}.host: {host!r} is not an IP address (runtime endpoints are IPs: "
                                 "names belong in Git)") from None  # fmt: skip
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise EndpointsError(f"{at}.port: {port!r} is not a TCP port (1-65535)")
        out.add(EndpointIR(str(host), port))
    return tuple(sorted(out))


def load_file(path: Path) -> dict[str, tuple[EndpointIR, ...]]:
    """The endpoints file's content; EndpointsError naming the file and line of what is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise EndpointsError(f"{path}: cannot be read: {exc.strerror}") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise EndpointsError(f"{path}{line}: YAML syntax error: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    lines = _lines(node)
    if not isinstance(data, Mapping) or set(data) != {"endpoints"} or not isinstance(data["endpoints"], Mapping):
        raise EndpointsError(f"{path}:1: expected `endpoints: {{<backend>: [{{host, port}}, ...]}}`")
    out = {}
    for backend, value in data["endpoints"].items():
        out[str(backend)] = parse_endpoints(value, f"{path}:{lines.get(str(backend), 1)}: endpoints.{backend}")
    return out


def _lines(node: Any) -> dict[str, int]:
    """The line of each backend's key in the file (1-based), for messages."""
    if not isinstance(node, yaml.MappingNode):
        return {}
    for key, value in node.value:
        if key.value == "endpoints" and isinstance(value, yaml.MappingNode):
            return {k.value: k.start_mark.line + 1 for k, _ in value.value}
    return {}


class ApiEndpoints:
    """The endpoints set through the API, kept in `path` (JSON) if given: they survive a restart."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.endpoints: dict[str, tuple[EndpointIR, ...]] = {}
        if path is not None and path.exists():
            data = json.loads(path.read_text(encoding="utf-8"))
            self.endpoints = {b: parse_endpoints(v, f"{path}: {b}") for b, v in data.get("endpoints", {}).items()}

    def set(self, backend: str, endpoints: tuple[EndpointIR, ...] | None) -> None:
        """Set (or with None, forget) a backend's runtime endpoints, on disk first (an OSError leaves
        both as they were)."""
        changed = dict(self.endpoints)
        if endpoints is None:
            changed.pop(backend, None)
        else:
            changed[backend] = endpoints
        if self.path is not None:
            data = {"endpoints": {b: [{"host": e.host, "port": e.port} for e in v]
                                  for b, v in sorted(changed.items())}}  # fmt: skip
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)
        self.endpoints = changed


@dataclass(frozen=True)
class Applied:
    """The IR with runtime endpoints in place; `conflicts`: one sentence per runtime entry not applied."""

    ir: IR
    conflicts: tuple[str, ...] = ()


def apply(ir: IR, endpoints: Mapping[str, tuple[EndpointIR, ...]]) -> Applied:
    """Put the runtime `endpoints` (backend name -> endpoints) into the routes that take them."""
    if not endpoints:
        return Applied(ir)
    conflicts = []
    routes_by_name = {r.name: r for g in ir.gateways for r in g.routes}
    for backend in sorted(endpoints):
        route = routes_by_name.get(backend)
        if route is None:
            conflicts.append(f"runtime endpoints for '{backend}' not applied: no backend of that name in the policies")
        elif not route.upstream.runtime_endpoints:
            conflicts.append(refusal(route))
    gateways = []
    for gateway in ir.gateways:
        routes = tuple(_moved(r, endpoints.get(r.name)) for r in gateway.routes)
        if routes != gateway.routes:
            gateway = dataclasses.replace(gateway, listener=dataclasses.replace(gateway.listener, routes=routes))
        gateways.append(gateway)
    return Applied(dataclasses.replace(ir, gateways=tuple(gateways)), tuple(conflicts))


def refusal(route: RouteIR) -> str:
    """Why runtime endpoints for `route` are not applied: Git defines its endpoints."""
    return (f"runtime endpoints for '{route.name}' not applied: its endpoints are defined in Git (set "
            "runtimeEndpoints: true in its MCPBackend to let them move)")  # fmt: skip


def _moved(route: RouteIR, endpoints: tuple[EndpointIR, ...] | None) -> RouteIR:
    if endpoints is None or not route.upstream.runtime_endpoints or endpoints == route.upstream.endpoints:
        return route
    return dataclasses.replace(route, upstream=dataclasses.replace(route.upstream, endpoints=endpoints))


class RuntimeEndpoints:
    """Both sources together: the endpoints file (`file`, followed) and the API's entries (`api`).

    `refresh()` reads the file again: a file that cannot be used keeps its last
    good content and says why (one sentence with file and line).
    """

    def __init__(self, file: Path | None = None, api: ApiEndpoints | None = None) -> None:
        self.file = file
        self.api = api if api is not None else ApiEndpoints()
        self._from_file: dict[str, tuple[EndpointIR, ...]] = {}

    def refresh(self) -> str | None:
        if self.file is None:
            return None
        try:
            self._from_file = load_file(self.file)
        except EndpointsError as exc:
            return f"endpoints file refused, its last good content stays: {exc}"
        return None

    def current(self) -> dict[str, tuple[EndpointIR, ...]]:
        """Each backend's runtime endpoints: the API's, else the file's."""
        return {**self._from_file, **self.api.endpoints}

    def source_of(self, backend: str) -> str | None:
        """ "api", "file" or None: where `backend`'s runtime endpoints come from."""
        if backend in self.api.endpoints:
            return "api"
        return "file" if backend in self._from_file else None
