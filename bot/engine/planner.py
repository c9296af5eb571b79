"""From target weights to orders: the risk gate, then sells before buys, lot- and notional-valid.

The planner sizes orders from the account's last valuation: the target amount of a coin is
``weight * equity / price``. Sells go first so their proceeds can pay for buys; buys are scaled
down together when cash (after fees) would not cover them. Moves smaller than
``min_trade_weight`` of equity, below one lot, or below the minimum notional are not sent.
Client order ids are deterministic: the same decision always produces the same ids.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from bot.engine.account import Account
from bot.engine.risk import RiskGate
from bot.engine.rules import MarketRules
from bot.events import Event, SubmitOrder, TargetWeights


def client_order_id(ts: int, coin: str, side: str) -> str:
    """Deterministic id (Binance allows 36 chars of ``[.A-Za-z0-9:/_-]``)."""
    return f"rlpm-{ts // 1000}-{coin[:12]}-{side[0]}"


class OrderPlanner:
    """Turns ``TargetWeights`` into ``SubmitOrder`` commands for the executor."""

    def __init__(
        self,
        account: Account,
        gate: RiskGate,
        rules: Mapping[str, MarketRules],
        emit: Callable[[Event], None],
        *,
        fee_rate: float,
        min_trade_weight: float = 0.0,
    ) -> None:
        self.account = account
        self.gate = gate
        self.rules = rules
        self.fee_rate = fee_rate
        self.min_trade_weight = min_trade_weight
        self._emit = emit
        self.paused = False

    def on_target_weights(self, target: TargetWeights) -> None:
        """Review ``target`` through the gate and emit the orders that move the account to it."""
        weights, refusals = self.gate.review_weights(target.ts, target.as_dict())
        for refusal in refusals:
            self._emit(refusal)
        if self.paused:
            return
        for order in self.plan(target.ts, weights):
            self._emit(order)

    def plan(self, ts: int, weights: Mapping[str, float]) -> list[SubmitOrder]:
        """Orders (sells first) that bring the account to ``weights``; may be empty."""
        account = self.account
        equity = account.equity()
        if equity <= 0:
            return []
        quote = account.quote
        coins = (set(weights) | set(account.holdings)) - {quote}
        sells: list[SubmitOrder] = []
        buys: list[tuple[str, float, float]] = []  # coin, amount, price
        for coin in sorted(coins):
            price = account.prices.get(coin)
            if not price:
                continue
            rules = self.rules.get(coin, MarketRules())
            held = account.holdings.get(coin, 0.0)
            delta = weights.get(coin, 0.0) * equity / price - held
            if abs(delta) * price < self.min_trade_weight * equity:
                continue
            if delta < 0:
                # Selling everything may leave dust below one lot; selling "all" means all lots.
                amount = rules.round_amount(min(-delta, held))
                if rules.tradable(amount, price):
                    sells.append(self._order(ts, coin, "sell", amount, price))
            elif delta > 0:
                buys.append((coin, delta, price))
        cash = account.cash + sum(o.amount * o.reference_price for o in sells) * (1 - self.fee_rate)
        wanted = sum(amount * price for _, amount, price in buys) * (1 + self.fee_rate)
        scale = min(1.0, cash / wanted) if wanted > 0 else 0.0
        orders = list(sells)
        for coin, amount, price in buys:
            rules = self.rules.get(coin, MarketRules())
            amount = rules.round_amount(amount * scale)
            if rules.tradable(amount, price):
                orders.append(self._order(ts, coin, "buy", amount, price))
        return orders

    def _order(self, ts: int, coin: str, side: str, amount: float, price: float) -> SubmitOrder:
        return SubmitOrder(
            ts,
            client_order_id(ts, coin, side),
            f"{coin}/{self.account.quote}",
            side,
            amount,
            reference_price=price,
        )
