"""The paper broker's cost models: commission, slippage, latency, volume limit and partial fills."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phasegate.sdk.broker import CostModel, OrderRejected, OrderRequest, OrderStatus, PaperBroker, Side
from phasegate.sdk.clock import ManualClock
from phasegate.sdk.ledger import Ledger

MS = timedelta(milliseconds=1)


def make(cash="1000000", volume="1000000", price="100", costs=None, **kw):
    clock = ManualClock()
    broker = PaperBroker(clock, Ledger(Decimal(cash)), costs or CostModel(), **kw)
    broker.on_bar({"ABC": Decimal(price)}, {"ABC": Decimal(volume)}, clock.now())
    return clock, broker


def test_defaults_are_the_guides():
    c = CostModel()
    assert c.commission_per_share == Decimal("0.005")
    assert c.slippage_bps == Decimal("5")
    assert c.latency == timedelta(milliseconds=100)
    assert c.volume_limit == Decimal("0.025")


def test_a_buy_pays_slippage_and_commission():
    clock, broker = make()
    order = broker.submit(OrderRequest("ABC", Side.BUY, Decimal(100)))
    clock.advance(100 * MS)
    [fill] = broker.process()
    assert fill.price == Decimal("100.05")  # 5 bps over 100
    assert fill.commission == Decimal("0.5")  # 100 shares x 0.005
    assert broker.cash() == Decimal("1000000") - Decimal("10005") - Decimal("0.5")
    assert broker.positions() == {"ABC": Decimal(100)}
    assert order.status is OrderStatus.FILLED and order.slippage_bps() == Decimal(5)


def test_a_sale_receives_less_by_the_slippage():
    clock, broker = make()
    broker.account.positions["ABC"] = Decimal(10)
    broker.submit(OrderRequest("ABC", Side.SELL, Decimal(10)))
    clock.advance(100 * MS)
    [fill] = broker.process()
    assert fill.price == Decimal("99.95")
    assert broker.cash() == Decimal("1000000") + Decimal("999.5") - Decimal("0.05")
    assert broker.positions() == {}


def test_nothing_fills_before_the_latency_has_passed():
    clock, broker = make()
    order = broker.submit(OrderRequest("ABC", Side.BUY, Decimal(1)))
    assert broker.next_due() == order.submitted_at + 100 * MS
    clock.advance(99 * MS)
    assert broker.process() == []
    clock.advance(1 * MS)
    [fill] = broker.process()
    assert fill.at == order.submitted_at + 100 * MS
    assert order.latency == timedelta(milliseconds=100)


def test_the_price_at_fill_time_is_used_not_the_arrival_price():
    clock, broker = make()
    order = broker.submit(OrderRequest("ABC", Side.BUY, Decimal(1)))
    broker.on_bar({"ABC": Decimal(110)}, {"ABC": Decimal(1000000)}, clock.now() + 50 * MS)
    clock.advance(100 * MS)
    [fill] = broker.process()
    assert fill.market_price == Decimal(110)
    assert order.slippage_bps() > Decimal(1000)  # 10% move plus 5 bps, against the 100 arrival price


def test_the_volume_limit_splits_an_order_into_partial_fills_across_bars():
    clock, broker = make(volume="10000")  # 2.5% of 10000 = 250 shares a bar
    order = broker.submit(OrderRequest("ABC", Side.BUY, Decimal(600)))
    clock.advance(100 * MS)
    assert [f.quantity for f in broker.process()] == [Decimal(250)]
    assert order.status is OrderStatus.PARTIALLY_FILLED
    assert broker.process() == []  # this bar's volume is used up
    clock.advance(100 * MS)
    broker.on_bar({"ABC": Decimal(100)}, {"ABC": Decimal(10000)}, clock.now())
    assert [f.quantity for f in broker.process()] == [Decimal(250)]
    clock.advance(100 * MS)
    broker.on_bar({"ABC": Decimal(100)}, {"ABC": Decimal(10000)}, clock.now())
    [last] = broker.process()
    assert last.quantity == Decimal(100) and last.order_done
    assert order.status is OrderStatus.FILLED
    assert order.latency == timedelta(milliseconds=300)


def test_a_bar_without_volume_fills_nothing():
    clock, broker = make(volume="0")
    order = broker.submit(OrderRequest("ABC", Side.BUY, Decimal(1)))
    clock.advance(timedelta(seconds=1))
    assert broker.process() == [] and order.status is OrderStatus.PENDING


def test_buying_more_than_the_cash_is_rejected():
    _, broker = make(cash="1000")
    with pytest.raises(OrderRejected, match="free cash"):
        broker.submit(OrderRequest("ABC", Side.BUY, Decimal(10)))


def test_selling_what_is_not_held_is_rejected_unless_shorting_is_allowed():
    _, broker = make()
    with pytest.raises(OrderRejected, match="free to sell"):
        broker.submit(OrderRequest("ABC", Side.SELL, Decimal(1)))
    _, shorting = make(allow_short=True)
    shorting.submit(OrderRequest("ABC", Side.SELL, Decimal(1)))


@pytest.mark.parametrize("quantity", [Decimal(0), Decimal(-1), Decimal("1.5")])
def test_quantities_are_positive_whole_shares(quantity):
    _, broker = make()
    with pytest.raises(OrderRejected, match="whole number"):
        broker.submit(OrderRequest("ABC", Side.BUY, quantity))


def test_an_unknown_symbol_is_rejected():
    _, broker = make()
    with pytest.raises(OrderRejected, match="no market price"):
        broker.submit(OrderRequest("XYZ", Side.BUY, Decimal(1)))


def test_cancel_all_cancels_open_orders_and_a_closed_broker_takes_no_orders():
    clock, broker = make(volume="100")
    order = broker.submit(OrderRequest("ABC", Side.BUY, Decimal(50)))
    clock.advance(100 * MS)
    broker.process()  # 2 of 50 shares
    assert broker.cancel_all() == [order]
    assert order.status is OrderStatus.CANCELLED and broker.open_orders() == []
    broker.close()
    with pytest.raises(Exception, match="closed"):
        broker.submit(OrderRequest("ABC", Side.BUY, Decimal(1)))


prices = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("100000"), places=2)
bps = st.decimals(min_value=Decimal(0), max_value=Decimal(500), places=2)


@given(price=prices, slippage=bps)
def test_slippage_always_goes_against_us_by_at_least_the_model(price, slippage):
    costs = CostModel(slippage_bps=slippage)
    buy, sell = costs.fill_price(Side.BUY, price), costs.fill_price(Side.SELL, price)
    exact_buy = price * (1 + slippage / 10000)
    exact_sell = price * (1 - slippage / 10000)
    assert exact_buy <= buy < exact_buy + costs.price_quantum
    assert exact_sell - costs.price_quantum < sell <= exact_sell
    assert sell <= price <= buy


@given(quantity=st.integers(min_value=1, max_value=10**7), per_share=st.decimals("0", "0.1", places=4),
       minimum=st.decimals("0", "5", places=2))
def test_commission_is_per_share_with_a_floor(quantity, per_share, minimum):
    c = CostModel(commission_per_share=per_share, min_commission=minimum)
    assert c.commission(Decimal(quantity)) == max(Decimal(quantity) * per_share, minimum)


@settings(max_examples=150, deadline=None)
@given(
    quantity=st.integers(min_value=1, max_value=5000),
    volumes=st.lists(st.integers(min_value=0, max_value=200_000), min_size=1, max_size=12),
    price=prices.filter(lambda p: p >= 1),
)
def test_fills_respect_the_volume_limit_and_conserve_cash(quantity, volumes, price):
    clock, broker = make(cash="1000000000", volume="0", price=str(price))
    order = broker.submit(OrderRequest("ABC", Side.BUY, Decimal(quantity)))
    total_cost = Decimal(0)
    for volume in volumes:
        clock.advance(100 * MS)
        broker.on_bar({"ABC": price}, {"ABC": Decimal(volume)}, clock.now())
        fills = broker.process()
        filled_this_bar = sum((f.quantity for f in fills), Decimal(0))
        assert filled_this_bar <= CostModel().capacity(Decimal(volume))
        total_cost += sum((f.quantity * f.price + f.commission for f in fills), Decimal(0))
    assert order.filled_quantity <= order.quantity
    assert broker.positions().get("ABC", Decimal(0)) == order.filled_quantity
    assert broker.cash() == Decimal("1000000000") - total_cost
    assert (order.status is OrderStatus.FILLED) == (order.filled_quantity == quantity)
