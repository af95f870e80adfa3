"""Matrix expansion against the examples of GitHub's documentation, with their
documented results ("Running variations of jobs in a workflow", the reusables
under github/docs data/reusables/actions/jobs/matrix-*.md), and its errors."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from ci_runner.workflows.expressions import loose_equals
from ci_runner.workflows.matrix import MatrixError, Strategy, cell_label, expand


def _strategy(text: str, contexts: dict[str, Any] | None = None) -> Strategy:
    return expand(yaml.safe_load(text), contexts or {})


def test_no_strategy_means_one_run_without_matrix() -> None:
    assert expand(None, {}) == Strategy(cells=[], fail_fast=True, max_parallel=None)
    assert expand({"fail-fast": False}, {}) == Strategy(
        cells=[], fail_fast=False, max_parallel=None
    )


def test_product_order_first_key_slowest() -> None:
    # docs: "the above matrix will create the jobs in the following order"
    s = _strategy("""
matrix:
  version: [10, 12, 14]
  os: [ubuntu-latest, windows-latest]
""")
    assert s.cells == [
        {"version": 10, "os": "ubuntu-latest"},
        {"version": 10, "os": "windows-latest"},
        {"version": 12, "os": "ubuntu-latest"},
        {"version": 12, "os": "windows-latest"},
        {"version": 14, "os": "ubuntu-latest"},
        {"version": 14, "os": "windows-latest"},
    ]
    assert s.fail_fast is True
    assert s.max_parallel is None


def test_single_dimension() -> None:
    s = _strategy("matrix: {version: [10, 12, 14]}")
    assert s.cells == [{"version": 10}, {"version": 12}, {"version": 14}]


def test_vector_of_objects() -> None:
    # docs: "A variable configuration in a matrix can be an array of objects" -> 4 jobs
    s = _strategy("""
matrix:
  os:
    - ubuntu-latest
    - macos-latest
  node:
    - version: 14
    - version: 20
      env: NODE_OPTIONS=--openssl-legacy-provider
""")
    assert s.cells == [
        {"os": "ubuntu-latest", "node": {"version": 14}},
        {
            "os": "ubuntu-latest",
            "node": {"version": 20, "env": "NODE_OPTIONS=--openssl-legacy-provider"},
        },
        {"os": "macos-latest", "node": {"version": 14}},
        {
            "os": "macos-latest",
            "node": {"version": 20, "env": "NODE_OPTIONS=--openssl-legacy-provider"},
        },
    ]


def test_include_expands_and_adds_documented_six_cells() -> None:
    s = _strategy("""
matrix:
  fruit: [apple, pear]
  animal: [cat, dog]
  include:
    - color: green
    - color: pink
      animal: cat
    - fruit: apple
      shape: circle
    - fruit: banana
    - fruit: banana
      animal: cat
""")
    assert s.cells == [
        {"fruit": "apple", "animal": "cat", "color": "pink", "shape": "circle"},
        {"fruit": "apple", "animal": "dog", "color": "green", "shape": "circle"},
        {"fruit": "pear", "animal": "cat", "color": "pink"},
        {"fruit": "pear", "animal": "dog", "color": "green"},
        {"fruit": "banana"},
        {"fruit": "banana", "animal": "cat"},
    ]


def test_include_extends_one_cell() -> None:
    # docs: six jobs; windows-latest + node 16 gets npm: 6
    s = _strategy("""
matrix:
  os: [windows-latest, ubuntu-latest]
  node: [12, 14, 16]
  include:
    - os: windows-latest
      node: 16
      npm: 6
""")
    assert len(s.cells) == 6
    assert [c for c in s.cells if "npm" in c] == [{"os": "windows-latest", "node": 16, "npm": 6}]


def test_include_adds_a_combination() -> None:
    # docs: "this matrix will run 10 jobs"
    s = _strategy("""
matrix:
  os: [macos-latest, windows-latest, ubuntu-latest]
  version: [12, 14, 16]
  include:
    - os: windows-latest
      version: 17
""")
    assert len(s.cells) == 10
    assert s.cells[-1] == {"os": "windows-latest", "version": 17}


def test_perl_example_seven_jobs() -> None:
    s = _strategy("""
matrix:
  os: [ubuntu-latest]
  perl: ['5.16', '5.20', '5.26', '5.30', latest]
  include:
    - os: macos-latest
      perl: '5.26'
    - os: macos-latest
      perl: latest
""")
    assert len(s.cells) == 7
    assert [cell_label(c) for c in s.cells[-2:]] == ["macos-latest, 5.26", "macos-latest, latest"]


def test_include_only() -> None:
    s = _strategy("""
matrix:
  include:
    - site: "production"
      datacenter: "site-a"
    - site: "staging"
      datacenter: "site-b"
