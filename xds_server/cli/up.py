"""`agentxds up [DIR]`: everything on this machine (the work is in `embedded.run_up`)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from xds_server.cli.common import (
    Subparsers,
    add_allow_emptying,
    add_overload_limits,
    add_state_dir,
    overload_limits,
    policy_dir,
)


def cmd_up(args: argparse.Namespace) -> int:
    from xds_server.cli.embedded import run_up

    return asyncio.run(
        run_up(args.dir, gateway_name=args.gateway, demo=args.demo, admin_port=args.admin_port,
               approvals_port=args.approvals_port, envoy_log_level=args.envoy_log_level,
               allow_emptying=args.allow_emptying, state_dir=args.state_dir,
               keep_logs=args.keep_logs, overload=overload_limits(args), replicas=args.replicas)
    )  # fmt: skip


def _replicas(text: str) -> int:
    n = int(text)
    if not 1 <= n <= 8:
        raise argparse.ArgumentTypeError(f"--replicas takes 1 to 8, not {n}")
    return n


def register(sub: Subparsers) -> None:
    up = sub.add_parser("up", help="control plane + Envoy on this machine")
    up.add_argument("dir", nargs="?", type=policy_dir, default=Path("policies/demo"), help="policy directory")
    up.add_argument(
        "--demo",
        action="store_true",
        help='also start the demo MCP server for backends annotated agentxds.dev/demo: "true"',
    )
    up.add_argument("--gateway", help="which Gateway to run (default: the first by name)")
    up.add_argument("--admin-port", type=int, default=0, help="Envoy admin port on 127.0.0.1 (default: a free one)")
    up.add_argument("--approvals-port", type=int, default=18002, help="approvals HTTP API on 127.0.0.1 (default 18002)")
    up.add_argument("--envoy-log-level", default="warning")
    up.add_argument(
        "--replicas",
        type=_replicas,
        default=1,
        help="run N Envoys (1-8) from the one control plane, the first on the Gateway's port, the others on the "
        "ports after it; each has its own admin port and log, `agentxds status` lists them all",
    )
    up.add_argument(
        "--keep-logs",
        action="store_true",
        help="keep the directory with Envoy's, the demo servers' "
        "and the control plane's logs on exit (kept anyway when something died)",
    )
    add_allow_emptying(up)
    add_state_dir(up)
    add_overload_limits(up)
    up.set_defaults(func=cmd_up)
