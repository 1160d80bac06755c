"""The alert rule language of docs/contract.md §8: a hand-written tokenizer, a recursive-descent parser and a
compiler to a tree of closures.

Framework-free on purpose: the live engine, the backtest and Django's model validation all share it, and
user text is never handed to Python's `eval`/`ast`. A rule is parsed and type-checked once; evaluating it
afterwards is only closure calls over a metrics mapping, in three-valued (Kleene) logic where `None`
means unknown.
"""

from __future__ import annotations

import difflib
import keyword
import math
import operator
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from cryptomon.contract.names import DERIVATIVES_WINDOW_STEMS, METRIC_NAMES, TIMEFRAMES, WINDOW_STEMS

__all__ = [
    "FUNCTIONS",
    "KEYWORDS",
    "MAX_DEPTH",
    "MAX_LENGTH",
    "CompiledRule",
    "RuleError",
    "compile_rule",
    "validate_rule",
]

_METRICS = frozenset(METRIC_NAMES)
_STEMS = frozenset((*WINDOW_STEMS, *DERIVATIVES_WINDOW_STEMS))

MAX_LENGTH = 1000
MAX_DEPTH = 32
KEYWORDS = frozenset({"and", "or", "not"})
FUNCTIONS = frozenset({"abs", "min", "max"})
_COMPARISONS = frozenset({"<", "<=", ">", ">=", "==", "!="})
_WHITESPACE = " \t\r\n\f\v"

Metrics = Mapping[str, Any]
"""What a rule reads: metric name → float (or int), None or absent = unknown."""


# --- errors -----------------------------------------------------------------------------------------


class RuleError(ValueError):
    """A rule that cannot be compiled: what is wrong (`message`), where (1-based `column`) and, when we
    can tell, how to fix it (`hint`). `str()` reads as one sentence for a trader."""

    def __init__(self, message: str, column: int, hint: str | None = None, *, show_column: bool = True):
        self.message = message
        self.column = column
        self.hint = hint
        self.show_column = show_column
        text = f"{message} at column {column}" if show_column else message
        if hint:
            text = f"{text} — {hint}"
        super().__init__(text)

    def __reduce__(self):  # keeps the error picklable (Celery, multiprocessing) despite the custom init
        return (_rebuild_error, (self.message, self.column, self.hint, self.show_column))


def _rebuild_error(message: str, column: int, hint: str | None, show_column: bool) -> RuleError:
    return RuleError(message, column, hint, show_column=show_column)


# --- tokenizer --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "num", "name", "kw", "op", "end" or "bad"
    text: str
    pos: int  # 0-based offset into the source
    value: float = 0.0
    error: RuleError | None = None

    @property
    def column(self) -> int:
        return self.pos + 1

    def describe(self) -> str:
        return "the end of the expression" if self.kind == "end" else f"'{_short(self.text)}'"


_TOKEN_RE = re.compile(
    r"""
    (?P<ws>[ \t\r\n\f\v]+)
  | (?P<num>[0-9][0-9A-Za-z_.]*|\.[0-9][0-9A-Za-z_.]*)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><=|>=|==|!=|\*\*|//|&&|\|\||[-+*/<>(),=!&|%.\[\]'"])
    """,
    re.VERBOSE,
)
_NUMBER_RE = re.compile(r"[0-9]+(?:_[0-9]+)*(?:\.[0-9]+(?:_[0-9]+)*)?")
_UNSUPPORTED_OPS = {
    "**": ("'**' (power) is not supported", None),
    "//": ("'//' is not supported", "use '/'"),
    "%": ("'%' is not supported", None),
    "=": ("unexpected '='", "did you mean '=='?"),
    "!": ("unexpected '!'", "did you mean '!=' or 'not'?"),
    "&": ("unexpected '&'", "did you mean 'and'?"),
    "&&": ("unexpected '&&'", "did you mean 'and'?"),
    "|": ("unexpected '|'", "did you mean 'or'?"),
    "||": ("unexpected '||'", "did you mean 'or'?"),
    "[": ("unexpected '['", "subscripts are not supported"),
    "]": ("unexpected ']'", "subscripts are not supported"),
    "'": ("unexpected quote", "strings are not supported"),
    '"': ("unexpected quote", "strings are not supported"),
}
_LOOKALIKES = {
    "−": "-",
    "–": "-",
    "—": "-",
    "×": "*",
    "·": "*",
    "÷": "/",
    "≥": ">=",
    "≤": "<=",
    "≠": "!=",
    "＞": ">",
    "＜": "<",
    "＝": "==",
    "（": "(",
    "）": ")",
    "，": ",",
}


