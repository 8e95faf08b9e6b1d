"""Which conditions Envoy evaluates itself (core/cel_native.py), and how they read in Envoy (translate/cel.py).

Whether the native answer equals the policy service's is proven through
the real Envoy by tests/e2e/test_native_conditions.py; here, the subset's
borders and the shape of what Envoy gets.
"""

from __future__ import annotations

import pytest

from xds_server.core.cel_native import NotNative, check_portable_regex, native_condition
from xds_server.core.cel_syntax import Ident, Literal
from xds_server.translate import cel


@pytest.mark.parametrize(
    ("condition", "arguments", "user", "agent"),
    [
        ('args.repo.startsWith("acme/") && now.getHours() < 18', ("repo",), False, False),
        ('args["repo"] in ["a", "b"] || args.n > 5', ("n", "repo"), False, False),
        ('args.a.b == "x"', ("a",), False, False),
        ('"admin" in user.groups && user.sub == "alice"', (), True, False),
        ("!has(user.sub)", (), True, False),
        ('agent.name != "bob" && tool.endsWith("_issue")', (), False, True),
        ('now < timestamp("2030-01-01T00:00:00+02:00")', (), False, False),
        ('args.title.matches("^[A-Za-z0-9 ]{1,8}$")', ("title",), False, False),
        ("args.n == -9007199254740991", ("n",), False, False),
        ("true", (), False, False),
    ],
)
def test_native(condition: str, arguments: tuple[str, ...], user: bool, agent: bool) -> None:
    native = native_condition(condition)
    assert (native.arguments, native.reads_user, native.reads_agent) == (arguments, user, agent)


@pytest.mark.parametrize(
    ("condition", "why"),
    [
        ("has(args.repo)", "has() is native only over user claims"),
        ('"repo" in args', "'x in y' is native"),
        ('args.repo != "x"', "!= is native only over"),
        ('!args.repo.startsWith("x")', "'!' is native only over"),
        ("!has(user.a.b)", "'!' is native only over"),
        ("args.n == 9007199254740993", "== is native between"),
        ("args.n > 1.0e300", "ordering is native against number literals"),
        ('args.repo.matches("\\\\d+")', "the regex escape \\d"),
        ('args.repo.matches("(?i)acme")', "regex flags"),
        ('args.repo.startsWith("a") ? true : false', "a ternary"),
        ("size(args.repo) < 5", "size() is not a value"),
        ("args.repo.size() < 5", "size() is not a value"),
        ("args.tags.exists(t, t == 'x')", "the method exists()"),
        ('"x" in args.tags', "'x in y' is native"),
        ('args["a.b"] == "x"', "cannot be extracted"),
        ("now.getHours('Europe/Paris') < 18", "not a value Envoy can see"),
        ('now < timestamp("tomorrow")', "timestamp"),
        ("1 + 1 == 2", "'+' is not a value Envoy can see"),
        ("args.repo", "not a condition Envoy can evaluate"),
        ("(" * 70 + "true" + ")" * 70, "does not read it"),
    ],
)
def test_not_native(condition: str, why: str) -> None:
    with pytest.raises(NotNative) as refused:
        native_condition(condition)
    assert why in str(refused.value)


@pytest.mark.parametrize(
    "pattern", ["^acme/[a-z0-9-]+$", "a|b", "(?:ab)+c*d?e{2,5}", r"\.\$\(", "[^/]+", "é.", "[a\\]]"]
)
def test_portable_regexes(pattern: str) -> None:
    check_portable_regex(pattern)


@pytest.mark.parametrize("pattern", [r"\d", r"\w+", r"\bx", "(?i)x", "[[:alpha:]]", "(a", "a)", "x{2000}", "a{", r"\p{L}",
                                     "[a&&b]", "\\",
                                     r"\<a", r"a\>", r"[\<]", r"\_",  # word boundaries in Rust, literals (or refused) in RE2
                                     "x**", "x{2}{3}",  # Rust reads them, RE2 refuses them
                                     "^[A-Za-z0-9 ]{1,80}$"])  # fmt: skip  # RE2 program over Envoy's CEL limit
def test_unportable_regexes(pattern: str) -> None:
    with pytest.raises(NotNative):
        check_portable_regex(pattern)


def test_a_regex_too_large_for_envoys_cel_says_so() -> None:
    with pytest.raises(NotNative, match="RE2 program size 321, at most 100"):
        check_portable_regex("^[A-Za-z0-9 ]{1,80}$")


def _find(tree: dict, key: str) -> list[dict]:  # type: ignore[type-arg]
    out = []
    if isinstance(tree, dict):
        if key in tree:
            out.append(tree[key])
        for value in tree.values():
            out += _find(value, key)
    elif isinstance(tree, list):
        for value in tree:
            out += _find(value, key)
    return out


def test_variables_are_bound_where_envoy_holds_them() -> None:
    bindings = cel.Bindings(Ident("ARGS"), Ident("TARGET"), cel.user_claims(["corp", "agents"]))
    native = native_condition(
        'args.repo == "x" && tool == "t" && agent.name == "a" && user.sub == "u" && now.getHours() < 1'
    )
    expr = cel.to_expr(cel.rule_condition(native, bindings, cel.agent_check(["a", "b"], every_agent=False)))
    idents = {i["name"] for i in _find(expr, "ident_expr")}
    assert idents == {"ARGS", "TARGET", "metadata", "request", "string"}  # no policy variable is left
    strings = {c["string_value"] for c in _find(expr, "const_expr") if "string_value" in c}
    assert {"envoy.filters.http.jwt_authn", "corp", "agents", "sub", cel.IDENTIFIED_AGENT_KEY, "a", "b"} <= strings
    ids = _find({"root": expr}, "id")
    assert len(ids) == len(set(ids))  # every node numbered once


def test_the_user_is_the_first_provider_with_a_string_sub() -> None:
    user = cel.user_claims(["a", "b"])
    # a ? payload(a) : (b ? payload(b) : {})
    assert user.function == "_?_:_"  # type: ignore[union-attr]
    otherwise = user.args[2]  # type: ignore[union-attr]
    assert otherwise.function == "_?_:_" and otherwise.args[2] == cel.MapLit(())  # type: ignore[union-attr]
    assert cel.user_claims([]) == cel.MapLit(())


def test_every_agent_is_a_presence_check() -> None:
    check = cel.agent_check(["x"], every_agent=True)
    assert check.function == "@in" and check.args[0] == Literal("string", cel.IDENTIFIED_AGENT_KEY)  # type: ignore[union-attr]
