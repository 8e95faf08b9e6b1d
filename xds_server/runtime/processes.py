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


async def wait_exit(proc: subprocess.Popen[bytes] | subprocess.Popen[str], poll_s: float = 0.2) -> int:
    """Wait, without blocking the event loop, until `proc` exits; reap it and return its exit code.

    Uses a pidfd (Linux ≥ 5.3) so the wake-up is immediate; polls otherwise.
    Never signals anything: it only watches.
    """
    import asyncio
    import os

    if proc.poll() is not None:
        return proc.returncode
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        while proc.poll() is None:
            await asyncio.sleep(poll_s)
        return proc.returncode
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return proc.wait()  # readable pidfd: it has exited, so this reaps at once
