"""The simulated venue: one fill model for backtests and paper trading alike.

A decision taken at the close of bar t fills at the **open of the next bar** (the first bar of
that symbol opening at or after the order's time): in a backtest the replay's price book gives
it; in paper trading the exchange's candle forming right after the close does (its open is the
first trade after the close). The rest is the same for both:

- **slippage**: ``slippage_bps`` worse than that open;
- **fees**: ``fee_rate`` of the notional, in the quote currency;
- **filters**: amounts rounded down to the lot; an order below the minimum notional is refused;
- **affordability**: spot only; a buy the cash cannot pay (with its fee) at the fill price is
  scaled down to what it can (lot-rounded), a sell to the coins held; nothing left is a refusal.

The venue keeps its own balances, as an exchange does; the engine's account mirrors them from the
fills. Paper balances start from the journal (so they are exactly as crash-safe as the orders).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from bot.engine.account import coin_of
from bot.engine.rules import DEFAULT_RULES, MarketRules
from bot.events import OrderFilled, OrderRejected, SubmitOrder
from bot.venues.base import ABSENT, OpenOrder, Record
from bot.venues.orders import OrderOutcome
from config.schema import BrokerConfig

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
    ) -> None:
        self.fee_rate = cfg.fee_rate
        self.slippage = cfg.slippage_bps / 10_000
        self.quote = quote
        self.rules = rules
        self.next_open = next_open
        self.balances_held: dict[str, float] = {quote: cfg.initial_cash if cash is None else cash}
        self.balances_held.update(holdings or {})

    # -- the fill model --------------------------------------------------------------------------

    def execute(self, order: SubmitOrder) -> OrderFilled | OrderRejected:
        """The outcome of ``order`` at the next open (``next_open`` must be synchronous)."""
        quote_open = self.next_open(order.symbol, order.ts)
        if quote_open is None:
            return self._reject(order, "no later bar to fill at (end of data)")
        return self.fill(order, *quote_open)

    def fill(
        self, order: SubmitOrder, open_time: int, open_price: float
    ) -> OrderFilled | OrderRejected:
        """Fill ``order`` at ``open_price`` (the next bar's open) against the balances, which it
        updates; the fill is stamped ``open_time``."""
        coin = coin_of(order.symbol)
        rules = self.rules.get(coin, DEFAULT_RULES)
        buy = order.side == "buy"
        price = open_price * (1 + self.slippage if buy else 1 - self.slippage)
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
