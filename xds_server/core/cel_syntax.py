"""A CEL parser: source text → a small syntax tree, shaped like CEL's own (google.api.expr).

The policy service evaluates `when:` conditions with the `cel` library, which
exposes no syntax tree; Envoy wants one (RBAC `Policy.condition` is a parsed
`google.api.expr.v1alpha1.Expr`). This parser gives the tree that
`core/cel_native.py` checks and `translate/cel.py` hands to Envoy.

It follows the CEL grammar (cel-spec `langdef.md`): the same precedence
(`?:` < `||` < `&&` < relations < `+ -` < `* / %` < unary < member), the same
operator function names as cel-go (`_&&_`, `_==_`, `@in`, `_[_]`, `!_`,
`-_`, `_?_:_`), string and bytes literals with every escape, raw and triple
quoted forms, ints (decimal, hex), uints (`u` suffix) and doubles. `has(x.f)`
becomes a test-only select, as in CEL; the other macros (`all`, `exists`,
`map`, ...) stay calls, which no native form accepts.

Whatever it cannot read raises `CelSyntaxError`. That never rejects a policy
(the `cel` library is the judge of what is valid): such a condition simply
stays with the policy service. So the parser may refuse more than CEL, never
read an expression differently; tests/unit/test_cel_syntax.py and the
differential test through Envoy hold it to that.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union


class CelSyntaxError(ValueError):
    """The text is not an expression this parser reads."""


# ---------------------------------------------------------------- the tree


@dataclass(frozen=True)
class Literal:
    """A constant. `kind`: bool | int | uint | double | string | bytes | null."""

    kind: str
    value: object


@dataclass(frozen=True)
class Ident:
    name: str


@dataclass(frozen=True)
class Select:
    """`operand.field`; `test_only` for `has(operand.field)`."""

    operand: Expr
    field: str
    test_only: bool = False


@dataclass(frozen=True)
class Call:
    """A function (`target` None: `f(args)`, operators included) or a method (`target.f(args)`)."""

    function: str
    args: tuple[Expr, ...]
    target: Expr | None = None


@dataclass(frozen=True)
class ListLit:
    elements: tuple[Expr, ...]


@dataclass(frozen=True)
class MapLit:
    entries: tuple[tuple[Expr, Expr], ...]


@dataclass(frozen=True)
class MessageLit:
    """`Type{field: value, ...}`: parsed so that the text is read whole; nothing native uses it."""

    type_name: str
    fields: tuple[tuple[str, Expr], ...]


Expr = Union[Literal, Ident, Select, Call, ListLit, MapLit, MessageLit]  # noqa: UP007 (a runtime alias)

# ---------------------------------------------------------------- tokens

_RESERVED = frozenset(
    "as break const continue else for function if import let loop package namespace return var void while".split()
)
_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\n\f]+|//[^\n]*)
  | (?P<number>0[xX][0-9a-fA-F]+[uU]?|[0-9]*\.[0-9]+(?:[eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+|[0-9]+[uU]?)
  | (?P<string>(?:[rR][bB]?|[bB][rR]?)?(?:\"\"\"|'''|"|'))
  | (?P<ident>[_a-zA-Z][_a-zA-Z0-9]*)
  | (?P<op>==|!=|<=|>=|&&|\|\||[-+*/%<>!?:.,()\[\]{}])
    """,
    re.X,
)
_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
                   "\\": "\\", "?": "?", '"': '"', "'": "'", "`": "`"}  # fmt: skip
INT64_MIN, INT64_MAX, UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1


@dataclass(frozen=True)
class _Token:
    kind: str  # number | string | ident | op | end
    text: str
    value: object = None
    position: int = 0


