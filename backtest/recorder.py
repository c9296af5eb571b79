"""Records what an engine did during a replay, and turns it into a :class:`RunResult`.

A replay can be millions of steps: the recorder keeps each decision's time and equity (typed
arrays), the cash and holdings only when a fill changes them (with the decision they apply
from), and builds the weights at the end from the replay's close prices, vectorised.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable

import numpy as np
import pandas as pd

from backtest.result import (
    AUDIT_COLUMNS,
    REFUSAL_COLUMNS,
    REJECTION_COLUMNS,
    TRADE_COLUMNS,
    TRIM_COLUMNS,
    RunResult,
)
from bot.engine.account import Account, coin_of
from bot.engine.audit import audit_rows
from bot.engine.step import StepResult, Stretch
from bot.events import OrderFilled, OrderRejected, RiskRefusal

CloseLookup = Callable[[np.ndarray], dict[str, np.ndarray]]
"""``closes_at(ts)``: each symbol's latest close at or before each time (the replay's)."""


class Recorder:
    """Collects each decision's valuation, the fills, rejections and risk refusals."""

    def __init__(self, account: Account) -> None:
        self.account = account
        self.times = array("q")
        """Each decision's close time (appended by the replay loop, or :meth:`on_step`)."""
        self.equities = array("d")
        """Each decision's equity, before its orders."""
        self._changes = array("q", [0])
        """Index of the first decision each holdings snapshot applies to."""
        self._holdings: list[tuple[float, dict[str, float]]] = [
            (account.cash, dict(account.holdings))
        ]
        self.fills: list[OrderFilled] = []
        self.rejections: list[OrderRejected] = []
        self.refusals: list[RiskRefusal] = []
        self.audit: list[tuple[int, str, float, float, str]] = []
        self.trims: list[tuple[int, str, str, float, float, str]] = []

    def on_step(self, result: StepResult) -> None:
        """A decision's valuation (taken before its orders), refusals and audit."""
        self.times.append(result[0])
        self.equities.append(result[1])
        if result[3]:
            self.refusals.extend(result[3])
        if result.allowed is not None or result.refusals:
            self.on_review(result)

    def on_coast(self, stretch: Stretch, equities: np.ndarray) -> None:
        """A coasted stretch's valuations (those of its decisions: warm-up, which comes first,
        is not recorded)."""
        deciding = stretch.deciding
        if not deciding[0]:
            stretch_ts, equities = stretch.ts[deciding], equities[deciding]
        else:
            stretch_ts = stretch.ts
        self.times.frombytes(stretch_ts.astype(np.int64, copy=False).tobytes())
        self.equities.frombytes(equities.astype(np.float64, copy=False).tobytes())

    def on_review(self, result: StepResult) -> None:
        """A reviewed decision's audit: assets whose allowed weight differs from the wanted
        one (with the rules of this close that name them), and the trimmed orders."""
        target = result.target
        if target is not None:
            refusals = [(r.rule, r.asset) for r in result.refusals]
            allowed = None if result.allowed is None else dict(result.allowed)
            for row in audit_rows(dict(target.weights), allowed, refusals):
                self.audit.append((result.ts, *row))
        for t in result.trims:
            self.trims.append((result.ts, t.coin, t.side, t.wanted, t.planned, t.reason))

    def on_fill(self, fill: OrderFilled) -> None:
        """A fill, and the cash and holdings it leaves (from the next decision on)."""
        self.fills.append(fill)
        account = self.account
        self._holdings.append((account.cash, dict(account.holdings)))
        self._changes.append(len(self.times))

    def on_rejection(self, rejection: OrderRejected) -> None:
        """An order the venue refused."""
        self.rejections.append(rejection)

    def result(
        self,
        name: str,
        *,
        timeframe: str,
        quote: str,
        initial_cash: float,
        fees_paid: float,
        closes_at: CloseLookup,
        impact_paid: float = 0.0,
        slippage_paid: float = 0.0,
    ) -> RunResult:
        """Everything recorded, as frames."""
        ts = np.frombuffer(self.times, dtype=np.int64) if len(self.times) else np.empty(0, np.int64)
        index = pd.Index(ts, dtype="int64", name="ts")
        equity_values = np.frombuffer(self.equities, dtype=np.float64)  # no copy: recording is over
        equity = pd.Series(equity_values, index=index, name="equity")
        return RunResult(
            name=name,
            timeframe=timeframe,
            quote=quote,
            initial_cash=initial_cash,
            equity=equity,
            weights=self._weights(index, equity_values, quote, closes_at),
            trades=pd.DataFrame(
                [
                    (
                        f.ts,
                        f.client_order_id,
                        f.symbol,
                        f.side,
                        f.amount,
                        f.price,
                        f.fee,
                        f.fee_asset,
                        f.amount * f.price,
                    )
                    for f in self.fills
                ],
                columns=TRADE_COLUMNS,
            ),
            rejections=pd.DataFrame(
                [
                    (r.ts, r.client_order_id, r.symbol, r.side, r.amount, r.reason)
                    for r in self.rejections
                ],
                columns=REJECTION_COLUMNS,
            ),
            refusals=pd.DataFrame(
                [(r.ts, r.rule, r.asset, r.wanted, r.allowed, r.detail) for r in self.refusals],
                columns=REFUSAL_COLUMNS,
            ),
            fees_paid=fees_paid,
            audit=pd.DataFrame(self.audit, columns=AUDIT_COLUMNS),
            trims=pd.DataFrame(self.trims, columns=TRIM_COLUMNS),
            impact_paid=impact_paid,
            slippage_paid=slippage_paid,
        )

    def _weights(
        self, index: pd.Index, equity: np.ndarray, quote: str, closes_at: CloseLookup
    ) -> pd.DataFrame:
        """Share of equity per asset at each decision: cash, and every coin ever held."""
        n = len(index)
        # The snapshot in force at each decision: the last change at or before it.
        changes = np.frombuffer(self._changes, dtype=np.int64)
        snapshot = np.searchsorted(changes, np.arange(n), side="right") - 1
        cash = np.array([c for c, _ in self._holdings])[snapshot] if n else np.empty(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            safe = np.where(equity > 0, equity, np.nan)
            columns = {quote: cash / safe}
            coins = sorted({c for _, h in self._holdings for c in h})
            if coins and n:
                prices = {coin_of(s): p for s, p in closes_at(index.to_numpy()).items()}
                for coin in coins:
                    amounts = np.array([h.get(coin, 0.0) for _, h in self._holdings])[snapshot]
                    price = prices.get(coin, np.zeros(n))
                    columns[coin] = np.nan_to_num(amounts * price, nan=0.0) / safe
        frame = pd.DataFrame(columns, index=index, dtype="float64")
        return frame.fillna(0.0)
