"""The workers' garbage-collector freeze (cryptomon.heap)."""

from __future__ import annotations

import gc

import pytest

from cryptomon import heap


@pytest.fixture
def unfrozen():
    yield
    gc.unfreeze()


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector can free it


def test_it_hides_surviving_objects_from_later_collections(unfrozen):
    survivor = Node()
    heap.freeze_long_lived()
    assert gc.get_freeze_count() > 0
    assert not any(obj is survivor for obj in gc.get_objects())  # no collection walks it any more
    assert gc.is_tracked(survivor)


def test_refreezing_collects_what_an_earlier_freeze_kept_and_has_since_died(unfrozen):
    heap.freeze_long_lived()
    dead = Node()
    gc.freeze()  # frozen while alive, as a survivor of a start-up would be
    collected: list[int] = []
    gc.callbacks.append(lambda phase, info: collected.append(info["collected"]) if phase == "stop" else None)
    try:
        del dead
        gc.collect()
        assert sum(collected) == 0  # frozen: the cycle is out of reach
        heap.freeze_long_lived()
        assert sum(collected) >= 1  # unfrozen, collected, not leaked
    finally:
        gc.callbacks.pop()


@pytest.mark.parametrize(
    ("now", "wait"),
    [(1_700_000_000.0, 10.0), (1_700_000_010.0, 0.0), (1_700_000_011.5, 58.5), (1_699_999_980.0, 30.0)],
)
def test_the_hourly_freeze_waits_for_the_middle_of_a_minute(now, wait):
    assert heap.seconds_to_mid_minute(now) == pytest.approx(wait)
