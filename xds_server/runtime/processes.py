"""Stopping child processes the same way everywhere: by PID, politely, then firmly."""

from __future__ import annotations

import contextlib
import signal
import subprocess


def stop_process(proc: subprocess.Popen[bytes] | subprocess.Popen[str] | None, timeout: float = 5.0) -> int | None:
    """SIGTERM `proc` (its PID only, never a group or a name), SIGKILL it after `timeout` seconds.

    Returns its exit code; None when there is no process. Safe to call twice.
    """
    if proc is None:
        return None
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
    return proc.returncode
