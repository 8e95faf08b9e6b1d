"""What the command modules share: the default ADS port and the subcommand registry type."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TypeAlias

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
