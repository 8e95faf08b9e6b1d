"""End to end: a JWT provider whose keys Envoy fetches from a URL (`jwks.url`), through its own cluster.

The JWKS is served by a small HTTP server in the test; the gateway's
resources are compiled from policies and given to a real Envoy as a static
bootstrap, with the provider's JWKS cluster (`translate.jwt.jwks_clusters`).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.gateway import backend_yaml, eventually, wait_listening
from tests.e2e.harness import raw_post
from tests.e2e.test_jwt import Issuer, call_body, modern_headers, rpc_error
from tests.golden.static_bootstrap import static_bootstrap
from xds_server.controlplane.pipeline import compile_policies
from xds_server.core import errors
from xds_server.runtime.envoy import EnvoyProcess
from xds_server.runtime.ports import free_port
from xds_server.translate.jwt import jwks_clusters

ISSUER = Issuer("https://login.test", "remote-1")


class JwksServer:
    """Serves ISSUER's JWKS at /jwks.json and counts the fetches."""

    def __init__(self) -> None:
        jwks = ISSUER.jwks().encode()
        self.fetches = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.fetches += 1
                self.send_response(200 if self.path == "/jwks.json" else 404)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(jwks if self.path == "/jwks.json" else b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> JwksServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    with JwksServer() as server:
        yield server


async def test_keys_fetched_from_a_url_verify_tokens(mcp_backend_factory: Any, jwks_server: JwksServer,
                                                     tmp_path: Path) -> None:  # fmt: skip
    github = mcp_backend_factory(name="github")
    listen_port = free_port()
    policies = tmp_path / "policies"
    policies.mkdir()
    backend = backend_yaml("github", github, "  policyService: {listFiltering: false}\n")
    (policies / "all.yaml").write_text(f"""\
apiVersion: agentxds.dev/v1
kind: Gateway
metadata: {{name: e2e}}
spec:
  listen: {{address: 127.0.0.1, port: {listen_port}}}
  identity:
    trustedHeader: x-agent-id
    jwtProviders:
      - name: login
        issuer: https://login.test
        jwks: {{url: "http://127.0.0.1:{jwks_server.port}/jwks.json", cacheDuration: 1m}}
---
apiVersion: agentxds.dev/v1
kind: Agent
metadata: {{name: triage}}
spec: {{identity: {{header: triage}}}}
---
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {{name: github}}
spec:
  backend: github
  rules:
    - agents: [triage]
      tools: [list_issues]
      users: {{provider: login, subjects: [alice]}}
---
{backend}""")
    ir, resources = compile_policies(policies)
    gateway_ir, res = ir.gateways[0], resources["e2e"]
    wired = {c.name for c in res.clusters}
    extra = [c for c in jwks_clusters(gateway_ir) if c.name not in wired]  # until translate wires them itself
    res = replace(res, clusters=tuple(sorted((*res.clusters, *extra), key=lambda c: c.name)))
    bootstrap = {
        **static_bootstrap(res),
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
    }
    envoy = EnvoyProcess(bootstrap, workdir=tmp_path / "envoy", log_level="warning").start()
    try:
        await envoy.wait_live_async(20)
        await wait_listening(listen_port)
        url = f"http://127.0.0.1:{listen_port}/mcp/github"

        async def answer(token: str) -> tuple[int, str]:
            """(HTTP status, "result" or the refusal's data.reason)."""
            headers = {"x-agent-id": "triage", "authorization": f"Bearer {token}", **modern_headers("list_issues")}
            response = await raw_post(url, call_body("list_issues", 5, repo="acme/web"), headers)
            error = response.json().get("error") if "json" in response.headers.get("content-type", "") else None
            return response.status_code, "result" if error is None else error["data"]["reason"]

        async def accepted() -> bool:
            return await answer(ISSUER.token(sub="alice")) == (200, "result")

        await eventually(accepted, timeout=15, what="a token verified with the fetched keys")
        assert jwks_server.fetches >= 1
        # A valid token of another user: the rule does not apply (a policy refusal: HTTP 200, JSON-RPC error).
        assert await answer(ISSUER.token(sub="bob")) == (200, errors.TOOL_DENIED.reason)
        forged = Issuer("https://login.test", "remote-1").token(sub="alice")
        response = await raw_post(url, call_body("list_issues", 6, repo="acme/web"),
                                  {"x-agent-id": "triage", "authorization": f"Bearer {forged}", **modern_headers("list_issues")})  # fmt: skip
        body = rpc_error(response)
        assert response.status_code == 401 and body["id"] == 6
        assert body["error"]["code"] == errors.INVALID_CREDENTIALS.code
        assert json.dumps(body["error"]["data"]["detail"])  # Envoy's reason, e.g. "Jwt verification fails"
    finally:
        envoy.stop()
        await asyncio.sleep(0)
        print(f"--- envoy log tail ---\n{envoy.log_text()[-3000:]}")
