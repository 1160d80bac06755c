"""The §8 rule language: what it accepts, what it refuses (and how it says so), and three-valued evaluation."""

from __future__ import annotations

import math
import pickle
import random
import time
from decimal import Decimal

import pytest

from alerts.rule_language import (
    MAX_DEPTH,
    MAX_LENGTH,
    CompiledRule,
    RuleError,
    compile_rule,
    validate_rule,
)
from cryptomon.contract.names import METRIC_NAMES

T, F, U = True, False, None


def evaluate(expression: str, **metrics: object) -> bool | None:
    return compile_rule(expression)(metrics)


def refusal(expression: str) -> RuleError:
    with pytest.raises(RuleError) as caught:
        compile_rule(expression)
    return caught.value


# --- metric names --------------------------------------------------------------------------------


def test_metric_names_are_every_name_of_sections_7_and_7b_in_order():
    windows = ("5m", "15m", "1h", "4h", "8h", "1d")
    stems = ("open", "high", "low", "change", "volume", "volume_ratio", "trades", "taker_buy_ratio")
    indicators = ("rsi_14", "macd", "macd_signal", "macd_hist", "bb_upper", "bb_middle", "bb_lower", "vcp")
    derivatives = ("mark_price", "index_price", "basis", "funding_rate", "funding_apr", "oi")
    derivative_stems = ("oi_change", "liq_long", "liq_short")
    expected = (
        "price",
        *(f"{s}_{w}" for w in windows for s in stems),
        *indicators,
        *derivatives,
        *(f"{s}_{w}" for w in windows for s in derivative_stems),
    )
    assert expected == METRIC_NAMES
    assert len(set(METRIC_NAMES)) == len(METRIC_NAMES) == 57 + 6 + 18


@pytest.mark.parametrize(
    ("typo", "hint"),
    [
        ("oi_change_2h", "the windows are 5m, 15m, 1h, 4h, 8h and 1d"),
        ("liq_long_30m", "the windows are 5m, 15m, 1h, 4h, 8h and 1d"),
        ("funding_arp", "did you mean funding_apr?"),
        ("liq_longs_5m", "did you mean liq_long_5m?"),
        ("Basis", "did you mean basis? (names are lowercase)"),
    ],
)
def test_a_misspelt_derivatives_name_is_refused_with_the_nearest_name(typo, hint):
    error = refusal(f"{typo} > 0")
    assert f"unknown metric '{typo}'" in str(error) and hint in str(error)


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_every_metric_name_can_be_used_in_a_rule(name):
    rule = compile_rule(f"{name} > 0")
    assert rule.names == frozenset({name})
    assert rule({name: 1.0}) is True


# --- accepted -------------------------------------------------------------------------------------

ACCEPTED = [
    "price > 0",
    "change_1h >= -1.5",
    "change_1h<=1",
    "change_1h == 0",
    "change_1h != 0",
    "0 < price",
    "-change_1h < 2",
    "- -change_1h < 2",
    "abs(change_1h) > 2",
    "min(change_5m) > 0",
    "max(change_5m, change_15m, change_1h) > 1",
    "min(change_5m, -1, abs(change_1h) * 2) < 0",
    "(change_1h > 1)",
    "((change_1h)) > 1",
    "not (change_1h > 1)",
    "not not change_1h > 1",
    "volume_1h > 1_000",
    "volume_1h > 1_000_000.5",
    "volume_1h > 1_000.000_1",
    "volume_1h > 0.5",
    "volume_1h > 007",
    "(price + 1) * 2 > 3",
    "price/2>1",
    "price >\n\t1",
    "  price > 1  ",
    "rsi_14 > 70 or rsi_14 < 30",
    "rsi_14 > 70 and macd > macd_signal or not vcp < 0",
    "(rsi_14 > 70 or rsi_14 < 30) and volume_1h > 1",
    "1 > 0",
    "price - 1 - 1 > 0",
    "price > -(-1)",
]


@pytest.mark.parametrize("expression", ACCEPTED)
def test_it_accepts_the_grammar_of_design_section_8(expression):
    rule = compile_rule(expression)
    assert isinstance(rule, CompiledRule)
    assert rule.source == expression
    validate_rule(expression)


# --- refused --------------------------------------------------------------------------------------

