"""A job's ``strategy:`` expanded into its matrix cells, by GitHub's rules.

The rules of GitHub's documentation ("Running variations of jobs in a workflow")
as its workflow parser applies them:

1. the product of the matrix's vectors (its keys other than ``include`` and
   ``exclude``), the first key varying slowest;
2. ``exclude``: a cell goes when it matches an entry, and an entry matches when
   every value in it (nested mappings and lists compared leaf by leaf) equals the
   cell's value there by the expression language's ``==`` (``'Ubuntu' == 'ubuntu'``,
   ``1 == '1'``); keys must be vectors;
3. ``include``: an entry's keys that are vectors filter, the others are extra
   values. A cell every filter matches gets the extras (an entry later in the list
   overwrites what an earlier one added; a vector's own value is never replaced);
   an entry that matches no cell becomes a cell of its own.

A matrix of only ``include`` is its entries. ``${{ }}`` anywhere in the
strategy is evaluated first, so ``matrix: ${{ fromJSON(...) }}`` and
``os: ${{ fromJSON(inputs.oses) }}`` work. At most 256 cells, as on GitHub.
A cell's job name shows its vector values (``test (3.11, ubuntu-latest)``), not
what ``include`` added to it; a cell that came from ``include`` shows all.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ci_runner.errors import UsageError
from ci_runner.workflows.expressions import (
    ExpressionError,
    interpolate,
    is_truthy,
    loose_equals,
    to_string,
)

__all__ = ["MAX_CELLS", "Cell", "MatrixError", "Strategy", "cell_label", "expand"]

MAX_CELLS = 256
# A product this large is refused before it is built, whatever exclude would remove.
_MAX_PRODUCT = 64 * MAX_CELLS


class MatrixError(UsageError, ValueError):
    """A strategy that cannot be expanded; the message is one line."""


class Cell(dict[str, Any]):
    """One cell's ``matrix`` context; ``shown`` are the keys its job name shows."""

    shown: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Strategy:
    cells: list[dict[str, Any]]  # [] means "no matrix": the job runs once with matrix = {}
    fail_fast: bool = True
    max_parallel: int | None = None


