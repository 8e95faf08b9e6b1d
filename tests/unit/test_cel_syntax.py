"""The CEL parser (core/cel_syntax.py): CEL's precedence, literals and escapes, and what it refuses."""

from __future__ import annotations

import pytest

from xds_server.core.cel_syntax import Call, CelSyntaxError, Ident, ListLit, Literal, MapLit, Select, parse


def call(function: str, *args: object, target: object = None) -> Call:
    return Call(function, tuple(args), target)  # type: ignore[arg-type]


A, B, C = Ident("a"), Ident("b"), Ident("c")


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        ("a || b && c", call("_||_", A, call("_&&_", B, C))),
        ("a && b || c", call("_||_", call("_&&_", A, B), C)),
        ("a || b || c", call("_||_", call("_||_", A, B), C)),
        ("a ? b : c", call("_?_:_", A, B, C)),
        ("a || b ? b : c", call("_?_:_", call("_||_", A, B), B, C)),
        ("a == b && c", call("_&&_", call("_==_", A, B), C)),
        ("a < b == c", call("_==_", call("_<_", A, B), C)),
        ("a in b", call("@in", A, B)),
        ("a + b * c", call("_+_", A, call("_*_", B, C))),
        ("!a && b", call("_&&_", call("!_", A), B)),
        ("!!a", call("!_", call("!_", A))),
        ("-a", call("-_", A)),
        ("-5", Literal("int", -5)),
        ("- -5", call("-_", call("-_", Literal("int", 5)))),
        ("-9223372036854775808", Literal("int", -(2**63))),
        ("a.b.c", Select(Select(A, "b"), "c")),
        ('a["b"]', call("_[_]", A, Literal("string", "b"))),
        ("a.f(b, c)", call("f", B, C, target=A)),
        ("f(a)", call("f", A)),
        ("has(a.b)", Select(A, "b", test_only=True)),
        ("[a, b,]", ListLit((A, B))),
        ('{"k": a}', MapLit(((Literal("string", "k"), A),))),
        ("(a)", A),
        ("a // a comment\n && b", call("_&&_", A, B)),
        ("true", Literal("bool", True)),
        ("null", Literal("null", None)),
        ("1u", Literal("uint", 1)),
        ("0x1F", Literal("int", 31)),
        ("1.5e3", Literal("double", 1500.0)),
        (".5", Literal("double", 0.5)),
    ],
)
def test_precedence_and_forms(text: str, tree: object) -> None:
    assert parse(text) == tree


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (r'"a\nb"', "a\nb"),
        (r"'it\'s'", "it's"),
        (r'"\u00e9\x41\101\U0001F600"', "éAA\U0001f600"),
        (r'"\a\b\f\r\t\v\\\?\"\`"', '\a\b\f\r\t\v\\?"`'),
        (r'r"\n\d"', r"\n\d"),
        ('"""two\nlines"""', "two\nlines"),
        ("'''it's'''", "it's"),
        ('"é"', "é"),
        ('""', ""),
    ],
)
def test_string_literals(text: str, value: str) -> None:
    assert parse(text) == Literal("string", value)


@pytest.mark.parametrize(
    "text",
    ["", "a ||", "(a", "a b", "has(a)", "has(f(a))", "in", "if", '"abc', "'a\nb'", "1abc", "a[1,]",
     "9223372036854775808", "18446744073709551616u", r'"\q"', r'"\u12"', r'"\ud800"', ".a", "a.", "a ? b", "a..b",
     "(" * 300 + "a" + ")" * 300],
)  # fmt: skip
def test_refused(text: str) -> None:
    with pytest.raises(CelSyntaxError):
        parse(text)
