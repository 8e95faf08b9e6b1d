"""The committed gRPC code under xds_server/api/ matches protos/ (regenerate: python -m xds_server.api.generate)."""

from __future__ import annotations

from xds_server.api import generate


def test_generated_api_is_current():
    assert generate.stale_files() == [], "run: python -m xds_server.api.generate"


def test_generated_api_imports_as_a_package():
    from xds_server.api.agentxds.v1 import status_pb2, status_pb2_grpc

    assert status_pb2_grpc.agentxds_dot_v1_dot_status__pb2 is status_pb2
    assert status_pb2.DESCRIPTOR.services_by_name["Status"].methods_by_name["GetStatus"]


def test_import_rewrite_only_touches_project_packages():
    text = (
        "from agentxds.v1 import status_pb2 as s\nfrom google.protobuf import timestamp_pb2\nimport agentxds.v1.x_pb2\n"
    )
    assert generate._rewrite_imports(text, ["agentxds"]) == (
        "from xds_server.api.agentxds.v1 import status_pb2 as s\n"
        "from google.protobuf import timestamp_pb2\n"
        "import xds_server.api.agentxds.v1.x_pb2\n"
    )


def test_generated_code_asks_for_the_grpcio_floor_of_pyproject():
    import re
    from pathlib import Path

    pyproject = (Path(generate.__file__).resolve().parents[2] / "pyproject.toml").read_text()
    floor = re.search(r'"grpcio>=([0-9.]+)', pyproject)
    assert floor is not None and floor.group(1) == generate.MIN_GRPC_VERSION
    assert generate._pin_grpc_version("GRPC_GENERATED_VERSION = '9.9.9'\n") == (
        f"GRPC_GENERATED_VERSION = '{generate.MIN_GRPC_VERSION}'\n"
    )
