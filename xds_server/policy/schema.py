"""JSON Schema for policy documents, for editors (yaml-language-server etc.).

Generated from the pydantic models so it cannot drift from what the loader
accepts; `tests/unit/test_schema_current.py` fails when the committed copy in
`policies/schema.json` is stale. Regenerate from the repository root with:

    python -m xds_server.policy.schema [OUTPUT]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from .kinds import Document

SCHEMA_ID = "https://agentxds.dev/schemas/v1/policy.json"
DEFAULT_OUTPUT = Path("policies") / "schema.json"


def generate_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one agentxds.dev/v1 policy document."""
    body = TypeAdapter(Document).json_schema(by_alias=True, mode="validation")  # type: ignore[arg-type]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "agentxds policy document",
        "description": "One YAML document of an agentxds policy set (apiVersion agentxds.dev/v1). "
        "A file may hold several documents separated by '---'.",
        **body,
    }


def render_schema() -> str:
    """The schema as written to disk: sorted keys, 2-space indent, final newline."""
    return json.dumps(generate_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_schema(path: str | os.PathLike[str]) -> None:
    """Write the schema to `path` (creating its directory), byte-for-byte stable."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_schema(), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    target = Path(args[0]) if args else DEFAULT_OUTPUT
    write_schema(target)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
