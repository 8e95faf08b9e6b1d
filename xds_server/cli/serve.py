"""`agentxds serve DIR`: the control plane and the policy service, for a fleet of Envoys or docker compose."""

from __future__ import annotations

import argparse
import asyncio
import signal

from xds_server.cli.common import DEFAULT_XDS_PORT, Subparsers, add_allow_emptying, add_state_dir, policy_dir


def cmd_serve(args: argparse.Namespace) -> int:
    from xds_server.controlplane.service import ControlPlane
    from xds_server.runtime.state_dir import StateDir

    state = StateDir.at(args.state_dir).ensure()

    async def serve() -> int:
        control = ControlPlane(args.dir, host=args.host, port=args.port, policy_host=args.host,
                               policy_port=args.policy_port, approvals_port=args.approvals_port,
                               authz_http_port=args.authz_http_port if args.authz_http_port >= 0 else None,
                               allow_emptying=args.allow_emptying, approvals_db=state.approvals_db,
                               coverage_file=state.published_coverage(args.dir))  # fmt: skip
        await control.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        service = control.policy_service
        assert service is not None
        http = f" (ext_authz over HTTP on {service.authz_http_port})" if service.authz_http_port is not None else ""
        print(f"agentxds control plane: ADS on {args.host}:{control.port}, policy service on {args.host}:"
              f"{service.port}{http}, approvals on http://{args.host}:{service.approvals_port} (kept in "
              f"{state.approvals_db}), policies {args.dir}",
              flush=True)  # fmt: skip
        await stop.wait()
        await control.stop()
        return 0

    return asyncio.run(serve())


def register(sub: Subparsers) -> None:
    serve = sub.add_parser("serve", help="control plane only (for a fleet of Envoys or docker compose)")
    serve.add_argument("dir", type=policy_dir)
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
    add_allow_emptying(serve)
    add_state_dir(serve)
    serve.set_defaults(func=cmd_serve)
