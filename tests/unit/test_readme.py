"""The README is the user's manual: the parts generated from code must match the code."""

from __future__ import annotations

import re
from pathlib import Path

from xds_server.core.errors import markdown_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_error_table_matches_the_error_catalogue() -> None:
    text = README.read_text()
    block = re.search(r"<!-- error-table:start[^>]*-->\n(.*?)<!-- error-table:end -->", text, re.S)
    assert block is not None, "README lost its error-table markers"
    assert block.group(1) == markdown_table(), (
        "README's JSON-RPC error table is out of date; paste the output of "
        "`python -c 'from xds_server.core.errors import markdown_table; print(markdown_table())'`"
    )


def test_readme_opens_with_the_two_commands() -> None:
    head = README.read_text().split("\n\n")[1]
    assert "make up" in head and "make test" in head
