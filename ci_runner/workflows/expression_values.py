"""The values of GitHub's expression language: coercion, comparison, numbers, JSON.

Values are JSON-like Python values: ``None``, ``bool``, ``int``/``float``, ``str``,
``list`` and ``dict``. Object keys are looked up case-insensitively; strings compare
case-insensitively; ``==`` coerces like JavaScript's ``==`` except that objects and
arrays compare by identity; numbers print as GitHub prints them. The rules are
GitHub's (``expressions.py`` is the public face; its tests hold GitHub's cases).
"""

from __future__ import annotations

import decimal
import json
import math
import re
from collections.abc import Mapping
from typing import Any, NoReturn

__all__ = [
    "JS_SPACE",
    "MISSING",
    "Filtered",
    "NotJson",
    "coerce_string",
    "equals",
    "fold_case",
    "from_json",
    "greater",
    "is_number",
    "is_primitive",
    "is_truthy",
    "js_number",
    "kind_of",
    "less",
    "lookup",
    "number_string",
    "parse_number",
    "tidy_number",
    "to_json",
    "to_number",
]


class Filtered(list[Any]):
    """The array an object filter (``a.*``) yields: further access maps over it."""


MISSING = object()


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_primitive(v: Any) -> bool:
    # Anything a host put in a context that is not a container counts as a
    # scalar (a string of its str(), see kind_of).
    return not isinstance(v, (Mapping, list, tuple))


def tidy_number(x: float) -> int | float:
    """Whole numbers become ``int`` (``timeout-minutes: ${{ 5 }}`` is 5, not 5.0)."""
    if math.isfinite(x) and x == int(x) and abs(x) < 2**53:
        return int(x)
    return x


JS_SPACE = " \t\n\v\f\r\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"  # noqa: E501
_DECIMAL_RE = re.compile(r"[+-]?(?:Infinity|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\Z")
_RADIX_RE = re.compile(r"0(?:[xX][0-9a-fA-F]+|[oO][0-7]+|[bB][01]+)\Z")


def parse_number(text: str) -> float:
    """JavaScript's ``Number(text)``: trimmed; "" is 0; hex/octal/binary; else NaN."""
    s = text.strip(JS_SPACE)
    if not s:
        return 0.0
    if _DECIMAL_RE.match(s):
        return float(s.replace("Infinity", "inf"))
    if _RADIX_RE.match(s):
        return float(int(s[2:], {"x": 16, "o": 8, "b": 2}[s[1].lower()]))
    return math.nan


def to_number(v: Any) -> float:
    if v is None:
        return 0.0
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    if is_number(v):
        return float(v)
    if isinstance(v, str):
        return parse_number(v)
    return math.nan


def js_number(x: float) -> str:
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


def number_string(x: float) -> str:
    """GitHub's number-to-string: at most 15 decimals, then JavaScript's form."""
    if x == 0:
        return "0"
    if not math.isfinite(x) or abs(x) >= 1e21:
        return js_number(x)
    rounded = decimal.Decimal(x).quantize(decimal.Decimal("1e-15"), context=_DECIMALS)
    return js_number(float(rounded))


def coerce_string(v: Any) -> str:
    """GitHub's string coercion inside expressions (``format``, ``join``, ``${{ }}`` in text)."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int) and abs(v) < 2**53:
        return str(v)  # what JavaScript prints too, without the float round trip
    if is_number(v):
        return number_string(float(v))
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
    if is_number(value):
        return not (value == 0 or math.isnan(value))
    if isinstance(value, str):
        return value != ""
    return True


_DOTLESS_I = "\u0131"


def fold_case(s: str) -> str:
    # GitHub upper-cases for its case-insensitive comparison but leaves the Turkish
    # dotless i (U+0131) alone, so it differs from "I"; JavaScript compares UTF-16
    # code units.
    return _DOTLESS_I.join(part.upper() for part in s.split(_DOTLESS_I))


def _utf16(s: str) -> bytes:
    return fold_case(s).encode("utf-16-be", "surrogatepass")


def kind_of(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if is_number(v):
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
    lk, rk = kind_of(left), kind_of(right)
    while lk != rk:
        if lk == "number" and rk == "string":
            right, rk = to_number(right), "number"
        elif (lk == "string" and rk == "number") or lk in ("null", "bool"):
            left, lk = to_number(left), "number"
        elif rk in ("null", "bool"):
            right, rk = to_number(right), "number"
        else:
            break
    return left, right, lk, rk


def equals(left: Any, right: Any) -> bool:
    left, right, lk, rk = _coerce_pair(left, right)
    if lk != rk:
        return False
    if lk == "null":
        return True
    if lk == "number":
        return bool(float(left) == float(right))
    if lk == "string":
        return fold_case(str(left)) == fold_case(str(right))
    if lk == "bool":
        return bool(left == right)
    return left is right


def greater(left: Any, right: Any) -> bool:
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


def less(left: Any, right: Any) -> bool:
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


def lookup(obj: Mapping[str, Any], key: str) -> Any:
    if key in obj:
        return obj[key]
    lower = key.lower()
    for k, v in obj.items():
        if str(k).lower() == lower:
            return v
    return MISSING


# ---------------------------------------------------------------- JSON


def _json_lines(v: Any, indent: str, out: list[str]) -> None:
    if v is None:
        out.append("null")
    elif isinstance(v, bool):
        out.append("true" if v else "false")
    elif is_number(v):
        out.append(js_number(float(v)) if math.isfinite(v) else "null")
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


def to_json(v: Any) -> str:
    out: list[str] = []
    _json_lines(v, "", out)
    return "".join(out)


class NotJson(ValueError):
    """fromJSON's input is not JSON; the message says where."""


def _reject_constant(name: str) -> NoReturn:
    raise NotJson(f"{name} is not JSON")


def _json_int(text: str) -> int | float:
    n = int(text)
    return n if abs(n) < 2**53 else float(n)


def from_json(text: str) -> Any:
    if not text.strip(JS_SPACE):
        raise ValueError("empty input")
    try:
        return json.loads(
            text,
            parse_constant=_reject_constant,
            parse_int=_json_int,
            parse_float=lambda s: tidy_number(float(s)),
        )
    except json.JSONDecodeError as e:
        raise NotJson(str(e)) from None
