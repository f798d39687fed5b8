from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from phasegate.sdk.reconcile import reconcile

P = {"A": Decimal(10), "B": Decimal(20)}


def test_agreement_is_zero():
    r = reconcile({"A": Decimal(5)}, {"A": Decimal(5)}, P)
    assert r.ratio == 0 and r.clean


def test_a_missing_position_at_the_broker_is_counted_by_value():
    # local A 10 x 10 = 100, B 5 x 20 = 100; broker has A only: 100 of 200 mismatched
    r = reconcile({"A": Decimal(10), "B": Decimal(5)}, {"A": Decimal(10)}, P)
    assert r.ratio == Decimal("0.5")
    assert [m.symbol for m in r.mismatches] == ["B"]


def test_a_partial_mismatch():
    r = reconcile({"A": Decimal(100)}, {"A": Decimal(96)}, P)
    assert r.ratio == Decimal("0.04")


def test_no_positions_anywhere_is_zero():
    assert reconcile({}, {}, P).ratio == 0


def test_an_unpriced_mismatch_still_counts():
    assert reconcile({"Z": Decimal(3)}, {}, {}).ratio == 1


books = st.dictionaries(st.sampled_from(["A", "B", "C"]), st.integers(-1000, 1000).map(Decimal))


@given(local=books, broker=books)
def test_ratio_is_a_fraction_and_zero_exactly_when_books_agree(local, broker):
    local = {k: v for k, v in local.items() if v}
    broker = {k: v for k, v in broker.items() if v}
    r = reconcile(local, broker, {"A": Decimal(1), "B": Decimal("2.5"), "C": Decimal(100)})
    assert Decimal(0) <= r.ratio <= Decimal(1)
    assert (r.ratio == 0) == (local == broker)
