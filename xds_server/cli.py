"""The `agentxds` command line: up | serve | validate | render | bootstrap | status."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

DEFAULT_XDS_PORT = 18000


def _policy_dir(value: str) -> Path:
    return Path(value)


def cmd_validate(args: argparse.Namespace) -> int:
    from xds_server.pipeline import compile_policies
    from xds_server.policy.diagnostics import PolicyError

    try:
        ir, resources = compile_policies(args.dir)
    except PolicyError as exc:
        for d in exc.diagnostics:
            print(d, file=sys.stderr)
        print(f"{len(exc.diagnostics)} error(s) in {args.dir}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 1
    for gateway in ir.gateways:
        agents = sum(1 for a in gateway.agents if a.principals)
        grants = sum(len(b.grants) for b in gateway.backends)
        print(f"gateway {gateway.name}: {len(gateway.backends)} backend(s), {agents} agent(s), {grants} grant(s)")
    print(f"OK: {args.dir} is valid")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from xds_server.pipeline import compile_policies
    from xds_server.policy.diagnostics import PolicyError
    from xds_server.render import dump_yaml, ir_document, xds_document

    try:
        ir, resources = compile_policies(args.dir)
    except (PolicyError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.to == "ir":
        sys.stdout.write(dump_yaml(ir_document(ir)))
    else:
        sys.stdout.write(dump_yaml(xds_document(resources), sort_keys=True))
    return 0


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from xds_server.runtime.bootstrap import render_bootstrap

    bootstrap = render_bootstrap(
        node_id=args.node_id or f"{args.gateway}-envoy",
        node_cluster=args.gateway,
        xds_host=args.xds_host,
        xds_port=args.xds_port,
        admin_host=args.admin_host,
        admin_port=args.admin_port,
    )
    # JSON is valid YAML, and avoids YAML 1.1 surprises in Envoy's reader.
    sys.stdout.write(json.dumps(bootstrap, indent=2) + "\n")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from xds_server.control_plane import ControlPlane

    async def serve() -> int:
        control = ControlPlane(args.dir, host=args.host, port=args.port, policy_host=args.host,
                               policy_port=args.policy_port, approvals_port=args.approvals_port,
                               authz_http_port=args.authz_http_port if args.authz_http_port >= 0 else None)  # fmt: skip
        await control.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        service = control.policy_service
        assert service is not None
        http = f" (ext_authz over HTTP on {service.authz_http_port})" if service.authz_http_port is not None else ""
        print(f"agentxds control plane: ADS on {args.host}:{control.port}, policy service on {args.host}:"
              f"{service.port}{http}, approvals on http://{args.host}:{service.approvals_port}, policies {args.dir}",
              flush=True)  # fmt: skip
        await stop.wait()
        await control.stop()
        return 0

    return asyncio.run(serve())


def cmd_up(args: argparse.Namespace) -> int:
    from xds_server.up import run_up

    return asyncio.run(
        run_up(args.dir, gateway_name=args.gateway, demo=args.demo, admin_port=args.admin_port,
               approvals_port=args.approvals_port, envoy_log_level=args.envoy_log_level)
    )  # fmt: skip


def cmd_status(args: argparse.Namespace) -> int:
    from xds_server.status_client import fetch_status, format_status, status_exit_code

    try:
        status = fetch_status(args.xds, timeout=args.timeout)
    except Exception as exc:  # grpc errors carry their own explanation
        print(f"agentxds status: cannot reach the control plane at {args.xds}: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(format_status(status))
    return status_exit_code(status)  # 1: policy errors or a NACK in effect


def cmd_approvals(args: argparse.Namespace) -> int:
    from xds_server.approvals_client import run_approvals

    return run_approvals(args.url, args.action, args.id, by=args.by, include_done=args.all)


def cmd_pin(args: argparse.Namespace) -> int:
    from xds_server.pin_command import run_pin

    return run_pin(args.dir, args.backend, url=args.url, legacy=args.legacy)


def cmd_certs(args: argparse.Namespace) -> int:
    from xds_server.certs import policy_snippet, write_dev_pki

    try:
        pki = write_dev_pki(args.dir, trust_domain=args.trust_domain, agents=args.agent or [],
                            gateway_hosts=args.gateway_host or [], gateway_ips=args.gateway_ip or [],
                            days=args.days, new_ca=args.new_ca)  # fmt: skip
    except (ValueError, OSError) as exc:
        print(f"agentxds certs: {exc}", file=sys.stderr)
        return 1
    rows = [("CA (reused)" if pki.ca_reused else "CA (new)", pki.ca_cert, pki.ca_key, ""),
            ("gateway", pki.gateway_cert, pki.gateway_key, "")]  # fmt: skip
    rows += [(f"agent {name}", cert, key, sid) for name, (sid, cert, key) in sorted(pki.agents.items())]
    width = max(len(r[0]) for r in rows)
    for label, cert, key, sid in rows:
        print(f"{label:<{width}}  {cert}  (key {key.name}, mode 0600)  {sid}".rstrip())
    print(
        f"\nLeaf certificates are valid for {args.days} day(s). Re-run to renew: the CA is kept (--new-ca replaces it),"
    )
    print("and a running gateway picks up rewritten files without a restart.\n")
    sys.stdout.write(policy_snippet(pki))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentxds", description="Envoy agent gateway: policies in, xDS out.")
    parser.add_argument("--log-level", default="INFO", help="control plane log level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="control plane + Envoy on this machine")
    up.add_argument("dir", nargs="?", type=_policy_dir, default=Path("policies/demo"), help="policy directory")
    up.add_argument(
        "--demo",
        action="store_true",
        help='also start the demo MCP server for backends annotated agentxds.dev/demo: "true"',
    )
    up.add_argument("--gateway", help="which Gateway to run (default: the first by name)")
    up.add_argument("--admin-port", type=int, default=0, help="Envoy admin port on 127.0.0.1 (default: a free one)")
    up.add_argument("--approvals-port", type=int, default=18002, help="approvals HTTP API on 127.0.0.1 (default 18002)")
    up.add_argument("--envoy-log-level", default="warning")
    up.set_defaults(func=cmd_up)

    serve = sub.add_parser("serve", help="control plane only (for a fleet of Envoys or docker compose)")
    serve.add_argument("dir", type=_policy_dir)
    serve.add_argument("--host", default="127.0.0.1", help="address to serve ADS on (0.0.0.0 in a container)")
    serve.add_argument("--port", type=int, default=DEFAULT_XDS_PORT, help="ADS and status API port (default 18000)")
    serve.add_argument("--policy-port", type=int, default=18001, help="policy service gRPC port (default 18001)")
    serve.add_argument("--approvals-port", type=int, default=18002, help="approvals HTTP API port (default 18002)")
    serve.add_argument(
        "--authz-http-port",
        type=int,
        default=18003,
        help="ext_authz over HTTP, for gateways with policyService.extAuthz: http (default 18003; -1: off)",
    )
    serve.set_defaults(func=cmd_serve)

    validate = sub.add_parser("validate", help="check a policy directory; non-zero exit on errors")
    validate.add_argument("dir", type=_policy_dir)
    validate.set_defaults(func=cmd_validate)

    render = sub.add_parser("render", help="print what Envoy would receive")
    render.add_argument("dir", type=_policy_dir)
    render.add_argument("--to", choices=("ir", "xds"), default="xds")
    render.set_defaults(func=cmd_render)

    boot = sub.add_parser("bootstrap", help="print an Envoy ADS bootstrap for one gateway")
    boot.add_argument("--gateway", required=True, help="Gateway name (the Envoy node cluster)")
    boot.add_argument("--node-id")
    boot.add_argument("--xds-host", default="127.0.0.1")
    boot.add_argument("--xds-port", type=int, default=DEFAULT_XDS_PORT)
    boot.add_argument("--admin-host", default="127.0.0.1")
    boot.add_argument("--admin-port", type=int, default=9901)
    boot.set_defaults(func=cmd_bootstrap)

    status = sub.add_parser("status", help="connected Envoys, versions, NACKs and policy errors")
    status.add_argument("--xds", default=f"127.0.0.1:{DEFAULT_XDS_PORT}", help="control plane address host:port")
    status.add_argument("--timeout", type=float, default=5.0)
    status.set_defaults(func=cmd_status)
    approvals = sub.add_parser("approvals", help="list, approve or deny calls waiting for an operator")
    approvals.add_argument("action", choices=("list", "show", "approve", "deny"))
    approvals.add_argument("id", nargs="?", help="approval id (from the JSON-RPC error's data.approvalId)")
    approvals.add_argument("--url", default="http://127.0.0.1:18002", help="the policy service's approvals API")
    approvals.add_argument("--by", default=None, help="who decides (default: $USER)")
    approvals.add_argument("--all", action="store_true", help="list: include decided and used approvals")
    approvals.set_defaults(func=cmd_approvals)

    pin = sub.add_parser("pin", help="record a backend's tools in an MCPToolLock file (commit it)")
    pin.add_argument("dir", type=_policy_dir, help="policy directory; the lock is written as DIR/<backend>.lock.yaml")
    pin.add_argument("--backend", required=True, help="MCPBackend name")
    pin.add_argument("--url", help="MCP URL to read the tools from (default: the backend's first endpoint)")
    pin.add_argument("--legacy", action="store_true", help="speak 2025-11-25 to the backend")
    pin.set_defaults(func=cmd_pin)

    certs = sub.add_parser("certs", help="write a development CA, gateway certificate and SPIFFE agent certificates")
    certs.add_argument(
        "dir", type=_policy_dir, help="where to write ca.crt, gateway.crt and agents/<name>.crt (+ keys)"
    )
    certs.add_argument("--trust-domain", required=True, help="SPIFFE trust domain, e.g. example.org")
    certs.add_argument("--agent", action="append", metavar="NAME",
                       help="an agent certificate for spiffe://<trust-domain>/agent/NAME (repeatable)")  # fmt: skip
    certs.add_argument("--gateway-host", action="append", metavar="DNS",
                       help="another DNS name for the gateway certificate (localhost is always in it; repeatable)")  # fmt: skip
    certs.add_argument("--gateway-ip", action="append", metavar="IP",
                       help="another IP address for the gateway certificate (127.0.0.1 is always in it; repeatable)")  # fmt: skip
    certs.add_argument(
        "--days", type=int, default=30, help="validity of the gateway and agent certificates (default 30)"
    )
    certs.add_argument(
        "--new-ca", action="store_true", help="replace an existing CA (default: reuse DIR/ca.crt and ca.key)"
    )
    certs.set_defaults(func=cmd_certs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
