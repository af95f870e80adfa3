"""GitHub Actions' expression language: the text inside ``${{ }}`` and in ``if:``.

A workflow is translated into a ci-runner run, and every ``${{ }}`` in it is
evaluated here, the way GitHub's own evaluator does it (its cross-language test
data, ``tests/fixtures/gha_expressions/``, is the conformance suite): a tokenizer
and a recursive-descent parser, then a walk of the tree. No ``eval``.

Values are JSON-like Python values: ``None``, ``bool``, ``int``/``float``,
``str``, ``list`` and ``dict`` (their rules: ``expression_values.py``; the
grammar: ``expression_syntax.py``). Context names are case-insensitive.

Every error is an ``ExpressionError`` with GitHub's wording and a one-line message
naming the expression, e.g. ``Unrecognized named-value: 'nosuchcontext'. Located
at position 1 within expression: nosuchcontext.foo``. It is a ``UsageError`` (the
CLI prints it in one red line) and a ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

from ci_runner.workflows.expression_syntax import (
    STAR,
    STATUS_FUNCTIONS,
    Call,
    Compare,
    Constant,
    ContextRef,
    ExpressionError,
    Group,
    Index,
    Logical,
    Node,
    Not,
    Star,
    parse,
)
from ci_runner.workflows.expression_values import (
    MISSING,
    Filtered,
    NotJson,
    coerce_string,
    equals,
    fold_case,
    from_json,
    greater,
    is_primitive,
    is_truthy,
    less,
    lookup,
    to_json,
    to_number,
)

__all__ = [
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

Status = Literal["success", "failure", "cancelled"]

# GitHub's limit on the strings an evaluation holds at once, counted as UTF-16 as
# the .NET evaluator does.
MAX_MEMORY = 1024 * 1024


@dataclass(frozen=True)
class Functions:
    """What the host supplies for the functions that are not pure."""

    status: Status = "success"
    hash_files: Callable[[Sequence[str]], str] | None = None


def to_string(value: Any) -> str:
    """A value as the text a workflow sees: null is "", booleans "true"/"false",
    numbers as GitHub prints them (``3.10`` is "3.1", ``1e2`` is "100").

    Objects and arrays become pretty JSON (as ``toJSON``): where GitHub would refuse
    a mapping in a string field or print ``Object``, the host gets their content.
    """
    if isinstance(value, (Mapping, list, tuple)):
        try:
            return to_json(value)
        except RecursionError:
            raise ExpressionError("A value is nested too deeply to be printed") from None
    return coerce_string(value)


def loose_equals(left: Any, right: Any) -> bool:
    """The expression language's ``==`` (matrix include/exclude filters use it)."""
    return equals(left, right)


def _format(args: list[Any]) -> str:
    template = coerce_string(args[0])
    out: list[str] = []
    i, n = 0, len(template)

    def invalid() -> NoReturn:
        raise ValueError(f"The following format string is invalid: {template}")

    while i < n:
        left = template.find("{", i)
        right = template.find("}", i)
        if left >= 0 and (right < 0 or left < right):
            if template[left + 1 : left + 2] == "{":
                out.append(template[i : left + 1])
                i = left + 2
                continue
            digits = left + 1
            while digits < n and template[digits].isascii() and template[digits].isdigit():
                digits += 1
            if digits == left + 1 or right < 0:
                invalid()
            number = int(template[left + 1 : digits])
            if number + 1 > len(args) - 1:
                raise ValueError(
                    f"The following format string references more arguments than were supplied: "
                    f"{template}"
                )
            out.append(template[i:left])
            out.append(coerce_string(args[number + 1]))
            i = right + 1
        elif right >= 0:
            if template[right + 1 : right + 2] != "}":
                invalid()
            out.append(template[i : right + 1])
            i = right + 2
        else:
            out.append(template[i:])
            break
    return "".join(out)


def _join(args: list[Any]) -> str:
    items = args[0]
    if is_primitive(items):
        return coerce_string(items)
    if isinstance(items, (list, tuple)):
        separator = ","
        if len(args) > 1 and is_primitive(args[1]):
            separator = coerce_string(args[1])
        return separator.join(coerce_string(item) for item in items)
    return ""


def _contains(haystack: Any, needle: Any) -> bool:
    if is_primitive(haystack):
        if not is_primitive(needle):
            return False
        return coerce_string(needle).lower() in coerce_string(haystack).lower()
    if isinstance(haystack, (list, tuple)):
        return any(equals(needle, item) for item in haystack)
    return False


