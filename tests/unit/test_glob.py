"""Policy globs compile to the cheapest Envoy matcher with the same meaning."""

from __future__ import annotations

import fnmatch
import re

import pytest

from xds_server.ir.glob import compile_glob, compile_globs, glob_matches
from xds_server.ir.types import NamePattern, PatternKind
from xds_server.translate.protocols.mcp import string_matcher


@pytest.mark.parametrize(
    ("glob", "kind", "value"),
    [
        ("*", PatternKind.ANY, ""),
        ("list_issues", PatternKind.EXACT, "list_issues"),
        ("get_*", PatternKind.PREFIX, "get_"),
        ("*_issue", PatternKind.SUFFIX, "_issue"),
        ("list_?ssues", PatternKind.REGEX, "^list_.ssues$"),
        ("a*b*", PatternKind.REGEX, "^a.*b.*$"),
        ("file:///repo/*.md", PatternKind.REGEX, r"^file:///repo/.*\.md$"),
    ],
)
def test_compile_picks_the_cheapest_matcher(glob: str, kind: PatternKind, value: str) -> None:
    assert compile_glob(glob) == NamePattern(kind, value, glob)


NAMES = ["list_issues", "list_ossues", "get_issue", "get_", "issue", "a.b", "axb", "file:///repo/x.md", "", "*"]
GLOBS = ["*", "list_issues", "get_*", "*_issue", "list_?ssues", "a.b", "a?b", "*.md", "file:///repo/*.md", "g*t*"]


@pytest.mark.parametrize("glob", GLOBS)
def test_matching_agrees_with_shell_globs(glob: str) -> None:
    pattern = compile_glob(glob)
    for name in NAMES:
        # fnmatchcase also knows [...] classes; none of these globs use brackets.
        assert glob_matches(pattern, name) == fnmatch.fnmatchcase(name, glob), (glob, name)


def test_regex_special_characters_stay_literal() -> None:
    pattern = compile_glob("a.b+c?")
    assert glob_matches(pattern, "a.b+cX")
    assert not glob_matches(pattern, "aXb+cX")
    re.compile(pattern.value)  # RE2 syntax here is also valid Python syntax


def test_a_star_swallows_the_list_and_duplicates_collapse() -> None:
    assert compile_globs(["b", "a", "b"]) == (compile_glob("a"), compile_glob("b"))
    assert compile_globs(["summarize_*", "*"]) == (compile_glob("*"),)


def test_envoy_value_matchers() -> None:
    assert string_matcher(compile_glob("*")) == {"present_match": True}
    assert string_matcher(compile_glob("get_*")) == {"string_match": {"prefix": "get_"}}
    assert string_matcher(compile_glob("x?")) == {"string_match": {"safe_regex": {"regex": "^x.$"}}}
