"""The §8 rule language under arbitrary text: a RuleError with a column, or a rule, and nothing else.

tests/test_rule_language.py holds the hand-picked hostile inputs and random *valid* rules; these feed it
random text and random sequences of its own tokens (which get much further into the parser than noise).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from alerts.rule_language import KEYWORDS, MAX_LENGTH, CompiledRule, RuleError, compile_rule
from cryptomon.contract.names import METRIC_NAMES
from tests.hostile import NASTY, fuzzing

TOKENS = [
    *METRIC_NAMES[:12],
    *sorted(KEYWORDS),
    "min",
    "max",
    "abs",
    "nosuchmetric",
    "(",
    ")",
    ",",
    "+",
    "-",
    "*",
    "/",
    "%",
    "<",
    "<=",
    ">",
    ">=",
    "==",
    "!=",
    "=",
    "&&",
    "||",
    "!",
    "0",
    "1.5",
    "100_000",
    "1e9",
    "1" * 400,
    ".",
    "_",
    "'",
    '"',
    "true",
    "null",
    "\t",
    "\n",
    "é",
    "²",
    "\x00",
]

token_soup = st.lists(st.sampled_from(TOKENS), max_size=80).map(" ".join)
glued_soup = st.lists(st.sampled_from(TOKENS), max_size=80).map("".join)
any_text = st.one_of(st.text(max_size=200), st.sampled_from(NASTY), token_soup, glued_soup)


def compiles_or_names_a_column(text: str) -> None:
    try:
        compiled = compile_rule(text)
    except RuleError as error:
        assert isinstance(error.column, int)
        assert 1 <= error.column <= max(len(text), MAX_LENGTH) + 1, (text, error.column)
        assert error.message and str(error)
        return
    assert isinstance(compiled, CompiledRule)
    # A rule that compiles evaluates over nothing (every metric unknown) without raising.
    assert compiled({}) in (True, False, None)


@fuzzing
@given(any_text)
def test_arbitrary_text_compiles_or_is_refused_with_a_rule_error_naming_a_column(text):
    compiles_or_names_a_column(text)


@fuzzing
@given(st.lists(st.sampled_from(["(", "not ", "-", "abs(", "min(", "max(1,"]), max_size=60), token_soup)
def test_random_nesting_before_random_tokens_never_escapes_as_anything_but_a_rule_error(prefix, rest):
    compiles_or_names_a_column("".join(prefix) + rest)


@fuzzing
@given(st.text(min_size=1, max_size=3), st.integers(min_value=MAX_LENGTH - 3, max_value=MAX_LENGTH + 3))
def test_text_around_the_length_limit_is_refused_naming_a_column(unit, length):
    text = (unit * length)[:length]
    compiles_or_names_a_column(text)
