"""GitHub's own cross-language test data for its expression evaluator, run through ours.

The cases are the ``expressions/testdata/*.json`` of actions/languageservices (the
source of the ``@actions/expressions`` npm package), copied unchanged into
``tests/fixtures/gha_expressions/`` (see its README.md). Every case runs: one that
expects a value must give that kind and value; one that expects an error must raise
an ``ExpressionError`` whose message contains GitHub's. A case we knowingly differ
on is listed in ``KNOWN_DIFFERENCES`` with the reason, and must still fail there
(strict xfail), so the list cannot rot.

``generated/differential.json`` adds 1,594 random expressions with the answers
GitHub's evaluator (the ``@actions/expressions`` package itself) gave for them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from ci_runner.workflows.expressions import ExpressionError, evaluate

FIXTURES = Path(__file__).parent / "fixtures" / "gha_expressions"

# case id -> why our result differs from GitHub's test data on purpose.
KNOWN_DIFFERENCES: dict[str, str] = {}


def _cases() -> list[Any]:
    params = []
    for path in sorted(FIXTURES.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        for name, cases in data.items():
            for n, case in enumerate(cases):
                case_id = f"{path.stem}:{name}:{n}"
                marks = []
                if case_id in KNOWN_DIFFERENCES:
                    marks.append(pytest.mark.xfail(reason=KNOWN_DIFFERENCES[case_id], strict=True))
                params.append(pytest.param(case, id=case_id, marks=marks))
    return params


CASES = _cases()


def _differential() -> tuple[dict[str, Any], list[Any]]:
    data = json.loads((FIXTURES / "generated" / "differential.json").read_text(encoding="utf-8"))
    params = []
    for n, case in enumerate(data["cases"]):
        case_id = f"differential:{n}"
        marks = []
        if case_id in KNOWN_DIFFERENCES:
            marks.append(pytest.mark.xfail(reason=KNOWN_DIFFERENCES[case_id], strict=True))
        params.append(pytest.param(case, id=case_id, marks=marks))
    return data["contexts"], params


DIFFERENTIAL_CONTEXTS, DIFFERENTIAL = _differential()


def _kind(value: Any) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "Boolean"
    if isinstance(value, (int, float)):
        return "Number"
    if isinstance(value, str):
        return "String"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, dict):
        return "Object"
    return type(value).__name__


def _as_json(value: Any) -> Any:
    """What JSON.stringify keeps of a value: the harness upstream compares that."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, list):
        return [_as_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_json(v) for k, v in value.items()}
    return repr(value)


def _one_line(text: str) -> str:
    # Our messages are one line: a multi-line expression is shown with its line
    # breaks as spaces.
    return text.replace("\r", " ").replace("\n", " ")


def test_all_fixture_files_are_used() -> None:
    assert len(CASES) == 1020
    assert len(DIFFERENTIAL) == 1594


def _check(
    expr: str, contexts: dict[str, Any], expected: dict[str, Any] | None, err: str | None
) -> None:
    if err is not None:
        with pytest.raises(ExpressionError) as caught:
            evaluate(expr, contexts)
        assert _one_line(err) in str(caught.value)
        assert "\n" not in str(caught.value)
        return
    assert expected is not None
    result = evaluate(expr, contexts)
    assert _kind(result) == expected["kind"]
    assert _as_json(result) == _as_json(expected["value"])


@pytest.mark.parametrize("case", CASES)
def test_conformance(case: dict[str, Any]) -> None:
    err = case["err"]["value"] if "err" in case else None
    _check(case["expr"], case.get("contexts") or {}, case.get("result"), err)


@pytest.mark.parametrize("case", DIFFERENTIAL)
def test_differential(case: dict[str, Any]) -> None:
    _check(case["expr"], DIFFERENTIAL_CONTEXTS, case.get("result"), case.get("err"))
