"""A job's ``strategy:`` expanded into its matrix cells, by GitHub's rules.

GitHub's documentation ("Running variations of jobs in a workflow") fixes them:

1. the product of the matrix's vectors (its keys other than ``include`` and
   ``exclude``), the first key varying slowest;
2. ``exclude``: a cell goes when it matches every key of an entry (a partial
   match is enough);
3. ``include``: each entry's values are added to every cell whose original
   (product) values it does not contradict, possibly overwriting values an
   earlier entry added; an entry that fits no cell becomes a cell of its own.

A matrix of only ``include`` is its entries. ``${{ }}`` anywhere in the
strategy is evaluated first, so ``matrix: ${{ fromJSON(...) }}`` and
``os: ${{ fromJSON(inputs.oses) }}`` work. At most 256 cells, as on GitHub.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ci_runner.errors import UsageError
from ci_runner.workflows.expressions import ExpressionError, interpolate, is_truthy, to_string

__all__ = ["MAX_CELLS", "MatrixError", "Strategy", "cell_label", "expand"]

MAX_CELLS = 256
# A product this large is refused before it is built, whatever exclude would remove.
_MAX_PRODUCT = 64 * MAX_CELLS


class MatrixError(UsageError, ValueError):
    """A strategy that cannot be expanded; the message is one line."""


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


def _same(a: Any, b: Any) -> bool:
    """JSON equality: ``True`` is not ``1`` here."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (Mapping, list, tuple)) or isinstance(b, (Mapping, list, tuple)):
        return False
    if _number(a) and _number(b):
        return bool(a == b)
    return type(a) is type(b) and bool(a == b)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _partial(entry: Any, value: Any) -> bool:
    """Whether ``value`` matches ``entry``, an object entry matching on its keys only."""
    if isinstance(entry, Mapping) and isinstance(value, Mapping):
        return all(k in value and _partial(v, value[k]) for k, v in entry.items())
    return _same(entry, value)


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

    product = 1
    for values in vectors.values():
        product *= len(values)
    if product > _MAX_PRODUCT:
        raise MatrixError(
            f"the matrix's vectors make {product} combinations; GitHub allows {MAX_CELLS} jobs"
        )
    cells: list[dict[str, Any]] = [{}] if vectors else []
    for key, values in vectors.items():
        cells = [{**cell, key: value} for cell in cells for value in values]

    for n, entry in enumerate(exclude):
        for key in entry:
            if key not in vectors:
                raise MatrixError(
                    f"Matrix exclude key '{key}' does not match any key within the matrix "
                    f"(strategy.matrix.exclude[{n}])"
                )
        cells = [c for c in cells if not all(_partial(v, c[k]) for k, v in entry.items())]
    if vectors and not cells and not include:
        raise MatrixError("the matrix has no cells left after exclude")

    originals = len(cells)
    for entry in include:
        fitted = False
        for cell in cells[:originals]:
            if all(_same(cell[k], v) for k, v in entry.items() if k in vectors):
                cell.update(entry)
                fitted = True
        if not fitted:
            cells.append(dict(entry))
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
    """A cell as GitHub shows it in a job's name: ``test (3.11, ubuntu-latest)``."""
    return ", ".join(part for value in cell.values() for part in _label_parts(value))
