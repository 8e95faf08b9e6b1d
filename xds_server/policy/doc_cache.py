"""Documents read once: a policy file's documents kept, read and validated, by their text.

`DocumentCache` is what makes a load after an edit cheap (policy/load.py):
a file with several documents is cut at its `---` lines (a document marker
at the start of a line always starts a document in YAML) and each document
is read on its own, with its lines counted from its first line; a document
found again with the same text, wherever it moved in its file, is not read
again (its lines are shifted). A file with directives or `...` markers, or
with a document YAML cannot read, is read whole as always, so diagnostics
are exactly those of a plain load. Entries no load used since the one
before are forgotten.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from .checks import Declared
from .diagnostics import Diagnostic
from .located import Located, Source
from .yamldoc import YAML_LINE_BREAK

Validated = tuple[Declared | None, Located[Any] | None, list[Diagnostic]]


@dataclass(frozen=True)
class Read:
    """One file (or one document of it) read: its YAML problems, and each document validated."""

    parse_diags: list[Diagnostic]
    validated: list[Validated]


ReadFile = Callable[[str, str], Read]

#: A line that starts a YAML document, and lines that make a file unsafe to cut at them textually.
_DOCUMENT_START = re.compile(r"^---(?=[ \t\r\n]|$)", re.M)
_UNSPLITTABLE = re.compile(r"^(?:%|\.\.\.(?:[ \t\r\n]|$))", re.M)
_OTHER_BREAK = re.compile("[\r\x85\u2028\u2029]")


class DocumentCache:
    """The documents of the last loads, read and validated, by file and text (see the module docstring)."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], Read] = {}
        self._moved: dict[tuple[str, str], tuple[int, Read]] = {}  # the last shifted copy, and by how much
        self._used: set[tuple[str, str]] = set()

    def read(self, file: str, text: str, read_file: ReadFile) -> Read:
        """`read_file(file, text)` for a whole file or for one document of it, reusing what is known."""
        starts = [m.start() for m in _DOCUMENT_START.finditer(text)]
        if not starts or _UNSPLITTABLE.search(text):
            return self._cached(file, text, 0, read_file)
        bounds = [0, *starts] if starts[0] else starts
        pieces = [text[a:b] for a, b in zip(bounds, [*bounds[1:], len(text)], strict=True)]
        parse_diags: list[Diagnostic] = []
        validated: list[Validated] = []
        offset = 0
        plain_breaks = not _OTHER_BREAK.search(text)  # then lines are counted by "\n" alone
        for piece in pieces:
            read = self._cached(file, piece, offset, read_file)
            if read is None or read.parse_diags:
                return read_file(file, text)  # what YAML says of the whole file, exactly
            validated += read.validated
            offset += piece.count("\n") if plain_breaks else len(YAML_LINE_BREAK.findall(piece))
        return Read(parse_diags, validated)

    def _cached(self, file: str, text: str, offset: int, read_file: ReadFile) -> Read:
        key = (file, text)
        read = self._entries.get(key)
        if read is None:
            read = self._entries[key] = read_file(file, text)
        self._used.add(key)
        if not offset:
            return read
        moved = self._moved.get(key)
        if moved is None or moved[0] != offset:
            moved = self._moved[key] = (offset, _shifted(read, offset))
        return moved[1]

    def forget_unused(self) -> None:
        """Drop what the loads since the last call did not use (call once per load)."""
        self._entries = {k: v for k, v in self._entries.items() if k in self._used}
        self._moved = {k: v for k, v in self._moved.items() if k in self._used}
        self._used = set()


def _shifted(read: Read, offset: int) -> Read:
    """A document read on its own, as if it had been read `offset` lines further down its file."""

    def shift(item: Validated) -> Validated:
        decl, located, diags = item
        if decl is not None:
            locate = decl.locate
            decl = replace(decl, source=Source(decl.source.file, decl.source.line + offset),
                           locate=lambda path: locate(path) + offset)  # fmt: skip
        if located is not None:
            located = replace(located, source=Source(located.source.file, located.source.line + offset),
                              line_offset=located.line_offset + offset)  # fmt: skip
        return decl, located, [replace(d, line=d.line + offset) if d.line else d for d in diags]

    return Read([replace(d, line=d.line + offset) if d.line else d for d in read.parse_diags],
                 [shift(v) for v in read.validated])  # fmt: skip