def _affix(args: list[Any], starts: bool) -> bool:
    text, affix = args
    if not (is_primitive(text) and is_primitive(affix)):
        return False
    t, a = fold_case(coerce_string(text)), fold_case(coerce_string(affix))
    return t.startswith(a) if starts else t.endswith(a)


def _index_key(index: Any) -> tuple[str | None, int | None]:
    """An index as an object key (primitives only) and as an array position."""
    key = coerce_string(index) if is_primitive(index) else None
    number = to_number(index)
    position = math.floor(number) if math.isfinite(number) and number >= 0 else None
    return key, position


def _size(v: Any) -> int:
    return 2 * len(v) if isinstance(v, str) else 0


@dataclass
class _Evaluator:
    expr: str
    contexts: Mapping[str, Any]
    functions: Functions

    def fail(self, message: str, detail: str = "") -> NoReturn:
        # GitHub's wording first, then what we know beyond it
        after = f" ({detail})" if detail else ""
        raise ExpressionError(f"{message}. Located within expression: {self.expr}{after}")

    def run(self, node: Node) -> Any:
        if isinstance(node, Constant):
            return node.value
        if isinstance(node, ContextRef):
            found = lookup(self.contexts, node.name)
            return None if found is MISSING else found
        if isinstance(node, Group):
            return self.run(node.inner)
        if isinstance(node, Not):
            return not is_truthy(self.run(node.operand))
        if isinstance(node, Logical):
            value: Any = None
            for operand in node.operands:
                value = self.run(operand)
                if is_truthy(value) == (node.op == "OR"):
                    break
            return value
        if isinstance(node, Compare):
            left, right = self.run(node.left), self.run(node.right)
            if node.op == "EQ":
                return equals(left, right)
            if node.op == "NE":
                return not equals(left, right)
            if node.op == "GT":
                return greater(left, right)
            if node.op == "LT":
                return less(left, right)
            if node.op == "GE":
                return equals(left, right) or greater(left, right)
            return equals(left, right) or less(left, right)
        if isinstance(node, Index):
            return self.index(node)
        return self.call(node)

    def index(self, node: Index) -> Any:
        star = node.index is STAR
        key: str | None = None
        position: int | None = None
        if not isinstance(node.index, Star):
            key, position = _index_key(self.run(node.index))
        target = self.run(node.target)
        if isinstance(target, Filtered):
            result = Filtered()
            for item in target:
                result.extend(_pick(item, star, key, position))
            return result
        if star:
            if isinstance(target, Mapping):
                return Filtered(target.values())
            if isinstance(target, (list, tuple)):
                return Filtered(target)
            return Filtered()
        found = _pick(target, star, key, position)
        return found[0] if found else None

    def call(self, node: Call) -> Any:
        name = node.name
        if name in STATUS_FUNCTIONS:
            return name in ("always", self.functions.status)
        args: list[Any] = []
        held = 0
        for arg in node.args:
            value = self.run(arg)
            held += _size(value)
            if held > MAX_MEMORY:
                self.fail("The maximum allowed memory size was exceeded")
            args.append(value)
        try:
            result = self.apply(name, args)
        except ExpressionError:
            raise
        except RecursionError:
            self.fail(f"{name}: the value is nested too deeply")
        except NotJson as e:
            self.fail("Error parsing JSON when evaluating fromJson", f"not JSON: {e}")
        except ValueError as e:
            self.fail(str(e))
        if _size(result) > MAX_MEMORY:
            self.fail("The maximum allowed memory size was exceeded")
        return result

    def apply(self, name: str, args: list[Any]) -> Any:
        if name == "contains":
            return _contains(args[0], args[1])
        if name in ("startswith", "endswith"):
            return _affix(args, name == "startswith")
        if name == "format":
            return _format(args)
        if name == "join":
            return _join(args)
        if name == "tojson":
            return to_json(args[0])
        if name == "fromjson":
            return from_json(coerce_string(args[0]))
        if name == "case":
            for n in range(0, len(args) - 1, 2):
                if not isinstance(args[n], bool):
                    raise ValueError("case predicate must evaluate to a boolean value")
                if args[n]:
                    return args[n + 1]
            return args[-1]
        assert name == "hashfiles"
        if self.functions.hash_files is None:
            raise ValueError("hashFiles is not available here")
        patterns = [coerce_string(a) for a in args]
        try:
            return self.functions.hash_files(patterns)
        except OSError as e:
            shown = ", ".join(repr(p) for p in patterns)
            raise ValueError(f"hashFiles({shown}) failed: {e}") from None


