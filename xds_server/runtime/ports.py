"""Local TCP port helpers for `agentxds up` and the tests.

Ports are always chosen at run time: two Envoys (or an Envoy and a stale test
server) on one port share it silently through SO_REUSEPORT, so a fixed port
would make tests interfere instead of fail.
"""

from __future__ import annotations

import socket
import time

_POLL_INTERVAL_S = 0.02


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on `host` a moment ago.

    The kernel picks it (bind to port 0); the socket is closed before
    returning, so there is a small race with other processes picking ports —
    acceptable for tests and a single-machine `agentxds up`.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, *, timeout: float = 0.2) -> bool:
    """True when a TCP connection to host:port is accepted right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Block until host:port accepts TCP connections.

    Raises TimeoutError naming the address when `timeout` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        if port_open(host, port):
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"nothing accepted connections on {host}:{port} within {timeout:.1f}s")
        time.sleep(_POLL_INTERVAL_S)
