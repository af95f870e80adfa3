"""GitHub Actions' expression language: the text inside ``${{ }}`` and in ``if:``.

A workflow is translated into a ci-runner run, and every ``${{ }}`` in it is
evaluated here, the way GitHub's own evaluator does it (its cross-language test
data, ``tests/fixtures/gha_expressions/``, is the conformance suite): a tokenizer
and a recursive-descent parser, then a walk of the tree. No ``eval``.

Values are JSON-like Python values: ``None``, ``bool``, ``int``/``float``,
``str``, ``list`` and ``dict``. Object keys and context names are looked up
case-insensitively; strings compare case-insensitively; ``==`` coerces like
JavaScript's ``==`` except that objects and arrays compare by identity.

Every error is an ``ExpressionError`` with GitHub's wording and a one-line message
naming the expression, e.g. ``Unrecognized named-value: 'nosuchcontext'. Located
at position 1 within expression: nosuchcontext.foo``. It is a ``UsageError`` (the
CLI prints it in one red line) and a ``ValueError``.
"""

from __future__ import annotations

import decimal
import functools
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

from ci_runner.errors import UsageError

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

# GitHub's limits: an expression longer than this, nested deeper than this, or
# holding more than this many bytes of strings at once (counted as UTF-16, as
# the .NET evaluator does) is refused.
MAX_LENGTH = 21_000
MAX_DEPTH = 50
MAX_MEMORY = 1024 * 1024