""")
    assert s.cells == [
        {"site": "production", "datacenter": "site-a"},
        {"site": "staging", "datacenter": "site-b"},
    ]


def test_exclude_partial_match_nine_jobs() -> None:
    s = _strategy("""
matrix:
  os: [macos-latest, windows-latest]
  version: [12, 14, 16]
  environment: [staging, production]
  exclude:
    - os: macos-latest
      version: 12
      environment: production
    - os: windows-latest
      version: 16
""")
    assert len(s.cells) == 9
    assert {"os": "macos-latest", "version": 12, "environment": "production"} not in s.cells
    assert not [c for c in s.cells if c["os"] == "windows-latest" and c["version"] == 16]


def test_include_runs_after_exclude_and_can_add_back() -> None:
    s = _strategy("""
matrix:
  os: [a, b]
  exclude: [{os: b}]
  include: [{os: b, extra: 1}]
""")
    assert s.cells == [{"os": "a"}, {"os": "b", "extra": 1}]


def test_matrix_key_from_context() -> None:
    # docs: repository_dispatch payload versions [12, 14, 16]
    contexts = {"github": {"event": {"client_payload": {"versions": [12, 14, 16]}}}}
    s = _strategy("matrix: {version: '${{ github.event.client_payload.versions }}'}", contexts)
    assert s.cells == [{"version": 12}, {"version": 14}, {"version": 16}]


def test_matrix_key_from_json_output_of_another_job() -> None:
    # docs: "You can use the output from one job to define matrices for multiple jobs"
    contexts = {"needs": {"define-matrix": {"outputs": {"colors": '["red", "green", "blue"]'}}}}
    s = _strategy(
        "matrix: {color: '${{ fromJSON(needs.define-matrix.outputs.colors) }}'}", contexts
    )
    assert s.cells == [{"color": "red"}, {"color": "green"}, {"color": "blue"}]


def test_whole_matrix_from_json() -> None:
    matrix = '{"python": ["3.10", 3.10], "include": [{"python": "3.13", "experimental": true}]}'
    s = expand({"matrix": "${{ fromJSON(inputs.matrix) }}"}, {"inputs": {"matrix": matrix}})
    # 3.10 as a JSON number is 3.1, as on GitHub
    assert s.cells == [
        {"python": "3.10"},
        {"python": 3.1},
        {"python": "3.13", "experimental": True},
    ]


def test_fail_fast_and_max_parallel() -> None:
    s = _strategy("{fail-fast: false, max-parallel: 2, matrix: {a: [1, 2, 3]}}")
    assert (s.fail_fast, s.max_parallel) == (False, 2)
    s = expand(
        {"fail-fast": "${{ inputs.ff }}", "max-parallel": "${{ inputs.n }}"},
        {"inputs": {"ff": False, "n": 3}},
    )
    assert (s.fail_fast, s.max_parallel) == (False, 3)


def test_filters_compare_with_the_expression_languages_equality() -> None:
    # GitHub builds `matrix.key == value` expressions for include and exclude:
    # case-insensitive strings, loose coercions (true == 1, '1' == 1).
    s = _strategy("""
matrix:
  os: [Ubuntu-Latest, windows-latest]
  flag: [true, 0]
  exclude: [{os: ubuntu-latest, flag: 1}]
  include: [{os: WINDOWS-LATEST, flag: '0', extra: yes}]
""")
    assert s.cells == [
        {"os": "Ubuntu-Latest", "flag": 0},
        {"os": "windows-latest", "flag": True},
        {"os": "windows-latest", "flag": 0, "extra": True},
    ]


def test_filters_match_nested_values_leaf_by_leaf() -> None:
    s = _strategy("""
matrix:
  node:
    - {version: 14, npm: 6}
    - {version: 20, npm: 10}
  os: [linux]
  exclude: [{node: {version: 14}}]
  include: [{node: {npm: 10}, latest: true}]
""")
    assert s.cells == [{"node": {"version": 20, "npm": 10}, "os": "linux", "latest": True}]


def test_include_never_replaces_a_vector_value_but_later_extras_win() -> None:
    s = _strategy("""
matrix:
  os: [a]
  include:
    - {os: a, color: red}
    - {color: blue}
""")
    assert s.cells == [{"os": "a", "color": "blue"}]


def test_unmatched_include_puts_its_vector_keys_first() -> None:
    s = _strategy("matrix: {os: [a], include: [{extra: 1, os: b}]}")
    assert list(s.cells[1]) == ["os", "extra"]


def test_empty_filter_entries_are_errors() -> None:
    with pytest.raises(MatrixError, match="exclude filter must not be empty"):
        _strategy("matrix: {os: [a], exclude: [{}]}")
    with pytest.raises(MatrixError, match="include mapping does not contain any values"):
        _strategy("matrix: {os: [a], include: [{}]}")


def test_job_name_shows_vector_values_not_include_extras() -> None:
    s = _strategy("""