def _read_string(source: str, start: int, prefix_end: int) -> tuple[_Token, int]:
    """The string or bytes literal starting at `start` (its quote at `prefix_end`)."""
    prefix = source[start:prefix_end].lower()
    raw, is_bytes = "r" in prefix, "b" in prefix
    quote = source[prefix_end : prefix_end + 3]
    quote = quote if quote in ('"""', "'''") else source[prefix_end]
    i = prefix_end + len(quote)
    out: list[str] = []
    while True:
        if i >= len(source):
            raise CelSyntaxError("unterminated string")
        if source.startswith(quote, i):
            i += len(quote)
            break
        ch = source[i]
        if ch == "\n" and len(quote) == 1:
            raise CelSyntaxError("newline in a single-quoted string")
        if ch != "\\" or raw:
            out.append(ch)
            i += 1
            continue
        escape, i = _escape(source, i + 1, is_bytes)
        out.append(escape)
    # A bytes literal keeps its decoded text: no native form uses bytes, so its exact value is moot.
    return _Token("bytes" if is_bytes else "string", source[start:i], "".join(out), start), i


def _escape(source: str, i: int, is_bytes: bool) -> tuple[str, int]:
    if i >= len(source):
        raise CelSyntaxError("unterminated escape")
    ch = source[i]
    if ch in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[ch], i + 1
    if ch in "xX":
        digits = source[i + 1 : i + 3]
        if not re.fullmatch(r"[0-9a-fA-F]{2}", digits):
            raise CelSyntaxError("bad \\x escape")
        return chr(int(digits, 16)), i + 3
    if ch in "uU":
        if is_bytes:
            raise CelSyntaxError("\\u escape in bytes")
        width = 4 if ch == "u" else 8
        digits = source[i + 1 : i + 1 + width]
        if not re.fullmatch(rf"[0-9a-fA-F]{{{width}}}", digits):
            raise CelSyntaxError(f"bad \\{ch} escape")
        code = int(digits, 16)
        if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
            raise CelSyntaxError("escape is not a Unicode scalar value")
        return chr(code), i + 1 + width
    if ch in "0123":
        digits = source[i : i + 3]
        if not re.fullmatch(r"[0-3][0-7]{2}", digits):
            raise CelSyntaxError("bad octal escape")
        return chr(int(digits, 8)), i + 3
    raise CelSyntaxError(f"unknown escape \\{ch}")


def _number(text: str, position: int) -> _Token:
    lower = text.lower()
    if lower.startswith("0x"):
        unsigned = lower.endswith("u")
        value = int(lower[2 : -1 if unsigned else None], 16)
        return _Token("number", text, ("uint" if unsigned else "int", value), position)
    if "." in lower or "e" in lower:
        return _Token("number", text, ("double", float(text)), position)
    if lower.endswith("u"):
        return _Token("number", text, ("uint", int(lower[:-1])), position)
    return _Token("number", text, ("int", int(lower)), position)


def tokens(source: str) -> list[_Token]:
    out: list[_Token] = []
    i = 0
    while i < len(source):
        m = _TOKEN.match(source, i)
        if m is None:
            raise CelSyntaxError(f"unexpected character {source[i]!r}")
        kind = m.lastgroup
        assert kind is not None
        if kind == "space":
            i = m.end()
        elif kind == "string":
            token, i = _read_string(source, i, m.end() - len(m.group(kind).lstrip("rRbB")))
            out.append(token)
        elif kind == "number":
            # "1.e5" or "1." are not CEL numbers; neither is a number run into a name ("1abc").
            after = source[m.end() : m.end() + 1]
            if after and (
                after.isalnum()
                or after == "_"
                or (after == "." and "." not in m.group(kind) and source[m.end() + 1 : m.end() + 2].isdigit())
            ):
                raise CelSyntaxError(f"malformed number near {source[i : m.end() + 1]!r}")  # fmt: skip
            out.append(_number(m.group(kind), i))
            i = m.end()
        else:
            out.append(_Token(kind, m.group(kind), None, i))
            i = m.end()
    out.append(_Token("end", "", None, len(source)))
    return out


# ---------------------------------------------------------------- the parser

_RELATIONS = {"<": "_<_", "<=": "_<=_", ">": "_>_", ">=": "_>=_", "==": "_==_", "!=": "_!=_", "in": "@in"}
_ADDITIVE = {"+": "_+_", "-": "_-_"}
_MULTIPLICATIVE = {"*": "_*_", "/": "_/_", "%": "_%_"}
MAX_DEPTH = 60  # nesting beyond this is refused (such a condition stays with the policy service)