class ExpressionError(UsageError, ValueError):
    """An expression that cannot be parsed or evaluated; the message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(message.replace("\r", " ").replace("\n", " "))


@dataclass(frozen=True)
class Functions:
    """What the host supplies for the functions that are not pure."""

    status: Status = "success"
    hash_files: Callable[[Sequence[str]], str] | None = None


# ---------------------------------------------------------------- tokens

_PUNCT = {
    "(": "LPAREN",
    ")": "RPAREN",
    "[": "LBRACKET",
    "]": "RBRACKET",
    ",": "COMMA",
    "*": "STAR",
}
_BOUNDARY = frozenset("()[],.!><=&|")
# After one of these a "." is a property access; anywhere else it starts a number.
_DOT_FOLLOWS = frozenset({"IDENT", "RBRACKET", "RPAREN", "STAR"})
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")
_KEYWORDS: dict[str, Any] = {
    "true": True,
    "false": False,
    "null": None,
    "NaN": math.nan,
    "Infinity": math.inf,
}


@dataclass(frozen=True)
class _Token:
    kind: str  # LPAREN ... STAR, NOT, NE, EQ, GT, GE, LT, LE, AND, OR, NUMBER, STRING, IDENT,
    # TRUE, FALSE, NULL, EOF
    lexeme: str
    pos: int  # offset in the expression; GitHub reports it 1-based
    value: Any = None

    def shown(self) -> str:
        if self.kind == "EOF":
            return "EOF"
        if self.kind == "STRING":
            return str(self.value)
        return self.lexeme


def _is_boundary(c: str) -> bool:
    return c in _BOUNDARY or c.isspace()


def _tokenize(expr: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(expr)

    def previous() -> str:
        return tokens[-1].kind if tokens else "EOF"

    def symbol_error(start: int, end: int) -> NoReturn:
        raise _located("Unexpected symbol", expr[start:end], start, expr)

    def read_word(start: int) -> int:
        end = start + 1
        while end < n and not _is_boundary(expr[end]):
            end += 1
        return end

    while i < n:
        c = expr[i]
        start = i
        if c in " \t\r\n":
            i += 1
        elif c in _PUNCT:
            tokens.append(_Token(_PUNCT[c], c, start))
            i += 1
        elif c == "." and previous() in _DOT_FOLLOWS:
            tokens.append(_Token("DOT", c, start))
            i += 1
        elif c in ".+-" or (c.isdigit() and c.isascii()):
            end = start + 1
            while end < n and (expr[end] == "." or not _is_boundary(expr[end])):
                end += 1
            number = _parse_number(expr[start:end])
            if math.isnan(number):
                symbol_error(start, end)
            tokens.append(_Token("NUMBER", expr[start:end], start, _tidy_number(number)))
            i = end
        elif c in "!<>" and expr[i + 1 : i + 2] == "=":
            tokens.append(_Token({"!": "NE", "<": "LE", ">": "GE"}[c], c + "=", start))
            i += 2
        elif c in "!<>":
            tokens.append(_Token({"!": "NOT", "<": "LT", ">": "GT"}[c], c, start))
            i += 1
        elif c in "=&|":
            if expr[i + 1 : i + 2] == c:
                tokens.append(_Token({"=": "EQ", "&": "AND", "|": "OR"}[c], c + c, start))
                i += 2
            else:
                symbol_error(start, read_word(start))
        elif c == "'":
            i += 1
            while i < n and (expr[i] != "'" or expr[i + 1 : i + 2] == "'"):
                i += 2 if expr[i] == "'" else 1
            if i >= n:
                symbol_error(start, n)
            i += 1
            text = expr[start + 1 : i - 1].replace("''", "'")
            tokens.append(_Token("STRING", expr[start:i], start, text))
        else:
            i = read_word(start)
            word = expr[start:i]
            if not _IDENT_RE.match(word):
                symbol_error(start, i)
            if previous() == "DOT":
                tokens.append(_Token("IDENT", word, start))
            elif word in ("true", "false", "null"):
                tokens.append(_Token(word.upper(), word, start, _KEYWORDS[word]))
            elif word in ("NaN", "Infinity"):
                tokens.append(_Token("NUMBER", word, start, _KEYWORDS[word]))
            else:
                tokens.append(_Token("IDENT", word, start))
    tokens.append(_Token("EOF", "", n))
    return tokens


# ---------------------------------------------------------------- syntax tree


@dataclass(frozen=True)
class _Literal:
    value: Any


@dataclass(frozen=True)
class _Context:
    name: str


class _Star:
    """The ``*`` of ``a.*`` and ``a[*]``."""


_STAR = _Star()


@dataclass(frozen=True)
class _Index:
    target: _Node
    index: _Node | _Star


@dataclass(frozen=True)
class _Not:
    operand: _Node


@dataclass(frozen=True)
class _Compare:
    op: str  # EQ NE LT LE GT GE
    left: _Node
    right: _Node


@dataclass(frozen=True)
class _Logical:
    op: str  # AND OR
    operands: tuple[_Node, ...]


@dataclass(frozen=True)
class _Call:
    name: str  # lower case
    args: tuple[_Node, ...]


@dataclass(frozen=True)
class _Group:
    inner: _Node


_Node = _Literal | _Context | _Index | _Not | _Compare | _Logical | _Call | _Group

# name -> (fewest, most) arguments
_FUNCTIONS: dict[str, tuple[int, int]] = {
    "always": (0, 0),
    "cancelled": (0, 0),
    "case": (3, 255),
    "contains": (2, 2),
    "endswith": (2, 2),
    "failure": (0, 0),
    "format": (1, 255),
    "fromjson": (1, 1),
    "hashfiles": (1, 255),
    "join": (1, 2),
    "startswith": (2, 2),
    "success": (0, 0),
    "tojson": (1, 1),
}
_STATUS_FUNCTIONS = frozenset({"always", "cancelled", "failure", "success"})


def _located(what: str, shown: str, pos: int, expr: str) -> ExpressionError:
    return ExpressionError(
        f"{what}: '{shown}'. Located at position {pos + 1} within expression: {expr}"
    )


class _Parser:
    """Precedence, loosest first: ``||``, ``&&``, ``== !=``, ``< <= > >=``, ``!``,
    then index and property access on a call, a context or a group."""

    def __init__(self, expr: str, names: frozenset[str]) -> None:
        self.expr = expr
        self.names = names
        self.tokens = _tokenize(expr)
        self.at = 0
        self.depth = 0

    def parse(self) -> _Node | None:
        if self.peek().kind == "EOF":
            return None
        node = self.expression()
        if self.peek().kind != "EOF":
            self.fail("Unexpected symbol", self.peek())
        return node

    # -- helpers
    def peek(self) -> _Token:
        return self.tokens[self.at]

    def previous(self) -> _Token:
        return self.tokens[self.at - 1]

    def match(self, *kinds: str) -> bool:
        if self.peek().kind in kinds and self.peek().kind != "EOF":
            self.at += 1
            return True
        return False

    def expect(self, kind: str) -> None:
        if not self.match(kind):
            self.fail("Unexpected symbol", self.peek())

    def fail(self, what: str, token: _Token) -> NoReturn:
        raise _located(what, token.shown(), token.pos, self.expr)

    def deeper(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self.fail(f"Exceeded max expression depth {MAX_DEPTH}", self.peek())

    # -- grammar
    def expression(self) -> _Node:
        self.deeper()
        try:
            return self.logical("OR", self.and_)
        finally:
            self.depth -= 1

    def and_(self) -> _Node:
        return self.logical("AND", self.equality)

    def logical(self, op: str, operand: Callable[[], _Node]) -> _Node:
        first = operand()
        if self.peek().kind != op:
            return first
        self.deeper()
        try:
            operands = [first]
            while self.match(op):
                operands.append(operand())
            return _Logical(op, tuple(operands))
        finally:
            self.depth -= 1

    def equality(self) -> _Node:
        node = self.comparison()
        while self.match("EQ", "NE"):
            op = self.previous().kind
            node = _Compare(op, node, self.comparison())
        return node

    def comparison(self) -> _Node:
        node = self.unary()
        while self.match("LT", "LE", "GT", "GE"):
            op = self.previous().kind
            node = _Compare(op, node, self.unary())
        return node

    def unary(self) -> _Node:
        if self.match("NOT"):
            self.deeper()
            try:
                return _Not(self.unary())
            finally:
                self.depth -= 1
        return self.postfix()

    def postfix(self) -> _Node:
        node = self.call()
        if not isinstance(node, (_Group, _Call, _Context)):
            return node
        entered = 0
        try:
            while True:
                if self.match("LBRACKET"):
                    index: _Node | _Star = _STAR if self.match("STAR") else self.expression()
                    self.expect("RBRACKET")
                elif self.match("DOT"):
                    if self.match("IDENT"):
                        index = _Literal(self.previous().lexeme)
                    elif self.match("STAR"):
                        index = _STAR
                    else:
                        self.fail("Unexpected symbol", self.peek())
                else:
                    return node
                entered += 1
                self.deeper()
                node = _Index(node, index)
        finally:
            self.depth -= entered

    def call(self) -> _Node:
        if self.peek().kind != "IDENT":
            return self.primary()
        name = self.peek()
        self.at += 1
        if not self.match("LPAREN"):
            if name.lexeme.lower() not in self.names:
                self.fail("Unrecognized named-value", name)
            return _Context(name.lexeme)
        args: list[_Node] = []
        while not self.match("RPAREN"):
            args.append(self.expression())
            if self.peek().kind != "RPAREN":
                self.expect("COMMA")
        lower = name.lexeme.lower()
        if lower not in _FUNCTIONS:
            self.fail("Unrecognized function", name)
        fewest, most = _FUNCTIONS[lower]
        if len(args) < fewest:
            self.fail("Too few parameters supplied", name)
        if len(args) > most:
            self.fail("Too many parameters supplied", name)
        if lower == "case" and len(args) % 2 == 0:
            self.fail(
                "Even number of parameters supplied, requires an odd number of parameters", name
            )
        return _Call(lower, tuple(args))

    def primary(self) -> _Node:
        if self.match("TRUE", "FALSE", "NULL", "NUMBER", "STRING"):
            return _Literal(self.previous().value)
        if self.match("LPAREN"):
            inner = self.expression()
            if self.peek().kind == "EOF":
                self.fail("Unexpected end of expression", self.previous())
            self.expect("RPAREN")
            return _Group(inner)
        if self.peek().kind == "EOF":
            self.fail("Unexpected end of expression", self.previous())
        self.fail("Unexpected symbol", self.peek())


def _parse(expr: str, contexts: Mapping[str, Any]) -> _Node | None:
    if len(expr) > MAX_LENGTH:
        raise ExpressionError(
            f"Exceeded max expression length {MAX_LENGTH}: an expression of {len(expr)} characters"
        )
    return _parse_cached(expr, frozenset(str(k).lower() for k in contexts))


@functools.lru_cache(maxsize=1024)
def _parse_cached(expr: str, names: frozenset[str]) -> _Node | None:
    # A workflow evaluates the same few expressions once per matrix cell and step.
    return _Parser(expr, names).parse()


# ---------------------------------------------------------------- values


class _Filtered(list[Any]):
    """The array an object filter (``a.*``) yields: further access maps over it."""


_MISSING = object()


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_primitive(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _tidy_number(x: float) -> int | float:
    """Whole numbers become ``int`` (``timeout-minutes: ${{ 5 }}`` is 5, not 5.0)."""
    if math.isfinite(x) and x == int(x) and abs(x) < 2**53:
        return int(x)
    return x


_JS_SPACE = " \t\n\v\f\r\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"  # noqa: E501
_DECIMAL_RE = re.compile(r"[+-]?(?:Infinity|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\Z")
_RADIX_RE = re.compile(r"0(?:[xX][0-9a-fA-F]+|[oO][0-7]+|[bB][01]+)\Z")


def _parse_number(text: str) -> float:
    """JavaScript's ``Number(text)``: trimmed; "" is 0; hex/octal/binary; else NaN."""
    s = text.strip(_JS_SPACE)
    if not s:
        return 0.0
    if _DECIMAL_RE.match(s):
        return float(s.replace("Infinity", "inf"))
    if _RADIX_RE.match(s):
        return float(int(s[2:], {"x": 16, "o": 8, "b": 2}[s[1].lower()]))
    return math.nan


