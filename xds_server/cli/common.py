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