class _Parser:
    def __init__(self, source: str) -> None:
        self.tokens = tokens(source)
        self.i = 0
        self.depth = 0

    # -- helpers
    def peek(self, offset: int = 0) -> _Token:
        return self.tokens[min(self.i + offset, len(self.tokens) - 1)]

    def at(self, *texts: str) -> bool:
        token = self.peek()
        return token.kind in ("op", "ident") and token.text in texts

    def take(self, text: str) -> _Token:
        token = self.peek()
        if token.kind not in ("op", "ident") or token.text != text:
            raise CelSyntaxError(f"expected {text!r} at {token.position}, found {token.text or 'the end'!r}")
        self.i += 1
        return token

    def _enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise CelSyntaxError("expression nested too deeply")

    # -- grammar
    def parse(self) -> Expr:
        expr = self.expr()
        if self.peek().kind != "end":
            raise CelSyntaxError(f"unexpected {self.peek().text!r} at {self.peek().position}")
        return expr

    def expr(self) -> Expr:
        self._enter()
        try:
            condition = self.or_()
            if not self.at("?"):
                return condition
            self.take("?")
            then = self.or_()
            self.take(":")
            otherwise = self.expr()
            return Call("_?_:_", (condition, then, otherwise))
        finally:
            self.depth -= 1

    def or_(self) -> Expr:
        left = self.and_()
        while self.at("||"):
            self.take("||")
            left = Call("_||_", (left, self.and_()))
        return left

    def and_(self) -> Expr:
        left = self.relation()
        while self.at("&&"):
            self.take("&&")
            left = Call("_&&_", (left, self.relation()))
        return left

    def relation(self) -> Expr:
        left = self.addition()
        while self.peek().text in _RELATIONS and self.peek().kind in ("op", "ident"):
            op = self.peek().text
            self.i += 1
            left = Call(_RELATIONS[op], (left, self.addition()))
        return left

    def addition(self) -> Expr:
        left = self.multiplication()
        while self.peek().kind == "op" and self.peek().text in _ADDITIVE:
            op = self.peek().text
            self.i += 1
            left = Call(_ADDITIVE[op], (left, self.multiplication()))
        return left

    def multiplication(self) -> Expr:
        left = self.unary()
        while self.peek().kind == "op" and self.peek().text in _MULTIPLICATIVE:
            op = self.peek().text
            self.i += 1
            left = Call(_MULTIPLICATIVE[op], (left, self.unary()))
        return left

    def unary(self) -> Expr:
        if self.at("!"):
            count = 0
            while self.at("!"):
                self.take("!")
                count += 1
            operand = self.member()
            for _ in range(count):
                operand = Call("!_", (operand,))
            return operand
        if self.at("-"):
            count = 0
            while self.at("-"):
                self.take("-")
                count += 1
            operand = self.member()
            if count % 2 == 1 and isinstance(operand, Literal) and operand.kind in ("int", "double") \
                    and self.tokens[self.i - 1].kind == "number":  # fmt: skip
                # "-5" is the literal -5 (so INT64_MIN can be written), as in CEL's parsers.
                operand, count = Literal(operand.kind, -operand.value), count - 1  # type: ignore[operator]
            for _ in range(count):
                operand = Call("-_", (operand,))
            return operand
        return self.member()

    def member(self) -> Expr:
        expr = self.primary()
        while True:
            if self.at("."):
                self.take(".")
                name = self.identifier()
                if self.at("("):
                    expr = self._method(expr, name, self.arguments("(", ")"))
                else:
                    expr = Select(expr, name)
            elif self.at("["):
                self.take("[")
                index = self.expr()
                self.take("]")
                expr = Call("_[_]", (expr, index))
            elif self.at("{") and isinstance(expr, Ident | Select) and _qualified_name(expr) is not None:
                expr = self.message(_qualified_name(expr) or "")
            else:
                break
        return expr

    def primary(self) -> Expr:
        token = self.peek()
        if token.kind == "number":
            self.i += 1
            assert isinstance(token.value, tuple)
            number_kind, number = token.value
            return Literal(str(number_kind), number)
        if token.kind in ("string", "bytes"):
            self.i += 1
            return Literal(token.kind, token.value)
        if token.kind == "ident":
            name = self.identifier()
            if name in ("true", "false"):
                return Literal("bool", name == "true")
            if name == "null":
                return Literal("null", None)
            if self.at("("):
                args = self.arguments("(", ")")
                if name == "has":
                    if len(args) != 1 or not isinstance(args[0], Select) or args[0].test_only:
                        raise CelSyntaxError("has() takes one field selection, like has(args.repo)")
                    return Select(args[0].operand, args[0].field, test_only=True)
                return Call(name, tuple(args))
            return Ident(name)
        if self.at("("):
            self.take("(")
            expr = self.expr()
            self.take(")")
            return expr
        if self.at("["):
            return ListLit(tuple(self.arguments("[", "]", trailing=True)))
        if self.at("{"):
            return self.map_literal()
        if self.at("."):
            raise CelSyntaxError("leading-dot names are not supported")
        raise CelSyntaxError(f"unexpected {token.text or 'end of expression'!r} at {token.position}")

    def identifier(self) -> str:
        token = self.peek()
        if token.kind != "ident":
            raise CelSyntaxError(f"expected a name at {token.position}")
        if token.text in _RESERVED or token.text == "in":
            raise CelSyntaxError(f"reserved word {token.text!r}")
        self.i += 1
        return token.text

    def arguments(self, open_: str, close: str, trailing: bool = False) -> list[Expr]:
        self.take(open_)
        out: list[Expr] = []
        while not self.at(close):
            out.append(self.expr())
            if not self.at(","):
                break
            self.take(",")
            if self.at(close) and not trailing:
                raise CelSyntaxError("trailing comma")
        self.take(close)
        return out

    def map_literal(self) -> Expr:
        self.take("{")
        entries: list[tuple[Expr, Expr]] = []
        while not self.at("}"):
            key = self.expr()
            self.take(":")
            entries.append((key, self.expr()))
            if not self.at(","):
                break
            self.take(",")
        self.take("}")
        return MapLit(tuple(entries))

    def message(self, type_name: str) -> Expr:
        self.take("{")
        fields: list[tuple[str, Expr]] = []
        while not self.at("}"):
            name = self.identifier()
            self.take(":")
            fields.append((name, self.expr()))
            if not self.at(","):
                break
            self.take(",")
        self.take("}")
        return MessageLit(type_name, tuple(fields))

    def _method(self, target: Expr, name: str, args: list[Expr]) -> Expr:
        return Call(name, tuple(args), target)