def _resolve(value: Any, contexts: Mapping[str, Any]) -> Any:
    """``value`` with every string holding ``${{ }}`` evaluated (once, not again)."""
    if isinstance(value, str):
        if "${{" not in value:
            return value
        try:
            return interpolate(value, contexts)
        except ExpressionError as e:
            raise MatrixError(f"strategy: {e}") from None
    if isinstance(value, Mapping):
        return {str(k): _resolve(v, contexts) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_resolve(v, contexts) for v in value]
    return value


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _leaves(
    value: Any, path: tuple[str | int, ...] = ()
) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    """Every scalar in a filter value with where it sits (keys and list positions)."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _leaves(v, (*path, str(k)))
    elif isinstance(value, (list, tuple)):
        for n, v in enumerate(value):
            yield from _leaves(v, (*path, n))
    else:
        yield path, value


def _at(value: Any, path: tuple[str | int, ...]) -> Any:
    for step in path:
        if isinstance(step, int):
            value = value[step] if isinstance(value, (list, tuple)) and step < len(value) else None
        elif isinstance(value, Mapping):
            value = _get(value, step)
        else:
            value = None
    return value


def _get(mapping: Mapping[str, Any], key: str) -> Any:
    if key in mapping:
        return mapping[key]
    lower = key.lower()
    return next((v for k, v in mapping.items() if k.lower() == lower), None)


@dataclass(frozen=True)
class _Filter:
    leaves: tuple[tuple[tuple[str | int, ...], Any], ...]

    def matches(self, cell: Mapping[str, Any]) -> bool:
        return all(loose_equals(_at(cell, path), value) for path, value in self.leaves)


def _entries(value: Any, key: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise MatrixError(f"strategy.matrix.{key} must be a list of mappings, not {_what(value)}")
    for n, entry in enumerate(value):
        if not isinstance(entry, Mapping):
            raise MatrixError(f"strategy.matrix.{key}[{n}] must be a mapping, not {_what(entry)}")
    return [dict(entry) for entry in value]


def _what(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return f"the string {value!r}"
    if _number(value):
        return "a number"
    if isinstance(value, Mapping):
        return "a mapping"
    return "a list"


def _cells(matrix: Mapping[str, Any]) -> list[dict[str, Any]]:
    vectors: dict[str, list[Any]] = {}
    for key, values in matrix.items():
        if key in ("include", "exclude"):
            continue
        if not isinstance(values, list):
            raise MatrixError(
                f"strategy.matrix.{key} must be a list of values, not {_what(values)}"
            )
        if not values:
            raise MatrixError(f"Matrix vector '{key}' does not contain any values")
        vectors[key] = values
    include = _entries(matrix.get("include"), "include")
    exclude = _entries(matrix.get("exclude"), "exclude")
    if not vectors and not include:
        raise MatrixError("Matrix must define at least one vector (a key with a list of values)")
    is_vector = {k.lower() for k in vectors}

    excludes: list[_Filter] = []
    for n, entry in enumerate(exclude):
        if not entry:
            raise MatrixError(
                f"Matrix exclude filter must not be empty (strategy.matrix.exclude[{n}])"
            )
        for key in entry:
            if key.lower() not in is_vector:
                raise MatrixError(
                    f"Matrix exclude key '{key}' does not match any key within the matrix "
                    f"(strategy.matrix.exclude[{n}])"
                )
        excludes.append(_Filter(tuple(_leaves(entry))))

    includes: list[tuple[dict[str, Any], _Filter, dict[str, Any]]] = []
    for n, entry in enumerate(include):
        if not entry:
            raise MatrixError(
                f"Matrix include mapping does not contain any values (strategy.matrix.include[{n}])"
            )
        part = {k: v for k, v in entry.items() if k.lower() in is_vector}
        extra = {k: v for k, v in entry.items() if k.lower() not in is_vector}
        includes.append((part, _Filter(tuple(_leaves(part))), extra))

    product = 1
    for values in vectors.values():
        product *= len(values)
    if product > _MAX_PRODUCT:
        raise MatrixError(
            f"the matrix's vectors make {product} combinations; GitHub allows {MAX_CELLS} jobs"
        )
    combinations: list[dict[str, Any]] = [{}] if vectors else []
    for key, values in vectors.items():
        combinations = [{**c, key: value} for c in combinations for value in values]

    cells: list[dict[str, Any]] = []
    used = [False] * len(includes)
    for combination in combinations:
        if any(f.matches(combination) for f in excludes):
            continue
        cell = Cell(combination)
        cell.shown = tuple(combination)
        for n, (_, flt, extra) in enumerate(includes):
            if flt.matches(combination):
                used[n] = True
                cell.update(extra)
        cells.append(cell)
    if vectors and not cells and not include:
        raise MatrixError("the matrix has no cells left after exclude")
    for n, (part, _, extra) in enumerate(includes):
        if not used[n]:
            cells.append(Cell({**part, **extra}))
    if len(cells) > MAX_CELLS:
        raise MatrixError(f"the matrix has {len(cells)} cells; GitHub allows at most {MAX_CELLS}")
    return cells


def _flag(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if value is None or _number(value):
        return is_truthy(value)
    raise MatrixError(f"strategy.{key} must be true or false, not {_what(value)}")


def _limit(value: Any) -> int | None:
    if value is None:
        return None
    number = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if not _number(number) or number != int(number) or number < 1:
        raise MatrixError(
            f"strategy.max-parallel must be a whole number of at least 1, not {_what(value)}"
        )
    return int(number)


def expand(strategy: Mapping[str, Any] | None, contexts: Mapping[str, Any]) -> Strategy:
    """A job's ``strategy:`` (``None`` when it has none) as its cells and limits.

    ``contexts`` are what ``${{ }}`` in the strategy may use (``github``,
    ``inputs``, ``vars``, ``needs``). Errors are ``MatrixError``, one line.
    """
    try:
        return _expand(strategy, contexts)
    except RecursionError:
        raise MatrixError("strategy: a value is nested too deeply") from None


def _expand(strategy: Mapping[str, Any] | None, contexts: Mapping[str, Any]) -> Strategy:
    if strategy is None:
        return Strategy(cells=[])
    resolved = _resolve(strategy, contexts)
    if not isinstance(resolved, Mapping):
        raise MatrixError(f"strategy must be a mapping, not {_what(resolved)}")
    unknown = sorted(set(resolved) - {"matrix", "fail-fast", "max-parallel"})
    if unknown:
        raise MatrixError(
            f"strategy has an unknown key '{unknown[0]}' (known: matrix, fail-fast, max-parallel)"
        )
    matrix = resolved.get("matrix")
    if matrix is None:
        cells: list[dict[str, Any]] = []
    elif isinstance(matrix, Mapping):
        cells = _cells(matrix)
    else:
        raise MatrixError(f"strategy.matrix must be a mapping, not {_what(matrix)}")
    return Strategy(
        cells=cells,
        fail_fast=_flag(resolved.get("fail-fast", True), "fail-fast"),
        max_parallel=_limit(resolved.get("max-parallel")),
    )


def _label_parts(value: Any) -> list[str]:
    if isinstance(value, Mapping):
        return [part for v in value.values() for part in _label_parts(v)]
    if isinstance(value, (list, tuple)):
        return [part for v in value for part in _label_parts(v)]
    return [to_string(value)]


def cell_label(cell: Mapping[str, Any]) -> str:
    """A cell as GitHub shows it in a job's name: ``test (3.11, ubuntu-latest)``.

    The values of the keys the cell shows (a product cell: its vectors' values,
    not what include added), nested ones flattened; nulls and "" are left out.
    """
    shown = getattr(cell, "shown", None)
    keys = list(cell) if shown is None else [k for k in shown if k in cell]
    parts = (part for k in keys for part in _label_parts(cell[k]))
    return ", ".join(part for part in parts if part)
