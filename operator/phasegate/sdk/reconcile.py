"""Reconciliation of the strategy's own positions against the broker's.

The discrepancy ratio is the market value of every mismatch divided by the gross value
of the positions either side believes it holds: 0 when they agree, 1 when they share
nothing. It is what the operator's max position discrepancy limit (5%) is checked on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from .money import ZERO


@dataclass(frozen=True)
class Mismatch:
    symbol: str
    local: Decimal
    broker: Decimal


@dataclass(frozen=True)
class Reconciliation:
    ratio: Decimal
    mismatches: tuple[Mismatch, ...]

    @property
    def clean(self) -> bool:
        return not self.mismatches


def reconcile(
    local: Mapping[str, Decimal], broker: Mapping[str, Decimal], prices: Mapping[str, Decimal]
) -> Reconciliation:
    mismatched = ZERO
    gross = ZERO
    mismatches: list[Mismatch] = []
    for symbol in sorted(set(local) | set(broker)):
        ours, theirs = local.get(symbol, ZERO), broker.get(symbol, ZERO)
        # A symbol with no price yet is valued at one unit per share: a mismatch must
        # never vanish from the ratio just because the market has not opened.
        price = abs(prices.get(symbol, Decimal(1)))
        gross += max(abs(ours), abs(theirs)) * price
        if ours != theirs:
            mismatches.append(Mismatch(symbol, ours, theirs))
            mismatched += abs(ours - theirs) * price
    ratio = mismatched / gross if gross > 0 else ZERO
    return Reconciliation(min(ratio, Decimal(1)), tuple(mismatches))
