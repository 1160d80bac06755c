"""What the hostile-input suite (tests/test_hostile_*.py) shares: its Hypothesis profile and hostile values.

The profiles are registered in tests/conftest.py: `hostile` (25 examples, the normal test run) and `fuzz`
(2,000 examples, `make fuzz`, which sets HYPOTHESIS_PROFILE=fuzz).
"""

from __future__ import annotations

import os

from hypothesis import settings
from hypothesis import strategies as st

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "hostile")
fuzzing = settings(settings.get_profile(PROFILE))

# Values that broke or could break parsers elsewhere: Unicode digits (`"²".isdigit()` is true), int()'s
# 4,300-digit limit, floats Python reads but JSON and PostgreSQL do not, times at the ends of datetime's
# range (an offset pushes them past year 1 or 9999), NUL, markup, formula and SQL look-alikes.
NASTY = [
    "",
    " ",
    "0",
    "-0",
    "-1",
    "1",
    "²",
    "٣",
    "１２",
    "1_000",
    "0x10",
    "1e3",
    "1.5",
    "+5",
    " 5",
    "5 ",
    "9" * 12,
    "9" * 13,
    "9" * 20,
    "1" * 5000,
    "-" + "9" * 40,
    "NaN",
    "nan",
    "inf",
    "-inf",
    "Infinity",
    "1e999",
    "-1e999",
    "true",
    "false",
    "null",
    "None",
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T00:00:00",
    "9999-12-31T23:59:59-14:00",
    "9999-12-31T23:59:59.999999",
    "2026-02-30T00:00Z",
    "2026-01-01T00:00Z",
    "2026-01-01",
    "253402300799999",
    "253402300800000",
    "\x00",
    "a\x00b",
    "é" * 200,
    "币安人生USDT",
    "<script>alert(1)</script>",
    "=cmd|' /C calc'!A0",
    "'; DROP TABLE alert_history; --",
    "%00",
    "../../etc/passwd",
    "{{ 7*7 }}",
    "\u202e",
    "x" * 121,
    "x" * 10_000,
]

# Form and query values travel as text; NUL is refused by PostgreSQL in text columns and by Django's
# form fields, so it stays in: a hostile client sends it.
hostile_text = st.one_of(
    st.sampled_from(NASTY),
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="ascii"), max_size=20),
    st.from_regex(r"-?[0-9]{1,20}", fullmatch=True),
)


def no_traceback(body: str) -> None:
    """A response never shows Python's internals."""
    for marker in (
        "Traceback (most recent call last)",
        'File "/',
        "Exception Value",
        "Internal Server Error",
    ):
        assert marker not in body, body[:2000]
