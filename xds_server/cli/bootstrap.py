"""`agentxds bootstrap --gateway NAME`: an Envoy ADS bootstrap for one gateway's node group."""

from __future__ import annotations

import argparse
import json
import sys

from xds_server.cli.common import DEFAULT_XDS_PORT, Subparsers, add_overload_limits, overload_limits


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from xds_server.runtime.bootstrap import render_bootstrap

    bootstrap = render_bootstrap(
        node_id=args.node_id or f"{args.gateway}-envoy",
        node_cluster=args.gateway,
        xds_host=args.xds_host,
        xds_port=args.xds_port,
        admin_host=args.admin_host,
        admin_port=args.admin_port,
        overload=overload_limits(args),
        more_xds=args.also_xds,
    )
    # JSON is valid YAML, and avoids YAML 1.1 surprises in Envoy's reader.
    sys.stdout.write(json.dumps(bootstrap, indent=2) + "\n")
    return 0


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def register(sub: Subparsers) -> None:
    boot = sub.add_parser("bootstrap", help="print an Envoy ADS bootstrap for one gateway")
    boot.add_argument("--gateway", required=True, help="Gateway name (the Envoy node cluster)")
    boot.add_argument("--node-id")
    boot.add_argument("--xds-host", default="127.0.0.1")
    boot.add_argument("--xds-port", type=int, default=DEFAULT_XDS_PORT)
    boot.add_argument(
        "--also-xds",
        type=_host_port,
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="another control plane serving the same policies (repeatable): Envoy fails over to it",
    )
    boot.add_argument("--admin-host", default="127.0.0.1")
    boot.add_argument("--admin-port", type=int, default=9901)
    add_overload_limits(boot)
    boot.set_defaults(func=cmd_bootstrap)
