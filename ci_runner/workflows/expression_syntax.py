"""The grammar of GitHub's expression language: tokens, syntax tree and parser.

A tokenizer and a recursive-descent parser with GitHub's precedence (loosest
first: ``||``, ``&&``, ``== !=``, ``< <= > >=``, ``!``, then index and property
access), its limits (21,000 characters, nesting 50 deep) and its error wording.
``expressions.py`` evaluates the tree.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from ci_runner.errors import UsageError
from ci_runner.workflows.expression_values import parse_number, tidy_number

__all__ = [
    "FUNCTIONS",
    "MAX_DEPTH",
    "MAX_LENGTH",
    "STAR",
    "STATUS_FUNCTIONS",
    "Call",
    "Compare",
    "Constant",
    "ContextRef",
    "ExpressionError",
    "Group",
    "Index",
    "Logical",
    "Node",
    "Not",
    "Star",
    "Token",
    "parse",
    "tokenize",
]

# GitHub's limits: an expression longer than this, or nested deeper than this.
MAX_LENGTH = 21_000
MAX_DEPTH = 50


class ExpressionError(UsageError, ValueError):
    """An expression that cannot be parsed or evaluated; the message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(message.replace("\r", " ").replace("\n", " "))


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
class Token:
    """One lexeme of an expression, with where it starts."""

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


def tokenize(expr: str) -> list[Token]:
    """The tokens of ``expr``, ending with EOF; a malformed lexeme is an error.

    As GitHub's lexer: a "." after a name, ")", "]" or "*" is an access, elsewhere it
    starts a number; a word runs to the next boundary character or blank, so
    ``1 =2`` fails on "=2" and ``foo.b@r`` on "b@r".
    """
    tokens: list[Token] = []
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

    start = 0
    while i < n:
        c = expr[i]
        start = i
        if c in " \t\r\n":
            i += 1
        elif c in _PUNCT:
            tokens.append(Token(_PUNCT[c], c, start))
            i += 1
        elif c == "." and previous() in _DOT_FOLLOWS:
            tokens.append(Token("DOT", c, start))
            i += 1
        elif c in ".+-" or (c.isdigit() and c.isascii()):
            end = start + 1
            while end < n and (expr[end] == "." or not _is_boundary(expr[end])):
                end += 1
            number = parse_number(expr[start:end])
            if math.isnan(number):
                symbol_error(start, end)
            tokens.append(Token("NUMBER", expr[start:end], start, tidy_number(number)))
            i = end
        elif c in "!<>" and expr[i + 1 : i + 2] == "=":
            tokens.append(Token({"!": "NE", "<": "LE", ">": "GE"}[c], c + "=", start))
            i += 2
        elif c in "!<>":
            tokens.append(Token({"!": "NOT", "<": "LT", ">": "GT"}[c], c, start))
            i += 1
        elif c in "=&|":
            if expr[i + 1 : i + 2] == c:
                tokens.append(Token({"=": "EQ", "&": "AND", "|": "OR"}[c], c + c, start))
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
            tokens.append(Token("STRING", expr[start:i], start, text))
        else:
            i = read_word(start)
            word = expr[start:i]
            if not _IDENT_RE.match(word):
                symbol_error(start, i)
            if previous() == "DOT":
                tokens.append(Token("IDENT", word, start))
            elif word in ("true", "false", "null"):
                tokens.append(Token(word.upper(), word, start, _KEYWORDS[word]))
            elif word in ("NaN", "Infinity"):
                tokens.append(Token("NUMBER", word, start, _KEYWORDS[word]))
            else:
                tokens.append(Token("IDENT", word, start))
    # GitHub reports the end where the last token (or blank) began: "a." ends at 2
    tokens.append(Token("EOF", "", start))
    return tokens


# ---------------------------------------------------------------- syntax tree


@dataclass(frozen=True)
class Constant:
    value: Any


@dataclass(frozen=True)
class ContextRef:
    name: str


class Star:
    """The ``*`` of ``a.*`` and ``a[*]``."""


STAR = Star()


@dataclass(frozen=True)
class Index:
    target: Node
    index: Node | Star


@dataclass(frozen=True)
class Not:
    operand: Node


@dataclass(frozen=True)
class Compare:
    op: str  # EQ NE LT LE GT GE
    left: Node
    right: Node


@dataclass(frozen=True)
class Logical:
    op: str  # AND OR
    operands: tuple[Node, ...]


@dataclass(frozen=True)
class Call:
    name: str  # lower case
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Group:
    inner: Node


Node = Constant | ContextRef | Index | Not | Compare | Logical | Call | Group

