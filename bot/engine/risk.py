"""The risk gate: guardrails between what a policy wants and what reaches the exchange.

The gate lives outside every network and no policy can override it. Every guardrail is read
from :class:`~config.schema.RiskConfig`, so a backtest and the live daemon enforce the same ones.
Each change it makes is a ``RiskRefusal`` event naming the rule, the asset, what was wanted and
what was allowed. The gate only decides and returns refusals; the
:class:`~bot.engine.planner.OrderPlanner` emits them and asks the gate at each decision:

==================== ======================== =================================================
rule                 asset                    wanted / allowed
==================== ======================== =================================================
max_weight_per_coin  coin                     weight / cap
min_cash             coin                     weight / scaled weight
stale_data           coin                     age of its latest bar in bars (inf: no bar) /
                                              ``stale_after_bars``; no order at that decision
max_order_notional   coin                     order notional / notional after the cut (0:
                                              dropped)
max_daily_turnover   coin                     order notional / notional after the cut (0:
                                              dropped)
max_drawdown         ``*`` (whole portfolio)  drawdown from the peak / ``max_drawdown``; once,
                                              when the kill switch trips
halted               ``*``                    notional the decision wanted to trade / 0; once
                                              per decision while the kill switch holds
==================== ======================== =================================================

The kill switch is the gate's only latched state: it trips on a valuation (``observe_equity``),
holds through restarts (``snapshot``/``restore``) and is cleared by an operator (``resume``).

Two rules shape every decision as configured: ``max_weight_per_coin`` caps a weight and
``min_cash`` keeps the cash floor (:data:`ROUTINE_RULES`). Their refusals are information: the
daemon logs them at INFO and Telegram does not alert them. The others stop or cut what would
have happened (stale data, an order's notional, the day's turnover, the kill switch) and are
warnings and alerts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from bot.engine.account import coin_of
from bot.engine.rules import DEFAULT_RULES, MarketRules
from bot.events import Bar, RiskRefusal, SubmitOrder
from bot.timeframes import DAY_MS, ms_to_iso, timeframe_ms
from config.schema import RiskConfig

ROUTINE_RULES = frozenset({"max_weight_per_coin", "min_cash"})
"""Rules whose refusals are the guardrail working as configured, at every decision."""


def is_routine(refusal: RiskRefusal) -> bool:
    """Whether ``refusal`` is a configured cap doing its job (INFO, no alert), not a warning."""
    return refusal.rule in ROUTINE_RULES


ALL_ASSETS = "*"
"""The ``asset`` of a refusal that concerns the whole portfolio (kill switch, halt)."""

_EPS = 1e-9


class RiskGate:
    """Applies the guardrails of :class:`~config.schema.RiskConfig` and holds the kill switch.

    State (what :meth:`snapshot` saves): the running equity peak, the UTC day of the last
    decision with its starting equity and the notional planned so far that day, and the kill
    switch (``halted`` reason, whether a flatten is still due or done).
    """

    def __init__(self, cfg: RiskConfig, quote: str) -> None:
        self.cfg = cfg
        self.quote = quote
        self.peak: float | None = None
        self.equity: float | None = None
        self.day: int | None = None  # UTC day number (epoch ms // DAY_MS) of the last decision
        self.day_start_equity = 0.0
        self.day_turnover = 0.0
        self._halted: str | None = None
        self.flatten_due = False
        """The kill switch tripped with a flatten and coins remain to be sold (a plain
        attribute: the engine reads it at every step)."""
        self._flattened = False
        self._step_ms: dict[str, int] = {}

    # -- kill switch ---------------------------------------------------------------------------

    @property
    def halted(self) -> str | None:
        """Why the kill switch holds (``None`` while trading is allowed)."""
        return self._halted

    def observe_equity(self, ts: int, equity: float) -> RiskRefusal | None:
        """Follow the equity of a valuation; trip the kill switch when the drawdown reaches the
        limit. Returns the ``max_drawdown`` refusal at the trip, else ``None`` (a hot path: one
        call per close)."""
        self.equity = equity
        peak = self.peak
        if peak is None or equity > peak:
            self.peak = peak = equity
        limit = self.cfg.max_drawdown
        if limit is None or self._halted is not None or peak <= 0:
            return None
        if equity > peak * (1.0 - limit):
            return None
        drawdown = 1.0 - equity / peak
        if self.cfg.on_drawdown == "flatten":
            action = "flatten: sell every coin at the next decision, then halt"
            self.flatten_due = True
        else:
            action = "halt: no more orders"
        self._halted = f"drawdown {drawdown:.2%} >= {limit:.2%} at {ms_to_iso(ts)}"
        return RiskRefusal(
            ts,
            "max_drawdown",
            ALL_ASSETS,
            drawdown,
            limit,
            f"equity {equity:.2f} is {drawdown:.2%} below its peak {peak:.2f} "
            f"(limit {limit:.2%}); {action} until an operator resumes",
        )

    def observe_path(self, equities: np.ndarray) -> bool:
        """Follow a stretch of valuations as :meth:`observe_equity` one after another would,
        vectorised; ``False`` (nothing followed) when the kill switch would trip in it, or a
        valuation is NaN, and the caller steps it one valuation at a time."""
        peaks = np.maximum.accumulate(equities)
        if peaks[-1] != peaks[-1]:  # a NaN valuation: only one at a time says what it does
            return False
        if self.peak is not None:
            np.maximum(peaks, self.peak, out=peaks)
        limit = self.cfg.max_drawdown
        halts = limit is not None and self._halted is None
        if halts and ((peaks > 0) & ~(equities > peaks * (1.0 - limit))).any():
            return False
        self.equity, self.peak = float(equities[-1]), float(peaks[-1])
        return True

    def trip(self, ts: int, reason: str, *, flatten: bool) -> None:
        """Trip the kill switch by hand (an operator's flatten): sell everything at the next
        decision when ``flatten``, then halt until resumed."""
        self._halted = f"{reason} at {ms_to_iso(ts)}"
        self.flatten_due = flatten
        self._flattened = False

    def flatten_done(self) -> None:
        """The flatten sold all it could: from now on the kill switch only halts."""
        self.flatten_due = False
        self._flattened = True

    def halt_refusal(self, ts: int, wanted_notional: float) -> RiskRefusal:
        """The one refusal of a decision taken while the kill switch holds."""
        return RiskRefusal(
            ts,
            "halted",
            ALL_ASSETS,
            wanted_notional,
            0.0,
            f"halted by kill switch ({self._halted}); no orders until resumed",
        )

    def resume(self) -> None:
        """Operator action: clear the kill switch and restart the peak at the current equity."""
        self._halted = None
        self.flatten_due = False
        self._flattened = False
        self.peak = self.equity

    # -- decisions -----------------------------------------------------------------------------

    def start_decision(self, ts: int, equity: float) -> None:
        """Open the decision's UTC day: a new day starts its turnover budget from ``equity``."""
        day = ts // DAY_MS
        if day != self.day:
            self.day = day
            self.day_start_equity = equity
            self.day_turnover = 0.0

    def review_weights(
        self, ts: int, wanted: Mapping[str, float]
    ) -> tuple[dict[str, float], list[RiskRefusal]]:
        """Clamp ``wanted`` (asset -> weight, quote included) to the guardrails.

        Weights are first made valid (negative -> 0, normalised to sum 1); each coin is capped at
        ``max_weight_per_coin``; coins are scaled down together until cash is at least
        ``min_cash``. What is taken from coins goes to cash.
        """
        refusals: list[RiskRefusal] = []
        weights = {asset: max(0.0, float(w)) for asset, w in wanted.items()}
        total = sum(weights.values())
        if total <= 0:
            return {self.quote: 1.0}, refusals
        weights = {asset: w / total for asset, w in weights.items()}
        cap = self.cfg.max_weight_per_coin
        for asset, weight in list(weights.items()):
            if asset != self.quote and weight > cap + 1e-12:
                refusals.append(
                    RiskRefusal(ts, "max_weight_per_coin", asset, weight, cap, f"cap {cap:.2%}")
                )
                weights[asset] = cap
        coins = sum(w for asset, w in weights.items() if asset != self.quote)
        room = 1.0 - self.cfg.min_cash
        if coins > room + 1e-12:
            scale = room / coins
            for asset in weights:
                if asset != self.quote:
                    allowed = weights[asset] * scale
                    refusals.append(
                        RiskRefusal(
                            ts,
                            "min_cash",
                            asset,
                            weights[asset],
                            allowed,
                            f"keep {self.cfg.min_cash:.2%} in {self.quote}",
                        )
                    )
                    weights[asset] = allowed
            coins = room
        weights[self.quote] = 1.0 - coins
        return weights, refusals

    def review_data(
        self, ts: int, coins: Iterable[str], last_bars: Mapping[str, Bar]
    ) -> list[RiskRefusal]:
        """One ``stale_data`` refusal per coin of ``coins`` whose latest bar is missing or closed
        more than ``stale_after_bars`` bar intervals before ``ts``; any refusal means no order at
        this decision. Empty when the check is disabled (``stale_after_bars = None``)."""
        limit = self.cfg.stale_after_bars
        if limit is None:
            return []
        refusals: list[RiskRefusal] = []
        for coin in sorted(coins):
            bar = last_bars.get(coin)
            if bar is None:
                refusals.append(
                    RiskRefusal(
                        ts, "stale_data", coin, math.inf, limit, f"no {coin} bar received yet"
                    )
                )
                continue
            age_ms = ts - bar.ts
            if age_ms <= 0:
                continue
            step = self._step_ms.get(bar.timeframe)
            if step is None:
                step = self._step_ms[bar.timeframe] = timeframe_ms(bar.timeframe)
            age = age_ms / step
            if age > limit + _EPS:
                refusals.append(
                    RiskRefusal(
                        ts,
                        "stale_data",
                        coin,
                        age,
                        limit,
                        f"latest {coin} bar closed {age:g} bars ({bar.timeframe}) before the "
                        f"decision, at {ms_to_iso(bar.ts)}; limit {limit} bars",
                    )
                )
        return refusals

    def review_orders(
        self,
        ts: int,
        orders: list[SubmitOrder],
        rules: Mapping[str, MarketRules],
        *,
        exempt_turnover: bool = False,
    ) -> tuple[list[SubmitOrder], list[RiskRefusal]]:
        """Apply ``max_order_notional`` then ``max_daily_turnover`` to ``orders``, in order.

        An order above either limit is cut (its amount rounded down to the coin's lot) or, when
        the cut is not tradable, dropped; either way with a refusal. What passes is counted in
        the day's turnover as it is planned (conservative: a later rejection does not give the
        budget back). ``exempt_turnover`` (the kill switch's flatten) counts without limiting:
        an emergency exit is not stopped by a churn limit. Call :meth:`start_decision` first.
        """
        cap = self.cfg.max_order_notional
        turnover = self.cfg.max_daily_turnover
        if cap is None and turnover is None:
            for order in orders:
                self.day_turnover += order.amount * order.reference_price
            return orders, []
        if exempt_turnover:
            turnover = None
        kept: list[SubmitOrder] = []
        refusals: list[RiskRefusal] = []
        quote = self.quote
        for order in orders:
            price = order.reference_price
            notional = order.amount * price
            coin = coin_of(order.symbol)
            if cap is not None and notional > cap + _EPS:
                order, allowed = _cut(order, cap, rules.get(coin, DEFAULT_RULES))
                what = f"cut to {order.amount:g}" if allowed else "dropped (not tradable)"
                refusals.append(
                    RiskRefusal(
                        ts,
                        "max_order_notional",
                        coin,
                        notional,
                        allowed,
                        f"{order.side} {order.symbol} {what}: cap {cap:.2f} {quote} per order",
                    )
                )
                if not allowed:
                    continue
                notional = allowed
            if turnover is not None:
                budget = turnover * self.day_start_equity
                left = budget - self.day_turnover
                if notional > left + _EPS:
                    order, allowed = _cut(order, max(left, 0.0), rules.get(coin, DEFAULT_RULES))
                    what = f"cut to {order.amount:g}" if allowed else "dropped"
                    refusals.append(
                        RiskRefusal(
                            ts,
                            "max_daily_turnover",
                            coin,
                            notional,
                            allowed,
                            f"{order.side} {order.symbol} {what}: {self.day_turnover:.2f} of "
                            f"{budget:.2f} {quote} ({turnover:g} x equity "
                            f"{self.day_start_equity:.2f}) already planned on "
                            f"{ms_to_iso(ts)[:10]}",
                        )
                    )
                    if not allowed:
                        continue
                    notional = allowed
            self.day_turnover += notional
            kept.append(order)
        return kept, refusals

    # -- persistence ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The gate's state as plain JSON-able values, for the daemon's state store."""
        return {
            "peak": self.peak,
            "equity": self.equity,
            "day": self.day,
            "day_start_equity": self.day_start_equity,
            "day_turnover": self.day_turnover,
            "halted": self._halted,
            "flatten_due": self.flatten_due,
            "flattened": self._flattened,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Take back a :meth:`snapshot` (missing keys keep their fresh-gate values)."""
        peak, equity, day = state.get("peak"), state.get("equity"), state.get("day")
        self.peak = None if peak is None else float(peak)
        self.equity = None if equity is None else float(equity)
        self.day = None if day is None else int(day)
        self.day_start_equity = float(state.get("day_start_equity", 0.0))
        self.day_turnover = float(state.get("day_turnover", 0.0))
        halted = state.get("halted")
        self._halted = None if halted is None else str(halted)
        self.flatten_due = bool(state.get("flatten_due", False))
        self._flattened = bool(state.get("flattened", False))


def _cut(order: SubmitOrder, notional: float, rules: MarketRules) -> tuple[SubmitOrder, float]:
    """``order`` cut to at most ``notional`` (rounded down to the lot) and its new notional;
    0.0 when what is left is not tradable."""
    price = order.reference_price
    amount = rules.round_amount(notional / price) if price > 0 else 0.0
    if not rules.tradable(amount, price):
        return order, 0.0
    return order._replace(amount=amount), amount * price
