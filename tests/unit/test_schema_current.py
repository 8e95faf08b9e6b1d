"""policies/schema.json must match the models, and document every field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xds_server.policy.schema import SCHEMA_ID, generate_schema, render_schema

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "policies" / "schema.json"


def test_schema_file_is_current() -> None:
    current = SCHEMA_FILE.read_text(encoding="utf-8") if SCHEMA_FILE.exists() else ""
    assert current == render_schema(), (
        "policies/schema.json is out of date; regenerate it from the repository root with:\n"
        "    .venv/bin/python -m xds_server.policy.schema"
    )


def test_schema_is_a_oneof_over_kinds() -> None:
    schema = generate_schema()
    assert schema["$id"] == SCHEMA_ID
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    kinds = sorted(
        schema["$defs"][ref["$ref"].rsplit("/", 1)[1]]["properties"]["kind"]["const"] for ref in schema["oneOf"]
    )
    assert kinds == [
        "A2AAgent",
        "A2APolicy",
        "Agent",
        "Gateway",
        "MCPBackend",
        "MCPPolicy",
        "MCPToolLock",
        "VirtualMCPServer",
    ]


def test_every_field_has_a_description() -> None:
    missing: list[str] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for name, prop in (node.get("properties") or {}).items():
                if not prop.get("description"):
                    missing.append(f"{where}.{name}")
            for key, value in node.items():
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    walk(generate_schema(), "schema")
    assert missing == []


def test_schema_uses_yaml_spelling() -> None:
    limits = generate_schema()["$defs"]["Limits"]
    assert set(limits["properties"]) == {
        "maxRequestBodyBytes", "connectionBufferBytes", "requestHeadersTimeout", "requestReceiveTimeout",
        "connectionIdleTimeout", "maxRequestHeadersKib", "maxHeaders", "maxConnections",
    }  # fmt: skip
    assert limits["additionalProperties"] is False