def _to_number(v: Any) -> float:
    if v is None:
        return 0.0
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    if _is_number(v):
        return float(v)
    if isinstance(v, str):
        return _parse_number(v)
    return math.nan


def _js_number(x: float) -> str:
    """JavaScript's ``Number.prototype.toString()``: shortest round-trip digits."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    _, digit_tuple, exponent = decimal.Decimal(repr(abs(x))).as_tuple()
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    assert isinstance(exponent, int)
    point = exponent + len("".join(map(str, digit_tuple)))  # digits before the point
    k = len(digits)
    if k <= point <= 21:
        body = digits + "0" * (point - k)
    elif 0 < point <= 21:
        body = digits[:point] + "." + digits[point:]
    elif -6 < point <= 0:
        body = "0." + "0" * -point + digits
    else:
        e = point - 1
        mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
        body = f"{mantissa}e{'+' if e >= 0 else '-'}{abs(e)}"
    return sign + body


_DECIMALS = decimal.Context(prec=80, rounding=decimal.ROUND_HALF_UP)


def _number_string(x: float) -> str:
    """GitHub's number-to-string: at most 15 decimals, then JavaScript's form."""
    if x == 0:
        return "0"
    if not math.isfinite(x) or abs(x) >= 1e21:
        return _js_number(x)
    rounded = decimal.Decimal(x).quantize(decimal.Decimal("1e-15"), context=_DECIMALS)
    return _js_number(float(rounded))


def _coerce_string(v: Any) -> str:
    """GitHub's string coercion inside expressions (``format``, ``join``, ``${{ }}`` in text)."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if _is_number(v):
        return _number_string(float(v))
    if isinstance(v, str):
        return v
    if isinstance(v, Mapping):
        return "Object"
    if isinstance(v, (list, tuple)):
        return "Array"
    return str(v)


