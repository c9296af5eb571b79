"""The simulated broker: the exchange of a backtest.

A decision taken at the close of bar t fills at the *open of bar t+1* (the first bar of that
symbol opening at or after the order's time), which the broker reads from the replay's price
book: the broker plays the exchange, so it may know the price an order executes at, while
policies never see a bar before it closes. Market orders fill ``slippage_bps`` worse than that
open; the fee (``fee_rate`` of the notional) is charged in the quote currency. Spot only: a buy
needs the cash (it is scaled down to what is there, or refused), a sell needs the coins. Amounts
are rounded down to the lot; orders below the minimum notional are refused like the exchange
would. The broker keeps its own balances, as an exchange does; the engine's account mirrors them
from the fill events.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from bot.bus import EventBus
from bot.engine.account import coin_of
from bot.engine.rules import MarketRules
from bot.events import Event, OrderFilled, OrderRejected, SubmitOrder
from config.schema import BrokerConfig

NextOpen = Callable[[str, int], tuple[int, float] | None]
"""``next_open(symbol, ts)`` -> (open time, open price) of the first bar opening at/after ts."""


class SimBroker:
    """Fills ``SubmitOrder`` at the next bar's open with slippage, fees and exchange filters."""

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
        self.balances: dict[str, float] = {quote: cfg.initial_cash if cash is None else cash}
        self.balances.update(holdings or {})
        self._emit: Callable[[Event], None] = lambda event: None

    def attach(self, bus: EventBus) -> None:
        """Answer ``SubmitOrder`` on ``bus``."""
        self._emit = bus.emit
        bus.subscribe(SubmitOrder, self.on_submit)

    def on_submit(self, order: SubmitOrder) -> None:
        """Fill or refuse one order; emits ``OrderFilled`` or ``OrderRejected``."""
        self._emit(self.execute(order))

    def execute(self, order: SubmitOrder) -> OrderFilled | OrderRejected:
        """The outcome of ``order`` against the next open and the balances (which it updates)."""
        coin = coin_of(order.symbol)
        rules = self.rules.get(coin, MarketRules())
        quote_open = self.next_open(order.symbol, order.ts)
        if quote_open is None:
            return self._reject(order, "no later bar to fill at (end of data)")
        open_time, open_price = quote_open
        buy = order.side == "buy"
        price = open_price * (1 + self.slippage if buy else 1 - self.slippage)
        amount = rules.round_amount(order.amount)
        if buy:
            cash = self.balances.get(self.quote, 0.0)
            affordable = rules.round_amount(cash / (price * (1 + self.fee_rate)))
            amount = min(amount, affordable)
        else:
            amount = min(amount, rules.round_amount(self.balances.get(coin, 0.0)))
        if amount <= 0:
            reason = "insufficient balance" if order.amount > 0 else "zero amount"
            return self._reject(order, reason)
        if not rules.tradable(amount, price):
            return self._reject(
                order, f"notional {amount * price:.2f} below minimum {rules.min_notional:.2f}"
            )
        notional = amount * price
        fee = notional * self.fee_rate
        sign = 1.0 if buy else -1.0
        self.balances[coin] = self.balances.get(coin, 0.0) + sign * amount
        self.balances[self.quote] = self.balances.get(self.quote, 0.0) - sign * notional - fee
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