def _tokenize(text: str) -> Iterator[_Token]:
    """Yield tokens lazily; a malformed piece becomes a "bad" token so errors surface in reading order."""
    pos, length = 0, len(text)
    while pos < length:
        match = _TOKEN_RE.match(text, pos)
        if match is None:
            yield _bad_character(text[pos], pos)
            pos += 1
            continue
        kind, piece = match.lastgroup, match.group()
        if kind == "num":
            yield _number_token(piece, pos)
        elif kind == "name":
            yield _Token("kw" if piece in KEYWORDS else "name", piece, pos)
        elif kind == "op":
            if piece in _UNSUPPORTED_OPS:
                message, hint = _UNSUPPORTED_OPS[piece]
                yield _Token("bad", piece, pos, error=RuleError(message, pos + 1, hint))
            elif piece == ".":
                hint = "attributes are not supported" if text[pos + 1 : pos + 2].isalpha() else None
                yield _Token("bad", piece, pos, error=RuleError("unexpected '.'", pos + 1, hint))
            else:
                yield _Token("op", piece, pos)
        pos = match.end()
    yield _Token("end", "", length)


def _bad_character(char: str, pos: int) -> _Token:
    shown = f"'{char}'" if char.isprintable() and not char.isspace() else f"U+{ord(char):04X}"
    hint = f"use '{_LOOKALIKES[char]}'" if char in _LOOKALIKES else None
    return _Token("bad", char, pos, error=RuleError(f"unexpected character {shown}", pos + 1, hint))


def _number_token(piece: str, pos: int) -> _Token:
    if not _NUMBER_RE.fullmatch(piece):
        error = RuleError(f"invalid number '{_short(piece)}'", pos + 1, _number_hint(piece))
        return _Token("bad", piece, pos, error=error)
    value = float(piece.replace("_", ""))
    if not math.isfinite(value):
        error = RuleError(f"number '{_short(piece)}' is too large", pos + 1)
        return _Token("bad", piece, pos, error=error)
    return _Token("num", piece, pos, value=value)