def is_truthy(value: Any) -> bool:
    """GitHub's truthiness: null, false, 0, NaN and "" are false; objects and arrays true."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if _is_number(value):
        return not (value == 0 or math.isnan(value))
    if isinstance(value, str):
        return value != ""
    return True


def to_string(value: Any) -> str:
    """A value as the text a workflow sees: null is "", booleans "true"/"false",
    numbers as GitHub prints them (``3.10`` is "3.1", ``1e2`` is "100").

    Objects and arrays become pretty JSON (as ``toJSON``): where GitHub would refuse
    a mapping in a string field or print ``Object``, the host gets their content.
    """
    if isinstance(value, (Mapping, list, tuple)):
        try:
            return _to_json(value)
        except RecursionError:
            raise ExpressionError("A value is nested too deeply to be printed") from None
    return _coerce_string(value)


_DOTLESS_I = "\u0131"


def _upper(s: str) -> str:
    # GitHub upper-cases for its case-insensitive comparison but leaves the Turkish
    # dotless i (U+0131) alone, so it differs from "I"; JavaScript compares UTF-16
    # code units.
    return _DOTLESS_I.join(part.upper() for part in s.split(_DOTLESS_I))


def _utf16(s: str) -> bytes:
    return _upper(s).encode("utf-16-be", "surrogatepass")


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if _is_number(v):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, Mapping):
        return "object"
    if isinstance(v, (list, tuple)):
        return "array"
    return "string"


def _coerce_pair(left: Any, right: Any) -> tuple[Any, Any, str, str]:
    """JavaScript's abstract equality coercions, objects excepted."""
    lk, rk = _kind(left), _kind(right)
    while lk != rk:
        if lk == "number" and rk == "string":
            right, rk = _to_number(right), "number"
        elif (lk == "string" and rk == "number") or lk in ("null", "bool"):
            left, lk = _to_number(left), "number"
        elif rk in ("null", "bool"):
            right, rk = _to_number(right), "number"
        else:
            break
    return left, right, lk, rk


