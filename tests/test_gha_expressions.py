"""The expression API a workflow translation uses: interpolate, evaluate_if,
to_string, is_truthy, the host-supplied functions and the errors. GitHub's own
cases are in test_gha_expressions_conformance.py."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ci_runner.errors import UsageError
from ci_runner.workflows.expressions import (
    ExpressionError,
    Functions,
    evaluate,
    evaluate_if,
    interpolate,
    is_truthy,
    to_string,
)

CONTEXTS: dict[str, Any] = {
    "github": {"event_name": "push", "ref": "refs/heads/main", "event": {"commits": [{"id": 1}]}},
    "matrix": {"python": "3.11", "os": "ubuntu-latest", "npm": None, "n": 3},
    "env": {"CI": "true"},
    "steps": {"build": {"outputs": {"version": "1.2.3"}, "outcome": "success"}},
    "needs": {"setup": {"outputs": {"list": '["a", "b"]'}, "result": "success"}},
}
FAILED = Functions(status="failure")
CANCELLED = Functions(status="cancelled")


# ---------------------------------------------------------------- interpolate


def test_text_without_expressions_is_unchanged() -> None:
    assert interpolate("pytest -q", CONTEXTS) == "pytest -q"
    assert interpolate("", CONTEXTS) == ""
    assert interpolate("$ {{ not one }}", CONTEXTS) == "$ {{ not one }}"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("${{ matrix.n }}", 3),
        ("  ${{ matrix.n }}\n", 3),
        ("${{ matrix }}", CONTEXTS["matrix"]),
        ("${{ fromJSON(needs.setup.outputs.list) }}", ["a", "b"]),
        ("${{ matrix.npm }}", None),
        ("${{ github.event_name == 'push' }}", True),
        ("${{ }}", None),
        ("${{ 5 }}", 5),
        ("${{ 1.5 }}", 1.5),
    ],
)
def test_one_whole_expression_keeps_its_type(text: str, value: Any) -> None:
    result = interpolate(text, CONTEXTS)
    assert result == value
    assert type(result) is type(value)


def test_a_lone_object_is_the_same_object() -> None:
    assert interpolate("${{ github.event }}", CONTEXTS) is CONTEXTS["github"]["event"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("python-${{ matrix.python }}-${{ matrix.os }}", "python-3.11-ubuntu-latest"),
        ("v=${{ steps.build.outputs.version }}", "v=1.2.3"),
        ("npm@${{ matrix.npm }}", "npm@"),
        ("${{ true }} ${{ false }} ${{ null }}.", "true false ."),
        (
            "n=${{ matrix.n }} half=${{ 0.5 }} big=${{ 1e21 }} f=${{ 3.10 }}",
            "n=3 half=0.5 big=1e+21 f=3.1",
        ),
        # GitHub's string coercion inside text: containers print their kind
        ("x=${{ github.event }} y=${{ github.event.commits }}", "x=Object y=Array"),
        ("${{ '}}' }}", "}}"),
        ("a ${{ format('{{{0}}}', 'b') }} c", "a {b} c"),
        ("${{ 'it''s' }}!", "it's!"),
        ("${{matrix.os}}${{matrix.python}}", "ubuntu-latest3.11"),
    ],
)
def test_text_with_expressions_becomes_a_string(text: str, expected: str) -> None:
    assert interpolate(text, CONTEXTS) == expected


def test_unclosed_expression_is_an_error() -> None:
    with pytest.raises(ExpressionError, match="not closed"):
        interpolate("echo ${{ matrix.os", CONTEXTS)
    with pytest.raises(ExpressionError, match="not closed"):
        interpolate("echo ${{ '}}", CONTEXTS)


def test_error_inside_text_names_the_expression() -> None:
    with pytest.raises(ExpressionError) as caught:
        interpolate("run ${{ matrix.os == }} now", CONTEXTS)
    assert str(caught.value) == (
        "Unexpected end of expression: '=='. Located at position 11 within expression: matrix.os =="
    )


# ---------------------------------------------------------------- evaluate_if


@pytest.mark.parametrize(
    ("cond", "success", "failure", "cancelled"),
    [
        (None, True, False, False),
        ("", True, False, False),
        ("   ", True, False, False),
        (True, True, False, False),
        (False, False, False, False),
        ("github.event_name == 'push'", True, False, False),
        ("github.event_name == 'pull_request'", False, False, False),
        ("${{ github.event_name == 'push' }}", True, False, False),
        ("  ${{ github.event_name == 'push' }}  ", True, False, False),
        ("always()", True, True, True),
        ("${{ always() }}", True, True, True),
        ("success()", True, False, False),
        ("failure()", False, True, False),
        ("cancelled()", False, False, True),
        ("!cancelled()", True, True, False),
        ("success() || failure()", True, True, False),
        ("always() && github.event_name == 'push'", True, True, True),
        ("failure() && steps.build.outcome == 'failure'", False, False, False),
        ("contains(format('{0}', failure()), 'true')", False, True, False),
        ("matrix.npm", False, False, False),
        ("${{ matrix.python }}", True, False, False),
        ("needs.setup.result == 'success'", True, False, False),
        # GitHub's known trap: once substituted this is the string "false && true"
        ("${{ false }} && true", True, False, False),
    ],
)
def test_evaluate_if(cond: Any, success: bool, failure: bool, cancelled: bool) -> None:
    assert evaluate_if(cond, CONTEXTS) is success
    assert evaluate_if(cond, CONTEXTS, FAILED) is failure
    assert evaluate_if(cond, CONTEXTS, CANCELLED) is cancelled


def test_evaluate_if_errors() -> None:
    with pytest.raises(ExpressionError, match="Unrecognized named-value: 'secret'"):
        evaluate_if("secret.x", CONTEXTS)
    with pytest.raises(ExpressionError, match="Unrecognized function: 'sucess'"):
        evaluate_if("sucess()", CONTEXTS)


# ---------------------------------------------------------------- to_string, is_truthy


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, ""),
        (True, "true"),
        (False, "false"),
        ("text", "text"),
        (0, "0"),
        (-0.0, "0"),
        (5, "5"),
        (5.0, "5"),
        (3.10, "3.1"),
        (-2.5, "-2.5"),
        (0.1 + 0.2, "0.3"),
        (1e21, "1e+21"),
        (123456789012345680000.0, "123456789012345680000"),
        (1e-7, "1e-7"),
        (0.000001, "0.000001"),
        (2**53, "9007199254740992"),
        (math.nan, "NaN"),
        (math.inf, "Infinity"),
        (-math.inf, "-Infinity"),
        ([], "[]"),
        ({}, "{}"),
        ({"a": [1, "x", None]}, '{\n  "a": [\n    1,\n    "x",\n    null\n  ]\n}'),
    ],
)
def test_to_string(value: Any, text: str) -> None:
    assert to_string(value) == text


@pytest.mark.parametrize(
    ("value", "truthy"),
    [
        (None, False),
        (False, False),
        (True, True),
        (0, False),
        (0.0, False),
        (math.nan, False),
        (-1, True),
        ("", False),
        ("false", True),
        ("0", True),
        ([], True),
        ({}, True),
    ],
)
def test_is_truthy(value: Any, truthy: bool) -> None:
    assert is_truthy(value) is truthy


# ---------------------------------------------------------------- evaluate


def test_contexts_and_properties_are_case_insensitive() -> None:
    assert evaluate("GitHub.Event_Name", CONTEXTS) == "push"
    assert evaluate("STEPS.build.OUTPUTS.version", CONTEXTS) == "1.2.3"
    assert evaluate("steps['build'].outputs['VERSION']", CONTEXTS) == "1.2.3"


def test_missing_property_is_null_but_unknown_context_is_an_error() -> None:
    assert evaluate("steps.nope.outputs.x", CONTEXTS) is None
    assert evaluate("github.event.commits[5].id", CONTEXTS) is None
    with pytest.raises(ExpressionError, match="Unrecognized named-value: 'vars'"):
        evaluate("vars.X", CONTEXTS)


def test_object_filter() -> None:
    assert evaluate("github.event.commits.*.id", CONTEXTS) == [1]
    assert evaluate("toJSON(needs.*.result)", CONTEXTS) == '[\n  "success"\n]'
    assert evaluate("contains(needs.*.result, 'failure')", CONTEXTS) is False
    result = evaluate("github.event.commits.*", CONTEXTS)
    assert type(result) is list


def test_and_or_return_operands() -> None:
    assert evaluate("matrix.npm || 'default'", CONTEXTS) == "default"
    assert evaluate("matrix.os && matrix.python", CONTEXTS) == "3.11"
    assert evaluate("github.event_name == 'push' && 'deploy' || 'skip'", CONTEXTS) == "deploy"


def test_status_functions_follow_the_host() -> None:
    assert evaluate("success()", CONTEXTS) is True
    assert evaluate("failure()", CONTEXTS, FAILED) is True
    assert evaluate("cancelled()", CONTEXTS, CANCELLED) is True
    assert evaluate("success()", CONTEXTS, CANCELLED) is False
    assert evaluate("ALWAYS()", CONTEXTS, CANCELLED) is True


def test_hash_files_is_supplied_by_the_host() -> None:
    seen: list[list[str]] = []

    def fake(patterns: Any) -> str:
        seen.append(list(patterns))
        return "abc"

    assert evaluate("hashFiles('**/*.lock', 1, null)", {}, Functions(hash_files=fake)) == "abc"
    assert seen == [["**/*.lock", "1", ""]]


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        (
            "nope()",
            "Unrecognized function: 'nope'. Located at position 1 within expression: nope()",
        ),
        ("contains('a')", "Too few parameters supplied: 'contains'. Located at position 1"),
        ("success(1)", "Too many parameters supplied: 'success'"),
        ("1 +", "Unexpected symbol: '+'. Located at position 3 within expression: 1 +"),
        ("matrix.os ==", "Unexpected end of expression: '=='"),
        ("matrix.os = 'a'", "Unexpected symbol: '='. Located at position 11"),
        ("(matrix.os", "Unexpected end of expression: 'os'"),
        ("inputs.x", "Unrecognized named-value: 'inputs'. Located at position 1 within expression"),
        ("fromJSON('{')", "Error parsing JSON when evaluating fromJson"),
        ("fromJSON('')", "empty input"),
        ("fromJSON('NaN')", "(not JSON: NaN is not JSON)"),
        ("format('{0}')", "references more arguments than were supplied"),
        ("x" * 21001, "Exceeded max expression length 21000"),
        ("'a\nb' == 1 +", "Located at position 12 within expression: 'a b' == 1 +"),
    ],
)
def test_errors_are_one_line_and_say_what(expr: str, message: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        evaluate(expr, CONTEXTS)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, UsageError)
    assert isinstance(caught.value, ValueError)


def test_memory_limit_stops_a_string_bomb() -> None:
    bomb = "format('{0}{0}{0}{0}{0}{0}{0}{0}', format('{0}{0}{0}{0}{0}{0}{0}{0}', x))"
    assert len(evaluate(bomb, {"x": "y" * 1000})) == 64_000
    with pytest.raises(ExpressionError, match="maximum allowed memory"):
        evaluate(f"join(fromJSON('[]'), {bomb})", {"x": "y" * 9000})


def test_deep_json_is_an_error_not_a_crash() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(ExpressionError):
        evaluate("fromJSON(x)", {"x": deep})


# ---------------------------------------------------------------- properties

_TOKENS = st.sampled_from(
    [
        "github", "matrix", ".", "*", "[", "]", "(", ")", ",", "!", "==", "!=", "<", "<=", ">",
        ">=", "&&", "||", "'a'", "''", "1", "-0.5", "0x1f", "NaN", "null", "true", "contains",
        "format", "fromJSON", "toJSON", "join", "startsWith", "case", "success", "hashFiles",
        "'{0}'", "'[1,{}]'", " ",
    ]
)  # fmt: skip


def _json_like(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, list):
        return all(_json_like(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_like(v) for k, v in value.items())
    return False


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=60))
def test_any_text_parses_or_fails_cleanly(text: str) -> None:
    try:
        value = evaluate(text, CONTEXTS)
    except ExpressionError as e:
        assert "\n" not in str(e)
    else:
        assert _json_like(value)


@settings(max_examples=400, deadline=None)
@given(st.lists(_TOKENS, max_size=25).map("".join))
def test_token_soup_parses_or_fails_cleanly(text: str) -> None:
    try:
        value = evaluate(text, CONTEXTS)
    except ExpressionError as e:
        assert "\n" not in str(e)
    else:
        assert _json_like(value)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40).filter(lambda s: "${{" not in s))
def test_text_without_markers_passes_through(text: str) -> None:
    assert interpolate(text, CONTEXTS) == text


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-(2**53), max_value=2**53))
def test_whole_numbers_print_plainly(n: int) -> None:
    assert to_string(n) == str(n)
    assert evaluate(str(n), {}) == n


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30))
def test_string_literals_round_trip(text: str) -> None:
    literal = "'" + text.replace("'", "''") + "'"
    assert evaluate(literal, {}) == text
    assert interpolate("${{ " + literal + " }}", {}) == text


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["${{", "}}", "'", " ", "matrix.os", "x", "(", "1"]), max_size=12))
def test_interpolate_gives_a_value_or_an_expression_error(parts: list[str]) -> None:
    try:
        interpolate("".join(parts), CONTEXTS)
    except ExpressionError as e:
        assert "\n" not in str(e)


def test_deeply_nested_values_are_errors_not_crashes() -> None:
    deep: Any = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(ExpressionError, match="nested too deeply"):
        to_string(deep)
    with pytest.raises(ExpressionError, match="nested too deeply"):
        evaluate("toJSON(x)", {"x": deep})


def test_values_that_are_not_text_pass_through() -> None:
    assert interpolate(10, CONTEXTS) == 10  # type: ignore[arg-type]
    assert interpolate(None, CONTEXTS) is None  # type: ignore[arg-type]


def test_public_names_are_pinned() -> None:
    from ci_runner.workflows import expressions, hashfiles, matrix

    assert sorted(expressions.__all__) == [
        "ExpressionError",
        "Functions",
        "Status",
        "evaluate",
        "evaluate_if",
        "interpolate",
        "is_truthy",
        "loose_equals",
        "to_string",
    ]
    assert sorted(matrix.__all__) == [
        "Cell",
        "MAX_CELLS",
        "MatrixError",
        "Strategy",
        "cell_label",
        "expand",
    ]
    assert sorted(hashfiles.__all__) == ["FOLLOW_OPTION", "hash_files"]
    assert issubclass(matrix.MatrixError, UsageError)


def test_doubled_quotes_all_unescape() -> None:
    # GitHub's runner (C#) replaces every '' in a string literal; the TypeScript
    # package replaces only the first, which we do not copy.
    assert evaluate("'a''b''c'", {}) == "a'b'c"
    assert evaluate("''''''", {}) == "''"


def test_other_python_values_in_contexts_act_as_strings() -> None:
    from pathlib import PurePosixPath

    ctx = {"runner": {"temp": PurePosixPath("/tmp/x")}}
    assert evaluate("runner.temp == '/TMP/X'", ctx) is True
    assert evaluate("contains(runner.temp, 'tmp')", ctx) is True
    assert interpolate("cd ${{ runner.temp }}", ctx) == "cd /tmp/x"
    assert evaluate("github.run_id", {"github": {"run_id": 2**40 + 1}}) == 2**40 + 1
    assert interpolate("id=${{ github.run_id }}", {"github": {"run_id": 2**40 + 1}}) == (
        f"id={2**40 + 1}"
    )
