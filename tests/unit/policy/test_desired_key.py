"""desired_key is memoised by the spec object and the rung: the memo must answer exactly what
the digest says, for the spec it is asked about and no other."""

from __future__ import annotations

import gc
import weakref
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from phasegate.api import StrategySpec, StrategyStatus
from phasegate.policy import desired

import plans

PHASES = [{"name": "paper", "mode": "paper"}, {"name": "live-10", "mode": "live", "fraction": 0.1},
          {"name": "live-35", "mode": "live", "fraction": 0.35}]


def spec(image: str) -> StrategySpec:
    body = plans.strategy("keyed", phases=PHASES)
    body["spec"]["template"]["image"] = image
    return StrategySpec.model_validate(body["spec"])


def status(phase: str, fraction: str, capital: str) -> StrategyStatus:
    return StrategyStatus(phase=phase, capital_fraction=Decimal(fraction), capital=Decimal(capital))


def uncached(s: StrategySpec, st_: StrategyStatus) -> str:
    capital = st_.capital if st_.capital is not None else Decimal(0)
    return desired._digest(s, st_.phase, str(st_.capital_fraction), str(capital))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a:1", "a:2", "b:1"]), st.sampled_from(["paper", "live-10", "live-35"]),
                          st.sampled_from(["0.1", "0.10", "0.35"]), st.sampled_from(["100000", "350000", "1E+5"])),
                min_size=1, max_size=12))
def test_the_memo_answers_what_the_digest_says(asks):
    specs = {image: spec(image) for image in ("a:1", "a:2", "b:1")}
    for image, phase, fraction, capital in asks:
        s, st_ = specs[image], status(phase, fraction, capital)
        assert desired.desired_key(s, st_) == uncached(s, st_)


def test_a_new_spec_at_a_reused_address_is_not_answered_for_by_the_old_one():
    rung = status("live-10", "0.1", "100000")
    held = [spec("a:1")]
    old_key = desired.desired_key(held[0], rung)
    for i in range(200):  # some of these land where the one before was, once it is gone
        held.clear()
        gc.collect()
        held.append(spec(f"c:{i}"))
        assert desired.desired_key(held[0], rung) == uncached(held[0], rung) != old_key


def test_the_memo_keeps_no_spec_alive():
    s = spec("a:1")
    desired.desired_key(s, status("paper", "0", "100000"))
    ref = weakref.ref(s)
    del s
    gc.collect()
    assert ref() is None
