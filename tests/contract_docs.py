"""Reading docs/contract.md, the repository's own statement of the contract, from tests."""

from __future__ import annotations

import re
from pathlib import Path

CONTRACT = Path(__file__).resolve().parent.parent / "docs" / "contract.md"
PRESET_ROW = re.compile(r"\| `(futures_[a-z0-9_]+)` \| (.+?) — (.+?) \| `(.+)` \|$")


def section(number: str) -> str:
    """The text of `## §<number> ...` up to the next `## ` heading."""
    text = CONTRACT.read_text(encoding="utf-8")
    match = re.search(rf"^## §{re.escape(number)}\b.*?(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, f"docs/contract.md has no section §{number}"
    return match.group(0)


def presets_of(number: str) -> list[tuple[str, ...]]:
    """(slug, name, description, expression) of every row of the presets table of §<number>, in order."""
    return [m.groups() for line in section(number).splitlines() if (m := PRESET_ROW.match(line))]


def kline_presets() -> list[tuple[str, ...]]:
    """The 10 kline presets of §8."""
    return presets_of("8")


def derivatives_presets() -> list[tuple[str, ...]]:
    """The 6 futures presets of §7b."""
    return presets_of("7b")


def all_presets() -> list[tuple[str, ...]]:
    """All 16 presets: §8's, then §7b's (the order of `alerts.presets.PRESETS`)."""
    return kline_presets() + derivatives_presets()
