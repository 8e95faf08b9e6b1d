"""Which `when:` conditions Envoy can evaluate itself, giving exactly the policy service's answer.

A condition is *native* when every part of it has the same truth in Envoy's
CEL (RBAC, over what the gateway extracts into metadata) as in the policy
service's CEL (`core/cel.py`, over the JSON the client sent). The argument
for "the same answer":

- Both CELs absorb errors in `&&` and `||` the same way (`error || true` is
  true, `false && error` is false), so a condition built from parts with
  `&&` and `||` only is true exactly when the same parts are true. A part
  may be false in one and an error in the other; both deny.
- So each *part* (an atom) must be true in one exactly when it is true in
  the other. Envoy sees the arguments as the MCP filter extracts them: a
  JSON string stays the same string, a number becomes a double, null and
  objects stay, but an array is not extracted at all. Every atom below is
  true only for a string, a number compared with a literal small enough
  to be exact in a double, a boolean or a present key of a JWT payload
  (which Envoy keeps whole), so what Envoy cannot see never makes it true.
- `!` and `!=` are allowed only where neither side can err or be missing
  (the tool, the agent, the clock, `has(user.x)`): elsewhere "false" in
  one could be "error" in the other, and negation would tell them apart.

The native forms (S is `args.x`, `args["x"]`, deeper keys of an argument,
`user.x...`, `tool` or `agent.name`; L a literal):

    S.startsWith(L)  S.endsWith(L)  S.contains(L)      L a string
    S.matches(L)                                       L a regex in the subset both engines agree on
    S == L, L == S                                     L a string, a bool, or a number within ±2^53
    S < L, <=, >, >= (either side)                     L a number within ±2^53
    S in [L, ...]                                      strings or numbers
    L in user.x..., L in user                          L a string (list element or key)
    has(user.x...)
    now < timestamp("2026-01-01T00:00:00Z") (any comparison, either side)
    now.getHours() < 18 (any comparison; also getMinutes, getSeconds, getDayOfWeek,
        getFullYear, getMonth, getDate, getDayOfMonth, getDayOfYear)
    true, false; A && B, A || B; !A and != only over tool, agent.name, now, has(user.x)

Anything else (ternaries, sizes, macros, arithmetic, `has(args.x)`, lists of
arguments, ...) stays with the policy service, with the reason in
`NotNative`. The parser (`core/cel_syntax.py`) refusing a text means the same.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from dataclasses import dataclass

import re2

from xds_server.core.cel_syntax import Call, CelSyntaxError, Expr, Ident, ListLit, Literal, Select, parse

#: Numbers a double holds exactly; literals beyond may compare differently against a huge integer.
EXACT_LIMIT = 2**53
#: An argument name the MCP filter can extract (its paths are dotted).
ARGUMENT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,127}")
_STRING_METHODS = frozenset({"startsWith", "endsWith", "contains"})
_ORDER = {"_<_", "_<=_", "_>_", "_>=_"}
_TIME_ACCESSORS = frozenset({"getHours", "getMinutes", "getSeconds", "getDayOfWeek", "getFullYear", "getMonth",
                             "getDate", "getDayOfMonth", "getDayOfYear"})  # fmt: skip
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2})")


class NotNative(ValueError):
    """The condition stays with the policy service; `str()` says why, for `render` and `explain`."""


@dataclass(frozen=True)
class NativeCondition:
    """A condition Envoy evaluates: its tree (native forms only) and what it reads."""

    source: str
    tree: Expr
    arguments: tuple[str, ...]  # the top-level arguments it reads (the MCP filter extracts these)
    reads_user: bool
    reads_agent: bool


@functools.lru_cache(maxsize=4096)
def native_condition(source: str) -> NativeCondition:
    """The native form of `source`, or NotNative with the reason (see the module docstring).
    Cached by source: the IR build and the translators ask for the same conditions."""
    try:
        tree = parse(source)
    except CelSyntaxError as exc:
        raise NotNative(f"the gateway's CEL reader does not read it ({exc})") from None
    reads = _Reads()
    _boolean(tree, reads)
    return NativeCondition(source, tree, tuple(sorted(reads.arguments)), reads.user, reads.agent)


class _Reads:
    def __init__(self) -> None:
        self.arguments: set[str] = set()
        self.user = False
        self.agent = False


def _boolean(expr: Expr, reads: _Reads) -> None:
    if isinstance(expr, Literal) and expr.kind == "bool":
        return
    if isinstance(expr, Call) and expr.target is None and expr.function in ("_&&_", "_||_"):
        for arg in expr.args:
            _boolean(arg, reads)
        return
    if isinstance(expr, Call) and expr.target is None and expr.function == "!_":
        if not _atom(expr.args[0], reads):
            raise NotNative("'!' is native only over tool, agent.name, now and has(user.x)")
        return
    _atom(expr, reads)


def _atom(expr: Expr, reads: _Reads) -> bool:
    """Check one atom; return whether it is total (never an error, so it may be negated)."""
    if isinstance(expr, Select) and expr.test_only:
        path = _user_path(expr.operand)
        if path is None:
            raise NotNative("has() is native only over user claims (Envoy does not extract array arguments)")
        reads.user = True
        return len(path) == 0  # has(user.x): user is always a map
    if not isinstance(expr, Call):
        raise NotNative(f"{_describe(expr)} is not a condition Envoy can evaluate")
    if expr.target is not None:
        return _method(expr, reads)
    function, args = expr.function, expr.args
    if function in ("_==_", "_!=_"):
        return _equality(function, args, reads)
    if function in _ORDER:
        return _ordering(args, reads)
    if function == "@in":
        return _membership(args, reads)
    raise NotNative(f"{_describe(expr)} is not among the native forms")


def _method(expr: Call, reads: _Reads) -> bool:
    assert expr.target is not None
    if expr.function in _STRING_METHODS or expr.function == "matches":
        total = _source(expr.target, reads)
        if len(expr.args) != 1 or not _is_string(expr.args[0]):
            raise NotNative(f"{expr.function}() is native with one string literal")
        if expr.function == "matches":
            pattern = expr.args[0].value  # type: ignore[union-attr]
            assert isinstance(pattern, str)
            check_portable_regex(pattern)
        return total
    raise NotNative(f"the method {expr.function}() is not among the native forms")


def _equality(function: str, args: tuple[Expr, ...], reads: _Reads) -> bool:
    left, right = args
    if _is_now_accessor(left) or _is_now_accessor(right):
        other = right if _is_now_accessor(left) else left
        if not _is_exact_number(other) or _is_float(other):
            raise NotNative("a time accessor is compared with an integer literal")
        return True
    literal, source = (right, left) if _is_literal(right) else (left, right)
    if not (_is_string(literal) or _is_bool(literal) or _is_exact_number(literal)):
        raise NotNative("== is native between an argument, a claim, the tool or the agent and a string, bool "
                        "or number literal")  # fmt: skip
    total = _source(source, reads)
    if function == "_!=_" and not total:
        raise NotNative("!= is native only over tool and agent.name (an argument or claim may be missing)")
    return total


def _ordering(args: tuple[Expr, ...], reads: _Reads) -> bool:
    left, right = args
    if _is_now(left) or _is_now(right):
        other = right if _is_now(left) else left
        if not _is_timestamp_literal(other):
            raise NotNative('now is compared with timestamp("...") literals (RFC 3339)')
        return True
    if _is_now_accessor(left) or _is_now_accessor(right):
        other = right if _is_now_accessor(left) else left
        if not _is_exact_number(other) or _is_float(other):
            raise NotNative("a time accessor is compared with an integer literal")
        return True
    literal, source = (right, left) if _is_literal(right) else (left, right)
    if not _is_exact_number(literal):
        raise NotNative(f"ordering is native against number literals within ±2^53 (not {_describe(literal)})")
    _source(source, reads)
    return False


def _membership(args: tuple[Expr, ...], reads: _Reads) -> bool:
    element, container = args
    if isinstance(container, ListLit):
        values = container.elements
        if not values or not (all(_is_string(v) for v in values) or all(_is_exact_number(v) for v in values)):
            raise NotNative("'in' is native against a list of string literals or of number literals")
        return _source(element, reads)
    path = _user_path(container)
    if path is None or not _is_string(element):
        raise NotNative("'x in y' is native for a list of literals, or a string literal in user claims")
    reads.user = True
    return False


# ---------------------------------------------------------------- sources


def _source(expr: Expr, reads: _Reads) -> bool:
    """A value Envoy sees as the policy service does; returns whether it is always there (total)."""
    if isinstance(expr, Ident) and expr.name == "tool":
        return True
    if _keys(expr, "agent") == ("name",):
        reads.agent = True
        return True
    arguments = _keys(expr, "args")
    if arguments:
        if not ARGUMENT_NAME.fullmatch(arguments[0]):
            raise NotNative(f"the argument name {arguments[0]!r} cannot be extracted by Envoy")
        reads.arguments.add(arguments[0])
        return False
    if _user_path(expr):
        reads.user = True
        return False
    raise NotNative(f"{_describe(expr)} is not a value Envoy can see (use args.x, user.x, tool or agent.name)")


def _keys(expr: Expr, root: str) -> tuple[str, ...] | None:
    """The keys of `root.a.b["c"]` (empty for `root` itself); None for anything else."""
    keys: list[str] = []
    while True:
        if isinstance(expr, Ident):
            return tuple(reversed(keys)) if expr.name == root else None
        if isinstance(expr, Select) and not expr.test_only:
            keys.append(expr.field)
            expr = expr.operand
        elif isinstance(expr, Call) and expr.function == "_[_]" and expr.target is None and _is_string(expr.args[1]):
            keys.append(expr.args[1].value)  # type: ignore[union-attr,arg-type]
            expr = expr.args[0]
        else:
            return None


def _user_path(expr: Expr) -> tuple[str, ...] | None:
    """The keys below `user` of `expr` (empty: `user` itself), or None when it is not under user."""
    return _keys(expr, "user")


def _is_literal(expr: Expr) -> bool:
    return isinstance(expr, Literal)


def _is_string(expr: Expr) -> bool:
    return isinstance(expr, Literal) and expr.kind == "string"


def _is_bool(expr: Expr) -> bool:
    return isinstance(expr, Literal) and expr.kind == "bool"


def _is_float(expr: Expr) -> bool:
    return isinstance(expr, Literal) and expr.kind == "double"


def _is_exact_number(expr: Expr) -> bool:
    if not isinstance(expr, Literal) or expr.kind not in ("int", "double"):
        return False
    value = expr.value
    assert isinstance(value, int | float)
    return value == value and -EXACT_LIMIT < value < EXACT_LIMIT  # finite, and exact as a double


def _is_now(expr: Expr) -> bool:
    return isinstance(expr, Ident) and expr.name == "now"


def _is_now_accessor(expr: Expr) -> bool:
    return (isinstance(expr, Call) and expr.target is not None and _is_now(expr.target)
            and expr.function in _TIME_ACCESSORS and not expr.args)  # fmt: skip


def _is_timestamp_literal(expr: Expr) -> bool:
    if not (isinstance(expr, Call) and expr.function == "timestamp" and expr.target is None and len(expr.args) == 1):
        return False
    text = expr.args[0]
    if not _is_string(text) or not _TIMESTAMP.fullmatch(str(text.value)):  # type: ignore[union-attr]
        return False
    try:
        dt.datetime.fromisoformat(str(text.value).replace("Z", "+00:00"))  # type: ignore[union-attr]
    except ValueError:
        return False
    return True


def _describe(expr: Expr) -> str:
    if isinstance(expr, Literal):
        return f"the {expr.kind} literal {expr.value!r}"
    if isinstance(expr, Ident):
        return f"'{expr.name}'"
    if isinstance(expr, Call):
        name = {"_?_:_": "a ternary (?:)", "_[_]": "an index", "!_": "'!'", "-_": "negation"}.get(expr.function)
        if name is None and expr.function.startswith(("_", "@")):
            name = f"'{expr.function.strip('_@')}'"  # an operator: '+', 'in', ...
        return name or f"{expr.function}()"
    return type(expr).__name__.lower()


# ---------------------------------------------------------------- regular expressions

# RE2 (Envoy) and Rust's regex (the policy service's CEL) agree on this subset: literal
# characters, escaped punctuation, '.', anchors, classes of literal characters and ranges,
# groups (plain and non-capturing), alternation and quantifiers. They differ elsewhere, e.g.
# \d \w \s \b are ASCII in RE2 and Unicode in Rust, and flags fold case differently.
_REGEX_META = set("\\.^$|?*+()[]{}")
_MAX_REPEAT = 1000
# Envoy compiles a CEL `matches` regex with RE2 and a program size limit of its own (100,
# whatever the runtime's re2.max_program_size says); a larger one NACKs the whole route
# configuration (verified on 1.40). Measured with RE2 itself, so the answer is exact.
ENVOY_CEL_MAX_PROGRAM_SIZE = 100
# Escapable in both engines: ASCII punctuation, except '<' and '>' (word boundaries in Rust's
# regex, literals in RE2) and '_' (a word character: RE2 refuses to escape it).
_ESCAPABLE = _REGEX_META | set("-/ #&~,:;=!'\"@%`")


def check_portable_regex(pattern: str) -> None:
    """Raise NotNative unless `pattern` is in the subset both regex engines read alike."""
    i, depth = 0, 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            i = _escaped(pattern, i)
            continue
        if ch == "[":
            i = _char_class(pattern, i)
            continue
        if ch == "(":
            if pattern.startswith("(?", i):
                if not pattern.startswith("(?:", i):
                    raise NotNative("regex flags and special groups are not native")
                i += 3
            else:
                i += 1
            depth += 1
            continue
        if ch == ")":
            depth -= 1
            if depth < 0:
                raise NotNative("unbalanced ')' in the regex")
        elif ch == "{":
            m = re.compile(r"\{(\d{1,4})(,(\d{0,4}))?\}").match(pattern, i)
            if m is None:
                raise NotNative("a '{' in the regex that is not a repetition (escape it)")
            low, high = int(m.group(1)), m.group(3)
            if low > _MAX_REPEAT or (high and (int(high) > _MAX_REPEAT or int(high) < low)):
                raise NotNative("a regex repetition count is out of range")
            i = m.end()
            continue
        elif ch in "}]":
            raise NotNative(f"a stray {ch!r} in the regex (escape it)")
        i += 1
    if depth:
        raise NotNative("unbalanced '(' in the regex")
    size = _re2_program_size(pattern)
    if size > ENVOY_CEL_MAX_PROGRAM_SIZE:
        raise NotNative(f"the regex is too large for Envoy's CEL (RE2 program size {size}, at most "
                        f"{ENVOY_CEL_MAX_PROGRAM_SIZE}; bounded repetitions like {{1,40}} grow it fast)")  # fmt: skip


def _re2_program_size(pattern: str) -> int:
    """RE2's program size for `pattern`; NotNative if RE2 refuses it (e.g. x** or x{2}{3}, which
    Rust's regex reads)."""
    options = re2.Options()
    options.log_errors = False  # the reason is in the exception; RE2 would also print it
    try:
        return int(re2.compile(pattern, options).programsize)
    except re2.error as exc:
        why = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise NotNative(f"RE2 (Envoy's engine) cannot read the regex: {why}") from None


def _escaped(pattern: str, i: int) -> int:
    if i + 1 >= len(pattern):
        raise NotNative("the regex ends in '\\'")
    nxt = pattern[i + 1]
    if nxt in _ESCAPABLE:
        return i + 2
    raise NotNative(f"the regex escape \\{nxt} is not native (only escaped punctuation is)")


def _char_class(pattern: str, i: int) -> int:
    i += 1
    if i < len(pattern) and pattern[i] == "^":
        i += 1
    first = True
    while i < len(pattern):
        ch = pattern[i]
        if ch == "]" and not first:
            return i + 1
        if ch == "[":
            raise NotNative("nested or POSIX classes in a regex are not native")
        if ch == "\\":
            i = _escaped(pattern, i)
        elif ch in "&~-" and pattern[i + 1 : i + 2] == ch:
            raise NotNative("class set operations (&&, ~~, --) are not native")
        else:
            i += 1
        first = False
    raise NotNative("unterminated '[' in the regex")
