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


def kline_presets() -> list[tuple[str, ...]]:
    """(slug, name, description, expression) of every row of the §8 presets table, in order."""
    return [m.groups() for line in section("8").splitlines() if (m := PRESET_ROW.match(line))]