REFUSED = [
    # (expression, text the message must contain, column)
    ("chnage_1h > 1", "unknown metric 'chnage_1h' at column 1 — did you mean change_1h?", 1),
    ("price > 1 and vlume_1h > 2", "unknown metric 'vlume_1h'", 15),
    ("change_2h > 1", "the windows are 5m, 15m, 1h, 4h, 8h and 1d", 1),
    ("Change_1h > 1", "did you mean change_1h?", 1),
    ("price > 1 AND vcp > 1", "unexpected 'AND'", 11),
    ("AND > 1", "keywords are lowercase: and", 1),
    ("foo > 1", "unknown metric 'foo'", 1),
    ("open > 1", "unknown metric 'open'", 1),
    ("change_1h", "expected a comparison operator after 'change_1h' at column 10", 10),
    ("change_1h + 1", "expected a comparison operator after 'change_1h + 1'", 14),
    ("not change_1h", "expected a comparison operator after 'change_1h'", 14),
    ("change_1h > 1 and volume_1h", "expected a comparison operator after 'volume_1h'", 28),
    ("volume_1h or price > 1", "expected a comparison operator after 'volume_1h', found 'or'", 11),
    ("(price)", "expected a comparison operator after '(price)'", 8),
    ("1", "expected a comparison operator", 2),
    ("(price > 1) + 1 > 2", "'(price > 1)' is a condition", 1),
    ("-(price > 1) < 0", "'(price > 1)' is a condition", 2),
    ("(price > 1) > (vcp > 1)", "'(price > 1)' is a condition", 1),
    ("abs(price > 1) > 0", "unexpected '>'", 11),
    ("max(price, (vcp > 1)) > 0", "'(vcp > 1)' is a condition", 12),
    ("price < vcp < 1", "comparisons cannot be chained", 13),
    ("price == vcp == 1", "comparisons cannot be chained", 14),
    ("price > not vcp > 1", "unexpected 'not'", 9),
    ("1__0 > price", "invalid number '1__0'", 1),
    ("_1 > price", "invalid number '_1'", 1),
    ("1_ > price", "invalid number '1_'", 1),
    ("price > 1.", "a decimal point needs digits after it", 9),
    ("price > .5", "write 0.5", 9),
    ("price > 1e5", "exponent notation is not supported", 9),
    ("price > 1.2.3", "at most one decimal point", 9),
    ("price > 0x10", "only decimal numbers", 9),
    ("price > 2vcp", "invalid number '2vcp'", 9),
    ("price > 1_000._5", "'_' may only stand between two digits", 9),
    ("price > +1", "unexpected '+'", 9),
    ("price ** 2 > 1", "'**' (power) is not supported", 7),
    ("price // 2 > 1", "'//' is not supported", 7),
    ("price % 2 > 1", "'%' is not supported", 7),
    ("price = 1", "did you mean '=='?", 7),
    ("!price > 1", "did you mean '!=' or 'not'?", 1),
    ("price > 1 && vcp > 1", "did you mean 'and'?", 11),
    ("price > 1 || vcp > 1", "did you mean 'or'?", 11),
    ("price > 1 & vcp > 1", "did you mean 'and'?", 11),
    ("price.real > 1", "attributes are not supported", 6),
    ("price[0] > 1", "subscripts are not supported", 6),
    ("price > 'a'", "strings are not supported", 9),
    ('price > "a"', "strings are not supported", 9),
    ("sqrt(price) > 1", "unknown function 'sqrt'", 1),
    ("__import__('os') > 1", "unknown function '__import__'", 1),
    ("price(1) > 1", "'price' is a metric, not a function", 1),
    ("lambda: price > 1", "'lambda' is not part of the rule language", 1),
    ("price if vcp else 1 > 0", "expected a comparison operator after 'price', found 'if'", 7),
    ("True", "'True' is not part of the rule language", 1),
    ("price > 1 ; vcp > 1", "unexpected character ';'", 11),
    ("price > 1 # comment", "unexpected character '#'", 11),
    ("price −1 > 0", "use '-'", 7),
    ("price ≥ 1", "use '>='", 7),
    ("price\u00a0> 1", "unexpected character U+00A0", 6),
    ("abs(price, vcp) > 1", "abs takes exactly one argument", 1),
    ("min() > 1", "min() needs at least one argument", 5),
    ("abs > 1", "abs needs parentheses", 1),
    ("max(price vcp) > 1", "expected ',' or ')'", 11),
    ("max(price, ) > 1", "unexpected ')'", 12),
    ("price > 1)", "unexpected ')' at column 10", 10),
    ("(price > 1", "unclosed '('", 1),
    ("abs(price > 1", "unexpected '>'", 11),
    ("max(price, vcp", "unclosed '('", 4),
    ("() > 1", "unexpected ')'", 2),
    ("price > 1 vcp > 1", "unexpected 'vcp'", 11),
    ("price >", "ends too early after '>'", 8),
    ("price > 1 and", "ends too early after 'and'", 14),
    ("> 1", "unexpected '>'", 1),
    ("and price > 1", "unexpected 'and'", 1),
    ("price > 1 and or vcp > 1", "unexpected 'or'", 15),
    (",", "unexpected ','", 1),
]


