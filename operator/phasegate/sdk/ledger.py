"""A book of cash and positions, kept in Decimal.

The strategy keeps one (its local view, updated from the fills it receives) and the
paper broker keeps another (the account); reconciliation compares the two.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from .money import ZERO, D, money_from_json, money_json


@dataclass
class Ledger:
    cash: Decimal
    positions: dict[str, Decimal] = field(default_factory=dict)

    def apply(self, symbol: str, signed_quantity: Decimal, price: Decimal, commission: Decimal) -> None:
        """Book a fill: a positive quantity is a buy, a negative one a sale."""
        self.cash -= signed_quantity * price + commission
        held = self.positions.get(symbol, ZERO) + signed_quantity
        if held == 0:
            self.positions.pop(symbol, None)
        else:
            self.positions[symbol] = held

    def position(self, symbol: str) -> Decimal:
        return self.positions.get(symbol, ZERO)

    def market_value(self, prices: Mapping[str, Decimal]) -> Decimal:
        return sum((q * prices[s] for s, q in self.positions.items()), ZERO)

    def equity(self, prices: Mapping[str, Decimal]) -> Decimal:
        return self.cash + self.market_value(prices)

    def largest_position_fraction(self, prices: Mapping[str, Decimal]) -> Decimal:
        equity = self.equity(prices)
        if equity <= 0 or not self.positions:
            return ZERO
        return max(abs(q * prices[s]) for s, q in self.positions.items()) / equity

    def to_json(self) -> dict:
        return {"cash": str(self.cash), "positions": money_json(self.positions)}

    @classmethod
    def from_json(cls, data: Mapping) -> Ledger:
        return cls(cash=D(data["cash"]), positions=money_from_json(data.get("positions")))

    def copy(self) -> Ledger:
        return Ledger(self.cash, dict(self.positions))
