"""Which rules fire on a bar: one alert per (rule, symbol, bar) and the cooldown of docs/contract.md §8.

Framework-free so the live engine and the backtest take exactly the same decisions (`alert_history`
equals the backtest of `candles_1m`, docs/contract.md §7). The engine seeds the tracker from `alert_history` on
start; the backtest starts it empty.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from alerts.rule_language import CompiledRule, compile_rule

__all__ = [
    "CooldownTracker",
    "RuleLike",
    "RuleSpec",
    "alert_metrics",
    "evaluate_bar",
]

ALWAYS_REPORTED = ("volume_1d",)  # §5: an alert's metrics always include volume_1d


class RuleLike(Protocol):
    """What the decider needs from a rule (RuleSpec provides it; so can an engine's own class)."""

    @property
    def slug(self) -> str: ...

    @property
    def cooldown_seconds(self) -> int: ...

    @property
    def compiled(self) -> CompiledRule: ...


R = TypeVar("R", bound=RuleLike)


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """A rule as the engines use it: the §6 `alert_rules` fields with the expression compiled once."""

    slug: str
    name: str
    description: str
    severity: str
    direction: str
    mode: str
    cooldown_seconds: int
    owner_id: int | None
    compiled: CompiledRule

    @property
    def expression(self) -> str:
        return self.compiled.source

    @classmethod
    def build(
        cls,
        slug: str,
        expression: str,
        *,
        name: str | None = None,
        description: str = "",
        severity: str = "info",
        direction: str = "neutral",
        mode: str = "bar_close",
        cooldown_seconds: int = 300,
        owner_id: int | None = None,
    ) -> RuleSpec:
        """Compile `expression` (RuleError if invalid) with §6's defaults for everything else."""
        return cls(
            slug=slug,
            name=slug if name is None else name,
            description=description,
            severity=severity,
            direction=direction,
            mode=mode,
            cooldown_seconds=cooldown_seconds,
            owner_id=owner_id,
            compiled=compile_rule(expression),
        )

    @classmethod
    def of(cls, rule: Any) -> RuleSpec:
        """A stored `AlertRule` or a `Preset` (anything with the §6 rule fields) compiled; a preset has no
        owner."""
        return cls.build(
            rule.slug,
            rule.expression,
            name=rule.name,
            description=rule.description,
            severity=rule.severity,
            direction=rule.direction,
            mode=rule.mode,
            cooldown_seconds=rule.cooldown_seconds,
            owner_id=getattr(rule, "owner_id", None),
        )


class CooldownTracker:
    """Per (rule slug, symbol): the open time (ms) of the newest bar the rule fired on.

    A rule fires again for a symbol only at a bar t' with t' − t ≥ cooldown (event time, i.e. bar open
    times; cooldown 0 = every bar); never twice on one bar, never on a bar older than or equal to the last
    fired one (replays and intrabar updates of an already-fired bar are no-ops). A true bar inside the
    cooldown does not restart it, because only `record` moves the mark.
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], int] = {}

    def __len__(self) -> int:
        return len(self._last)

    def last_fired(self, rule: str, symbol: str) -> int | None:
        """Open time of the newest bar `rule` fired on for `symbol`, or None."""
        return self._last.get((rule, symbol))

    def should_fire(self, rule: str, symbol: str, open_time_ms: int, cooldown_seconds: int) -> bool:
        """Whether a true result of `rule` on this bar may become an alert (it does not record it)."""
        if cooldown_seconds < 0:
            raise ValueError(f"cooldown_seconds must be ≥ 0, not {cooldown_seconds}")
        last = self._last.get((rule, symbol))
        if last is None:
            return True
        return open_time_ms > last and open_time_ms - last >= cooldown_seconds * 1000

    def record(self, rule: str, symbol: str, open_time_ms: int) -> None:
        """Remember that `rule` fired for `symbol` on the bar opening at `open_time_ms`."""
        key = (rule, symbol)
        last = self._last.get(key)
        if last is None or open_time_ms > last:
            self._last[key] = open_time_ms

    def seed(self, rule: str, symbol: str, last_open_time: int | None) -> None:
        """Load the newest fired bar from `alert_history` (None = never fired); never moves the mark back."""
        if last_open_time is not None:
            self.record(rule, symbol, last_open_time)


def evaluate_bar(
    rules: Iterable[R],
    symbol: str,
    open_time: int,
    metrics: Mapping[str, Any],
    tracker: CooldownTracker,
) -> list[R]:
    """Evaluate `rules` on one bar of `symbol`; return (in the given order) those that fire, recorded.

    The caller picks the rules for the occasion (bar_close rules on final bars, intrabar rules on live
    updates and final bars). Rules still in cooldown are not evaluated at all: their result could not
    change anything.
    """
    fired: list[R] = []
    marks = tracker._last  # the hot loop of the backtest: should_fire/record inlined, same semantics
    for rule in rules:
        key = (rule.slug, symbol)
        last = marks.get(key)
        if last is not None and (open_time <= last or open_time - last < rule.cooldown_seconds * 1000):
            continue
        if rule.compiled.evaluate(metrics) is True:
            marks[key] = open_time
            fired.append(rule)
    return fired


def alert_metrics(rule: RuleLike, metrics: Mapping[str, Any]) -> dict[str, float | int | None]:
    """The §5 `metrics` object of an alert: every name the rule references (in order of appearance), plus
    `volume_1d`; a missing or non-finite value is null so the payload is valid JSON."""
    names = rule.compiled.metric_order
    extra = tuple(name for name in ALWAYS_REPORTED if name not in rule.compiled.names)
    return {name: _json_number(metrics.get(name)) for name in (*names, *extra)}


def _json_number(value: Any) -> float | int | None:
    if value is None or isinstance(value, bool | str | bytes):
        return None
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None
