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