@pytest.mark.parametrize(("expression", "says", "column"), REFUSED)
def test_it_refuses_what_is_not_the_grammar_naming_the_problem_and_its_column(expression, says, column):
    error = refusal(expression)
    assert says in str(error)
    assert error.column == column
    assert f"at column {column}" in str(error) or error.show_column is False
    with pytest.raises(RuleError):
        validate_rule(expression)


def test_it_names_the_unknown_metric_and_suggests_a_fix():
    error = refusal("chnage_1h > 1")
    assert str(error) == "unknown metric 'chnage_1h' at column 1 — did you mean change_1h?"
    assert (error.message, error.column, error.hint) == (
        "unknown metric 'chnage_1h'",
        1,
        "did you mean change_1h?",
    )
    assert isinstance(error, ValueError)


def test_the_first_problem_in_reading_order_is_the_one_reported():
    assert refusal("chnage_1h > 1 ** 2").column == 1
    assert refusal("price > 1 ** 2 and foo > 1").column == 11


def test_an_empty_expression_is_refused():
    for text in ("", "   ", "\n\t"):
        assert str(refusal(text)) == "expression is empty"


def test_a_rule_error_survives_pickling():
    error = refusal("chnage_1h > 1")
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.column, copy.message) == (str(error), error.column, error.message)


def test_a_non_string_expression_is_a_type_error():
    with pytest.raises(TypeError):
        compile_rule(None)  # type: ignore[arg-type]


# --- limits and hostile input --------------------------------------------------------------------


def test_an_expression_of_exactly_1000_characters_is_accepted_and_1001_refused():
    body = " and ".join(["price > 1"] * 70)
    exact = body + " " * (MAX_LENGTH - len(body))
    assert len(exact) == MAX_LENGTH
    compile_rule(exact)
    error = refusal(exact + " ")
    assert str(error).startswith("expression is longer than 1000 characters")


