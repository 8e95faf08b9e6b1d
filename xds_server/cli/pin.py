"""`agentxds pin DIR --backend NAME`: write the backend's (or virtual server's) MCPToolLock into the policy directory."""

from __future__ import annotations

import argparse
import asyncio
import sys
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

from xds_server.cli.common import Subparsers, describe_error, policy_dir

if TYPE_CHECKING:
    from xds_server.ir.types import UpstreamIR
    from xds_server.policy.diagnostics import PolicyError
    from xds_server.policy.load import PolicySet


def run_pin(policy_dir: Path, backend_name: str, *, url: str | None, legacy: bool) -> int:
    from xds_server.authz.mcp.pin import fetch_tools, lock_document
    from xds_server.authz.upstream_tls import upstream_url
    from xds_server.core.wire import POLICY_SERVICE_SECRET_HEADER
    from xds_server.ir.types import UpstreamTlsIR
    from xds_server.policy.diagnostics import PolicyError
    from xds_server.policy.load import load_directory
    from xds_server.policy.virtual_mcp import VirtualMCPServer

    try:
        policy_set = load_directory(policy_dir)
    except PolicyError as exc:
        print(f"agentxds pin: {policy_dir} has errors:\n{exc}", file=sys.stderr)
        return 1
    backend = next((b for b in policy_set.backends if b.doc.metadata.name == backend_name), None)
    virtual = next((v for v in policy_set.of(VirtualMCPServer) if v.doc.metadata.name == backend_name), None)
    if backend is None and virtual is None:
        known = ", ".join(b.doc.metadata.name for b in policy_set.backends) or "none"
        print(f"agentxds pin: no MCPBackend named {backend_name!r} (known: {known})", file=sys.stderr)
        return 1
    headers: dict[str, str] = {}
    tls: UpstreamTlsIR | None = None
    if url is None:
        # Where the control plane sends the backend's requests, as it builds them: a virtual server's front
        # (its tools as clients see them: renamed, curated, every member's; the gateway filters them per
        # caller, the lock pins them for every caller) with its gateway's secret, or the backend's first
        # endpoint in sorted order (as the IR holds them), each with its TLS.
        located = virtual if virtual is not None else backend
        assert located is not None
        gateway_name = policy_set.gateway_of(located)
        needs: tuple[str, ...] = (f"{located.doc.kind}/{backend_name} spec.tls",)
        if virtual is not None:
            needs += (f"Gateway/{gateway_name} spec.policyService",)
        found = _built_route(policy_set, gateway_name, backend_name, needs)
        if isinstance(found, PolicyError):
            print(f"agentxds pin: {policy_dir} has errors:\n{found}", file=sys.stderr)
            return 1
        upstream, secret = found
        if not upstream.endpoints:
            print(f"agentxds pin: MCPBackend {backend_name!r} lists no endpoint (runtimeEndpoints): give --url",
                  file=sys.stderr)  # fmt: skip
            return 2
        url, tls = upstream_url(upstream), upstream.tls
        if virtual is not None and secret is not None:  # the front serves the gateway's requests with it only
            headers[POLICY_SERVICE_SECRET_HEADER] = secret
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


def _built_route(
    policy_set: PolicySet, gateway: str, route: str, needs: tuple[str, ...]
) -> tuple[UpstreamIR, str | None] | PolicyError:
    """(`route`'s upstream on `gateway`, the gateway's policy-service secret or None) as the control plane
    builds them, or the PolicyError to show. Material elsewhere that cannot be read (another gateway's
    keys, an unset API key variable on this machine) does not matter here: only diagnostics on the fields
    in `needs` (prefixes of "Kind/name field.path") refuse."""
    from xds_server.ir.build import BuildRefused, build_ir
    from xds_server.policy.diagnostics import PolicyError

    try:
        ir = build_ir(policy_set)
    except BuildRefused as exc:
        relevant = [d for d in exc.diagnostics if d.field.startswith(needs)]
        if relevant:
            return PolicyError(relevant)
        ir = exc.ir
    built = next(g for g in ir.gateways if g.name == gateway)
    upstream = next(r.upstream for r in built.routes if r.name == route)
    secret = built.policy_service_secret
    return upstream, (secret.value if secret is not None and secret.value else None)


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
    pin.add_argument(
        "--url",
        help="MCP URL to read the tools from (default: where the gateway sends its requests: the first endpoint in sorted order, or a virtual server's front)",
    )
    pin.add_argument("--legacy", action="store_true", help="speak 2025-11-25 to the backend")
    pin.set_defaults(func=cmd_pin)