def _pick(item: Any, star: bool, key: str | None, position: int | None) -> list[Any]:
    """What ``item[index]`` yields: [] when nothing is there."""
    if isinstance(item, Mapping):
        if star:
            return list(item.values())
        if key is not None:
            found = lookup(item, key)
            if found is not MISSING:
                return [found]
        return []
    if isinstance(item, (list, tuple)):
        if star:
            return list(item)
        if position is not None and position < len(item):
            return [item[position]]
    return []


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, Filtered) else value


def evaluate(expr: str, contexts: Mapping[str, Any], functions: Functions = Functions()) -> Any:
    """The value of one expression (the text inside ``${{ }}``, or a bare ``if:``).

    ``contexts`` maps names (``github``, ``env``, ``matrix`` ...) to JSON-like
    values; a name not in it is an error, a missing property is ``None``.
    """
    node = parse(expr, contexts)
    if node is None:
        return None
    return _plain(_Evaluator(expr, contexts, functions).run(node))


def _mentions_status(node: Node | Star) -> bool:
    if isinstance(node, Call):
        return node.name in STATUS_FUNCTIONS or any(_mentions_status(a) for a in node.args)
    if isinstance(node, Index):
        return _mentions_status(node.target) or _mentions_status(node.index)
    if isinstance(node, Not):
        return _mentions_status(node.operand)
    if isinstance(node, Group):
        return _mentions_status(node.inner)
    if isinstance(node, Compare):
        return _mentions_status(node.left) or _mentions_status(node.right)
    if isinstance(node, Logical):
        return any(_mentions_status(o) for o in node.operands)
    return False


def _segments(text: str) -> Iterator[tuple[bool, str]]:
    """``text`` cut into (False, literal) and (True, expression) parts."""
    i = 0
    while True:
        start = text.find("${{", i)
        if start < 0:
            if i < len(text):
                yield False, text[i:]
            return
        if start > i:
            yield False, text[i:start]
        j = start + 3
        quoted = False
        while j < len(text):
            c = text[j]
            if c == "'":
                quoted = not quoted  # '' inside a string toggles twice: still quoted
            elif not quoted and text.startswith("}}", j):
                break
            j += 1
        else:
            raise ExpressionError(
                "The expression is not closed. An unescaped ${{ sequence was found, but the "
                f"closing }}}} sequence was not found: {text}"
            )
        yield True, text[start + 3 : j]
        i = j + 2


def interpolate(text: str, contexts: Mapping[str, Any], functions: Functions = Functions()) -> Any:
    """Substitute every ``${{ ... }}`` in ``text`` with its value as a string.

    When ``text`` is exactly one ``${{ expr }}`` (whitespace around it allowed) the
    value itself is returned, not a string: that is how ``matrix: ${{ fromJSON(...) }}``
    and ``with:`` values keep their type. A value that is not text (a YAML number,
    say) is returned as it is.
    """
    if not isinstance(text, str):
        return text
    parts = list(_segments(text))
    expressions = [p for is_expr, p in parts if is_expr]
    if not expressions:
        return text
    literal = "".join(p for is_expr, p in parts if not is_expr)
    if len(expressions) == 1 and not literal.strip():
        return evaluate(expressions[0].strip(), contexts, functions)
    return "".join(
        coerce_string(evaluate(p.strip(), contexts, functions)) if is_expr else p
        for is_expr, p in parts
    )


def evaluate_if(
    cond: str | bool | None, contexts: Mapping[str, Any], functions: Functions = Functions()
) -> bool:
    """Whether a job or step with this ``if:`` runs.

    No condition means ``success()``; a condition that calls none of the status
    functions (``success() failure() always() cancelled()``) means ``success() && (cond)``.
    ``${{ cond }}`` is accepted as well as the bare form.
    """
    succeeded = functions.status == "success"
    if cond is None:
        return succeeded
    if isinstance(cond, bool):
        return succeeded and cond
    text = str(cond).strip()
    if not text:
        return succeeded
    parts = list(_segments(text))
    if any(is_expr for is_expr, _ in parts):
        if len(parts) != 1:
            # "${{ a }} && b" is a string once substituted: GitHub runs it (truthy).
            return succeeded and is_truthy(interpolate(text, contexts, functions))
        text = parts[0][1].strip()
        if not text:
            return succeeded
    node = parse(text, contexts)
    if node is None:
        return succeeded
    value = _Evaluator(text, contexts, functions).run(node)
    if _mentions_status(node):
        return is_truthy(value)
    return succeeded and is_truthy(value)
