"""CEL conditions: checked at compile time, fail closed at evaluation, `now` in UTC."""

from __future__ import annotations

import datetime as dt

import pytest

from xds_server.core.cel import ConditionError, ConditionResult, compile_condition

UTC = dt.UTC
NOW = dt.datetime(2024, 1, 2, 13, 4, 5, tzinfo=UTC)  # a Tuesday


def variables(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {"args": {}, "agent": {"name": "triage"}, "user": {}, "tool": "create_issue", "now": NOW}
    return base | overrides


def test_true_and_false() -> None:
    cond = compile_condition('args.repo.startsWith("acme/") && agent.name == "triage"')
    assert cond.evaluate(variables(args={"repo": "acme/web"})) == ConditionResult(True, None)
    assert cond.evaluate(variables(args={"repo": "evil/web"})) == ConditionResult(False, None)


def test_missing_argument_fails_closed_and_says_why() -> None:
    result = compile_condition('args.repo.startsWith("acme/")').evaluate(variables(args={}))
    assert result == ConditionResult(False, "no such key: repo")


def test_optional_argument_can_be_tested() -> None:
    cond = compile_condition("!has(args.draft) || args.draft == false")
    assert cond.evaluate(variables(args={})).passed
    assert not cond.evaluate(variables(args={"draft": True})).passed
    assert compile_condition('"repo" in args').evaluate(variables(args={"repo": "x"})).passed


def test_non_bool_result_is_an_error() -> None:
    result = compile_condition("args.count").evaluate(variables(args={"count": 3}))
    assert not result.passed
    assert result.error == "the condition returned int 3, not a bool"


@pytest.mark.parametrize(
    ("expr", "args", "error"),
    [
        ('args.n + "1" == "2"', {"n": 1}, "No such overload: the operation is not defined for the given operand types"),
        ("args.items[3] == 1", {"items": []}, "index out of bounds: 3"),
        ("1 / args.n == 1", {"n": 0}, "division by zero in CEL expression"),
    ],
)
def test_evaluation_errors_are_short(expr: str, args: dict[str, object], error: str) -> None:
    assert compile_condition(expr).evaluate(variables(args=args)) == ConditionResult(False, error)


def test_user_and_tool_and_comprehension() -> None:
    cond = compile_condition('tool == "merge_pr" && user.groups.exists(g, g == "maintainers")')
    assert cond.evaluate(variables(tool="merge_pr", user={"groups": ["dev", "maintainers"]})).passed
    assert not cond.evaluate(variables(tool="merge_pr", user={"groups": ["dev"]})).passed
    # Unknown user: {} — reading a field is an error, so the call is refused.
    assert cond.evaluate(variables(tool="merge_pr", user={})) == ConditionResult(False, "no such key: groups")


def test_timestamp_accessors_are_utc_and_spec_numbered() -> None:
    cond = compile_condition(
        "now.getHours() == 13 && now.getMinutes() == 4 && now.getDayOfWeek() == 2"
        " && now.getMonth() == 0 && now.getDate() == 2 && now.getFullYear() == 2024"
    )
    assert cond.evaluate(variables(now=NOW)).passed
    # The same instant given with a +02:00 offset reads the same (UTC) hours,
    # and a naive datetime is taken as UTC.
    paris = NOW.astimezone(dt.timezone(dt.timedelta(hours=2)))
    assert cond.evaluate(variables(now=paris)).passed
    assert cond.evaluate(variables(now=NOW.replace(tzinfo=None))).passed


def test_timestamp_comparison_and_durations() -> None:
    cond = compile_condition(
        'now < timestamp("2024-06-01T00:00:00Z") && now - timestamp("2024-01-02T00:00:00Z") > duration("13h")'
    )
    assert cond.evaluate(variables(now=NOW)).passed
    assert not cond.evaluate(variables(now=NOW - dt.timedelta(hours=1))).passed


def test_time_zone_accessor_is_unsupported_and_fails_closed() -> None:
    result = compile_condition('now.getHours("Europe/Paris") > 8').evaluate(variables())
    assert not result.passed and result.error is not None and "getHours" in result.error


@pytest.mark.parametrize(
    ("expr", "message", "line", "column"),
    [
        ("args.repo ==", "line 1, column 13: syntax error: unexpected end of expression", 1, 13),
        ('args.repo == "a" && )', "line 1, column 21: syntax error: unexpected ')'", 1, 21),
        ("args.a == 1 &&\n  foo(", "line 2, column 7: syntax error: unexpected end of expression", 2, 7),
        ("99999999999999999999 > 1", "line 1, column 1: invalid int literal", 1, 1),
        (
            'args.a == "x',
            "line 1, column 11: syntax error: cannot read '\"x' (an unterminated string or a stray character?)",
            1,
            11,
        ),
    ],
)
def test_syntax_errors_are_short_and_located(expr: str, message: str, line: int, column: int) -> None:
    with pytest.raises(ConditionError) as err:
        compile_condition(expr)
    assert str(err.value) == message
    assert (err.value.line, err.value.column) == (line, column)


def test_unknown_variables_are_rejected_with_their_place() -> None:
    with pytest.raises(ConditionError) as err:
        compile_condition('args.repo == "a" &&\n  request.path == "/"')
    assert str(err.value) == (
        "line 2, column 3: unknown variable 'request' (a condition can use args, agent, user, tool, now)"
    )
    # A name inside a string does not count as a use, nor does a macro's bound name.
    with pytest.raises(ConditionError, match="line 1, column 21: unknown variable 'x'"):
        compile_condition('"x.exists(x, 1)" == x || x')
    compile_condition('args.labels.all(l, l != "wontfix") && args.n.map(i, i * 2) == [2]')


@pytest.mark.parametrize("expr", ["", "   ", "\n"])
def test_empty_condition_is_rejected(expr: str) -> None:
    with pytest.raises(ConditionError, match="the condition is empty"):
        compile_condition(expr)


def test_compiles_are_cached_by_source() -> None:
    assert compile_condition('tool == "a"') is compile_condition('tool == "a"')