def children(expr: Expr) -> tuple[Expr, ...]:
    """The sub-expressions of `expr`."""
    if isinstance(expr, Select):
        return (expr.operand,)
    if isinstance(expr, Call):
        return ((expr.target,) if expr.target is not None else ()) + expr.args
    if isinstance(expr, ListLit):
        return expr.elements
    if isinstance(expr, MapLit):
        return tuple(x for entry in expr.entries for x in entry)
    if isinstance(expr, MessageLit):
        return tuple(value for _, value in expr.fields)
    return ()


def _check_ranges(tree: Expr) -> None:
    """Integer literals must fit (after "-5" became the literal -5, so INT64_MIN can be written)."""
    stack = [tree]
    while stack:
        expr = stack.pop()
        if isinstance(expr, Literal):
            if expr.kind == "int" and not INT64_MIN <= expr.value <= INT64_MAX:  # type: ignore[operator]
                raise CelSyntaxError("int literal out of range")
            if expr.kind == "uint" and not 0 <= expr.value <= UINT64_MAX:  # type: ignore[operator]
                raise CelSyntaxError("uint literal out of range")
        stack.extend(children(expr))


def _qualified_name(expr: Expr) -> str | None:
    if isinstance(expr, Ident):
        return expr.name
    if isinstance(expr, Select) and not expr.test_only:
        base = _qualified_name(expr.operand)
        return f"{base}.{expr.field}" if base else None
    return None


def parse(source: str) -> Expr:
    """The syntax tree of `source`; raises CelSyntaxError for what this parser does not read."""
    tree = _Parser(source).parse()
    _check_ranges(tree)
    return tree