def _number_hint(piece: str) -> str:
    """Why a digit-led run is not a NUMBER (digits, single '_' between digits, optional .digits)."""
    if piece.startswith("."):
        return f"write 0{piece}" if re.fullmatch(r"\.[0-9]+", piece) else "a number starts with a digit"
    if re.fullmatch(r"[0-9_]+(?:\.[0-9_]*)?", piece):
        if "__" in piece or re.search(r"_$|_\.|\._", piece):
            return "'_' may only stand between two digits"
        return "a decimal point needs digits after it"
    if piece.count(".") > 1 and re.fullmatch(r"[0-9_.]+", piece):
        return "a number has at most one decimal point"
    if re.match(r"[0-9_]+(?:\.[0-9_]+)?[eE]", piece):
        return "exponent notation is not supported; write the digits out"
    if re.match(r"0[xXbBoO]", piece):
        return "only decimal numbers are supported"
    return "put an operator or a space between a number and a name"


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _tail(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


# --- parser -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Node:
    """A type-checked syntax node. `op` is "const", "metric", "neg", "arith", "abs", "min", "max", a
    comparison operator, "not", "and" or "or"; "arith" keeps a left-associative chain flat (`ops` are its
    operators) so long sums never turn into deep recursion."""

    op: str
    start: int
    end: int
    is_bool: bool
    args: tuple[_Node, ...] = ()
    ops: tuple[str, ...] = ()
    value: Any = None


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = _tokenize(text)
        self.current = next(self.tokens)
        self.previous: _Token | None = None
        self.depth = 0
        self.names: dict[str, None] = {}  # referenced metrics, in order of first appearance

    # token helpers

    def peek(self) -> _Token:
        if self.current.kind == "bad":
            raise self.current.error  # type: ignore[misc]
        return self.current

    def advance(self) -> _Token:
        token = self.peek()
        self.previous = token
        self.current = next(self.tokens, token)
        return token

    def at(self, kind: str, *texts: str) -> bool:
        token = self.peek()
        return token.kind == kind and (not texts or token.text in texts)

    def enter(self, token: _Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise RuleError(f"nesting deeper than {MAX_DEPTH}", token.column)

    def leave(self) -> None:
        self.depth -= 1

    def snippet(self, node: _Node) -> str:
        return self.text[node.start : node.end]

    # type checks

    def need_bool(self, node: _Node) -> _Node:
        if node.is_bool:
            return node
        token = self.peek()
        message = f"expected a comparison operator after '{_tail(self.snippet(node))}'"
        if token.kind != "end":
            message += f", found {token.describe()}"
        raise RuleError(message, token.column, "a rule is made of comparisons, e.g. change_1h > 2")

    def need_num(self, node: _Node) -> _Node:
        if not node.is_bool:
            return node
        raise RuleError(
            f"expected a number but '{_short(self.snippet(node))}' is a condition (true or false)",
            node.start + 1,
            "arithmetic, comparisons and functions take numbers",
        )

    # grammar: expr := or; or := and ("or" and)*; and := not ("and" not)*

    def parse(self) -> _Node:
        node = self.need_bool(self.parse_or())
        token = self.peek()
        if token.kind != "end":
            hint = None if token.text == ")" else "expected 'and', 'or' or the end of the expression"
            raise RuleError(f"unexpected {token.describe()}", token.column, hint)
        return node

    def parse_or(self) -> _Node:
        return self._logical("or", self.parse_and)

    def parse_and(self) -> _Node:
        return self._logical("and", self.parse_not)

    def _logical(self, word: str, operand: Callable[[], _Node]) -> _Node:
        first = operand()
        if not self.at("kw", word):
            return first
        items = [self.need_bool(first)]
        while self.at("kw", word):
            self.advance()
            items.append(self.need_bool(operand()))
        return _Node(word, first.start, items[-1].end, True, args=tuple(items))

    # not := "not" not | cmp

    def parse_not(self) -> _Node:
        if not self.at("kw", "not"):
            return self.parse_cmp()
        token = self.advance()
        self.enter(token)
        operand = self.need_bool(self.parse_not())
        self.leave()
        return _Node("not", token.pos, operand.end, True, args=(operand,))

    # cmp := sum (op sum)?

    def parse_cmp(self) -> _Node:
        left = self.parse_sum()
        if not self.at("op", *_COMPARISONS):
            return left
        self.need_num(left)
        op = self.advance().text
        right = self.need_num(self.parse_sum())
        if self.at("op", *_COMPARISONS):
            raise RuleError(
                "comparisons cannot be chained",
                self.current.column,
                "write each comparison separately, e.g. a < b and b < c",
            )
        return _Node(op, left.start, right.end, True, args=(left, right))

    # sum := term (("+"|"-") term)*; term := unary (("*"|"/") unary)*

    def parse_sum(self) -> _Node:
        return self._chain(("+", "-"), self.parse_term)

    def parse_term(self) -> _Node:
        return self._chain(("*", "/"), self.parse_unary)

    def _chain(self, symbols: tuple[str, ...], operand: Callable[[], _Node]) -> _Node:
        first = operand()
        if not self.at("op", *symbols):
            return first
        items, ops = [self.need_num(first)], []
        while self.at("op", *symbols):
            ops.append(self.advance().text)
            items.append(self.need_num(operand()))
        return _Node("arith", first.start, items[-1].end, False, args=tuple(items), ops=tuple(ops))

    # unary := "-" unary | atom

    def parse_unary(self) -> _Node:
        if not self.at("op", "-"):
            return self.parse_atom()
        token = self.advance()
        self.enter(token)
        operand = self.need_num(self.parse_unary())
        self.leave()
        return _Node("neg", token.pos, operand.end, False, args=(operand,))

    # atom := NUMBER | NAME | ("abs"|"min"|"max") "(" sum ("," sum)* ")" | "(" expr ")"

    def parse_atom(self) -> _Node:
        token = self.peek()
        if token.kind == "num":
            self.advance()
            return _Node("const", token.pos, token.pos + len(token.text), False, value=token.value)
        if token.kind == "name":
            return self._name(token)
        if token.kind == "op" and token.text == "(":
            self.advance()
            self.enter(token)
            inner = self.parse_or()
            self._close(token, "expected ')', an operator, 'and' or 'or'")
            self.leave()
            return replace(inner, start=token.pos, end=self.previous.pos + 1)  # type: ignore[union-attr]
        if token.kind == "end":
            after = f" after {self.previous.describe()}" if self.previous else ""
            raise RuleError(
                f"the expression ends too early{after}", token.column, "expected a number, a metric or '('"
            )
        hint = None if token.text == ")" else "expected a number, a metric or '('"
        raise RuleError(f"unexpected {token.describe()}", token.column, hint)

    def _close(self, opening: _Token, hint: str) -> None:
        token = self.peek()
        if token.kind == "end":
            raise RuleError("unclosed '('", opening.column, "add the missing ')'")
        if not (token.kind == "op" and token.text == ")"):
            raise RuleError(f"unexpected {token.describe()}", token.column, hint)
        self.advance()

    def _name(self, token: _Token) -> _Node:
        name = token.text
        self.advance()
        # Look without peek(): a malformed next token must not hide a problem with this name.
        followed_by_paren = self.current.kind == "op" and self.current.text == "("
        if name in FUNCTIONS:
            if not followed_by_paren:
                raise RuleError(f"{name} needs parentheses", token.column, f"e.g. {name}(change_1h)")
            return self._call(token)
        if followed_by_paren:
            if name in _METRICS:
                raise RuleError(f"'{name}' is a metric, not a function", token.column)
            raise RuleError(f"unknown function '{name}'", token.column, "the functions are abs, min and max")
        if name not in _METRICS:
            raise _unknown_name(name, token.column)
        self.names.setdefault(name)
        return _Node("metric", token.pos, token.pos + len(name), False, value=name)

    def _call(self, name: _Token) -> _Node:
        opening = self.advance()
        self.enter(name)
        if self.at("op", ")"):
            raise RuleError(f"{name.text}() needs at least one argument", self.current.column)
        args = [self.need_num(self.parse_sum())]
        while self.at("op", ","):
            self.advance()
            args.append(self.need_num(self.parse_sum()))
        self._close(opening, "expected ',' or ')'")
        self.leave()
        if name.text == "abs" and len(args) != 1:
            raise RuleError("abs takes exactly one argument", name.column, f"it was given {len(args)}")
        end = self.previous.pos + 1  # type: ignore[union-attr]
        return _Node(name.text, name.pos, end, False, args=tuple(args))


def _unknown_name(name: str, column: int) -> RuleError:
    """The most useful thing to say about a NAME that is not a §7 metric."""
    lower = name.lower()
    if re.fullmatch(r"_+[0-9][0-9_]*", name):
        return RuleError(f"invalid number '{name}'", column, "'_' may only stand between two digits")
    if lower in KEYWORDS:
        return RuleError(f"unknown metric '{name}'", column, f"keywords are lowercase: {lower}")
    if lower in _METRICS:
        return RuleError(f"unknown metric '{name}'", column, f"did you mean {lower}? (names are lowercase)")
    if lower in FUNCTIONS:
        return RuleError(f"unknown metric '{name}'", column, f"function names are lowercase: {lower}")
    if keyword.iskeyword(name) or lower in {"true", "false", "none", "null"}:
        return RuleError(f"'{name}' is not part of the rule language", column)
    match = re.fullmatch(r"([a-z_]+)_([0-9]+[a-z]+)", lower)
    if match and match.group(1) in _STEMS and match.group(2) not in TIMEFRAMES:
        windows = ", ".join(TIMEFRAMES[:-1]) + f" and {TIMEFRAMES[-1]}"
        return RuleError(f"unknown metric '{name}'", column, f"the windows are {windows}")
    close = difflib.get_close_matches(name, METRIC_NAMES, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else "see the list of metric names"
    return RuleError(f"unknown metric '{name}'", column, hint)


# --- compiler: syntax tree → closures ----------------------------------------------------------------

NumFn = Callable[[Metrics], float | None]
BoolFn = Callable[[Metrics], bool | None]


@dataclass(frozen=True, slots=True)
class _Const:
    """A folded constant (number, truth value or None = unknown)."""

    value: Any


@dataclass(frozen=True, slots=True)
class _Metric:
    """A metric leaf, kept symbolic so comparisons and arithmetic can inline the lookup."""

    name: str


_NAN = math.nan


def _div(a: float, b: float) -> float:
    return a / b if b else _NAN  # NaN then fails the finiteness check: division by zero → unknown


_ARITH: dict[str, Callable[[float, float], float]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": _div,
}
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


def _coerce(value: Any) -> float | None:
    """Slow path of a metric lookup: None, ints, Decimals and the like → finite float or unknown."""
    if value is None or isinstance(value, str | bytes):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _lookup(name: str) -> NumFn:
    def get(metrics: Metrics) -> float | None:
        value = metrics.get(name)
        if value.__class__ is float:
            return value if value - value == 0.0 else None  # x - x is 0 only for finite x
        return _coerce(value)

    return get


def _num(compiled: _Const | _Metric | NumFn) -> NumFn:
    if isinstance(compiled, _Const):
        value = compiled.value
        return lambda metrics: value
    if isinstance(compiled, _Metric):
        return _lookup(compiled.name)
    return compiled


def _compile_num(node: _Node) -> _Const | _Metric | NumFn:
    op = node.op
    if op == "const":
        return _Const(node.value)
    if op == "metric":
        return _Metric(node.value)
    if op == "neg":
        return _compile_neg(_compile_num(node.args[0]))
    if op == "arith":
        return _compile_arith([_compile_num(arg) for arg in node.args], node.ops)
    if op == "abs":
        return _compile_abs(_compile_num(node.args[0]))
    return _compile_minmax(min if op == "min" else max, [_compile_num(arg) for arg in node.args])


def _compile_neg(operand: _Const | _Metric | NumFn) -> _Const | NumFn:
    if isinstance(operand, _Const):
        return _Const(None if operand.value is None else -operand.value)
    fn = _num(operand)

    def neg(metrics: Metrics) -> float | None:
        value = fn(metrics)
        return None if value is None else -value

    return neg


def _compile_abs(operand: _Const | _Metric | NumFn) -> _Const | NumFn:
    if isinstance(operand, _Const):
        return _Const(None if operand.value is None else abs(operand.value))
    fn = _num(operand)

    def absolute(metrics: Metrics) -> float | None:
        value = fn(metrics)
        return None if value is None else abs(value)

    return absolute


def _compile_minmax(
    pick: Callable[..., float], operands: list[_Const | _Metric | NumFn]
) -> _Const | _Metric | NumFn:
    if any(isinstance(o, _Const) and o.value is None for o in operands):
        return _Const(None)  # an unknown argument makes the whole call unknown
    if all(isinstance(o, _Const) for o in operands):
        return _Const(pick(o.value for o in operands))  # type: ignore[union-attr]
    if len(operands) == 1:
        return operands[0]  # type: ignore[return-value]
    fns = tuple(_num(o) for o in operands)

    def extreme(metrics: Metrics) -> float | None:
        values = []
        for fn in fns:
            value = fn(metrics)
            if value is None:
                return None
            values.append(value)
        return pick(values)

    return extreme


def _apply(op: str, a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    result = _ARITH[op](a, b)
    return result if math.isfinite(result) else None


def _compile_arith(
    operands: list[_Const | _Metric | NumFn], ops: tuple[str, ...]
) -> _Const | _Metric | NumFn:
    """A left-associative chain `a op b op c ...`; any unknown step makes the rest unknown."""
    if any(isinstance(o, _Const) and o.value is None for o in operands):
        return _Const(None)
    if any(
        op == "/" and isinstance(o, _Const) and o.value == 0 for op, o in zip(ops, operands[1:], strict=True)
    ):
        return _Const(None)  # a constant zero divisor: unknown whatever the dividend
    # Fold a constant prefix only: folding later constants would reorder float operations.
    head = operands[0]
    rest = list(zip(ops, operands[1:], strict=True))
    while rest and isinstance(head, _Const) and isinstance(rest[0][1], _Const):
        op, right = rest.pop(0)
        head = _Const(_apply(op, head.value, right.value))
        if head.value is None:
            return head
    if not rest:
        return head
    if len(rest) == 1:
        return _compile_binary(rest[0][0], head, rest[0][1])
    first = _num(head)
    steps = tuple((_ARITH[op], _num(o)) for op, o in rest)

    def chain(metrics: Metrics) -> float | None:
        acc = first(metrics)
        if acc is None:
            return None
        for fn, operand in steps:
            value = operand(metrics)
            if value is None:
                return None
            acc = fn(acc, value)
            if acc - acc != 0.0:
                return None
        return acc

    return chain


def _compile_binary(op: str, left: _Const | _Metric | NumFn, right: _Const | _Metric | NumFn) -> NumFn:
    fn = _ARITH[op]
    if isinstance(right, _Const):
        constant, operand = right.value, _num(left)

        def with_right_constant(metrics: Metrics) -> float | None:
            value = operand(metrics)
            if value is None:
                return None
            result = fn(value, constant)
            return result if result - result == 0.0 else None

        return with_right_constant
    if isinstance(left, _Const):
        constant, operand = left.value, _num(right)

        def with_left_constant(metrics: Metrics) -> float | None:
            value = operand(metrics)
            if value is None:
                return None
            result = fn(constant, value)
            return result if result - result == 0.0 else None

        return with_left_constant
    left_fn, right_fn = _num(left), _num(right)

    def binary(metrics: Metrics) -> float | None:
        a = left_fn(metrics)
        if a is None:
            return None
        b = right_fn(metrics)
        if b is None:
            return None
        result = fn(a, b)
        return result if result - result == 0.0 else None

    return binary


def _compile_bool(node: _Node) -> _Const | BoolFn:
    op = node.op
    if op in _COMPARE:
        return _compile_compare(op, _compile_num(node.args[0]), _compile_num(node.args[1]))
    if op == "not":
        return _compile_not(_compile_bool(node.args[0]))
    return _compile_logical(op == "and", [_compile_bool(arg) for arg in node.args])


def _compile_compare(
    op: str, left: _Const | _Metric | NumFn, right: _Const | _Metric | NumFn
) -> _Const | BoolFn:
    compare = _COMPARE[op]
    if isinstance(left, _Const) and isinstance(right, _Const):
        known = left.value is not None and right.value is not None
        return _Const(compare(left.value, right.value) if known else None)
    if (isinstance(right, _Const) and right.value is None) or (
        isinstance(left, _Const) and left.value is None
    ):
        return _Const(None)
    if isinstance(left, _Metric) and isinstance(right, _Const):
        return _compare_metric_constant(compare, left.name, right.value)
    if isinstance(left, _Metric) and isinstance(right, _Metric):
        return _compare_metrics(compare, left.name, right.name)
    if isinstance(right, _Const):
        constant, operand = right.value, _num(left)

        def with_right_constant(metrics: Metrics) -> bool | None:
            value = operand(metrics)
            return None if value is None else compare(value, constant)

        return with_right_constant
    if isinstance(left, _Const):
        constant, operand = left.value, _num(right)

        def with_left_constant(metrics: Metrics) -> bool | None:
            value = operand(metrics)
            return None if value is None else compare(constant, value)

        return with_left_constant
    left_fn, right_fn = _num(left), _num(right)

    def both(metrics: Metrics) -> bool | None:
        a = left_fn(metrics)
        if a is None:
            return None
        b = right_fn(metrics)
        return None if b is None else compare(a, b)

    return both


def _compare_metric_constant(compare: Callable[[float, float], bool], name: str, constant: float) -> BoolFn:
    """`metric op NUMBER`, the commonest comparison, with the lookup inlined."""

    def metric_vs_constant(metrics: Metrics) -> bool | None:
        value = metrics.get(name)
        if value.__class__ is not float:
            value = _coerce(value)
            if value is None:
                return None
        elif value - value != 0.0:
            return None
        return compare(value, constant)

    return metric_vs_constant


def _compare_metrics(compare: Callable[[float, float], bool], left: str, right: str) -> BoolFn:
    """`metric op metric` (e.g. change_8h > change_1h), with both lookups inlined."""

    def metric_vs_metric(metrics: Metrics) -> bool | None:
        a = metrics.get(left)
        if a.__class__ is not float:
            a = _coerce(a)
            if a is None:
                return None
        elif a - a != 0.0:
            return None
        b = metrics.get(right)
        if b.__class__ is not float:
            b = _coerce(b)
            if b is None:
                return None
        elif b - b != 0.0:
            return None
        return compare(a, b)

    return metric_vs_metric


def _compile_not(operand: _Const | BoolFn) -> _Const | BoolFn:
    if isinstance(operand, _Const):
        return _Const(None if operand.value is None else not operand.value)

    def negate(metrics: Metrics) -> bool | None:
        value = operand(metrics)
        return None if value is None else not value

    return negate


def _compile_logical(is_and: bool, operands: list[_Const | BoolFn]) -> _Const | BoolFn:
    """Kleene and/or: the deciding value (False for and, True for or) wins over unknown."""
    decisive = not is_and
    unknown = False
    fns: list[BoolFn] = []
    for operand in operands:
        if isinstance(operand, _Const):
            if operand.value is decisive:
                return _Const(decisive)
            unknown = unknown or operand.value is None
        else:
            fns.append(operand)
    if not fns:
        return _Const(None if unknown else not decisive)
    if len(fns) == 1 and not unknown:
        return fns[0]
    functions = tuple(fns)
    undecided: bool | None = None if unknown else not decisive

    def logical(metrics: Metrics) -> bool | None:
        result = undecided
        for fn in functions:
            value = fn(metrics)
            if value is decisive:
                return decisive
            if value is None:
                result = None
        return result

    return logical


# --- public API -------------------------------------------------------------------------------------


class CompiledRule:
    """A rule compiled once. Call it with a metrics mapping: True (fire), False, or None (unknown)."""

    __slots__ = ("evaluate", "metric_order", "names", "source")

    def __init__(self, source: str, metric_order: tuple[str, ...], evaluate: BoolFn):
        self.source = source
        self.metric_order = metric_order  # referenced metrics in order of first appearance
        self.names = frozenset(metric_order)
        self.evaluate = evaluate  # the bare closure, for hot loops

    def __call__(self, metrics: Metrics) -> bool | None:
        return self.evaluate(metrics)

    def __repr__(self) -> str:
        return f"CompiledRule({self.source!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CompiledRule) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)


def compile_rule(text: str) -> CompiledRule:
    """Parse, type-check and compile a §8 expression; raise RuleError naming the problem and its column."""
    if not isinstance(text, str):
        raise TypeError(f"a rule expression is a str, not {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise RuleError(
            f"expression is longer than {MAX_LENGTH} characters",
            MAX_LENGTH + 1,
            f"it has {len(text)}",
            show_column=False,
        )
    if not text.strip(_WHITESPACE):
        raise RuleError("expression is empty", 1, show_column=False)
    parser = _Parser(text)
    tree = parser.parse()
    compiled = _compile_bool(tree)
    if isinstance(compiled, _Const):
        value = compiled.value

        def evaluate(metrics: Metrics) -> bool | None:
            return value

    else:
        evaluate = compiled
    return CompiledRule(text, tuple(parser.names), evaluate)


def validate_rule(text: str) -> None:
    """Raise RuleError if `text` is not a valid rule (for model and form validation)."""
    compile_rule(text)
