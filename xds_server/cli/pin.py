"""`agentxds pin DIR --backend NAME`: write the backend's (or virtual server's) MCPToolLock into the policy directory."""

from __future__ import annotations

import argparse
import asyncio
import sys
import urllib.parse
from pathlib import Path

from xds_server.cli.common import Subparsers, describe_error, policy_dir


def run_pin(policy_dir: Path, backend_name: str, *, url: str | None, legacy: bool) -> int:
    from xds_server.authz.mcp.pin import fetch_tools, lock_document
    from xds_server.authz.upstream_tls import upstream_url
    from xds_server.core.wire import POLICY_SERVICE_SECRET_HEADER
    from xds_server.ir.build import build_ir
    from xds_server.ir.types import UpstreamTlsIR
    from xds_server.policy.diagnostics import PolicyError
    from xds_server.policy.load import load_directory
    from xds_server.policy.virtual_mcp import VirtualMCPServer

    try:
        policy_set = load_directory(policy_dir)
    except PolicyError as exc:
        print(f"agentxds pin: {policy_dir} has errors:\n{exc}", file=sys.stderr)
        return 1
    backend = next((b.doc for b in policy_set.backends if b.doc.metadata.name == backend_name), None)
    headers: dict[str, str] = {}
    tls: UpstreamTlsIR | None = None
    virtual = next((v for v in policy_set.of(VirtualMCPServer) if v.doc.metadata.name == backend_name), None)
    if virtual is not None and url is None:
        # Its tools as clients see them (renamed, curated, every member's), read from the policy service
        # that serves them (the gateway filters them per caller; the lock pins them for every caller).
        try:  # the front and its secret as the control plane builds them
            ir = build_ir(policy_set)
        except PolicyError as exc:
            print(f"agentxds pin: {policy_dir} has errors:\n{exc}", file=sys.stderr)
            return 1
        gateway = next(g for g in ir.gateways if g.name == policy_set.gateway_of(virtual))
        front = next(r.upstream for r in gateway.routes if r.name == backend_name)
        url, tls = upstream_url(front), front.tls
        if gateway.policy_service_secret is not None:  # the policy service serves the gateway's requests with it only
            headers[POLICY_SERVICE_SECRET_HEADER] = gateway.policy_service_secret.value
    elif backend is None and virtual is None:
        known = ", ".join(b.doc.metadata.name for b in policy_set.backends) or "none"
        print(f"agentxds pin: no MCPBackend named {backend_name!r} (known: {known})", file=sys.stderr)
        return 1
    if url is None:
        assert backend is not None
        if not backend.spec.endpoints:
            print(f"agentxds pin: MCPBackend {backend_name!r} lists no endpoint (runtimeEndpoints): give --url",
                  file=sys.stderr)  # fmt: skip
            return 2
        endpoint = backend.spec.endpoints[0]
        url = f"http://{endpoint.host}:{endpoint.port}{backend.spec.path}"
    try:
        tools = asyncio.run(fetch_tools(url, mode="legacy" if legacy else "auto", headers=headers, tls=tls))
    except Exception as exc:  # the SDK raises many kinds; the message is what matters here
        where = urllib.parse.urlsplit(url).netloc
        print(f"agentxds pin: cannot list the tools at {url}: {describe_error(exc, where)}", file=sys.stderr)
        return 1
    existing = policy_set.lock_for(backend_name)
    target = Path(existing.source.file) if existing is not None else Path(policy_dir) / f"{backend_name}.lock.yaml"
    if existing is not None and _documents_in(target) > 1:
        # Rewriting the file would drop its other documents.
        print(f"agentxds pin: {target} holds other documents besides the lock of {backend_name}; move the "
              "MCPToolLock to a file of its own and run pin again", file=sys.stderr)  # fmt: skip
        return 1
    target.write_text(lock_document(backend_name, tools))
    print(f"pinned {len(tools)} tool(s) of {backend_name} from {url} in {target}")
    return 0


def _documents_in(path: Path) -> int:
    import yaml

    return sum(1 for doc in yaml.safe_load_all(path.read_text()) if doc is not None)


def cmd_pin(args: argparse.Namespace) -> int:
    return run_pin(args.dir, args.backend, url=args.url, legacy=args.legacy)


def register(sub: Subparsers) -> None:
    pin = sub.add_parser("pin", help="record a backend's tools in an MCPToolLock file (commit it)")
    pin.add_argument("dir", type=policy_dir, help="policy directory; the lock is written as DIR/<backend>.lock.yaml")
    pin.add_argument(
        "--backend",
        required=True,
        help="MCPBackend or VirtualMCPServer name (a virtual server's "
        "tools are read as its clients see them, from its policy service)",
    )
    pin.add_argument("--url", help="MCP URL to read the tools from (default: the backend's first endpoint)")
    pin.add_argument("--legacy", action="store_true", help="speak 2025-11-25 to the backend")
    pin.set_defaults(func=cmd_pin)
