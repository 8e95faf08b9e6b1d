"""End to end: limits under abuse, through the real Envoy and control plane.

A slowloris client (request headers trickled a line at a time) is cut off
once the Gateway's `limits.requestHeadersTimeout` passes, while a normal
client on another connection keeps being served.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from tests.e2e.gateway import IDENTITY_HEADER, RunningGateway, launch, stop_gateway, write_policies
from tests.e2e.harness import mcp_client
from xds_server.runtime.ports import free_port

HEADERS_TIMEOUT_S = 1.0


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(
    mcp_backend_factory_module: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningGateway]:
    workdir = tmp_path_factory.mktemp("abuse")
    backends = {"github": mcp_backend_factory_module(name="github")}
    listen_port, policy_port = free_port(), free_port()
    policy_dir = workdir / "policies"
    write_policies(policy_dir, listen_port, backends, policy_port=policy_port)
    gateway_file = policy_dir / "gateway.yaml"
    text = gateway_file.read_text().replace("connectionBufferBytes: 65536}",
                                            f"connectionBufferBytes: 65536, requestHeadersTimeout: {HEADERS_TIMEOUT_S}s}}")  # fmt: skip
    assert "requestHeadersTimeout" in text
    gateway_file.write_text(text)
    control, envoy = await launch(policy_dir, workdir, listen_port, policy_port)
    gw = RunningGateway(policy_dir, control, envoy, listen_port, backends)
    yield gw
    await stop_gateway(gw)


async def _slowloris(port: int, give_up_s: float) -> tuple[float, bytes]:
    """Trickle header lines until the gateway closes the connection; (seconds it lasted, what it answered)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(b"POST /mcp/github HTTP/1.1\r\nhost: gateway\r\n")
    answer = b""
    try:
        while time.monotonic() - started < give_up_s:
            writer.write(b"x-slow: 1\r\n")
            await writer.drain()
            try:
                chunk = await asyncio.wait_for(reader.read(4096), timeout=0.2)
            except TimeoutError:
                continue
            answer += chunk
            if not chunk:
                break
    except ConnectionError:
        pass
    finally:
        writer.close()
    return time.monotonic() - started, answer


async def test_a_slowloris_client_is_cut_off_while_a_normal_client_is_served(gateway: RunningGateway) -> None:
    give_up = HEADERS_TIMEOUT_S * 6
    slow = asyncio.create_task(_slowloris(gateway.listen_port, give_up))
    served = 0
    async with mcp_client(gateway.url(), {IDENTITY_HEADER: "triage"}) as client:
        while not slow.done():
            assert not (await client.call_tool("list_issues", {"repo": "acme/web"})).is_error
            served += 1
            await asyncio.sleep(0.05)
    lasted, answer = await slow
    assert lasted < give_up, f"the slow connection was still open after {lasted:.1f}s"
    assert served >= 1
    if answer:  # HTTP/1.1: Envoy says why before closing
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer
        reply = json.loads(body)
        assert reply["id"] is None and reply["error"]["data"]["reason"] == "request_timeout", reply
        assert reply["error"]["code"] == -32008 and "1 s" in reply["error"]["message"], reply
