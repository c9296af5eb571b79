"""The simulated venue: one fill model for backtests and paper trading alike.

A decision taken at the close of bar t fills at the **open of the next bar** (the first bar of
that symbol opening at or after the order's time): in a backtest the replay's price book gives
it; in paper trading the exchange's candle forming right after the close does (its open is the
first trade after the close). The rest is the same for both:

- **slippage**: ``slippage_bps`` worse than that open;
- **market impact** (when ``[execution].impact_coefficient`` > 0 and the bar's volume is known):
  square-root impact ``k * sqrt(amount / depth)`` of the price, ``depth`` being
  ``liquidity_window`` of the bar's volume: the liquidity one order meets at once. A slice sent
  later in the bar (:meth:`SimVenue.execute_slice`) fills on the bar's path (its open moved
  linearly toward its close) and meets fresh depth, so slicing a large order pays less impact;
- **fees**: ``fee_rate`` of the notional, in the quote currency;
- **filters**: amounts rounded down to the lot; an order below the minimum notional is refused;
- **affordability**: spot only; a buy the cash cannot pay (with its fee) at the fill price is
  scaled down to what it can (lot-rounded), a sell to the coins held; nothing left is a refusal.

The venue keeps its own balances, as an exchange does; the engine's account mirrors them from the
fills. Paper balances start from the journal (so they are exactly as crash-safe as the orders).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from bot.engine.account import coin_of
from bot.engine.rules import DEFAULT_RULES, MarketRules
from bot.events import OrderFilled, OrderRejected, SubmitOrder
from bot.venues.base import ABSENT, OpenOrder, Record
from bot.venues.orders import OrderOutcome
from config.schema import BrokerConfig, ExecutionConfig

NextBar = Callable[[str, int], tuple[int, float, float, float] | None]
"""``next_bar(symbol, ts)`` -> (open time, open, close, volume) of the first bar opening at or
after ts (the replay's), or None."""
NextOpen = Callable[[str, int], Any]
"""``next_open(symbol, ts)`` -> (open time, open price) of the first bar opening at/after ts,
or None; may be a coroutine function (paper trading reads it from the exchange)."""


class SimVenue:
    """Fills at the next bar's open with slippage, fees and the exchange's filters."""

    name = "paper"
    horizon_ms = 0

    def __init__(
        self,
        cfg: BrokerConfig,
        quote: str,
        rules: Mapping[str, MarketRules],
        next_open: NextOpen,
        *,
        cash: float | None = None,
        holdings: Mapping[str, float] | None = None,
        execution: ExecutionConfig | None = None,
        next_bar: NextBar | None = None,
        step_ms: int = 0,
    ) -> None:
        self.fee_rate = cfg.fee_rate
        self.impact = 0.0 if execution is None else execution.impact_coefficient
        self.liquidity_window = 1.0 if execution is None else execution.liquidity_window
        self.next_bar = next_bar
        self.step_ms = step_ms
        self.impact_paid = 0.0
        """Quote currency paid to market impact over the run."""
        self.slippage_paid = 0.0
        """Quote currency paid to ``slippage_bps`` over the run."""
        self.slippage = cfg.slippage_bps / 10_000
        self.quote = quote
        self.rules = rules
        self.next_open = next_open
        self.balances_held: dict[str, float] = {quote: cfg.initial_cash if cash is None else cash}
        self.balances_held.update(holdings or {})

    # -- the fill model --------------------------------------------------------------------------

    def execute(self, order: SubmitOrder) -> OrderFilled | OrderRejected:
        """The outcome of ``order`` at the next open (``next_open`` must be synchronous)."""
        if self.impact and self.next_bar is not None:
            return self.execute_slice(order, 0)
        quote_open = self.next_open(order.symbol, order.ts)
        if quote_open is None:
            return self._reject(order, "no later bar to fill at (end of data)")
        return self.fill(order, *quote_open)

    def execute_slice(self, order: SubmitOrder, offset_ms: int) -> OrderFilled | OrderRejected:
        """Fill ``order`` ``offset_ms`` into the next bar: on its path (the open moved linearly
        toward the close) with the impact of the bar's volume (``next_bar`` is needed)."""
        assert self.next_bar is not None, "execute_slice needs the replay's next_bar"
        bar = self.next_bar(order.symbol, order.ts)
        if bar is None:
            return self._reject(order, "no later bar to fill at (end of data)")
        open_time, open_price, close, volume = bar
        share = min(1.0, offset_ms / self.step_ms) if self.step_ms else 0.0
        price = open_price + (close - open_price) * share
        return self.fill(order, open_time + offset_ms, price, volume)

    def fill(
        self,
        order: SubmitOrder,
        open_time: int,
        open_price: float,
        volume: float | None = None,
    ) -> OrderFilled | OrderRejected:
        """Fill ``order`` at ``open_price`` (the next bar's open, or its path for a slice)
        against the balances, which it updates; the fill is stamped ``open_time``. With the
        bar's ``volume``, the square-root impact applies."""
        coin = coin_of(order.symbol)
        rules = self.rules.get(coin, DEFAULT_RULES)
        buy = order.side == "buy"
        impact = 0.0
        if self.impact and volume:
            depth = self.liquidity_window * volume
            impact = min(0.5, self.impact * math.sqrt(order.amount / depth))
        worse = self.slippage + impact
        price = open_price * (1 + worse if buy else 1 - worse)
        if order.order_type == "limit" and order.limit_price is not None:
            limit = order.limit_price
            if (buy and price > limit) or (not buy and price < limit):
                return self._reject(order, f"limit {limit:.8g} not reached at the open {price:.8g}")
        held = self.balances_held
        amount = rules.round_amount(order.amount)
        if buy:
            affordable = held.get(self.quote, 0.0) / (price * (1 + self.fee_rate))
            amount = min(amount, rules.round_amount(affordable))
        else:
            amount = min(amount, rules.round_amount(held.get(coin, 0.0)))
        if amount <= 0:
            return self._reject(
                order, "insufficient balance" if order.amount > 0 else "zero amount"
            )
        if not rules.tradable(amount, price):
            return self._reject(
                order, f"notional {amount * price:.2f} below minimum {rules.min_notional:.2f}"
            )
        notional = amount * price
        fee = notional * self.fee_rate
        self.impact_paid += amount * open_price * impact
        self.slippage_paid += amount * open_price * self.slippage
        sign = 1.0 if buy else -1.0
        held[coin] = held.get(coin, 0.0) + sign * amount
        held[self.quote] = held.get(self.quote, 0.0) - sign * notional - fee
        return OrderFilled(
            open_time,
            order.client_order_id,
            order.symbol,
            order.side,
            amount,
            price,
            fee,
            self.quote,
        )

    def _reject(self, order: SubmitOrder, reason: str) -> OrderRejected:
        return OrderRejected(
            order.ts, order.client_order_id, order.symbol, order.side, order.amount, reason
        )

    # -- the Venue protocol (paper trading) --------------------------------------------------------

    def shape(self, order: SubmitOrder) -> SubmitOrder:
        """Paper orders go as the planner made them (market orders)."""
        return order

    async def submit(self, order: SubmitOrder) -> OrderOutcome:
        """The simulated fill (or refusal) of ``order`` at the next open."""
        found = self.next_open(order.symbol, order.ts)
        if inspect.isawaitable(found):
            found = await found
        if found is None:
            return OrderOutcome("rejected", reason=f"no price after the close for {order.symbol}")
        outcome = self.fill(order, *found)
        if isinstance(outcome, OrderRejected):
            return OrderOutcome("rejected", reason=outcome.reason)
        return OrderOutcome(
            "filled",
            filled=outcome.amount,
            average_price=outcome.price,
            fee=outcome.fee,
            fee_asset=outcome.fee_asset,
            exchange_order_id=f"paper-{order.client_order_id}",
            fees=((outcome.fee_asset, outcome.fee),),
            fee_quote=outcome.fee,
        )

    async def lookup(self, order: SubmitOrder, since_ms: int | None = None) -> Record:
        """A paper fill is journalled in the same step as its ``sending`` mark: an order still
        ``sending`` was never filled."""
        return ABSENT

    async def balances(self, coins: tuple[str, ...], quote: str) -> dict[str, float]:
        """What the venue holds."""
        return dict(self.balances_held)

    async def cancel(self, order: SubmitOrder, last: OrderOutcome | None = None) -> OrderOutcome:
        """Paper orders never rest on a book."""
        return last or OrderOutcome("canceled")

    async def open_orders(self, coins: tuple[str, ...], quote: str) -> list[OpenOrder]:
        """Paper orders never rest on a book."""
        return []

    async def cancel_open(self, order: OpenOrder) -> None:
        """Nothing rests on a paper book."""

    async def clock_ms(self, estimate_ms: int) -> int:
        """Paper has no clock of its own: the daemon's."""
        return estimate_ms


def forming_candle_open(
    fetch_ohlcv: Callable[..., Awaitable[list[list[float]]]], timeframe: str
) -> Callable[[str, int], Awaitable[tuple[int, float] | None]]:
    """Paper trading's ``next_open``: the open of the exchange's candle that opens at the
    decision's close (the bar forming now), read over REST."""

    async def next_open(symbol: str, ts: int) -> tuple[int, float] | None:
        rows = await fetch_ohlcv(symbol, timeframe, ts, 1)
        if not rows or int(rows[0][0]) < ts:
            return None
        return int(rows[0][0]), float(rows[0][1])

    return next_open