matrix:
  os: [windows-latest, ubuntu-latest]
  node: [12, 16]
  include:
    - {os: windows-latest, node: 16, npm: 6}
    - {os: macos-latest, node: 18, npm: 9}
""")
    labels = [cell_label(c) for c in s.cells]
    assert labels == [
        "windows-latest, 12",
        "windows-latest, 16",
        "ubuntu-latest, 12",
        "ubuntu-latest, 16",
        "macos-latest, 18, 9",
    ]
    assert s.cells[1] == {"os": "windows-latest", "node": 16, "npm": 6}
    # a plain copy has lost what was added: all its values show
    assert cell_label(dict(s.cells[1])) == "windows-latest, 16, 6"


def test_cell_label() -> None:
    assert cell_label({"python": "3.11", "os": "ubuntu-latest"}) == "3.11, ubuntu-latest"
    assert cell_label({"v": 3.1, "ok": True, "n": None, "e": ""}) == "3.1, true"
    assert cell_label({"node": {"version": 20, "env": "X=1"}}) == "20, X=1"
    assert cell_label({}) == ""


def test_256_cells_allowed_257_refused() -> None:
    assert len(expand({"matrix": {"a": list(range(16)), "b": list(range(16))}}, {}).cells) == 256
    with pytest.raises(MatrixError, match="at most 256"):
        expand({"matrix": {"a": list(range(16)), "b": list(range(16)), "include": [{"a": 99}]}}, {})
    with pytest.raises(MatrixError, match="allows 256 jobs"):
        expand({"matrix": {"a": list(range(1000)), "b": list(range(1000))}}, {})


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        ({"matrix": {"os": []}}, "Matrix vector 'os' does not contain any values"),
        ({"matrix": {}}, "at least one vector"),
        ({"matrix": {"os": "ubuntu"}}, "strategy.matrix.os must be a list"),
        ({"matrix": ["a"]}, "strategy.matrix must be a mapping"),
        ({"matrix": {"os": ["a"], "exclude": [{"os": "a"}]}}, "no cells left after exclude"),
        (
            {"matrix": {"os": ["a"], "exclude": [{"arch": "x"}]}},
            "exclude key 'arch' does not match",
        ),
        ({"matrix": {"os": ["a"], "include": "x"}}, "include must be a list of mappings"),
        ({"matrix": {"os": ["a"], "include": ["x"]}}, r"include\[0\] must be a mapping"),
        ({"matrix": "${{ fromJSON('[1]') }}"}, "strategy.matrix must be a mapping, not a list"),
        ({"matrix": "${{ fromJSON('{') }}"}, "Error parsing JSON when evaluating fromJson"),
        ({"matrix": "${{ nope }}"}, "Unrecognized named-value: 'nope'"),
        ({"matrix": {"a": [1]}, "max-parallel": 0}, "max-parallel must be a whole number"),
        ({"matrix": {"a": [1]}, "fail-fast": "maybe"}, "fail-fast must be true or false"),
        ({"matrix": {"a": [1]}, "parallel": 2}, "unknown key 'parallel'"),
    ],
)
def test_errors_are_one_line(strategy: dict[str, Any], message: str) -> None:
    with pytest.raises(MatrixError, match=message) as caught:
        expand(strategy, {})
    assert "\n" not in str(caught.value)


def test_deeply_nested_values_are_errors_not_crashes() -> None:
    deep: Any = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(MatrixError, match="nested too deeply"):
        expand({"matrix": {"a": [deep]}}, {})


_SCALARS = st.one_of(st.sampled_from(["a", "B", "", "1"]), st.integers(-2, 2), st.booleans())


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["os", "py", "arch"]),
        st.lists(_SCALARS, min_size=1, max_size=4),
        min_size=1,
    ),
    st.lists(st.dictionaries(st.sampled_from(["os", "py", "x"]), _SCALARS, min_size=1), max_size=3),
)
def test_expansion_properties(vectors: dict[str, list[Any]], include: list[dict[str, Any]]) -> None:
    product = 1
    for values in vectors.values():
        product *= len(values)
    s = expand({"matrix": {**vectors, "include": include}}, {})
    originals = [c for c in s.cells if getattr(c, "shown", None) is not None]
    # every combination stays, in order, with its own values untouched
    assert len(originals) == product
    for cell in originals:
        assert all(cell[k] in vectors[k] for k in vectors)
    # an include entry either fed some original cell or is a cell of its own
    for entry in include:
        assert any(all(cell.get(k) == v for k, v in entry.items()) for cell in s.cells) or any(
            all(loose_equals(cell[k], v) for k, v in entry.items() if k in vectors)
            for cell in originals
        )
