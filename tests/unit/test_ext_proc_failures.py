"""ext_proc: a message the policy service fails on is refused with the request's id, never an aborted
stream (which Envoy, on a failOpen route, would take for "let it through"). Over a real gRPC channel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc

from tests.unit.test_ext_authz_http import POLICIES, serving
from xds_server.authz import ext_proc
from xds_server.core import errors
from xds_server.core.wire import JSONRPC_METADATA_NAMESPACE, ROUTE_METADATA_KEY


async def test_a_message_the_service_fails_on_is_refused_with_the_request_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Any, phase: str, request: pb.ProcessingRequest) -> Any:
        if phase == "response_headers":
            raise RuntimeError("a bug")
        return original(self, phase, request)

    original = ext_proc._Stream.on
    monkeypatch.setattr(ext_proc._Stream, "on", broken)
    headers = pb.ProcessingRequest()
    headers.request_headers.end_of_stream = True
    headers.metadata_context.filter_metadata[JSONRPC_METADATA_NAMESPACE].update({"id": 41.0, "id_text": "41"})
    answer = pb.ProcessingRequest()
    answer.response_headers.end_of_stream = True
    async with serving(tmp_path, POLICIES) as service:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = external_processor_pb2_grpc.ExternalProcessorStub(channel)
            call = stub.Process(iter([headers, answer]), metadata=[(ROUTE_METADATA_KEY, "github")])
            replies = [reply async for reply in call]
    assert replies[0].HasField("request_headers")
    refused = replies[-1].immediate_response
    assert refused.status.code == 502
    assert b'"id":41' in refused.body and str(errors.GATEWAY_ERROR.code).encode() in refused.body
