"""YAML documents as plain values plus the line of every node.

PyYAML's loaders throw away positions, and a diagnostic without a line is of
little use, so this module composes the node graph itself (SafeLoader's
composer: no arbitrary tags, no object construction) and builds plain
dicts/lists/scalars while recording `path -> line` for every node.

It is also where hostile YAML is contained: recursive aliases, alias bombs
(a few lines expanding to millions of nodes), very deep nesting, duplicate
keys and non-standard tags all become diagnostics instead of hangs or
silently surprising values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .diagnostics import Diagnostic, Path

MAX_NODES = 20_000  # per document; real policy documents have a few hundred
MAX_DEPTH = 64
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass
class ParsedDocument:
    """One YAML document: its plain value and the line of each path in it.

    `lines[path]` is the 1-based line of the node at `path`; for a mapping
    value it is the line of its key, which is what users look for. `issues`
    are (path, message) problems found while building the value; the value at
    such a path is None or incomplete. `dropped` holds the paths whose value
    was replaced by None, so validation errors there are not reported twice.
    """

    value: Any
    line: int
    lines: dict[Path, int] = field(default_factory=dict)
    issues: list[tuple[Path, str]] = field(default_factory=list)
    dropped: set[Path] = field(default_factory=set)

    def line_of(self, path: Path) -> int:
        """Line of `path`, or of its closest enclosing node that exists."""
        for end in range(len(path), 0, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return self.line


class _TooLarge(Exception):
    pass


#: What YAML counts as a line break (so lines are numbered as its marks number them).
YAML_LINE_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")


def parse_documents(text: str, file: str) -> tuple[list[ParsedDocument], list[Diagnostic]]:
    """Every non-empty document in `text`, and diagnostics for what is unreadable.

    A syntax error ends the file (YAML cannot resynchronise), but documents
    before it are still returned so they can be checked too.
    """
    if _FAST_LOADER is not None and not _EXOTIC_BREAK.search(text):
        # libyaml (C) composes the same nodes tens of times faster; for anything it refuses, the
        # pure-Python parser runs again, whose diagnostics (lines, words) are the ones users get.
        docs, diags = _parse_with(text, file, _FAST_LOADER)
        if not diags:
            return docs, diags
    return _parse_with(text, file, yaml.SafeLoader)


#: libyaml's loader, when PyYAML was built with it.
_FAST_LOADER: Any = getattr(yaml, "CSafeLoader", None) if yaml.__with_libyaml__ else None
#: Line breaks libyaml may number differently from PyYAML (NEL, LS, PS, a lone CR).
_EXOTIC_BREAK = re.compile("[\x85\u2028\u2029]|\r(?!\n)")


def _parse_with(text: str, file: str, loader: Any) -> tuple[list[ParsedDocument], list[Diagnostic]]:
    docs: list[ParsedDocument] = []
    diags: list[Diagnostic] = []
    try:
        for node in yaml.compose_all(text, Loader=loader):
            if node is None or (isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:null"):
                continue  # an empty document ("---" followed by nothing)
            line = node.start_mark.line + 1
            builder = _Builder()
            try:
                value = builder.build(node, (), line)
            except _TooLarge as exc:
                diags.append(Diagnostic(file, line, "", str(exc)))
                continue
            docs.append(ParsedDocument(value, line, builder.lines, builder.issues, builder.dropped))
    except yaml.MarkedYAMLError as exc:
        diags.append(_syntax_error(exc, file))
    except yaml.reader.ReaderError as exc:
        # A character YAML does not allow (a control character, say): point at its line.
        line = len(YAML_LINE_BREAK.split(text[: exc.position]))
        char = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "\0")
        diags.append(Diagnostic(file, line, "", f"YAML error: character U+{char:04X} is not allowed in YAML "
                                                "(control characters other than tab and line breaks)"))  # fmt: skip
    except yaml.YAMLError as exc:
        diags.append(Diagnostic(file, 1, "", f"YAML error: {exc}"))
    except RecursionError:
        diags.append(Diagnostic(file, 1, "", "YAML nesting is too deep"))
    return docs, diags


def _syntax_error(exc: yaml.MarkedYAMLError, file: str) -> Diagnostic:
    """A YAML syntax error on the line a person must fix.

    PyYAML marks where it noticed the problem: for an unclosed `[` or `{` that
    is the next token, often on the next line. Then the line that opened the
    collection is the one reported, and where parsing broke is said too.
    """
    problem, context = exc.problem_mark, exc.context_mark
    if context is not None and problem is not None and "flow" in (exc.context or "") and context.line < problem.line:
        return Diagnostic(file, context.line + 1, "",
                          f"YAML syntax error: {exc.context} (opened at column {context.column + 1}): "
                          f"{exc.problem} on line {problem.line + 1}, column {problem.column + 1}")  # fmt: skip
    mark = problem or context
    line = mark.line + 1 if mark else 0
    column = f" (column {mark.column + 1})" if mark else ""
    what = ": ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
    return Diagnostic(file, line, "", f"YAML syntax error{column}: {what}")


class _Builder:
    """Turns one composed node graph into plain values, recording lines."""

    def __init__(self) -> None:
        self.lines: dict[Path, int] = {}
        self.issues: list[tuple[Path, str]] = []
        self.dropped: set[Path] = set()
        self._constructor = SafeConstructor()
        self._count = 0
        self._active: set[int] = set()  # nodes being built: detects recursive aliases

    def build(self, node: Node, path: Path, line: int) -> Any:
        self.lines[path] = line
        self._tick()
        if len(path) > MAX_DEPTH:
            return self._drop(path, f"nested more than {MAX_DEPTH} levels deep")
        if id(node) in self._active:
            return self._drop(path, "recursive alias")
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        self._active.add(id(node))
        try:
            if isinstance(node, SequenceNode) and node.tag == _SEQ_TAG:
                return [self.build(item, (*path, i), item.start_mark.line + 1) for i, item in enumerate(node.value)]
            if isinstance(node, MappingNode) and node.tag == _MAP_TAG:
                return self._mapping(node, path, line)
            return self._drop(path, f"unsupported YAML tag {node.tag!r}")
        finally:
            self._active.discard(id(node))

    def _tick(self) -> None:
        self._count += 1
        if self._count > MAX_NODES:
            raise _TooLarge(f"document has more than {MAX_NODES} nodes (alias expansion?); refusing to read it")

    def _drop(self, path: Path, message: str) -> Any:
        self.issues.append((path, message))
        self.dropped.add(path)
        return None

    def _scalar(self, node: ScalarNode, path: Path) -> Any:
        try:
            return self._constructor.construct_object(node)
        except ConstructorError as exc:
            return self._drop(path, f"unsupported YAML value: {exc.problem}")

    def _mapping(self, node: MappingNode, path: Path, line: int) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        merges: list[Node] = []
        seen: dict[Any, int] = {}
        explicit: list[tuple[Any, Node, int]] = []
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE_TAG:
                # "<<: *defaults" or "<<: [*a, *b]"; earlier entries win.
                merges.extend(value_node.value if isinstance(value_node, SequenceNode) else [value_node])
                continue
            if not isinstance(key_node, ScalarNode):
                self.issues.append((path, f"line {key_line}: mapping keys must be plain scalars"))
                continue
            key = self._scalar(key_node, path)
            if key in seen:
                self.issues.append(((*path, key), f"duplicate key (first at line {seen[key]})"))
            seen[key] = key_line
            explicit.append((key, value_node, key_line))
        for merged in reversed(merges):
            self._tick()
            if not isinstance(merged, MappingNode) or merged.tag != _MAP_TAG:
                self.issues.append((path, "a merge key ('<<') must refer to a mapping"))
            elif id(merged) in self._active:
                self.issues.append((path, "recursive alias in a merge key ('<<')"))
            else:
                self._active.add(id(merged))
                try:
                    result.update(self._mapping(merged, path, line))
                finally:
                    self._active.discard(id(merged))
        self.lines[path] = line
        for key, value_node, key_line in explicit:
            result[key] = self.build(value_node, (*path, key), key_line)
        return result