def _equals(left: Any, right: Any) -> bool:
    left, right, lk, rk = _coerce_pair(left, right)
    if lk != rk:
        return False
    if lk == "null":
        return True
    if lk == "number":
        return bool(float(left) == float(right))
    if lk == "string":
        return _upper(str(left)) == _upper(str(right))
    if lk == "bool":
        return bool(left == right)
    return left is right


def loose_equals(left: Any, right: Any) -> bool:
    """The expression language's ``==`` (matrix include/exclude filters use it)."""
    return _equals(left, right)


def _greater(left: Any, right: Any) -> bool:
    left, right, lk, rk = _coerce_pair(left, right)
    if lk != rk:
        return False
    if lk == "number":
        return bool(float(left) > float(right))
    if lk == "string":
        return _utf16(str(left)) > _utf16(str(right))
    if lk == "bool":
        return bool(left and not right)
    return False


def _less(left: Any, right: Any) -> bool:
    left, right, lk, rk = _coerce_pair(left, right)
    if lk != rk:
        return False
    if lk == "number":
        return bool(float(left) < float(right))
    if lk == "string":
        return _utf16(str(left)) < _utf16(str(right))
    if lk == "bool":
        return bool(right and not left)
    return False


def _lookup(obj: Mapping[str, Any], key: str) -> Any:
    if key in obj:
        return obj[key]
    lower = key.lower()
    for k, v in obj.items():
        if str(k).lower() == lower:
            return v
    return _MISSING


# ---------------------------------------------------------------- JSON


