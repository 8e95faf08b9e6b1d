"""Where policies come from. The pipeline takes a `PolicySource`, not a path.

    directory.py   DirectorySource: a directory of YAML files (a Git checkout), watched for edits

A source loads a whole validated `PolicySet` (or raises PolicyError with every
diagnostic); the runtime registry of agents and MCP servers will be a second
source of the same shape.
"""

from __future__ import annotations

from typing import Protocol

from xds_server.policy.load import PolicySet


class PolicySource(Protocol):
    """Something that yields the current policy set."""

    @property
    def name(self) -> str:
        """How logs and messages name it (a directory path, a registry URL)."""
        ...

    def load(self) -> PolicySet:
        """The current policies, validated and cross-checked; raises PolicyError."""
        ...
