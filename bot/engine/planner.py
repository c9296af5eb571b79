"""From target weights to orders: the risk gate, then sells before buys, lot- and notional-valid.

The planner sizes orders from the account's last valuation: the target amount of a coin is
``weight * equity / price``. Sells go first so their proceeds can pay for buys; buys are scaled
down together when cash (after fees) would not cover them. No order exceeds the market's
largest market order (MARKET_LOT_SIZE): the rest waits for the next decision. Moves smaller than
``min_trade_weight`` of equity, below one lot, or below the minimum notional are not sent.
Client order ids are deterministic: the same decision always produces the same ids.

At each decision (:meth:`OrderPlanner.review`) the checks run in this order, every change or
block returned as a ``RiskRefusal`` (see :mod:`bot.engine.risk` for the rules):

1. kill switch: while it holds, no orders and one ``halted`` refusal; when it tripped with
   ``on_drawdown="flatten"``, the policy's targets are replaced by 100% cash (sold through the
   normal sizing, lot-rounded, ignoring ``min_trade_weight`` and the daily turnover limit) at
   every decision until nothing tradable is left, then it halts;
2. weight guardrails (``max_weight_per_coin``, ``min_cash``); then a coin in ``blocked`` (live
   trading: an order of unknown fate) keeps its current weight, with an ``order_unknown``
   refusal, and the other coins share what is left;
3. stale data: a coin the targets or the holdings involve whose latest bar is too old blocks
   every order of the decision;
4. operator pause (``paused``): the decision's refusals are returned, no orders;
5. order guardrails (``max_order_notional``, ``max_daily_turnover``), on the sells and then on
   the buys, which are sized from the cash the reviewed sells will bring.

The kill switch itself trips on the valuation of the same close, which the engine's step takes
before it asks the policy (:meth:`bot.engine.kernel.Engine.step`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from bot.engine.account import Account
from bot.engine.risk import RiskGate
from bot.engine.rules import DEFAULT_RULES, MarketRules
from bot.events import RiskRefusal, SubmitOrder


class Trim(NamedTuple):
    """An order the planner changed for the market's filters or the cash: ``wanted`` and
    ``planned`` amounts of ``coin`` (0: not sent) and why."""

    coin: str
    side: str
    wanted: float
    planned: float
    reason: str


class Review(NamedTuple):
    """A decision's review: the orders to send, the guardrails' refusals, the weights they
    allowed (``None``: nothing was planned, the kill switch holds), and the orders the filters
    trimmed."""

    orders: list[SubmitOrder]
    refusals: list[RiskRefusal]
    allowed: dict[str, float] | None
    trims: list[Trim]


CLIENT_ID_PREFIX = "rlpm-"
"""Every client order id of this bot starts with it (stray orders of ours are recognised)."""


def client_order_id(ts: int, coin: str, side: str) -> str:
    """Deterministic id (Binance allows 36 chars of ``[.A-Za-z0-9:/_-]``)."""
    return f"{CLIENT_ID_PREFIX}{ts // 1000}-{coin[:12]}-{side[0]}"


class OrderPlanner:
    """Turns wanted weights into ``SubmitOrder`` commands for a venue, through the gate.

    ``paused`` (the operator's pause): decisions and their refusals go on, no order is sent.
    """

    def __init__(
        self,
        account: Account,
        gate: RiskGate,
        rules: Mapping[str, MarketRules],
        *,
        fee_rate: float,
        min_trade_weight: float = 0.0,
    ) -> None:
        self.account = account
        self.gate = gate
        self.rules = rules
        self.fee_rate = fee_rate
        self.min_trade_weight = min_trade_weight
        self.paused = False
        self.blocked: dict[str, str] = {}
        """Coin -> why no order may be planned for it (set by the live executor)."""

    def review(self, ts: int, wanted: dict[str, float] | None) -> Review:
        """The guardrails' review of ``wanted`` (asset -> weight; ``None``: the policy has no
        new target) and the orders that move the account to what they allow.

        A tripped kill switch acts whatever the policy says: a due flatten sells everything,
        a halt refuses any trade the policy wanted (one ``halted`` refusal).
        """
        gate, account = self.gate, self.account
        flatten = gate.flatten_due
        if wanted is None and not flatten:
            return Review([], [], None, [])
        gate.start_decision(ts, account.equity())
        if gate.halted is not None and not flatten:
            assert wanted is not None
            return Review([], [gate.halt_refusal(ts, self._wanted_notional(ts, wanted))], None, [])
        if flatten:
            weights: dict[str, float] = {account.quote: 1.0}
            refusals: list[RiskRefusal] = []
        else:
            assert wanted is not None
            weights, refusals = gate.review_weights(ts, wanted)
        if self.blocked:
            weights = self._hold_blocked(ts, weights, refusals)
        stale = gate.review_data(ts, self.involved_coins(weights), account.last_bars)
        if stale:
            return Review([], refusals + stale, weights, [])
        if self.paused:
            return Review([], refusals, weights, [])
        trims: list[Trim] = []
        orders, order_refusals = self._plan(
            ts, weights, reviewed=True, flatten=flatten, trims=trims
        )
        if flatten and not orders:
            # Nothing tradable left to sell: the flatten is complete and the switch just halts.
            gate.flatten_done()
            order_refusals.append(gate.halt_refusal(ts, 0.0))
        return Review(orders, refusals + order_refusals, weights, trims)

    def _hold_blocked(
        self, ts: int, weights: dict[str, float], refusals: list[RiskRefusal]
    ) -> dict[str, float]:
        """Keep each blocked coin at its current weight; scale the others into what is left."""
        account = self.account
        quote = account.quote
        current = account.weights()
        held = {}
        for coin in sorted(self.blocked):
            now = current.get(coin, 0.0)
            wanted = weights.get(coin, 0.0)
            held[coin] = now
            refusals.append(RiskRefusal(ts, "order_unknown", coin, wanted, now, self.blocked[coin]))
        free = {c: w for c, w in weights.items() if c != quote and c not in held}
        room = max(0.0, 1.0 - sum(held.values()))
        total = sum(free.values())
        if total > room > 0:
            free = {c: w * room / total for c, w in free.items()}
        elif room <= 0:
            free = dict.fromkeys(free, 0.0)
        out = {**free, **held}
        out[quote] = max(0.0, 1.0 - sum(out.values()))
        return out

    def involved_coins(self, weights: Mapping[str, float]) -> set[str]:
        """Coins a decision touches: wanted (weight > 0) or held (amount > 0)."""
        quote = self.account.quote
        coins = {coin for coin, w in weights.items() if w > 0 and coin != quote}
        coins.update(coin for coin, amount in self.account.holdings.items() if amount > 0)
        return coins

    def plan(self, ts: int, weights: Mapping[str, float]) -> list[SubmitOrder]:
        """Orders (sells first) that bring the account to ``weights``, before the order
        guardrails (``max_order_notional``, ``max_daily_turnover``); may be empty."""
        return self._plan(ts, weights, reviewed=False, flatten=False)[0]

    def _wanted_notional(self, ts: int, wanted: Mapping[str, float]) -> float:
        weights, _ = self.gate.review_weights(ts, wanted)
        return sum(o.amount * o.reference_price for o in self.plan(ts, weights))

    def _plan(
        self,
        ts: int,
        weights: Mapping[str, float],
        *,
        reviewed: bool,
        flatten: bool,
        trims: list[Trim] | None = None,
    ) -> tuple[list[SubmitOrder], list[RiskRefusal]]:
        account = self.account
        refusals: list[RiskRefusal] = []
        equity = account.equity()
        if equity <= 0:
            return [], refusals
        quote = account.quote
        trim = trims.append if trims is not None else _ignore
        min_move = 0.0 if flatten else self.min_trade_weight * equity
        coins = (set(weights) | set(account.holdings)) - {quote} - set(self.blocked)
        sells: list[SubmitOrder] = []
        buys: list[tuple[str, float, float]] = []  # coin, amount, price
        for coin in sorted(coins):
            price = account.prices.get(coin)
            if not price:
                continue
            rules = self.rules.get(coin, DEFAULT_RULES)
            held = account.holdings.get(coin, 0.0)
            delta = weights.get(coin, 0.0) * equity / price - held
            side = "sell" if delta < 0 else "buy"
            if abs(delta) * price < min_move:
                if delta:
                    trim(Trim(coin, side, abs(delta), 0.0, "below min_trade_weight"))
                continue
            if delta < 0:
                # Selling everything may leave dust below one lot; selling "all" means all lots.
                wanted = min(-delta, held)
                if wanted > rules.max_market_amount:
                    trim(Trim(coin, side, wanted, rules.max_market_amount, "largest market order"))
                amount = rules.round_amount(min(wanted, rules.max_market_amount))
                if rules.tradable(amount, price):
                    sells.append(self._order(ts, coin, "sell", amount, price))
                else:
                    trim(Trim(coin, side, wanted, 0.0, "below one lot or the minimum notional"))
            elif delta > 0:
                if delta > rules.max_market_amount:
                    trim(Trim(coin, side, delta, rules.max_market_amount, "largest market order"))
                buys.append((coin, min(delta, rules.max_market_amount), price))
        if reviewed:
            sells, cut = self.gate.review_orders(ts, sells, self.rules, exempt_turnover=flatten)
            refusals.extend(cut)
        cash = account.cash + sum(o.amount * o.reference_price for o in sells) * (1 - self.fee_rate)
        wanted_cash = sum(amount * price for _, amount, price in buys) * (1 + self.fee_rate)
        scale = min(1.0, cash / wanted_cash) if wanted_cash > 0 else 0.0
        planned: list[SubmitOrder] = []
        for coin, amount, price in buys:
            rules = self.rules.get(coin, DEFAULT_RULES)
            sized = rules.round_amount(amount * scale)
            if scale < 1.0 - 1e-9:
                trim(Trim(coin, "buy", amount, sized, "scaled to the cash"))
            if rules.tradable(sized, price):
                planned.append(self._order(ts, coin, "buy", sized, price))
            else:
                trim(Trim(coin, "buy", amount, 0.0, "below one lot or the minimum notional"))
        if reviewed and planned:
            planned, cut = self.gate.review_orders(ts, planned, self.rules)
            refusals.extend(cut)
        return sells + planned, refusals

    def _order(self, ts: int, coin: str, side: str, amount: float, price: float) -> SubmitOrder:
        return SubmitOrder(
            ts,
            client_order_id(ts, coin, side),
            f"{coin}/{self.account.quote}",
            side,
            amount,
            reference_price=price,
        )


def _ignore(trim: Trim) -> None:
    """Where trims go when nobody audits them."""