def _json_lines(v: Any, indent: str, out: list[str]) -> None:
    if v is None:
        out.append("null")
    elif isinstance(v, bool):
        out.append("true" if v else "false")
    elif _is_number(v):
        out.append(_js_number(float(v)) if math.isfinite(v) else "null")
    elif isinstance(v, str):
        out.append(json.dumps(v, ensure_ascii=False))
    elif isinstance(v, Mapping):
        if not v:
            out.append("{}")
            return
        inner = indent + "  "
        out.append("{\n")
        for n, (k, item) in enumerate(v.items()):
            out.append(f"{inner}{json.dumps(str(k), ensure_ascii=False)}: ")
            _json_lines(item, inner, out)
            out.append(",\n" if n < len(v) - 1 else "\n")
        out.append(indent + "}")
    elif isinstance(v, (list, tuple)):
        if not v:
            out.append("[]")
            return
        inner = indent + "  "
        out.append("[\n")
        for n, item in enumerate(v):
            out.append(inner)
            _json_lines(item, inner, out)
            out.append(",\n" if n < len(v) - 1 else "\n")
        out.append(indent + "]")
    else:
        out.append(json.dumps(str(v), ensure_ascii=False))


def _to_json(v: Any) -> str:
    out: list[str] = []
    _json_lines(v, "", out)
    return "".join(out)


class _NotJson(ValueError):
    """fromJSON's input is not JSON; the message says where."""


def _reject_constant(name: str) -> NoReturn:
    raise _NotJson(f"{name} is not JSON")


def _json_int(text: str) -> int | float:
    n = int(text)
    return n if abs(n) < 2**53 else float(n)


def _from_json(text: str) -> Any:
    if not text.strip(_JS_SPACE):
        raise ValueError("empty input")
    try:
        return json.loads(
            text,
            parse_constant=_reject_constant,
            parse_int=_json_int,
            parse_float=lambda s: _tidy_number(float(s)),
        )
    except json.JSONDecodeError as e:
        raise _NotJson(str(e)) from None


# ---------------------------------------------------------------- evaluation


def _format(args: list[Any]) -> str:
    template = _coerce_string(args[0])
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
            out.append(_coerce_string(args[number + 1]))
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
    if _is_primitive(items):
        return _coerce_string(items)
    if isinstance(items, (list, tuple)):
        separator = ","
        if len(args) > 1 and _is_primitive(args[1]):
            separator = _coerce_string(args[1])
        return separator.join(_coerce_string(item) for item in items)
    return ""


def _contains(haystack: Any, needle: Any) -> bool:
    if _is_primitive(haystack):
        if not _is_primitive(needle):
            return False
        return _coerce_string(needle).lower() in _coerce_string(haystack).lower()
    if isinstance(haystack, (list, tuple)):
        return any(_equals(needle, item) for item in haystack)
    return False


def _affix(args: list[Any], starts: bool) -> bool:
    text, affix = args
    if not (_is_primitive(text) and _is_primitive(affix)):
        return False
    t, a = _upper(_coerce_string(text)), _upper(_coerce_string(affix))
    return t.startswith(a) if starts else t.endswith(a)


def _index_key(index: Any) -> tuple[str | None, int | None]:
    """An index as an object key (primitives only) and as an array position."""
    key = _coerce_string(index) if _is_primitive(index) else None
    number = _to_number(index)
    position = math.floor(number) if math.isfinite(number) and number >= 0 else None
    return key, position


def _size(v: Any) -> int:
    return 2 * len(v) if isinstance(v, str) else 0


