"""A validated document and where it was written (file, line, and the line of every field)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .base import DocumentModel
from .diagnostics import Diagnostic, Path, join_field, subject

T = TypeVar("T", bound=DocumentModel)


@dataclass(frozen=True, order=True)
class Source:
    """Where something was written: file as the user gave it, 1-based line."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Located(Generic[T]):
    """A validated document and where it came from.

    `lines` maps YAML paths inside the document (camelCase keys and list
    indices, e.g. ("spec", "rules", 0, "tools")) to 1-based lines, so later
    stages can point their own diagnostics at the field they reject; they are
    counted from the document's own first line when `line_offset` is set (a
    document read once and found again, moved, after an edit above it).
    """

    doc: T
    source: Source
    lines: Mapping[Path, int] = field(default_factory=dict, compare=False, hash=False, repr=False)
    line_offset: int = field(default=0, compare=False, hash=False, repr=False)

    @property
    def name(self) -> str:
        return self.doc.metadata.name

    def line_of(self, path: Path) -> int:
        """Line of `path`, or of its closest enclosing node that was written."""
        for end in range(len(path), 0, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]] + self.line_offset
        return self.source.line

    def diagnostic(self, path: Path, message: str) -> Diagnostic:
        """A diagnostic about `path` in this document."""
        return Diagnostic(
            self.source.file, self.line_of(path), join_field(subject(self.doc.kind, self.name), path), message
        )
