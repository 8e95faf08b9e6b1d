"""Where agentxds keeps state on this machine: approvals, the sealing key, the record of a running `up`.

The directory is, first found: `--state-dir`, `$AGENTXDS_STATE_DIR`,
`$XDG_STATE_HOME/agentxds`, `~/.local/state/agentxds`. It is created on first
use (mode 0700: approvals name who asked for what).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

ENV = "AGENTXDS_STATE_DIR"


def default_state_dir() -> Path:
    """The state directory when none is given on the command line."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    return base / "agentxds"


@dataclass(frozen=True)
class StateDir:
    """The files in one state directory."""

    path: Path

    @classmethod
    def at(cls, path: str | os.PathLike[str] | None) -> StateDir:
        return cls(Path(path) if path is not None else default_state_dir())

    def ensure(self) -> StateDir:
        """Create the directory (owner only) if missing; returns self."""
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self

    @property
    def approvals_db(self) -> Path:
        """The SQLite database of approvals (pending, decided, used: the history)."""
        return self.path / "approvals.sqlite3"

    @property
    def sealing_key(self) -> Path:
        """The policy service's key for sealed ids (task ids), made on first use (authz/sealing.py)."""
        return self.path / "sealing.key"

    def published_coverage(self, policy_dir: str | os.PathLike[str]) -> Path:
        """What the control plane serving `policy_dir` last published (controlplane/emptying.py),
        one file per policy directory, so a restart is checked against it."""
        key = hashlib.sha256(os.fsencode(os.path.abspath(policy_dir))).hexdigest()[:16]
        return self.path / f"published-{key}.json"

    @property
    def runtime_endpoints(self) -> Path:
        """Endpoints set through the endpoints API (they survive a restart)."""
        return self.path / "runtime-endpoints.json"

    @property
    def registry_db(self) -> Path:
        """The runtime registry of A2A agents and MCP servers (sources/registry.py)."""
        return self.path / "registry.sqlite3"

    @property
    def up_record(self) -> Path:
        """Where a running `agentxds up` says what it started (see cli/up_record.py)."""
        return self.path / "up.json"