@dataclass
class _Evaluator:
    expr: str
    contexts: Mapping[str, Any]
    functions: Functions
    memory: int = field(default=0)

    def fail(self, message: str, detail: str = "") -> NoReturn:
        # GitHub's wording first, then what we know beyond it
        after = f" ({detail})" if detail else ""
        raise ExpressionError(f"{message}. Located within expression: {self.expr}{after}")

    def run(self, node: _Node) -> Any:
        if isinstance(node, _Literal):
            return node.value
        if isinstance(node, _Context):
            found = _lookup(self.contexts, node.name)
            return None if found is _MISSING else found
        if isinstance(node, _Group):
            return self.run(node.inner)
        if isinstance(node, _Not):
            return not is_truthy(self.run(node.operand))
        if isinstance(node, _Logical):
            value: Any = None
            for operand in node.operands:
                value = self.run(operand)
                if is_truthy(value) == (node.op == "OR"):
                    break
            return value
        if isinstance(node, _Compare):
            left, right = self.run(node.left), self.run(node.right)
            if node.op == "EQ":
                return _equals(left, right)
            if node.op == "NE":
                return not _equals(left, right)
            if node.op == "GT":
                return _greater(left, right)
            if node.op == "LT":
                return _less(left, right)
            if node.op == "GE":
                return _equals(left, right) or _greater(left, right)
            return _equals(left, right) or _less(left, right)
        if isinstance(node, _Index):
            return self.index(node)
        return self.call(node)

    def index(self, node: _Index) -> Any:
        star = node.index is _STAR
        key: str | None = None
        position: int | None = None
        if not isinstance(node.index, _Star):
            key, position = _index_key(self.run(node.index))
        target = self.run(node.target)
        if isinstance(target, _Filtered):
            result = _Filtered()
            for item in target:
                result.extend(_pick(item, star, key, position))
            return result
        if star:
            if isinstance(target, Mapping):
                return _Filtered(target.values())
            if isinstance(target, (list, tuple)):
                return _Filtered(target)
            return _Filtered()
        found = _pick(target, star, key, position)
        return found[0] if found else None

    def call(self, node: _Call) -> Any:
        name = node.name
        if name in _STATUS_FUNCTIONS:
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
        except _NotJson as e:
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
            return _to_json(args[0])
        if name == "fromjson":
            return _from_json(_coerce_string(args[0]))
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
        return self.functions.hash_files([_coerce_string(a) for a in args])


def _pick(item: Any, star: bool, key: str | None, position: int | None) -> list[Any]:
    """What ``item[index]`` yields: [] when nothing is there."""
    if isinstance(item, Mapping):
        if star:
            return list(item.values())
        if key is not None:
            found = _lookup(item, key)
            if found is not _MISSING:
                return [found]
        return []
    if isinstance(item, (list, tuple)):
        if star:
            return list(item)
        if position is not None and position < len(item):
            return [item[position]]
    return []


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, _Filtered) else value


def evaluate(expr: str, contexts: Mapping[str, Any], functions: Functions = Functions()) -> Any:
    """The value of one expression (the text inside ``${{ }}``, or a bare ``if:``).

    ``contexts`` maps names (``github``, ``env``, ``matrix`` ...) to JSON-like
    values; a name not in it is an error, a missing property is ``None``.
    """
    node = _parse(expr, contexts)
    if node is None:
        return None
    return _plain(_Evaluator(expr, contexts, functions).run(node))


def _mentions_status(node: _Node | _Star) -> bool:
    if isinstance(node, _Call):
        return node.name in _STATUS_FUNCTIONS or any(_mentions_status(a) for a in node.args)
    if isinstance(node, _Index):
        return _mentions_status(node.target) or _mentions_status(node.index)
    if isinstance(node, _Not):
        return _mentions_status(node.operand)
    if isinstance(node, _Group):
        return _mentions_status(node.inner)
    if isinstance(node, _Compare):
        return _mentions_status(node.left) or _mentions_status(node.right)
    if isinstance(node, _Logical):
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
    and ``with:`` values keep their type.
    """
    parts = list(_segments(text))
    expressions = [p for is_expr, p in parts if is_expr]
    if not expressions:
        return text
    literal = "".join(p for is_expr, p in parts if not is_expr)
    if len(expressions) == 1 and not literal.strip():
        return evaluate(expressions[0].strip(), contexts, functions)
    return "".join(
        _coerce_string(evaluate(p.strip(), contexts, functions)) if is_expr else p
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
    node = _parse(text, contexts)
    if node is None:
        return succeeded
    value = _Evaluator(text, contexts, functions).run(node)
    if _mentions_status(node):
        return is_truthy(value)
    return succeeded and is_truthy(value)
