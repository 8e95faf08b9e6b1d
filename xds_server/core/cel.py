"""CEL `when:` conditions: compile once, evaluate per `tools/call`, fail closed.

A condition sees five variables and nothing else:

    args   map   the tool's arguments as the client sent them (JSON values)
    agent  map   {"name": <agent name>}
    user   map   what is known of the user the agent acts for; {} when unknown
    tool   str   the tool name
    now    timestamp, always in UTC

`now` supports comparisons with `timestamp("...")`, arithmetic with
`duration("1h")`, `string(now)` and the no-argument accessors, all in UTC and
numbered as the CEL spec says: `getHours()` (0-23), `getMinutes()`,
`getSeconds()`, `getDayOfWeek()` (0 = Sunday), `getFullYear()`, `getMonth()`
(0 = January), `getDate()` (1-based day of month), `getDayOfMonth()` and
`getDayOfYear()` (0-based). The time-zone forms (`getHours("Europe/Paris")`)
and `int(now)` are not supported by the library: they compile, then fail at
evaluation (so the condition refuses, reporting the error).

A condition that is not a bool, or fails to evaluate (a missing key such as
`args.repo` when the argument is absent, a type mismatch), counts as not met
and the error is reported: a broken condition never lets a call through. Use
`has(args.repo)` or `"repo" in args` to test for an optional argument.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cel

VARIABLES = ("args", "agent", "user", "tool", "now")
_ALLOWED = frozenset(VARIABLES)

# "ERROR: <input>:3:14: Syntax error: mismatched input ..." — one per problem;
# the message runs until the source excerpt ("\n| ...") that follows it.
_ERROR_RE = re.compile(r"ERROR: <input>:(\d+):(\d+): (.*?)(?:\n\||\nERROR:|$)", re.S)
_EXPECTING_RE = re.compile(r"^mismatched input '(.*)' expecting .*$", re.S)
_TOKEN_RE = re.compile(r"^token recognition error at: '(.*)'$", re.S)
# String literals are blanked before looking for identifiers, so text inside
# quotes is never mistaken for a variable (CEL's raw/bytes prefixes included).
_STRING_RE = re.compile(
    r"""[rRbB]{0,2}(?:\"\"\"[\s\S]*?\"\"\"|'''[\s\S]*?'''|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*')"""
)
# The first one or two arguments of a comprehension macro are names it binds
# (`user.groups.exists(g, g == "x")`); the library lists them as variables.
_MACRO_RE = re.compile(
    r"\.\s*(?:all|exists|exists_one|existsOne|map|filter|transformList|transformMap)\s*\(\s*"
    r"([A-Za-z_]\w*)\s*,(?:\s*([A-Za-z_]\w*)\s*,)?"
)


class ConditionError(ValueError):
    """A condition that cannot be used; `str()` is one short human sentence.

    `line` and `column` (1-based, within the expression) say where, when known,
    so a loader can point at the exact place in the policy file.
    """

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


@dataclass(frozen=True)
class ConditionResult:
    """The outcome of one evaluation: `passed` only if the condition returned true.

    `error` says why it could not be evaluated (and is None when it simply
    evaluated to true or false).
    """

    passed: bool
    error: str | None = None


class CompiledCondition:
    """A compiled, checked condition; immutable and shareable between calls."""

    __slots__ = ("_program", "_uses", "source")

    def __init__(self, source: str, program: cel.Program) -> None:
        self.source = source
        self._program = program
        # Only what it reads is handed to the library: converting the rest costs on every call.
        self._uses = tuple(sorted(frozenset(program.variables()) & _ALLOWED))

    def __repr__(self) -> str:
        return f"CompiledCondition({self.source!r})"

    def evaluate(self, variables: Mapping[str, Any]) -> ConditionResult:
        """Evaluate over `variables` (see the module docstring); never raises.

        A datetime `now` is converted to UTC first (a naive one is taken as
        UTC) because the library reads the accessors in the datetime's own
        offset, while CEL defines them in UTC.
        """
        context = {name: variables[name] for name in self._uses if name in variables}
        now = context.get("now")
        if isinstance(now, dt.datetime):
            utc = dt.UTC
            context["now"] = now.replace(tzinfo=utc) if now.tzinfo is None else now.astimezone(utc)
        try:
            value = self._program.execute(context)
        except Exception as exc:  # the library raises KeyError, TypeError, RuntimeError, ...
            return ConditionResult(False, _evaluation_error(exc))
        if not isinstance(value, bool):
            returned = f"{type(value).__name__} {_short(repr(value))}"
            return ConditionResult(False, f"the condition returned {returned}, not a bool")
        return ConditionResult(value)


