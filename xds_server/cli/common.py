"""What the command modules share: the default ADS port and the subcommand registry type."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TypeAlias

from xds_server.runtime.overload import OverloadLimits, limits_for_this_machine, parse_bytes

DEFAULT_XDS_PORT = 18000

#: What `argparse.ArgumentParser.add_subparsers()` returns; each command module adds its parsers to it.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def policy_dir(value: str) -> Path:
    return Path(value)


def add_allow_emptying(parser: argparse.ArgumentParser) -> None:
    """The opt-in for edits that empty a policy file or leave a gateway without grants."""
    parser.add_argument(
        "--allow-emptying",
        action="store_true",
        help="publish edits that empty a policy file or remove every grant of a gateway "
        "(refused by default, and reported in the log and in agentxds status)",
    )


def add_state_dir(parser: argparse.ArgumentParser) -> None:
    """Where approvals (and up's record of what it started) are kept."""
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where approvals and the record of a running `up` are kept (default: $AGENTXDS_STATE_DIR, "
        "else $XDG_STATE_HOME/agentxds, else ~/.local/state/agentxds)",
    )


def add_overload_limits(parser: argparse.ArgumentParser) -> None:
    """Envoy's process-wide limits (overload manager), defaults derived from this machine."""
    parser.add_argument(
        "--max-heap",
        help="Envoy's heap limit, e.g. 512MiB or 2GiB: near it Envoy sheds load and answers new requests "
        "with JSON-RPC -32051 (default: a quarter of this machine's memory, 64 MiB to 4 GiB)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        help="open client connections Envoy accepts before closing new ones (default: this process's "
        "open-file limit less 256, up to 50000)",
    )


def overload_limits(args: argparse.Namespace) -> OverloadLimits:
    """The limits `add_overload_limits`' flags ask for, this machine's defaults for those not given."""
    defaults = limits_for_this_machine()
    try:
        heap = parse_bytes(args.max_heap) if args.max_heap else defaults.max_heap_bytes
        return OverloadLimits(max_heap_bytes=heap, max_connections=args.max_connections or defaults.max_connections)
    except ValueError as exc:
        raise SystemExit(f"agentxds: {exc}") from None


def describe_error(exc: BaseException, where: str = "") -> str:
    """What went wrong, for a person: the leaf errors of exception groups (an SDK's task group
    says only "unhandled errors in a TaskGroup"), each in plain words, joined by "; "."""
    leaves: list[BaseException] = []

    def collect(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for inner in e.exceptions:
                collect(inner)
        else:
            leaves.append(e)

    collect(exc)
    said = dict.fromkeys(_plain(e, where) for e in leaves)  # in order, once each
    return "; ".join(said)


def _plain(exc: BaseException, where: str) -> str:
    name = type(exc).__name__
    at = f" {where}" if where else ""
    if name == "ConnectError" or isinstance(exc, ConnectionRefusedError):
        return f"cannot connect to{at} (nothing listens there, or it is unreachable)"
    if name in ("ConnectTimeout", "ReadTimeout", "WriteTimeout", "PoolTimeout") or isinstance(exc, TimeoutError):
        return f"no answer from{at} in time"
    response = getattr(exc, "response", None)
    if name == "HTTPStatusError" and response is not None:
        return f"{where or 'the server'} answered HTTP {response.status_code}"
    code = getattr(getattr(exc, "error", None), "code", None)
    if name == "MCPError" or code is not None:
        return f"{where or 'the server'} answered with JSON-RPC error {code}: {exc}"
    return str(exc) or name
