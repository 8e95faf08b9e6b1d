"""The record a running `agentxds up` leaves in the state directory, so other commands find it.

`up` writes `<state dir>/up.json` once everything listens, and removes it when
it stops:

    {"pid": 4242, "xds": "127.0.0.1:38535", "policy_service": "127.0.0.1:18001",
     "approvals_url": "http://127.0.0.1:18002", "gateway": "demo",
     "listener": "http://127.0.0.1:10000", "envoy_admin": "http://127.0.0.1:46611",
     "workdir": "/tmp/agentxds-up-x1y2z3", "policies": "policies/demo", "started_at": 1764791000.0}

`agentxds status` and `agentxds approvals` read it when no address is given.
A record whose pid is no longer running (an `up` killed with SIGKILL) is
ignored, never trusted.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from xds_server.runtime.state_dir import StateDir


@dataclass(frozen=True)
class UpRecord:
    pid: int
    xds: str  # host:port of ADS and the status API
    policy_service: str  # host:port (gRPC)
    approvals_url: str
    gateway: str
    listener: str
    envoy_admin: str
    workdir: str
    policies: str
    started_at: float
    replicas: list[str] = field(default_factory=list)  # the other Envoys' listeners (--replicas)


def write_record(state: StateDir, record: UpRecord) -> Path:
    """Write the record atomically (readers never see half a file); returns its path."""
    state.ensure()
    path = state.up_record
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(asdict(record), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def remove_record(state: StateDir, pid: int) -> None:
    """Remove the record if it is this process's (another `up` may have replaced it)."""
    record = read_record(state, check_alive=False)
    if record is not None and record.pid == pid:
        with contextlib.suppress(FileNotFoundError):
            state.up_record.unlink()


def read_record(state: StateDir, *, check_alive: bool = True) -> UpRecord | None:
    """The record of the `up` running now, or None (none, unreadable, or its process is gone)."""
    try:
        data: Any = json.loads(state.up_record.read_text())
        record = UpRecord(**data)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(record.pid, int) or isinstance(record.pid, bool) or not 0 < record.pid < 2**22:
        return None  # not a pid a process can have: a damaged record
    if check_alive and not _alive(record.pid):
        return None
    return record


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # running, as another user
        return True
    return True


def locate(
    state_dir: str | os.PathLike[str] | None, given: str | None, attribute: str, default: str
) -> tuple[str, str]:
    """An address for a command: `given` if set, else the running `up`'s `attribute`, else `default`;
    and where it came from, in words (for messages when it cannot be reached)."""
    if given:
        return given, "given on the command line"
    state = StateDir.at(state_dir)
    record = read_record(state)
    if record is not None:
        return str(getattr(record, attribute)), f"from the running agentxds up (pid {record.pid}, {state.up_record})"
    return default, f"the default; no running agentxds up recorded in {state.up_record}"
