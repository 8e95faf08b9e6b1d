"""Diagnostics: what went wrong in a policy set, and where.

A `Diagnostic` names a file, a 1-based line (0 when unknown), a field and a
message. The loader collects every diagnostic it can find before raising one
`PolicyError`, so a user fixes a whole policy set in one round trip instead of
one error per run.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# A path into a YAML document: mapping keys (str, or whatever scalar the user
# wrote as a key) and sequence indices (int), outermost first.
PathPart = str | int | float | bool | None
Path = tuple[PathPart, ...]

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def format_path(path: Path) -> str:
    """Render `path` as a field path: `spec.rules[1].tools[0]`.

    Keys that are not plain identifiers (label keys such as
    `app.kubernetes.io/name`) are quoted in brackets so the path stays
    unambiguous: `metadata.labels["app.kubernetes.io/name"]`.
    """
    out: list[str] = []
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out.append(f"[{part}]")
        elif isinstance(part, str) and _PLAIN_KEY.match(part):
            out.append(f".{part}" if out else part)
        elif isinstance(part, str):
            escaped = part.replace("\\", "\\\\").replace('"', '\\"')
            out.append(f'["{escaped}"]')
        else:  # a non-string mapping key such as 80 or true
            out.append(f"[{part!r}]")
    return "".join(out)


def subject(kind: str | None, name: str | None) -> str:
    """The document a diagnostic is about: `Kind/name`, `Kind`, or ""."""
    if kind and name:
        return f"{kind}/{name}"
    return kind or ""


def join_field(prefix: str, path: Path) -> str:
    """Combine a document subject and a field path into `Diagnostic.field`."""
    rendered = format_path(path)
    return " ".join(p for p in (prefix, rendered) if p)


@dataclass(frozen=True, order=True)
class Diagnostic:
    """One problem in a policy set.

    `file` is the path as the user gave it (directory joined with the file's
    path inside it). `field` is "Kind/name field.path" when the document is
    known, a bare field path otherwise, and "" for problems with a whole file.
    Ordering is by (file, line, field, message), which is the order users read.
    """

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line > 0 else self.file
        if self.field:
            return f"{where}: {self.field}: {self.message}"
        return f"{where}: {self.message}"


class PolicyError(Exception):
    """A policy set that cannot be used; carries every diagnostic found.

    `str()` gives one diagnostic per line, sorted, ready to print.
    """

    def __init__(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.diagnostics: tuple[Diagnostic, ...] = tuple(sorted(set(diagnostics)))
        super().__init__("\n".join(str(d) for d in self.diagnostics))

    def __str__(self) -> str:
        return "\n".join(str(d) for d in self.diagnostics)
