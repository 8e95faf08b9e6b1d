"""Policy globs (`*`, `?`) → the cheapest Envoy string matcher that means the same."""

from __future__ import annotations

import re

from xds_server.ir.patterns import NamePattern, PatternKind


def compile_glob(glob: str) -> NamePattern:
    """Compile one glob.

    `*` alone matches anything; a glob without wildcards is exact; a single
    trailing (leading) `*` is a prefix (suffix) match; anything else becomes an
    anchored RE2 regex in which every non-wildcard character is literal.
    """
    if glob == "*":
        return NamePattern(PatternKind.ANY, "", glob)
    stars, qmarks = glob.count("*"), glob.count("?")
    if stars == 0 and qmarks == 0:
        return NamePattern(PatternKind.EXACT, glob, glob)
    if qmarks == 0 and stars == 1 and glob.endswith("*"):
        return NamePattern(PatternKind.PREFIX, glob[:-1], glob)
    if qmarks == 0 and stars == 1 and glob.startswith("*"):
        return NamePattern(PatternKind.SUFFIX, glob[1:], glob)
    parts = []
    for ch in glob:
        if ch == "*":
            parts.append(".*")
        elif ch == "?":
            parts.append(".")
        else:
            parts.append(re.escape(ch))
    return NamePattern(PatternKind.REGEX, "^" + "".join(parts) + "$", glob)


def compile_globs(globs: list[str] | tuple[str, ...]) -> tuple[NamePattern, ...]:
    """Compile, de-duplicate and sort; any `*` makes the whole list just `*`."""
    patterns = {compile_glob(g) for g in globs}
    anything = [p for p in patterns if p.kind is PatternKind.ANY]
    return tuple(anything[:1]) if anything else tuple(sorted(patterns))


def glob_matches(pattern: NamePattern, name: str) -> bool:
    """Python-side evaluation with the same meaning as the Envoy matcher (for explain and tests)."""
    if pattern.kind is PatternKind.ANY:
        return True
    if pattern.kind is PatternKind.EXACT:
        return name == pattern.value
    if pattern.kind is PatternKind.PREFIX:
        return name.startswith(pattern.value)
    if pattern.kind is PatternKind.SUFFIX:
        return name.endswith(pattern.value)
    # RE2 and Python agree here: "." does not match a newline in either.
    return re.fullmatch(pattern.value, name) is not None
