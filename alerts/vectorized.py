"""Rules evaluated across many symbols at once with numpy: the live engine's fast path for a bar.

When the metrics of a minute close arrive, `run_alerts` holds one bar per symbol for hundreds of symbols;
evaluating each rule once over columns of all of them costs a few numpy operations instead of one closure
call per (rule, symbol). The semantics are exactly those of `alerts.rule_language` (checked by a
differential test): NaN stands for unknown, every arithmetic result that is not finite (division by zero
included) is unknown, an unknown argument makes `min`/`max` unknown, comparisons with an unknown side are
unknown, and `and`/`or`/`not` follow Kleene logic (a "true" and a "false" mask, unknown being neither). Which true results become
alerts is still decided by `CooldownTracker`, in rule order, as `evaluate_bar` does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from alerts.decisions import CooldownTracker, RuleLike
from alerts.rule_language import _coerce, _Node, _Parser

Columns = Mapping[str, np.ndarray]
NumVec = Callable[[Columns], np.ndarray | float]
BoolVec = Callable[[Columns], np.ndarray]

_COMPARE = frozenset({"<", "<=", ">", ">=", "==", "!="})
_ARITH = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide}


def _finite(values):
    """Non-finite results become NaN (unknown); scalars stay scalars."""
    if isinstance(values, np.ndarray):
        values[~np.isfinite(values)] = np.nan
        return values
    return values if math.isfinite(values) else math.nan


def _num(node: _Node) -> NumVec:
    op = node.op
    if op == "const":
        value = float(node.value)
        return lambda columns: value
    if op == "metric":
        name = node.value
        return lambda columns: columns[name]
    if op in ("neg", "abs"):
        operand = _num(node.args[0])
        function = np.negative if op == "neg" else np.abs
        return lambda columns: function(operand(columns))
    if op in ("min", "max"):
        operands = [_num(arg) for arg in node.args]
        pick = np.minimum if op == "min" else np.maximum  # both propagate NaN: unknown wins

        def extreme(columns):
            result = operands[0](columns)
            for operand in operands[1:]:
                result = pick(result, operand(columns))
            return result

        return extreme
    operands = [_num(arg) for arg in node.args]
    steps = [(_ARITH[o], operand) for o, operand in zip(node.ops, operands[1:], strict=True)]
    first = operands[0]

    def chain(columns):
        acc = first(columns)
        for function, operand in steps:
            acc = _finite(np.asarray(function(acc, operand(columns)), dtype=float)[()])
        return acc

    return chain


# A comparison with NaN on either side is False for <, <=, >, >= and ==, so "true" and "false" masks
# come from one comparison each, unknown being neither: a > b is true where a > b, false where a <= b.
_TRUE = {
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
    "==": np.equal,
}
_FALSE = {"<": ">=", "<=": ">", ">": "<=", ">=": "<"}


def _mask(op: str, a, b, size: int) -> np.ndarray:
    """Where `a op b` is true (False where either side is unknown)."""
    result = np.less(a, b) | np.greater(a, b) if op == "!=" else _TRUE[op](a, b)
    if not isinstance(result, np.ndarray):  # two constants
        return np.full(size, bool(result))
    return result


def _truth(node: _Node) -> BoolVec:
    """Where the expression is true; `_falsity` where it is false; neither where it is unknown. Only the
    masks a rule needs are computed (`and`/`or` of comparisons never need the false masks)."""
    op = node.op
    if op in _COMPARE:
        left, right = _num(node.args[0]), _num(node.args[1])
        return lambda columns: _mask(op, left(columns), right(columns), columns["__size__"])
    if op == "not":
        return _falsity(node.args[0])
    return _combine([_truth(arg) for arg in node.args], all_of=op == "and")


def _falsity(node: _Node) -> BoolVec:
    op = node.op
    if op in _COMPARE:
        left, right = _num(node.args[0]), _num(node.args[1])
        opposite = {"==": "!=", "!=": "=="}.get(op) or _FALSE[op]
        return lambda columns: _mask(opposite, left(columns), right(columns), columns["__size__"])
    if op == "not":
        return _truth(node.args[0])
    # Kleene: `and` is false where any operand is false, `or` where all are
    return _combine([_falsity(arg) for arg in node.args], all_of=op == "or")


def _combine(operands: list[BoolVec], all_of: bool) -> BoolVec:
    first, rest = operands[0], operands[1:]
    if all_of:

        def every(columns):
            result = first(columns)
            for operand in rest:
                if not result.any():
                    return result  # nothing left to be true: skip the remaining operands
                result = result & operand(columns)
            return result

        return every

    def some(columns):
        result = first(columns)
        for operand in rest:
            result = result | operand(columns)
        return result

    return some


class VectorRule:
    """One rule compiled for columns: `truth(columns)` → boolean array, True where the rule is true."""

    __slots__ = ("_evaluate", "names", "rule")

    def __init__(self, rule: RuleLike):
        self.rule = rule
        self.names = rule.compiled.metric_order
        tree = _Parser(rule.compiled.source).parse()
        self._evaluate = _truth(tree)

    def truth(self, columns: Columns) -> np.ndarray:
        with np.errstate(all="ignore"):  # overflow and division by zero are expected: they become unknown
            return self._evaluate(columns)

    def truth_of(self, rows: Sequence[Mapping[str, Any]]) -> list[bool]:
        """True where the rule is true, for metric rows (what the closures would say, row by row)."""
        return self.truth(columns_of(rows, self.names)).tolist()


def columns_of(rows: Sequence[Mapping[str, Any]], names) -> dict[str, np.ndarray]:
    """Float columns (NaN = unknown) of `names` over metric rows, coerced as the closures coerce."""
    columns: dict[str, Any] = {"__size__": len(rows)}
    nan = math.nan
    for name in names:
        values = []
        append = values.append
        for row in rows:
            value = row.get(name)
            if value.__class__ is not float:
                value = _coerce(value)
                if value is None:
                    value = nan
            append(value)
        column = np.array(values, dtype=float)
        column[~np.isfinite(column)] = np.nan
        columns[name] = column
    return columns


def decide_symbols(
    rules: Sequence[VectorRule],
    symbols: Sequence[str],
    open_times: Sequence[int],
    rows: Sequence[Mapping[str, Any]],
    tracker: CooldownTracker,
) -> list[list[RuleLike]]:
    """For bars of distinct symbols: per bar, the rules that fire, in rule order and recorded — the same
    result as `evaluate_bar` on each bar (rules in cooldown are evaluated too, but never fire)."""
    names = {name for rule in rules for name in rule.names}
    columns = columns_of(rows, names)
    fired: list[list[RuleLike]] = [[] for _ in symbols]
    marks = tracker._last  # as in evaluate_bar: the same test, inlined
    for vector in rules:
        rule = vector.rule
        slug, cooldown_ms = rule.slug, rule.cooldown_seconds * 1000
        for index in np.flatnonzero(vector.truth(columns)).tolist():
            symbol, open_time = symbols[index], open_times[index]
            last = marks.get((slug, symbol))
            if last is not None and (open_time <= last or open_time - last < cooldown_ms):
                continue
            marks[(slug, symbol)] = open_time
            fired[index].append(rule)
    return fired


def decide_series(
    rules: Sequence[VectorRule],
    symbol: str,
    open_times: Sequence[int],
    rows: Sequence[Mapping[str, Any]],
    tracker: CooldownTracker,
) -> list[tuple[int, RuleLike]]:
    """For consecutive bars of one symbol, in order: (bar index, rule) of every alert, ordered by bar then
    rule — what `evaluate_bar` bar after bar gives (each rule's cooldown only depends on its own alerts,
    so deciding rule after rule over all bars takes the same decisions)."""
    columns = columns_of(rows, {name for rule in rules for name in rule.names})
    fired: list[tuple[int, int, RuleLike]] = []
    marks = tracker._last
    for position, vector in enumerate(rules):
        rule = vector.rule
        key, cooldown_ms = (rule.slug, symbol), rule.cooldown_seconds * 1000
        for index in np.flatnonzero(vector.truth(columns)).tolist():
            open_time = open_times[index]
            last = marks.get(key)
            if last is not None and (open_time <= last or open_time - last < cooldown_ms):
                continue
            marks[key] = open_time
            fired.append((index, position, rule))
    fired.sort(key=lambda item: (item[0], item[1]))
    return [(index, rule) for index, _, rule in fired]
