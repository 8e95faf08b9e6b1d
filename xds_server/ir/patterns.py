"""Compiled name patterns: what a policy glob over tool names, prompt names or URIs means.

A leaf of the IR: every part (neutral or protocol) may use it, it uses nothing.
`ir.glob` compiles globs into these and evaluates them in Python the way
Envoy's string matchers do.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class PatternKind(enum.StrEnum):
    """How a name pattern from a policy compiles to an Envoy string matcher."""

    EXACT = "exact"  # no wildcard
    PREFIX = "prefix"  # "get_*"
    SUFFIX = "suffix"  # "*_issue"
    REGEX = "regex"  # any other glob, compiled to an anchored RE2 regex
    ANY = "any"  # "*"


@dataclass(frozen=True, order=True)
class NamePattern:
    """A compiled glob over tool names, prompt names or resource URIs.

    `value` is the literal for EXACT/PREFIX/SUFFIX, the RE2 regex for REGEX,
    and empty for ANY. `glob` keeps what the user wrote, for messages.
    """

    kind: PatternKind
    value: str
    glob: str
