"""Shared fixtures: demo MCP backends and Envoy processes (see tests/e2e/harness.py).

Each factory remembers what it started and stops it in the fixture
finalizer, whether the test passed or not. Output tails are printed at
teardown, so pytest shows them with a failing test's captured output.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.gateway import POLICY_SECRET, POLICY_SECRET_ENV
from tests.e2e.harness import McpBackend, start_mcp_backend
from xds_server.runtime.envoy import EnvoyProcess, render_bootstrap

_node_ids = itertools.count(1)


@pytest.fixture(scope="session", autouse=True)
def policy_service_secret() -> Iterator[str]:
    """The e2e gateways' policy-service secret (tests/e2e/gateway.py `POLICY_SECRET_ENV`), in the environment
    of the test process and of every process it starts, for the whole session."""
    previous = os.environ.get(POLICY_SECRET_ENV)
    os.environ[POLICY_SECRET_ENV] = POLICY_SECRET
    yield POLICY_SECRET
    if previous is None:
        del os.environ[POLICY_SECRET_ENV]
    else:
        os.environ[POLICY_SECRET_ENV] = previous


class McpBackendFactory:
    """Call it to start a demo MCP server: `factory(name="github", json_response=False, path="/mcp")`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[McpBackend] = []

    def __call__(self, name: str = "demo-github", *, path: str = "/mcp", json_response: bool = False,
                 port: int = 0, extra_args: tuple[str, ...] = ()) -> McpBackend:  # fmt: skip
        backend = start_mcp_backend(self.workdir, name=name, path=path, json_response=json_response, port=port,
                                    extra_args=extra_args)  # fmt: skip
        self.started.append(backend)
        return backend

    def stop_all(self) -> None:
        for backend in self.started:
            backend.stop()
            print(f"--- {backend.name} output tail ---\n{backend.process.output()[-2000:]}")


@pytest.fixture
def mcp_backend_factory(tmp_path: Path) -> Iterator[McpBackendFactory]:
    """Start demo MCP servers for one test; all are stopped after it."""
    factory = McpBackendFactory(tmp_path / "mcp")
    yield factory
    factory.stop_all()


@pytest.fixture(scope="module")
def mcp_backend_factory_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpBackendFactory]:
    """Like `mcp_backend_factory`, shared by a test module (cheaper; request logs accumulate)."""
    factory = McpBackendFactory(tmp_path_factory.mktemp("mcp"))
    yield factory
    factory.stop_all()


EnvoyFactory = Callable[..., EnvoyProcess]


@pytest.fixture
def envoy_factory(tmp_path: Path) -> Iterator[EnvoyFactory]:
    """Start Envoys fed by ADS: `envoy_factory(xds_port, node_cluster="mcp-gateway")`.

    Keyword options: node_cluster, node_id (unique by default), xds_host,
    log_level, wait_live (default True: return once the admin API answers;
    the admin port is chosen by the kernel). Waiting for listeners is left to
    the test (`await envoy.wait_listener_async(name)` when ADS runs in the test's loop).
    """
    started: list[EnvoyProcess] = []

    def start(
        xds_port: int,
        *,
        node_cluster: str = "mcp-gateway",
        node_id: str | None = None,
        xds_host: str = "127.0.0.1",
        log_level: str = "info",
        wait_live: bool = True,
    ) -> EnvoyProcess:
        node_id = node_id or f"envoy-{next(_node_ids)}"
        bootstrap = render_bootstrap(
            node_id=node_id, node_cluster=node_cluster, xds_host=xds_host, xds_port=xds_port, admin_port=0
        )
        envoy = EnvoyProcess(bootstrap, workdir=tmp_path / node_id, log_level=log_level)
        started.append(envoy)
        envoy.start()
        if wait_live:
            envoy.wait_live()
        return envoy

    yield start
    for envoy in started:
        envoy.stop()
        print(f"--- envoy {envoy.workdir.name} log tail ({envoy.log_path}) ---\n{envoy.log_text()[-3000:]}")


def pytest_addoption(parser: pytest.Parser) -> None:
    # Registered here, in the root conftest: pytest honours this hook only in
    # conftests it loads at start-up, and tests/golden is not always one.
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/golden/cases/*/{ir,xds}.yaml from the current output instead of comparing",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    """True when pytest runs with `--update-golden` (golden files are rewritten, not compared)."""
    return bool(request.config.getoption("--update-golden"))