# name -> (fewest, most) arguments
FUNCTIONS: dict[str, tuple[int, int]] = {
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
STATUS_FUNCTIONS = frozenset({"always", "cancelled", "failure", "success"})


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
        self.tokens = tokenize(expr)
        self.at = 0
        self.depth = 0

    def parse(self) -> Node | None:
        if self.peek().kind == "EOF":
            return None
        node = self.expression()
        if self.peek().kind != "EOF":
            self.fail("Unexpected symbol", self.peek())
        return node

    # -- helpers
    def peek(self) -> Token:
        return self.tokens[self.at]

    def previous(self) -> Token:
        return self.tokens[self.at - 1]

    def match(self, *kinds: str) -> bool:
        if self.peek().kind in kinds and self.peek().kind != "EOF":
            self.at += 1
            return True
        return False

    def expect(self, kind: str) -> None:
        if not self.match(kind):
            self.fail("Unexpected symbol", self.peek())

    def fail(self, what: str, token: Token) -> NoReturn:
        raise _located(what, token.shown(), token.pos, self.expr)

    def deeper(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self.fail(f"Exceeded max expression depth {MAX_DEPTH}", self.peek())

    # -- grammar
    def expression(self) -> Node:
        self.deeper()
        try:
            return self.logical("OR", self.and_)
        finally:
            self.depth -= 1

    def and_(self) -> Node:
        return self.logical("AND", self.equality)

    def logical(self, op: str, operand: Callable[[], Node]) -> Node:
        first = operand()
        if self.peek().kind != op:
            return first
        self.deeper()
        try:
            operands = [first]
            while self.match(op):
                operands.append(operand())
            return Logical(op, tuple(operands))
        finally:
            self.depth -= 1

    def equality(self) -> Node:
        node = self.comparison()
        while self.match("EQ", "NE"):
            op = self.previous().kind
            node = Compare(op, node, self.comparison())
        return node

    def comparison(self) -> Node:
        node = self.unary()
        while self.match("LT", "LE", "GT", "GE"):
            op = self.previous().kind
            node = Compare(op, node, self.unary())
        return node

    def unary(self) -> Node:
        if self.match("NOT"):
            self.deeper()
            try:
                return Not(self.unary())
            finally:
                self.depth -= 1
        return self.postfix()

    def postfix(self) -> Node:
        node = self.call()
        if not isinstance(node, (Group, Call, ContextRef)):
            return node
        entered = 0
        try:
            while True:
                if self.match("LBRACKET"):
                    index: Node | Star = STAR if self.match("STAR") else self.expression()
                    self.expect("RBRACKET")
                elif self.match("DOT"):
                    if self.match("IDENT"):
                        index = Constant(self.previous().lexeme)
                    elif self.match("STAR"):
                        index = STAR
                    else:
                        self.fail("Unexpected symbol", self.peek())
                else:
                    return node
                entered += 1
                self.deeper()
                node = Index(node, index)
        finally:
            self.depth -= entered

    def call(self) -> Node:
        if self.peek().kind != "IDENT":
            return self.primary()
        name = self.peek()
        self.at += 1
        if not self.match("LPAREN"):
            if name.lexeme.lower() not in self.names:
                self.fail("Unrecognized named-value", name)
            return ContextRef(name.lexeme)
        args: list[Node] = []
        while not self.match("RPAREN"):
            args.append(self.expression())
            if self.peek().kind != "RPAREN":
                self.expect("COMMA")
        lower = name.lexeme.lower()
        if lower not in FUNCTIONS:
            self.fail("Unrecognized function", name)
        fewest, most = FUNCTIONS[lower]
        if len(args) < fewest:
            self.fail("Too few parameters supplied", name)
        if len(args) > most:
            self.fail("Too many parameters supplied", name)
        if lower == "case" and len(args) % 2 == 0:
            self.fail(
                "Even number of parameters supplied, requires an odd number of parameters", name
            )
        return Call(lower, tuple(args))

    def primary(self) -> Node:
        if self.match("TRUE", "FALSE", "NULL", "NUMBER", "STRING"):
            return Constant(self.previous().value)
        if self.match("LPAREN"):
            inner = self.expression()
            if self.peek().kind == "EOF":
                self.fail("Unexpected end of expression", self.previous())
            self.expect("RPAREN")
            return Group(inner)
        if self.peek().kind == "EOF":
            self.fail("Unexpected end of expression", self.previous())
        self.fail("Unexpected symbol", self.peek())


def parse(expr: str, contexts: Mapping[str, Any]) -> Node | None:
    """The tree of ``expr`` (``None`` when it is empty); names must be in ``contexts``."""
    if len(expr) > MAX_LENGTH:
        raise ExpressionError(
            f"Exceeded max expression length {MAX_LENGTH}: an expression of {len(expr)} characters"
        )
    return _parse_cached(expr, frozenset(str(k).lower() for k in contexts))


@functools.lru_cache(maxsize=1024)
def _parse_cached(expr: str, names: frozenset[str]) -> Node | None:
    # A workflow evaluates the same few expressions once per matrix cell and step.
    return _Parser(expr, names).parse()
