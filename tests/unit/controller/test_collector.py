"""controller/collector.py: what lives is frozen out of the collector's sight; a full
collection of everything, cyclic garbage the freeze hid included, when one is due."""

from __future__ import annotations

import gc
import weakref

import pytest

from phasegate.controller import collector, telemetry


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector frees it


def test_a_freeze_hides_what_lives_and_the_full_collection_reclaims_its_cycles() -> None:
    gc.unfreeze()
    try:
        node = Node()
        ref = weakref.ref(node)
        last = collector.step(now=100.0, last_full=90.0, full_every=3600.0)
        assert last == 90.0 and gc.get_freeze_count() > 0  # no full collection due: frozen only
        del node
        gc.collect()
        assert ref() is not None, "a frozen cycle was collected: the freeze hid nothing"
        last = collector.step(now=90.0 + 3600.0, last_full=90.0, full_every=3600.0)
        assert last == 90.0 + 3600.0
        assert ref() is None, "the full collection left the cycle the freeze had hidden"
    finally:
        gc.unfreeze()


def test_the_full_collection_counts_the_garbage_it_found() -> None:
    before = telemetry.GC_FULL_UNREACHABLE._value.get()
    try:
        collector.step(now=7200.0, last_full=0.0, full_every=3600.0, collect=lambda: 5)
        collector.step(now=7260.0, last_full=7200.0, full_every=3600.0, collect=lambda: 1000)  # not due: no count
    finally:
        gc.unfreeze()
    assert telemetry.GC_FULL_UNREACHABLE._value.get() - before == 5


def test_the_full_collection_cadence_is_a_duration_setting() -> None:
    assert collector.full_every_from_env({}) == collector.FULL_EVERY
    assert collector.full_every_from_env({"PHASEGATE_GC_FULL_EVERY": "10m"}) == 600.0
    with pytest.raises(SystemExit, match="PHASEGATE_GC_FULL_EVERY='ten'.*10m"):
        collector.full_every_from_env({"PHASEGATE_GC_FULL_EVERY": "ten"})
    with pytest.raises(SystemExit, match="at least 60s"):
        collector.full_every_from_env({"PHASEGATE_GC_FULL_EVERY": "30s"})