def _nested(construct: str, depth: int) -> str:
    if construct == "paren":
        return "(" * depth + "price" + ")" * depth + " > 0"
    if construct == "not":
        return "not " * depth + "price > 0"
    if construct == "minus":
        return "-" * depth + "price > 0"
    if construct == "abs":
        return "abs(" * depth + "price" + ")" * depth + " > 0"
    if construct == "mixed":
        parts = ["(", "-", "abs(", "min("]
        opening = "".join(parts[i % 4] for i in range(depth))
        closing = "".join("" if parts[i % 4] == "-" else ")" for i in reversed(range(depth)))
        return opening + "price" + closing + " > 0"
    if construct == "not_paren":  # not (not (... price > 0)): two levels per "not ("
        return "not " * (depth % 2) + "not (" * (depth // 2) + "price > 0" + ")" * (depth // 2)
    raise AssertionError(construct)


@pytest.mark.parametrize("construct", ["paren", "not", "minus", "abs", "mixed", "not_paren"])
def test_nesting_up_to_32_is_accepted_and_33_refused(construct):
    assert compile_rule(_nested(construct, MAX_DEPTH))({"price": 1.0}) is not None
    error = refusal(_nested(construct, MAX_DEPTH + 1))
    assert error.message == "nesting deeper than 32"


def test_nesting_counts_depth_not_the_number_of_parentheses():
    side_by_side = " and ".join(["((((price > 0))))"] * 40)
    assert compile_rule(side_by_side)({"price": 1.0}) is True


def test_a_number_too_large_for_a_float_is_refused_naming_it():
    error = refusal("price > " + "1" * 900)
    assert "is too large" in error.message
    assert error.column == 9
    assert len(str(error)) < 200


HOSTILE = {
    "999 open parentheses": "(" * 999,
    "250 nots": "not " * 250,
    "990 minus signs": "-" * 990 + "price > 0",
    "250 abs calls": "abs(" * 250,
    "a 1000-digit number": "1" * 1000,
    "a 992-digit number": "price > " + "9" * 992,
    "ten million characters": "x" * 10_000_000,
    "70 clauses and a missing operand": "price > 1 and " * 70 + "price >",
    "1000 NUL characters": "\x00" * 1000,
    "1000 accented letters": "é" * 1000,
}


@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_input_is_refused_quickly(text):
    started = time.perf_counter()
    with pytest.raises(RuleError):
        compile_rule(text)
    assert time.perf_counter() - started < 0.05


def test_the_longest_flat_expressions_compile_and_evaluate_without_deep_recursion():
    sum_of_many = "+".join(["vcp"] * 249) + ">0"
    assert len(sum_of_many) <= MAX_LENGTH
    assert compile_rule(sum_of_many)({"vcp": 1.0}) is True
    product = "*".join(["vcp"] * 249) + ">0"
    assert compile_rule(product)({"vcp": 1.0}) is True
    ors = " or ".join(["vcp>1"] * 110)
    assert compile_rule(ors)({"vcp": 1.0}) is False


# --- precedence and associativity (Python's) -----------------------------------------------------


def test_not_binds_looser_than_a_comparison_and_tighter_than_and():
    rule = "not price > 1 and vcp > 1"  # (not (price > 1)) and (vcp > 1)
    assert evaluate(rule, price=0.0, vcp=2.0) is True
    assert evaluate(rule, price=2.0, vcp=2.0) is False
    assert evaluate(rule, price=0.0, vcp=0.0) is False


def test_and_binds_tighter_than_or():
    rule = "price > 1 or vcp > 1 and rsi_14 > 1"  # price > 1 or (vcp > 1 and rsi_14 > 1)
    assert evaluate(rule, price=2.0, vcp=0.0, rsi_14=0.0) is True
    assert evaluate(rule, price=0.0, vcp=2.0, rsi_14=0.0) is False


def test_unary_minus_binds_tighter_than_multiplication_and_arithmetic_is_left_associative():
    assert evaluate("2 - 1 - 1 == 0") is True
    assert evaluate("8 / 2 / 2 == 2") is True
    assert evaluate("price - 1 - 1 == 0", price=2.0) is True
    assert evaluate("price / 2 / 2 == 2", price=8.0) is True
    assert evaluate("-price * 2 == -6", price=3.0) is True
    assert evaluate("- price - 1 == -4", price=3.0) is True
    assert evaluate("2 + 3 * price == 11", price=3.0) is True
    assert evaluate("(2 + 3) * price == 15", price=3.0) is True
    assert evaluate("--price == 3", price=3.0) is True


def test_numbers_keep_their_decimal_value():
    assert evaluate("volume_1h == 1_000_000", volume_1h=1e6) is True
    assert evaluate("volume_1h == 1_000.000_5", volume_1h=1000.0005) is True
    assert evaluate("change_1h == 007", change_1h=7.0) is True
    assert evaluate("change_1h == 0.1", change_1h=0.1) is True


def test_random_rules_evaluate_exactly_as_python_would():
    """Python has the same precedence, associativity and float arithmetic, so on known, finite values
    with no division by zero the compiled rule must agree with Python bit for bit."""
    generator = random.Random(20260101)
    names = ["price", "change_1h", "volume_5m", "rsi_14"]

    def number(depth: int) -> str:
        choice = generator.random()
        if depth > 3 or choice < 0.3:  # float literals: Python then does the rule's float arithmetic
            return generator.choice([*names, "2.0", "0.5", "1_000.0", "3.25"])
        if choice < 0.45:
            return f"-{number(depth + 1)}"
        if choice < 0.6:
            fn = generator.choice(["abs", "min", "max"])
            count = 1 if fn == "abs" else generator.randint(1, 3)
            return f"{fn}({', '.join(number(depth + 1) for _ in range(count))})"
        if choice < 0.7:
            return f"({number(depth + 1)})"
        op = generator.choice(["+", "-", "*", "/"])
        return f"{number(depth + 1)} {op} {number(depth + 1)}"

    def condition(depth: int) -> str:
        choice = generator.random()
        if depth > 2 or choice < 0.4:
            op = generator.choice(["<", "<=", ">", ">=", "==", "!="])
            return f"{number(0)} {op} {number(0)}"
        if choice < 0.55:
            return f"not {condition(depth + 1)}"
        if choice < 0.65:
            return f"({condition(depth + 1)})"
        word = generator.choice(["and", "or"])
        return f"{condition(depth + 1)} {word} {condition(depth + 1)}"

    functions = {"abs": abs, "min": lambda *args: min(args), "max": lambda *args: max(args)}
    checked = 0
    for _ in range(2000):
        text = condition(0)
        values = {name: generator.choice([0.5, 1.0, 2.0, 3.0, 7.25, 1e3]) for name in names}
        try:
            expected = eval(text, {"__builtins__": {}, **functions}, dict(values))
        except ZeroDivisionError:
            continue
        if len(text) > MAX_LENGTH:
            continue
        assert compile_rule(text)(values) is bool(expected), text
        checked += 1
    assert checked > 1600


# --- three-valued evaluation ---------------------------------------------------------------------

VALUE = {T: 1.0, F: -1.0, U: None}  # price > 0 is True / False / unknown


# fmt: off
KLEENE_AND = [
    (T, T, T), (T, F, F), (T, U, U),
    (F, T, F), (F, F, F), (F, U, F),
    (U, T, U), (U, F, F), (U, U, U),
]
KLEENE_OR = [
    (T, T, T), (T, F, T), (T, U, T),
    (F, T, T), (F, F, F), (F, U, U),
    (U, T, T), (U, F, U), (U, U, U),
]
# fmt: on


@pytest.mark.parametrize(("a", "b", "expected"), KLEENE_AND)
def test_and_follows_kleene_logic(a, b, expected):
    assert evaluate("price > 0 and vcp > 0", price=VALUE[a], vcp=VALUE[b]) is expected


@pytest.mark.parametrize(("a", "b", "expected"), KLEENE_OR)
def test_or_follows_kleene_logic(a, b, expected):
    assert evaluate("price > 0 or vcp > 0", price=VALUE[a], vcp=VALUE[b]) is expected


@pytest.mark.parametrize(("a", "expected"), [(T, F), (F, T), (U, U)])
def test_not_unknown_is_unknown(a, expected):
    assert evaluate("not price > 0", price=VALUE[a]) is expected


def test_long_conjunctions_and_disjunctions_are_kleene_too():
    rule = "price > 0 and vcp > 0 and rsi_14 > 0"
    assert evaluate(rule, price=1.0, vcp=None, rsi_14=-1.0) is False
    assert evaluate(rule, price=1.0, vcp=None, rsi_14=1.0) is None
    rule = "price > 0 or vcp > 0 or rsi_14 > 0"
    assert evaluate(rule, price=-1.0, vcp=None, rsi_14=1.0) is True
    assert evaluate(rule, price=-1.0, vcp=None, rsi_14=-1.0) is None


@pytest.mark.parametrize("op", ["<", "<=", ">", ">=", "==", "!="])
def test_a_comparison_with_an_unknown_side_is_unknown(op):
    assert evaluate(f"price {op} vcp", price=None, vcp=1.0) is None
    assert evaluate(f"price {op} vcp", price=1.0, vcp=None) is None
    assert evaluate(f"price {op} 1", price=None) is None
    assert evaluate(f"1 {op} price", price=None) is None


def test_a_missing_metric_is_unknown_never_zero():
    assert evaluate("price == 0") is None
    assert evaluate("not price != 0") is None
    assert evaluate("change_1h < 1", price=1.0) is None


def test_an_unknown_argument_of_min_or_max_makes_it_unknown():
    assert evaluate("max(price, vcp) > 0", price=100.0, vcp=None) is None
    assert evaluate("min(price, vcp) < 1_000", price=1.0, vcp=None) is None
    assert evaluate("min(price, vcp) < 1_000", price=None, vcp=1.0) is None
    assert evaluate("abs(vcp) >= 0", vcp=None) is None
    assert evaluate("max(price, vcp) == 3", price=3.0, vcp=-3.0) is True
    assert evaluate("min(price, vcp) == -3", price=3.0, vcp=-3.0) is True
    assert evaluate("abs(vcp) == 3", vcp=-3.0) is True


def test_division_by_zero_is_unknown_so_the_rule_does_not_fire():
    assert evaluate("price / vcp > 1", price=1.0, vcp=0.0) is None
    assert evaluate("price / vcp < 1", price=1.0, vcp=-0.0) is None
    assert evaluate("price / 0 > 1", price=1.0) is None
    assert evaluate("price / (vcp - vcp) > 1", price=1.0, vcp=2.0) is None
    assert evaluate("not price / vcp > 1", price=1.0, vcp=0.0) is None
    assert evaluate("1 / 0 > 1") is None
    assert evaluate("0 / price == 0", price=5.0) is True


def test_an_unknown_division_can_still_be_outvoted_by_or_and_and():
    assert evaluate("price / vcp > 1 or rsi_14 > 1", price=1.0, vcp=0.0, rsi_14=2.0) is True
    assert evaluate("price / vcp > 1 or rsi_14 > 1", price=1.0, vcp=0.0, rsi_14=0.0) is None
    assert evaluate("price / vcp > 1 and rsi_14 > 1", price=1.0, vcp=0.0, rsi_14=0.0) is False
    assert evaluate("price / 0 > 1 or rsi_14 > 1", price=1.0, rsi_14=2.0) is True
    assert evaluate("1 / 0 > 1 or rsi_14 > 1", rsi_14=2.0) is True
    assert evaluate("1 / 0 > 1 and rsi_14 > 1", rsi_14=0.0) is False


def test_a_non_finite_result_is_unknown():
    assert evaluate("price * price > 1", price=1e200) is None
    assert evaluate("price * price > 1 or vcp > 0", price=1e200, vcp=1.0) is True
    assert evaluate("price + price > 1", price=1.7e308) is None
    assert evaluate("-price - price < 1", price=1.7e308) is None
    assert evaluate("price / vcp > 1", price=1e300, vcp=1e-300) is None
    assert evaluate("price * 10 > 1", price=1e308) is None
    assert evaluate("10 * price > 1", price=1e308) is None
    assert evaluate(f"price * {'9' * 300} > 1", price=1e10) is None
    assert evaluate(f"{'9' * 300} * {'9' * 300} > 1") is None


def test_non_finite_or_odd_metric_values_are_unknown():
    for bad in (math.nan, math.inf, -math.inf, "1.5", b"1", object(), 10**400):
        assert evaluate("price > 0", price=bad) is None
        assert evaluate("price != vcp", price=bad, vcp=1.0) is None
        assert evaluate("price * 2 != 1", price=bad) is None


def test_ints_and_decimals_are_read_as_numbers():
    assert evaluate("trades_1h > 10", trades_1h=11) is True
    assert evaluate("trades_1h * 2 == 22", trades_1h=11) is True
    assert evaluate("volume_1h == 1.5", volume_1h=Decimal("1.5")) is True
    assert evaluate("volume_1h > price", volume_1h=3, price=Decimal("2.5")) is True


def test_a_compiled_rule_exposes_its_source_and_the_metrics_it_reads():
    rule = compile_rule("change_8h > change_1h and volume_1h > 1 or change_1h < max(vcp, 1)")
    assert rule.source == "change_8h > change_1h and volume_1h > 1 or change_1h < max(vcp, 1)"
    assert rule.names == frozenset({"change_8h", "change_1h", "volume_1h", "vcp"})
    assert rule.metric_order == ("change_8h", "change_1h", "volume_1h", "vcp")
    assert rule == compile_rule(rule.source)
    assert "change_8h" in repr(rule)


def test_a_compiled_rule_reads_any_mapping_and_never_changes_it():
    class Metrics(dict):
        pass

    metrics = Metrics(price=2.0)
    rule = compile_rule("price > 1")
    assert rule(metrics) is True
    assert rule(metrics) is True
    assert metrics == {"price": 2.0}
