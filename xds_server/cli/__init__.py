"""The `agentxds` command line: one module per command group, each adding its parsers.

    up         up.py          control plane + Envoy (+ demo server) on this machine
    serve      serve.py       control plane and policy service for a fleet
    validate   policies.py    check a policy directory
    render     policies.py    the IR or the xDS resources, as YAML
    bootstrap  bootstrap.py   an Envoy ADS bootstrap
    status     status.py      what the control plane serves and what Envoys accepted
    approvals  approvals.py   the operators' side of requireApproval
    registry   registry.py    A2A agents and MCP servers registered at run time
    pin        pin.py         write a backend's MCPToolLock
    certs      certs.py       a development PKI

Commands import the running system lazily, inside their functions, so
`agentxds --help` and parsing stay fast and import nothing heavy.
"""

from __future__ import annotations

import argparse
import logging

from xds_server.cli import approvals, bootstrap, certs, pin, policies, registry, serve, status, up

_COMMANDS = (up, serve, policies, bootstrap, status, approvals, registry, pin, certs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentxds", description="Envoy agent gateway: policies in, xDS out.")
    parser.add_argument("--log-level", default="INFO", help="control plane log level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in _COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs each request at INFO (the policy service's calls to virtual servers' members): one line per
    # request would drown the service's own log. Its warnings still show.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    return int(args.func(args) or 0)