def compile_condition(expr: str) -> CompiledCondition:
    """Compile and check `expr`; raise ConditionError if it cannot be used.

    Rejected: an empty expression, a syntax error, and a reference to any
    variable other than args, agent, user, tool and now. Results are cached
    for the life of the process, keyed by source (policy reloads recompile
    only what changed). Unknown functions are only found at evaluation.
    """
    if not expr.strip():
        raise ConditionError("the condition is empty")
    return _compile_cached(expr)


@functools.lru_cache(maxsize=4096)
def _compile_cached(expr: str) -> CompiledCondition:
    try:
        program = cel.compile(expr)
    except ValueError as exc:
        raise _syntax_error(str(exc)) from None
    unknown = sorted(set(program.variables()) - _ALLOWED - _bound_names(expr))
    if unknown:
        name = unknown[0]
        line, column = _position_of(expr, name)
        where = f"line {line}, column {column}: " if line else ""
        raise ConditionError(
            f"{where}unknown variable '{name}' (a condition can use {', '.join(VARIABLES)})", line, column
        )
    return CompiledCondition(expr, program)


def _syntax_error(text: str) -> ConditionError:
    """The library's parse error text → "line L, column C: syntax error: ..."."""
    errors = _ERROR_RE.findall(text)
    if not errors:  # unknown format: keep the library's first line, without its preamble
        first = text.split("\n", 1)[0]
        return ConditionError(_short(first.split("': ", 1)[-1]))
    # Prefer a real syntax error: the parser sometimes reports an internal
    # "Incomplete ExprContext" first for the same mistake.
    line, column, message = next((e for e in errors if e[2].startswith("Syntax error:")), errors[0])
    message = message.strip()
    if message.startswith("Syntax error: "):
        detail = message[len("Syntax error: ") :]
        if m := _EXPECTING_RE.match(detail):
            detail = "unexpected end of expression" if m.group(1) == "<EOF>" else f"unexpected '{m.group(1)}'"
        elif m := _TOKEN_RE.match(detail):
            detail = f"cannot read {_short(m.group(1))!r} (an unterminated string or a stray character?)"
        message = f"syntax error: {detail}"
    return ConditionError(f"line {line}, column {column}: {message}", int(line), int(column))


def _bound_names(expr: str) -> set[str]:
    names: set[str] = set()
    for m in _MACRO_RE.finditer(_STRING_RE.sub(_blank, expr)):
        names.update(n for n in m.groups() if n)
    return names


def _position_of(expr: str, name: str) -> tuple[int | None, int | None]:
    """1-based line and column of the first free use of identifier `name`."""
    text = _STRING_RE.sub(_blank, expr)
    m = re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", text)
    if m is None:
        return None, None
    before = text[: m.start()]
    return before.count("\n") + 1, m.start() - (before.rfind("\n") + 1) + 1


def _blank(m: re.Match[str]) -> str:
    # Same length and same newlines, so positions in the blanked text still hold.
    return re.sub(r"[^\n]", " ", m.group(0))


def _evaluation_error(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"no such key: {exc.args[0] if exc.args else ''}"
    # The library's messages are long ("No such overload: ... Convert
    # explicitly with ..."): keep the first sentence.
    text = str(exc).strip() or type(exc).__name__
    return _short(text.split(". ", 1)[0].split("\n", 1)[0].rstrip("."))


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
